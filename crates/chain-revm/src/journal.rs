//! The append-only journal that makes a data dir survive restarts, and the lock file that keeps
//! a second process out.
//!
//! File layout (all integers little-endian unless noted):
//!
//! ```text
//! header:  "BURSARJL" (8 bytes) | format version u32 | chain id u64
//! record:  payload length u32 | first 8 bytes of keccak256(payload) | payload
//! payload: head (number u64, timestamp u64, time offset u64)
//!          u32 account count, each: address (20) | flags u8 (1 = removed, 2 = storage reset)
//!                                   | balance (32, big-endian) | nonce u64 | code hash (32)
//!                                   | u32 slot count, each: key (32, BE) | value (32, BE)
//!          u32 code count, each: u32 length | raw bytecode
//!          u32 receipt count, each: tx hash (32) | success u8 | block number u64 | gas used u64
//!                                   | effective gas price u128 | u8 has contract address
//!                                   [| address (20)] | u32 log count, each: address (20)
//!                                   | u32 topic count | topics (32 each) | u32 data length | data
//! ```
//!
//! A record is written with one `write` call and then (by default) `fdatasync`. On open the
//! records are replayed in order. A final record that is incomplete or fails its checksum (a
//! crash while it was being written) is discarded and the file truncated to the last good record;
//! a bad record that is followed by more data is corruption and the chain refuses to open.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use bursar_chain::{Log, Receipt};
use revm::bytecode::Bytecode;

use crate::EmbeddedError;
use crate::state::{AccountChange, Change, Head};

/// The journal's file name inside the data dir.
pub const JOURNAL_FILE_NAME: &str = "chain.journal";
/// The lock file's name inside the data dir.
pub const LOCK_FILE_NAME: &str = "chain.lock";
/// Largest accepted journal record, in bytes.
pub const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"BURSARJL";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 20;
const FRAME_LEN: u64 = 12;

const FLAG_REMOVED: u8 = 1;
const FLAG_STORAGE_RESET: u8 = 2;

/// An exclusive, advisory lock on `<data dir>/chain.lock`, held for the chain's lifetime.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, EmbeddedError> {
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| EmbeddedError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(EmbeddedError::Locked { path }),
            Err(TryLockError::Error(source)) => return Err(EmbeddedError::Io { path, source }),
        }
        // The owner's pid, for whoever finds the lock held. Best effort.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DirLock { _file: file })
    }
}

/// The open journal, positioned for appending.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Length of the file up to the end of the last complete record.
    len: u64,
    sync: bool,
    /// A failed write could not be undone: the file may end in a partial record.
    broken: bool,
}

/// What opening a journal found.
pub(crate) enum Opened {
    /// No journal yet: one was created with just a header; write the genesis record next.
    Fresh(Journal),
    /// An existing journal and its records, in order.
    Existing(Journal, Vec<Change>),
}

impl Journal {
    /// Opens (or creates) the journal in `dir` for `chain_id`, reading all complete records.
    pub fn open(dir: &Path, chain_id: u64, sync: bool) -> Result<Opened, EmbeddedError> {
        let path = dir.join(JOURNAL_FILE_NAME);
        let io = |source| EmbeddedError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < HEADER_LEN {
            // Never written, or the crash came before the header was complete: nothing to keep.
            file.set_len(0).map_err(io)?;
            let mut header = Vec::with_capacity(HEADER_LEN as usize);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            header.extend_from_slice(&chain_id.to_le_bytes());
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(&header).map_err(io)?;
            file.sync_all().map_err(io)?;
            // Make the new file's directory entry durable too (best effort).
            if let Ok(dir_handle) = File::open(dir) {
                let _ = dir_handle.sync_all();
            }
            return Ok(Opened::Fresh(Journal {
                file,
                path,
                len: HEADER_LEN,
                sync,
                broken: false,
            }));
        }

        let mut reader = BufReader::new(&mut file);
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut header = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut header).map_err(io)?;
        if &header[..8] != MAGIC {
            return Err(EmbeddedError::Corrupt {
                path,
                offset: 0,
                reason: "not a Bursar chain journal".into(),
            });
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(EmbeddedError::Corrupt {
                path,
                offset: 8,
                reason: format!(
                    "journal format version {version} is not supported (expected {FORMAT_VERSION})"
                ),
            });
        }
        let found = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
        if found != chain_id {
            return Err(EmbeddedError::ChainIdMismatch {
                path: dir.to_path_buf(),
                found,
                expected: chain_id,
            });
        }

