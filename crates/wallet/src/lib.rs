//! Agent wallets: the signing keys Bursar holds for agents, encrypted at rest.
//!
//! An agent never sees its key; Bursar keeps it as a Web3 Secret Storage document
//! ("keystore v3"), the format geth, foundry (`cast wallet`), ethers and most wallets read
//! and write, so keys can be imported from and exported to those tools. This crate is the
//! pure key-handling part: parsing, validating, encrypting and decrypting keystores, and
//! obtaining passphrases. It does no storage and no networking.
//!
//! # Format
//!
//! A keystore is a JSON object with `version: 3`, a UUID `id`, an optional `address`
//! (geth writes it, foundry does not) and a `crypto` object:
//!
//! * `kdf`: `scrypt` (`n`, `r`, `p`) or `pbkdf2` (`c`, `prf: hmac-sha256`), with a hex
//!   `salt` and `dklen`, derives a key `dk` from the passphrase;
//! * `cipher`: `aes-128-ctr` with `cipherparams.iv`, keyed by `dk[0..16]`, turns the
//!   32-byte private key into `ciphertext`;
//! * `mac` is `keccak256(dk[16..32] ++ ciphertext)`; a mismatch means a wrong passphrase
//!   (or a modified file) and is checked before anything is decrypted.
//!
//! [`Keystore::encrypt`] and [`generate`] write geth's layout: a fresh 32-byte salt, a
//! 16-byte IV, a random UUID and the lowercase address without `0x`.
//!
//! # Limits
//!
//! Decryption honours the document's KDF parameters, so a hostile document could ask for
//! hours of CPU or gigabytes of memory. [`Keystore::from_json`] refuses parameters beyond
//! [`kdf::SCRYPT_LOG_N_MAX`], [`kdf::SCRYPT_R_MAX`], [`kdf::SCRYPT_P_MAX`],
//! [`kdf::SCRYPT_MEMORY_MAX_BYTES`] (`128*n*r`), [`kdf::SCRYPT_WORK_MAX`] (`n*r*p`) and
//! [`kdf::PBKDF2_C_MAX`]; these admit geth's standard parameters and the published test
//! vectors with room to spare. Documents are at most [`KEYSTORE_JSON_MAX_BYTES`].
//!
//! # Secrets
//!
//! Passphrases live in [`Passphrase`] (wiped on drop, printed as `Passphrase(***)`);
//! intermediate key material is wiped after use. No [`WalletError`] message and no
//! `Debug` output of this crate contains a private key, a passphrase or text copied from
//! the document being parsed.
//!
//! ```
//! use bursar_wallet::{Kdf, Keystore, Passphrase, generate};
//!
//! let passphrase = Passphrase::new("correct horse battery staple".to_owned())?;
//! let (keystore, address) = generate(Kdf::light(), &passphrase)?;
//! let json = keystore.to_json();
//!
//! let signer = Keystore::from_json(&json)?.decrypt(&passphrase)?;
//! assert_eq!(signer.address(), address);
//! # Ok::<(), bursar_wallet::WalletError>(())
//! ```

mod error;
pub mod kdf;
mod keystore;
mod passphrase;

pub use alloy_primitives::Address;
pub use alloy_signer_local::PrivateKeySigner;
pub use error::WalletError;
pub use kdf::Kdf;
pub use keystore::{CIPHER, KEYSTORE_JSON_MAX_BYTES, Keystore, PBKDF2_PRF, generate};
pub use passphrase::{PASSPHRASE_FILE_MAX_BYTES, Passphrase};
