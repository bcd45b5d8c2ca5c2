//! The passphrase that unlocks a keystore.

use std::{env, ffi::OsString, fmt, path::Path};

use zeroize::Zeroizing;

use crate::WalletError;

/// Largest passphrase file accepted; anything bigger is almost certainly the wrong file.
pub const PASSPHRASE_FILE_MAX_BYTES: usize = 64 * 1024;

/// A non-empty keystore passphrase.
///
/// The text is wiped from memory when the value is dropped, and `Debug`/`Display` print
/// `Passphrase(***)`.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; an empty one is refused.
    pub fn new(passphrase: String) -> Result<Self, WalletError> {
        let passphrase = Zeroizing::new(passphrase);
        if passphrase.is_empty() {
            return Err(WalletError::EmptyPassphrase);
        }
        Ok(Self(passphrase))
    }

    /// Reads the passphrase from a file, dropping one trailing newline (`\n` or `\r\n`)
    /// so that `echo secret > file` works. Everything else, including other whitespace, is
    /// part of the passphrase.
    ///
    /// A missing, unreadable, non-UTF-8, oversized or empty file is an error naming the
    /// path (never the content).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WalletError> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| {
            WalletError::PassphraseFileUnreadable {
                path: path.to_path_buf(),
                source,
            }
        })?);
        let invalid = |problem| WalletError::PassphraseFileInvalid {
            path: path.to_path_buf(),
            problem,
        };
        if bytes.len() > PASSPHRASE_FILE_MAX_BYTES {
            return Err(invalid("is larger than 64 KiB"));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("is not UTF-8 text"))?;
        let text = strip_one_newline(text);
        if text.is_empty() {
            return Err(invalid("is empty"));
        }
        Ok(Self(Zeroizing::new(text.to_owned())))
    }

    /// Reads the passphrase from the environment variable `var`. A missing, empty or
    /// non-UTF-8 variable is an error saying which variable to set. The value is taken
    /// as is (no trimming).
    pub fn from_env(var: &str) -> Result<Self, WalletError> {
        Self::from_env_value(var, env::var_os(var))
    }

    /// The passphrase from `file` when one is given, otherwise from the environment
    /// variable `env_var`.
    pub fn resolve(env_var: &str, file: Option<&Path>) -> Result<Self, WalletError> {
        match file {
            Some(file) => Self::from_file(file),
            None => Self::from_env(env_var),
        }
    }

    /// `from_env` on an already looked-up value (the environment cannot be changed safely
    /// from tests).
    pub(crate) fn from_env_value(var: &str, value: Option<OsString>) -> Result<Self, WalletError> {
        let value = value.ok_or_else(|| WalletError::PassphraseEnvMissing {
            var: var.to_owned(),
        })?;
        let value = value.into_string().map_err(|not_utf8| {
            // Wipe the raw bytes before giving up on them.
            drop(Zeroizing::new(not_utf8.into_encoded_bytes()));
            WalletError::PassphraseEnvInvalid {
                var: var.to_owned(),
                problem: "is not valid UTF-8",
            }
        })?;
        let value = Zeroizing::new(value);
        if value.is_empty() {
            return Err(WalletError::PassphraseEnvInvalid {
                var: var.to_owned(),
                problem: "is empty",
            });
        }
        Ok(Self(value))
    }

    /// The passphrase bytes, for the key derivation function.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

impl fmt::Display for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_handling() {
        assert_eq!(strip_one_newline("pw\n"), "pw");
        assert_eq!(strip_one_newline("pw\r\n"), "pw");
        assert_eq!(strip_one_newline("pw\n\n"), "pw\n");
        assert_eq!(strip_one_newline(" pw "), " pw ");
        assert_eq!(strip_one_newline("\n"), "");
    }

    #[test]
    fn env_values() {
        let ok =
            Passphrase::from_env_value("BURSAR_WALLET_PASSPHRASE", Some("hunter2".into())).unwrap();
        assert_eq!(ok.as_bytes(), b"hunter2");

        let missing = Passphrase::from_env_value("BURSAR_WALLET_PASSPHRASE", None).unwrap_err();
        assert!(matches!(missing, WalletError::PassphraseEnvMissing { .. }));
        assert!(
            missing
                .to_string()
                .contains("set BURSAR_WALLET_PASSPHRASE to the wallet passphrase")
        );

        let empty = Passphrase::from_env_value("BURSAR_WALLET_PASSPHRASE", Some(OsString::new()))
            .unwrap_err();
        assert!(
            matches!(
                empty,
                WalletError::PassphraseEnvInvalid {
                    problem: "is empty",
                    ..
                }
            ),
            "{empty}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn env_value_not_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let err = Passphrase::from_env_value("PW", Some(OsString::from_vec(vec![0xff, 0xfe])))
            .unwrap_err();
        assert!(matches!(
            err,
            WalletError::PassphraseEnvInvalid {
                problem: "is not valid UTF-8",
                ..
            }
        ));
    }

    #[test]
    fn never_printed() {
        let p = Passphrase::new("correct horse".to_owned()).unwrap();
        assert_eq!(format!("{p:?}"), "Passphrase(***)");
        assert_eq!(format!("{p}"), "Passphrase(***)");
        assert!(matches!(
            Passphrase::new(String::new()),
            Err(WalletError::EmptyPassphrase)
        ));
    }
}
