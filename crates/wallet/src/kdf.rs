//! Key derivation: scrypt and pbkdf2 (hmac-sha256), with bounded parameters.

use zeroize::Zeroizing;

use crate::WalletError;

/// Largest scrypt `log2(n)` accepted: n = 2^20.
pub const SCRYPT_LOG_N_MAX: u8 = 20;
/// Largest scrypt block size `r` accepted.
pub const SCRYPT_R_MAX: u32 = 32;
/// Largest scrypt parallelism `p` accepted.
pub const SCRYPT_P_MAX: u32 = 16;
/// Largest scrypt memory use accepted, `128 * n * r` bytes: 512 MiB, twice geth's standard
/// parameters (n = 2^18, r = 8 uses 256 MiB).
pub const SCRYPT_MEMORY_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Largest scrypt work accepted, `n * r * p`: 2^23, four times geth's standard parameters
/// and the Web3 Secret Storage test vector (both 2^21), a few seconds of CPU.
pub const SCRYPT_WORK_MAX: u64 = 1 << 23;
/// Largest pbkdf2 iteration count `c` accepted: 16 times the Web3 Secret Storage test
/// vector's 262144, a few seconds of CPU.
pub const PBKDF2_C_MAX: u32 = 1 << 22;
/// Salts longer than this many bytes are refused (geth and foundry write 32).
pub const SALT_MAX_BYTES: usize = 1024;
/// Smallest derived key length: 16 bytes of AES key plus 16 bytes of MAC key.
pub const DKLEN_MIN: u32 = 32;
/// Largest derived key length accepted (only the first 32 bytes are used).
pub const DKLEN_MAX: u32 = 64;

/// A key derivation function and its cost parameters. The salt and derived key length
/// belong to the [`Keystore`](crate::Keystore); encryption always uses a fresh 32-byte
/// salt and a 32-byte derived key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kdf {
    /// scrypt with `n = 2^log_n`.
    Scrypt {
        /// `log2(n)`, 1..=[`SCRYPT_LOG_N_MAX`].
        log_n: u8,
        /// Block size, 1..=[`SCRYPT_R_MAX`].
        r: u32,
        /// Parallelism, 1..=[`SCRYPT_P_MAX`].
        p: u32,
    },
    /// PBKDF2 over HMAC-SHA-256.
    Pbkdf2 {
        /// Iterations, 1..=[`PBKDF2_C_MAX`].
        c: u32,
    },
}

impl Kdf {
    /// geth's standard parameters: scrypt n = 2^18, r = 8, p = 1 (256 MiB, about a second).
    pub const fn standard() -> Self {
        Self::Scrypt {
            log_n: 18,
            r: 8,
            p: 1,
        }
    }

    /// geth's light parameters: scrypt n = 2^12, r = 8, p = 6 (4 MiB, milliseconds).
    pub const fn light() -> Self {
        Self::Scrypt {
            log_n: 12,
            r: 8,
            p: 6,
        }
    }

    /// The `kdf` name written in the document.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Scrypt { .. } => "scrypt",
            Self::Pbkdf2 { .. } => "pbkdf2",
        }
    }

    /// Checks the parameters against the limits of this crate.
    pub fn validate(&self) -> Result<(), WalletError> {
        match *self {
            Self::Scrypt { log_n, r, p } => {
                let out = |param, value: u64, allowed: String| WalletError::KdfParams {
                    kdf: "scrypt",
                    param,
                    value,
                    allowed,
                };
                if !(1..=SCRYPT_LOG_N_MAX).contains(&log_n) {
                    return Err(out(
                        "n",
                        1u64.checked_shl(log_n.into()).unwrap_or(u64::MAX),
                        format!("2..={}, a power of two", 1u64 << SCRYPT_LOG_N_MAX),
                    ));
                }
                if !(1..=SCRYPT_R_MAX).contains(&r) {
                    return Err(out("r", r.into(), format!("1..={SCRYPT_R_MAX}")));
                }
                if !(1..=SCRYPT_P_MAX).contains(&p) {
                    return Err(out("p", p.into(), format!("1..={SCRYPT_P_MAX}")));
                }
                let n = 1u64 << log_n;
                let memory = 128 * n * u64::from(r);
                if memory > SCRYPT_MEMORY_MAX_BYTES {
                    return Err(out(
                        "memory 128*n*r (bytes)",
                        memory,
                        format!("up to {SCRYPT_MEMORY_MAX_BYTES}"),
                    ));
                }
                let work = n * u64::from(r) * u64::from(p);
                if work > SCRYPT_WORK_MAX {
                    return Err(out("n*r*p", work, format!("up to {SCRYPT_WORK_MAX}")));
                }
                // The limits above are well inside what the scrypt crate accepts, but ask it
                // anyway rather than fail later.
                scrypt::Params::new(log_n, r, p).map_err(|_| {
                    out("n", n, "parameters the scrypt algorithm accepts".to_owned())
                })?;
                Ok(())
            }
            Self::Pbkdf2 { c } => {
                if !(1..=PBKDF2_C_MAX).contains(&c) {
                    return Err(WalletError::KdfParams {
                        kdf: "pbkdf2",
                        param: "c",
                        value: c.into(),
                        allowed: format!("1..={PBKDF2_C_MAX}"),
                    });
                }
                Ok(())
            }
        }
    }

    /// Derives `dklen` bytes from the passphrase and salt. Validates first, so callers
    /// cannot be made to spend unbounded time or memory.
    pub(crate) fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8],
        dklen: u32,
    ) -> Result<Zeroizing<Vec<u8>>, WalletError> {
        self.validate()?;
        check_salt_and_dklen(self.name(), salt.len(), dklen)?;
        let mut out = Zeroizing::new(vec![0u8; dklen as usize]);
        match *self {
            Self::Scrypt { log_n, r, p } => {
                let params =
                    scrypt::Params::new(log_n, r, p).map_err(|_| WalletError::KdfParams {
                        kdf: "scrypt",
                        param: "n",
                        value: 1u64 << log_n,
                        allowed: "parameters the scrypt algorithm accepts".to_owned(),
                    })?;
                // Only fails for an empty or astronomically long output, excluded above.
                scrypt::scrypt(passphrase, salt, &params, &mut out).map_err(|_| {
                    WalletError::KdfParams {
                        kdf: "scrypt",
                        param: "dklen",
                        value: dklen.into(),
                        allowed: format!("{DKLEN_MIN}..={DKLEN_MAX}"),
                    }
                })?;
            }
            Self::Pbkdf2 { c } => {
                pbkdf2::pbkdf2_hmac::<pbkdf2::sha2::Sha256>(passphrase, salt, c, &mut out);
            }
        }
        Ok(out)
    }
}

