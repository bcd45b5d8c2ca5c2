//! Wallet signers: each wallet's key decrypted once per process, with a bound on the key
//! derivations running at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use bursar_wallet::{Keystore, Passphrase, WalletError};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::Runtime;
use crate::error::RuntimeError;

impl Runtime {
    /// How many times this process decrypted a wallet's key to sign (each one scrypt, about
    /// 256 MiB and a second of CPU at the standard parameters).
    pub fn key_decryptions(&self) -> u64 {
        self.inner.key_decryptions.started.load(Ordering::SeqCst)
    }

    /// The most wallet key decryptions that have run at the same time in this process (at most
    /// [`RuntimeConfig::kdf_concurrency`]).
    pub fn key_decryptions_concurrent_max(&self) -> usize {
        self.inner
            .key_decryptions
            .running_max
            .load(Ordering::SeqCst)
    }

    /// The wallet's signer. Its key is decrypted once per process: concurrent first callers
    /// share one decryption (a single flight per wallet), and at most
    /// [`RuntimeConfig::kdf_concurrency`] key derivations run at once across wallets. A failed
    /// decryption is not remembered: the callers that waited for it get its error, and the next
    /// caller tries again.
    pub(crate) async fn signer(
        &self,
        wallet_id: &str,
    ) -> Result<Arc<PrivateKeySigner>, RuntimeError> {
        let (flight_id, flight) = match self.signer_slot(wallet_id) {
            Some(SignerSlot::Ready(signer)) => return Ok(signer),
            Some(SignerSlot::Loading { id, flight }) => (id, flight),
            None => {
                // Read outside the lock; whoever registers first starts the decryption.
                let record = self.wallet_record(wallet_id).await?;
                let keystore = Keystore::from_json(&record.keystore)?;
                let expected: Address = record.address;
                let mut slots = self.inner.signers.lock().expect("signer cache lock");
                match slots.get(wallet_id) {
                    Some(SignerSlot::Ready(signer)) => return Ok(signer.clone()),
                    Some(SignerSlot::Loading { id, flight }) => (*id, flight.clone()),
                    None => {
                        let id = self.inner.signer_flights.fetch_add(1, Ordering::SeqCst);
                        let flight = decrypt_signer(
                            wallet_id.to_string(),
                            keystore,
                            expected,
                            self.inner.passphrase.clone(),
                            self.inner.kdf_slots.clone(),
                            self.inner.key_decryptions.clone(),
                        )
                        .boxed()
                        .shared();
                        slots.insert(
                            wallet_id.to_string(),
                            SignerSlot::Loading {
                                id,
                                flight: flight.clone(),
                            },
                        );
                        (id, flight)
                    }
                }
            }
        };
        let outcome = flight.await;
        let mut slots = self.inner.signers.lock().expect("signer cache lock");
        if matches!(slots.get(wallet_id), Some(SignerSlot::Loading { id, .. }) if *id == flight_id)
        {
            match &outcome {
                Ok(signer) => {
                    slots.insert(wallet_id.to_string(), SignerSlot::Ready(signer.clone()));
                }
                Err(_) => {
                    slots.remove(wallet_id);
                }
            }
        }
        drop(slots);
        outcome.map_err(RuntimeError::from)
    }

    fn signer_slot(&self, wallet_id: &str) -> Option<SignerSlot> {
        self.inner
            .signers
            .lock()
            .expect("signer cache lock")
            .get(wallet_id)
            .cloned()
    }

    /// A permit to run one key derivation (scrypt), waiting while
    /// [`RuntimeConfig::kdf_concurrency`] are running.
    pub(super) async fn kdf_permit(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, RuntimeError> {
        self.inner
            .kdf_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RuntimeError::Internal("key derivation slots closed".into()))
    }
}

/// Counts of wallet key decryptions in this process.
#[derive(Debug, Default)]
pub(super) struct KeyDecryptions {
    started: AtomicU64,
    running: AtomicUsize,
    running_max: AtomicUsize,
}

/// A wallet's signer in the cache: decrypted, or being decrypted.
#[derive(Clone)]
pub(super) enum SignerSlot {
    Ready(Arc<PrivateKeySigner>),
    /// The one decryption in flight, shared by every caller waiting for it.
    Loading {
        id: u64,
        flight: SignerFlight,
    },
}

type SignerFlight = Shared<BoxFuture<'static, Result<Arc<PrivateKeySigner>, KeyLoadError>>>;

/// Why a wallet's key could not be decrypted, shared by the callers that waited for it.
#[derive(Debug, Clone)]
pub(super) enum KeyLoadError {
    WrongPassphrase,
    Failed(String),
}

impl From<KeyLoadError> for RuntimeError {
    fn from(error: KeyLoadError) -> Self {
        match error {
            KeyLoadError::WrongPassphrase => RuntimeError::Wallet(WalletError::WrongPassphrase),
            KeyLoadError::Failed(message) => RuntimeError::Internal(message),
        }
    }
}

/// Decrypts one wallet's key under a key-derivation permit. The permit moves into the blocking
/// task, so it is held until scrypt has finished even when every caller has gone.
async fn decrypt_signer(
    wallet_id: String,
    keystore: Keystore,
    expected: Address,
    passphrase: Arc<Passphrase>,
    kdf_slots: Arc<tokio::sync::Semaphore>,
    decryptions: Arc<KeyDecryptions>,
) -> Result<Arc<PrivateKeySigner>, KeyLoadError> {
    let permit = kdf_slots
        .acquire_owned()
        .await
        .map_err(|_| KeyLoadError::Failed("key derivation slots closed".into()))?;
    let decrypted = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        decryptions.started.fetch_add(1, Ordering::SeqCst);
        let running = decryptions.running.fetch_add(1, Ordering::SeqCst) + 1;
        decryptions.running_max.fetch_max(running, Ordering::SeqCst);
        let decrypted = keystore.decrypt(&passphrase);
        decryptions.running.fetch_sub(1, Ordering::SeqCst);
        decrypted
    })
    .await
    .map_err(|e| KeyLoadError::Failed(format!("key decryption: {e}")))?;
    let signer = decrypted.map_err(|error| match error {
        WalletError::WrongPassphrase => KeyLoadError::WrongPassphrase,
        other => KeyLoadError::Failed(format!("wallet {wallet_id}: {other}")),
    })?;
    if signer.address() != expected {
        return Err(KeyLoadError::Failed(format!(
            "wallet {wallet_id}: the keystore holds another key than its recorded address"
        )));
    }
    tracing::debug!(wallet = %wallet_id, "wallet key decrypted");
    Ok(Arc::new(signer))
}