        let mut changes = Vec::new();
        let mut offset = HEADER_LEN;
        let torn_at = loop {
            let remaining = file_len - offset;
            if remaining == 0 {
                break None;
            }
            if remaining < FRAME_LEN {
                break Some(offset);
            }
            let mut frame = [0u8; FRAME_LEN as usize];
            reader.read_exact(&mut frame).map_err(io)?;
            let len = u64::from(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]));
            let end = offset + FRAME_LEN + len;
            if len > u64::from(RECORD_BYTES_MAX) || end > file_len {
                if end > file_len
                    || tail_is_zero(&mut reader, offset + FRAME_LEN, file_len).map_err(io)?
                {
                    break Some(offset);
                }
                return Err(EmbeddedError::Corrupt {
                    path,
                    offset,
                    reason: format!("record length {len} is too large"),
                });
            }
            let mut payload = vec![0u8; len as usize];
            reader.read_exact(&mut payload).map_err(io)?;
            if keccak256(&payload)[..8] != frame[4..12] {
                if end == file_len || tail_is_zero(&mut reader, offset, file_len).map_err(io)? {
                    break Some(offset);
                }
                return Err(EmbeddedError::Corrupt {
                    path,
                    offset,
                    reason: "record checksum mismatch in the middle of the journal".into(),
                });
            }
            let change = decode_change(&payload).map_err(|reason| EmbeddedError::Corrupt {
                path: path.clone(),
                offset,
                reason: format!("undecodable record: {reason}"),
            })?;
            changes.push(change);
            offset = end;
        };
        drop(reader);
        if let Some(torn) = torn_at {
            tracing::warn!(
                path = %path.display(),
                offset = torn,
                discarded_bytes = file_len - torn,
                "discarding an incomplete final journal record (the previous run stopped while writing it)"
            );
            file.set_len(torn).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        if changes.is_empty() {
            // The header made it but the genesis record did not: start over as fresh.
            return Ok(Opened::Fresh(Journal {
                file,
                path,
                len: offset,
                sync,
                broken: false,
            }));
        }
        // `offset` is the end of the last complete record (the torn tail, if any, is cut off).
        Ok(Opened::Existing(
            Journal {
                file,
                path,
                len: offset,
                sync,
                broken: false,
            },
            changes,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends one record and, when configured, waits until it is on disk. On failure the file is
    /// cut back to the previous record so that later appends stay readable.
    pub fn append(&mut self, change: &Change) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "an earlier write failed and could not be undone",
            ));
        }
        let payload = encode_change(change);
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= RECORD_BYTES_MAX)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "journal record of {} bytes is too large",
                    payload.len()
                ))
            })?;
        let mut record = Vec::with_capacity(FRAME_LEN as usize + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&keccak256(&payload)[..8]);
        record.extend_from_slice(&payload);
        let result = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&record))
            .and_then(|()| {
                if self.sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(error) => {
                // Leave no partial record behind; if even that fails, stop writing.
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(error)
            }
        }
    }
}

fn tail_is_zero(
    reader: &mut BufReader<&mut File>,
    from: u64,
    file_len: u64,
) -> std::io::Result<bool> {
    reader.seek(SeekFrom::Start(from))?;
    let mut remaining = file_len - from;
    let mut buffer = [0u8; 8192];
    while remaining > 0 {
        let take = remaining.min(buffer.len() as u64) as usize;
        reader.read_exact(&mut buffer[..take])?;
        if buffer[..take].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        remaining -= take as u64;
    }
    Ok(true)
}

// ---- encoding ----

pub(crate) fn encode_change(change: &Change) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put_u64(&mut out, change.head.number);
    put_u64(&mut out, change.head.timestamp);
    put_u64(&mut out, change.head.time_offset);
    put_len(&mut out, change.accounts.len());
    for account in &change.accounts {
        out.extend_from_slice(account.address.as_slice());
        let mut flags = 0u8;
        if account.removed {
            flags |= FLAG_REMOVED;
        }
        if account.storage_reset {
            flags |= FLAG_STORAGE_RESET;
        }
        out.push(flags);
        out.extend_from_slice(&account.balance.to_be_bytes::<32>());
        put_u64(&mut out, account.nonce);
        out.extend_from_slice(account.code_hash.as_slice());
        put_len(&mut out, account.slots.len());
        for (key, value) in &account.slots {
            out.extend_from_slice(&key.to_be_bytes::<32>());
            out.extend_from_slice(&value.to_be_bytes::<32>());
        }
    }
    put_len(&mut out, change.code.len());
    for code in &change.code {
        put_bytes(&mut out, &code.original_bytes());
    }
    put_len(&mut out, change.receipts.len());
    for receipt in &change.receipts {
        out.extend_from_slice(receipt.transaction_hash.as_slice());
        out.push(u8::from(receipt.success));
        put_u64(&mut out, receipt.block_number);
        put_u64(&mut out, receipt.gas_used);
        out.extend_from_slice(&receipt.effective_gas_price.to_le_bytes());
        match receipt.contract_address {
            Some(address) => {
                out.push(1);
                out.extend_from_slice(address.as_slice());
            }
            None => out.push(0),
        }
        put_len(&mut out, receipt.logs.len());
        for log in &receipt.logs {
            out.extend_from_slice(log.address.as_slice());
            put_len(&mut out, log.topics.len());
            for topic in &log.topics {
                out.extend_from_slice(topic.as_slice());
            }
            put_bytes(&mut out, &log.data);
        }
    }
    out
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Counts are bounded far below u32::MAX by RECORD_BYTES_MAX.
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