pub(crate) fn check_salt_and_dklen(
    kdf: &'static str,
    salt_len: usize,
    dklen: u32,
) -> Result<(), WalletError> {
    if !(DKLEN_MIN..=DKLEN_MAX).contains(&dklen) {
        return Err(WalletError::KdfParams {
            kdf,
            param: "dklen",
            value: dklen.into(),
            allowed: format!("{DKLEN_MIN}..={DKLEN_MAX}"),
        });
    }
    if !(1..=SALT_MAX_BYTES).contains(&salt_len) {
        return Err(WalletError::KdfParams {
            kdf,
            param: "salt length (bytes)",
            value: salt_len as u64,
            allowed: format!("1..={SALT_MAX_BYTES}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_within_limits() {
        Kdf::standard().validate().unwrap();
        Kdf::light().validate().unwrap();
        // The Web3 Secret Storage scrypt test vector: n = 2^18, r = 1, p = 8.
        Kdf::Scrypt {
            log_n: 18,
            r: 1,
            p: 8,
        }
        .validate()
        .unwrap();
        Kdf::Pbkdf2 { c: 262_144 }.validate().unwrap();
    }

    #[test]
    fn absurd_parameters_are_refused() {
        let refused = [
            Kdf::Scrypt {
                log_n: 0,
                r: 8,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 21,
                r: 8,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 63,
                r: 8,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 200,
                r: 8,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 12,
                r: 0,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 12,
                r: 33,
                p: 1,
            },
            Kdf::Scrypt {
                log_n: 12,
                r: 8,
                p: 0,
            },
            Kdf::Scrypt {
                log_n: 12,
                r: 8,
                p: 17,
            },
            // 1 GiB of memory.
            Kdf::Scrypt {
                log_n: 20,
                r: 8,
                p: 1,
            },
            // 2^24 work.
            Kdf::Scrypt {
                log_n: 18,
                r: 8,
                p: 8,
            },
            Kdf::Pbkdf2 { c: 0 },
            Kdf::Pbkdf2 {
                c: PBKDF2_C_MAX + 1,
            },
            Kdf::Pbkdf2 { c: u32::MAX },
        ];
        for kdf in refused {
            let err = kdf.validate().unwrap_err();
            assert!(
                matches!(err, WalletError::KdfParams { .. }),
                "{kdf:?}: {err}"
            );
            assert!(err.to_string().contains("re-encrypt the key"), "{err}");
        }
    }

    #[test]
    fn derive_checks_dklen_and_salt() {
        let kdf = Kdf::Pbkdf2 { c: 1 };
        assert!(kdf.derive(b"pw", b"salt", 31).is_err());
        assert!(kdf.derive(b"pw", b"salt", 65).is_err());
        assert!(kdf.derive(b"pw", b"", 32).is_err());
        assert!(kdf.derive(b"pw", &[0; SALT_MAX_BYTES + 1], 32).is_err());
        assert_eq!(kdf.derive(b"pw", b"salt", 64).unwrap().len(), 64);
    }

    /// Intermediate values published with the Web3 Secret Storage test vectors.
    #[test]
    fn derived_keys_match_the_published_intermediates() {
        let pbkdf2 = Kdf::Pbkdf2 { c: 262_144 }
            .derive(
                b"testpassword",
                &hex::decode("ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd")
                    .unwrap(),
                32,
            )
            .unwrap();
        assert_eq!(
            hex::encode(&pbkdf2[..]),
            "f06d69cdc7da0faffb1008270bca38f5e31891a3a773950e6d0fea48a7188551"
        );
        let scrypt = Kdf::Scrypt {
            log_n: 18,
            r: 1,
            p: 8,
        }
        .derive(
            b"testpassword",
            &hex::decode("ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19")
                .unwrap(),
            32,
        )
        .unwrap();
        assert_eq!(
            hex::encode(&scrypt[..]),
            "fac192ceb5fd772906bea3e118a69e8bbb5cc24229e20d8766fd298291bba6bd"
        );
    }
}
