//! What the runtime's stores share: the error type, ids and request digests, limits, text
//! checks, and the kinds of runtime ledger entries. The runtime, decision, compensation and
//! alert stores import from here, never from one another.

use sha2::{Digest, Sha256};

use crate::DatabaseError;
use crate::keys::{hex_lower, random_hex};

/// Longest wallet, agent, operator-key name accepted.
pub const NAME_BYTES_MAX: usize = 200;
/// Longest idempotency key or client token accepted.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 200;
/// Longest resource URL recorded in the runtime ledger (longer ones are truncated for the
/// record).
pub const RESOURCE_BYTES_MAX: usize = 2048;
/// Most rows one listing returns.
pub const LIST_ROWS_MAX: usize = 10_000;

/// Runtime store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Store(Box<DatabaseError>),
    /// The same idempotency key (or client token, or unique name) was used with other content.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("corrupt runtime row: {0}")]
    Corrupt(String),
    /// The database could not complete the operation (a transaction shared with others
    /// failed to commit, or the committer stopped); nothing of it was written.
    #[error("runtime store unavailable: {0}")]
    Unavailable(String),
}

impl From<DatabaseError> for StoreError {
    fn from(error: DatabaseError) -> Self {
        StoreError::Store(Box::new(error))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Store(Box::new(DatabaseError::Database(error)))
    }
}

/// A new id: `prefix` + 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(12))
}

/// SHA-256 over the parts, hex: how creates remember what they were asked, for idempotency.
pub fn request_digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex_lower(&hasher.finalize())
}

/// Whether a create made a new row or found the one an earlier identical request made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    New(T),
    Existing(T),
}

impl<T> Created<T> {
    pub fn into_inner(self) -> T {
        match self {
            Created::New(value) | Created::Existing(value) => value,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, Created::New(_))
    }
}

/// What a runtime ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Reserve,
    Post,
    Void,
    Deny,
    /// A budget crossed an alert threshold.
    Alert,
    /// A payment was claimed back after its step failed.
    Compensate,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Reserve => "reserve",
            EntryKind::Post => "post",
            EntryKind::Void => "void",
            EntryKind::Deny => "deny",
            EntryKind::Alert => "alert",
            EntryKind::Compensate => "compensate",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        match text {
            "reserve" => Some(EntryKind::Reserve),
            "post" => Some(EntryKind::Post),
            "void" => Some(EntryKind::Void),
            "deny" => Some(EntryKind::Deny),
            "alert" => Some(EntryKind::Alert),
            "compensate" => Some(EntryKind::Compensate),
            _ => None,
        }
    }
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {NAME_BYTES_MAX} bytes of printable text"
        )));
    }
    Ok(())
}

pub(crate) fn check_idempotency_key(key: Option<&str>) -> Result<(), StoreError> {
    if let Some(key) = key
        && (key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || key.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(format!(
            "idempotency key / client token must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable bytes"
        )));
    }
    Ok(())
}

/// `text` cut to at most `bytes_max` bytes, on a character boundary.
pub(crate) fn truncate(text: &str, bytes_max: usize) -> String {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}