// ---- decoding (never panics: every read is bounds-checked) ----

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items, each at least `item_min` bytes long, checked against what is left so a
    /// corrupt count cannot cause a huge allocation.
    fn count(&mut self, item_min: usize) -> Result<usize, String> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_min) > self.bytes.len() {
            return Err(format!("count {count} exceeds the record"));
        }
        Ok(count)
    }

    fn address(&mut self) -> Result<Address, String> {
        Ok(Address::from(self.array::<20>()?))
    }

    fn b256(&mut self) -> Result<B256, String> {
        Ok(B256::from(self.array::<32>()?))
    }

    fn u256(&mut self) -> Result<U256, String> {
        Ok(U256::from_be_bytes(self.array::<32>()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.count(1)?;
        self.take(len)
    }
}

pub(crate) fn decode_change(payload: &[u8]) -> Result<Change, String> {
    let mut c = Cursor { bytes: payload };
    let head = Head {
        number: c.u64()?,
        timestamp: c.u64()?,
        time_offset: c.u64()?,
    };
    let account_count = c.count(20 + 1 + 32 + 8 + 32 + 4)?;
    let mut accounts = Vec::with_capacity(account_count);
    for _ in 0..account_count {
        let address = c.address()?;
        let flags = c.u8()?;
        let balance = c.u256()?;
        let nonce = c.u64()?;
        let code_hash = c.b256()?;
        let slot_count = c.count(64)?;
        let mut slots = Vec::with_capacity(slot_count);
        for _ in 0..slot_count {
            slots.push((c.u256()?, c.u256()?));
        }
        accounts.push(AccountChange {
            address,
            removed: flags & FLAG_REMOVED != 0,
            storage_reset: flags & FLAG_STORAGE_RESET != 0,
            balance,
            nonce,
            code_hash,
            slots,
        });
    }
    let code_count = c.count(4)?;
    let mut code = Vec::with_capacity(code_count);
    for _ in 0..code_count {
        let raw = Bytes::copy_from_slice(c.bytes()?);
        code.push(Bytecode::new_raw_checked(raw).map_err(|e| format!("invalid bytecode: {e:?}"))?);
    }
    let receipt_count = c.count(32 + 1 + 8 + 8 + 16 + 1 + 4)?;
    let mut receipts = Vec::with_capacity(receipt_count);
    for _ in 0..receipt_count {
        let transaction_hash = c.b256()?;
        let success = c.u8()? != 0;
        let block_number = c.u64()?;
        let gas_used = c.u64()?;
        let effective_gas_price = u128::from_le_bytes(c.array()?);
        let contract_address = match c.u8()? {
            0 => None,
            _ => Some(c.address()?),
        };
        let log_count = c.count(20 + 4 + 4)?;
        let mut logs = Vec::with_capacity(log_count);
        for _ in 0..log_count {
            let address = c.address()?;
            let topic_count = c.count(32)?;
            let mut topics = Vec::with_capacity(topic_count);
            for _ in 0..topic_count {
                topics.push(c.b256()?);
            }
            let data = Bytes::copy_from_slice(c.bytes()?);
            logs.push(Log {
                address,
                topics,
                data,
            });
        }
        receipts.push(Receipt {
            transaction_hash,
            success,
            block_number,
            gas_used,
            effective_gas_price,
            contract_address,
            logs,
        });
    }
    if !c.bytes.is_empty() {
        return Err(format!("{} trailing bytes", c.bytes.len()));
    }
    Ok(Change {
        head,
        accounts,
        code,
        receipts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Change {
        Change {
            head: Head {
                number: 7,
                timestamp: 1_700_000_000,
                time_offset: 3600,
            },
            accounts: vec![AccountChange {
                address: Address::repeat_byte(1),
                removed: false,
                storage_reset: true,
                balance: U256::from(12345u64),
                nonce: 3,
                code_hash: keccak256([0x60, 0x00]),
                slots: vec![(U256::from(1u64), U256::from(2u64))],
            }],
            code: vec![Bytecode::new_raw(Bytes::from_static(&[0x60, 0x00]))],
            receipts: vec![Receipt {
                transaction_hash: B256::repeat_byte(9),
                success: true,
                block_number: 7,
                gas_used: 21_000,
                effective_gas_price: 1_000_000_000,
                contract_address: Some(Address::repeat_byte(2)),
                logs: vec![Log {
                    address: Address::repeat_byte(3),
                    topics: vec![B256::repeat_byte(4)],
                    data: Bytes::from_static(b"data"),
                }],
            }],
        }
    }

    #[test]
    fn records_round_trip() {
        let change = sample();
        let decoded = decode_change(&encode_change(&change)).unwrap();
        assert_eq!(decoded.head, change.head);
        assert_eq!(decoded.accounts, change.accounts);
        assert_eq!(decoded.receipts, change.receipts);
        assert_eq!(decoded.code.len(), 1);
        assert_eq!(
            decoded.code[0].original_bytes(),
            change.code[0].original_bytes()
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let encoded = encode_change(&sample());
        for cut in 0..encoded.len() {
            assert!(decode_change(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        for byte in 0..=255u8 {
            let _ = decode_change(&[byte; 64]);
            let _ = decode_change(&[byte; 300]);
        }
    }
}
