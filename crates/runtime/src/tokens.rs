//! Session bearer tokens: `bst_<session id>_<HMAC-SHA256(key, session id) in hex>`.
//!
//! The token is derived, not stored: a repeated idempotent create returns the same token, a
//! database reader learns nothing that lets them spend, and checking a token needs no lookup
//! beyond the session itself. The key is 32 random bytes kept in the database encrypted under the
//! runtime's passphrase (keystore v3), so every process sharing the database derives the same
//! tokens.

use alloy_signer_local::PrivateKeySigner;
use bursar_store::RuntimeStore;
use bursar_wallet::{Kdf, Keystore, Passphrase};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::RuntimeError;

/// Prefix of session tokens, so a leaked one is recognizable.
pub const SESSION_TOKEN_PREFIX: &str = "bst_";
/// Where the encrypted key is kept.
const TOKEN_KEY_SETTING: &str = "session_token_key";
/// Longest token accepted for parsing.
const TOKEN_BYTES_MAX: usize = 256;

pub(crate) struct TokenKey([u8; 32]);

impl TokenKey {
    pub(crate) async fn load_or_create(
        store: &dyn RuntimeStore,
        passphrase: &std::sync::Arc<Passphrase>,
        kdf: Kdf,
    ) -> Result<TokenKey, RuntimeError> {
        let stored = match store.meta(TOKEN_KEY_SETTING).await? {
            Some(stored) => stored,
            None => {
                let passphrase = passphrase.clone();
                let fresh = tokio::task::spawn_blocking(move || {
                    Keystore::encrypt(&PrivateKeySigner::random(), &passphrase, kdf)
                })
                .await
                .map_err(|e| RuntimeError::Internal(format!("token key: {e}")))??;
                // Two processes starting on a new database: the first write wins for both.
                store
                    .put_meta_if_absent(TOKEN_KEY_SETTING, &fresh.to_json())
                    .await?
            }
        };
        let keystore = Keystore::from_json(&stored)?;
        let passphrase = passphrase.clone();
        let signer = tokio::task::spawn_blocking(move || keystore.decrypt(&passphrase))
            .await
            .map_err(|e| RuntimeError::Internal(format!("token key: {e}")))??;
        Ok(TokenKey(signer.to_bytes().0))
    }

    fn mac(&self, session_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(b"bursar session token v1\0");
        mac.update(session_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub(crate) fn token_for(&self, session_id: &str) -> String {
        format!(
            "{SESSION_TOKEN_PREFIX}{session_id}_{}",
            self.mac(session_id)
        )
    }

    /// The session id a genuine token names; `None` for anything else.
    pub(crate) fn session_of(&self, token: &str) -> Option<String> {
        if token.len() > TOKEN_BYTES_MAX {
            return None;
        }
        let session_id = session_named(token)?;
        let presented = &token[SESSION_TOKEN_PREFIX.len() + session_id.len() + 1..];
        let expected = self.mac(session_id);
        let equal: bool =
            subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), presented.as_bytes()).into();
        equal.then(|| session_id.to_string())
    }
}

/// The session a token names (`bst_<session id>_<secret>`), unverified: the agent's tools use it
/// to address their session's routes, and the runtime verifies the token on each call.
pub fn session_named(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(SESSION_TOKEN_PREFIX)?;
    let (session_id, _) = rest.rsplit_once('_')?;
    Some(session_id).filter(|id| !id.is_empty())
}

/// Whether `credential` looks like a session token (as opposed to an operator key).
pub fn is_session_token(credential: &str) -> bool {
    credential.starts_with(SESSION_TOKEN_PREFIX)
}
