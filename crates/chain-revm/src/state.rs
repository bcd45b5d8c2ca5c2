//! The world state (accounts, storage, code), the chain head, receipts, and the state changes
//! one block makes.
//!
//! Everything that changes the chain goes through [`Ledger::apply`] with a [`Change`], both live
//! and when the journal is replayed on open, so a restart rebuilds exactly the state that was
//! served before it.

use std::convert::Infallible;

use alloy_primitives::map::{AddressHashMap, B256HashMap, HashMap};
use alloy_primitives::{Address, B256, U256, keccak256};
use bursar_chain::Receipt;
use revm::DatabaseRef;
use revm::bytecode::Bytecode;
use revm::primitives::KECCAK_EMPTY;
use revm::state::{AccountInfo, EvmState};

/// The head of the chain plus the clock offset that time travel added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Head {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// Seconds added to the wall clock by `increase_time`.
    pub time_offset: u64,
}

/// One account as stored: code lives in [`World::code`], keyed by hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredAccount {
    pub balance: U256,
    pub nonce: u64,
    pub code_hash: B256,
    /// Only non-zero slots are kept; a missing slot reads as zero.
    pub storage: HashMap<U256, U256>,
}

impl StoredAccount {
    fn empty() -> Self {
        StoredAccount {
            code_hash: KECCAK_EMPTY,
            ..Default::default()
        }
    }
}

/// Accounts and contract code.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub accounts: AddressHashMap<StoredAccount>,
    pub code: B256HashMap<Bytecode>,
}

/// The new values of one account after a block. Storage slots not listed are unchanged (or, with
/// `storage_reset`, zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountChange {
    pub address: Address,
    /// The account no longer exists (self-destructed or emptied, EIP-161).
    pub removed: bool,
    /// All storage was cleared before `slots` apply (a contract was created at this address).
    pub storage_reset: bool,
    pub balance: U256,
    pub nonce: u64,
    pub code_hash: B256,
    pub slots: Vec<(U256, U256)>,
}

/// Everything one block (or one dev-control operation) changes: the new head, account changes,
/// new contract code, and receipts. This is also exactly what the journal stores.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change {
    pub head: Head,
    pub accounts: Vec<AccountChange>,
    pub code: Vec<Bytecode>,
    pub receipts: Vec<Receipt>,
}

/// The chain as readers see it.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub world: World,
    pub head: Head,
    pub receipts: B256HashMap<Receipt>,
    /// The transactions that emitted logs from each address, in block order: what
    /// `eth_getLogs` reads without scanning every receipt.
    pub log_emitters: std::collections::HashMap<Address, Vec<B256>>,
}

impl Ledger {
    /// Applies a block's changes.
    pub fn apply(&mut self, change: Change) {
        for code in change.code {
            let hash = code.hash_slow();
            self.world.code.entry(hash).or_insert(code);
        }
        for account in change.accounts {
            if account.removed {
                self.world.accounts.remove(&account.address);
                continue;
            }
            let stored = self
                .world
                .accounts
                .entry(account.address)
                .or_insert_with(StoredAccount::empty);
            if account.storage_reset {
                stored.storage.clear();
            }
            stored.balance = account.balance;
            stored.nonce = account.nonce;
            stored.code_hash = account.code_hash;
            for (key, value) in account.slots {
                if value.is_zero() {
                    stored.storage.remove(&key);
                } else {
                    stored.storage.insert(key, value);
                }
            }
        }
        for receipt in change.receipts {
            let mut emitters: Vec<Address> = receipt.logs.iter().map(|log| log.address).collect();
            emitters.sort_unstable();
            emitters.dedup();
            for emitter in emitters {
                self.log_emitters
                    .entry(emitter)
                    .or_default()
                    .push(receipt.transaction_hash);
            }
            self.receipts.insert(receipt.transaction_hash, receipt);
        }
        self.head = change.head;
    }

    /// An account's balance and nonce (zero for unknown accounts).
    pub fn balance_and_nonce(&self, address: &Address) -> (U256, u64) {
        self.world
            .accounts
            .get(address)
            .map_or((U256::ZERO, 0), |a| (a.balance, a.nonce))
    }

    /// A change that sets one account's balance, keeping everything else.
    pub fn balance_change(&self, address: Address, balance: U256) -> AccountChange {
        let (nonce, code_hash) = self
            .world
            .accounts
            .get(&address)
            .map_or((0, KECCAK_EMPTY), |a| (a.nonce, a.code_hash));
        AccountChange {
            address,
            removed: balance.is_zero() && nonce == 0 && code_hash == KECCAK_EMPTY,
            storage_reset: false,
            balance,
            nonce,
            code_hash,
            slots: Vec::new(),
        }
    }
}

/// Converts revm's post-execution state into account changes and new code, keeping only what
/// the transaction touched. Touched accounts left empty are removed (EIP-161).
pub(crate) fn changes_from_evm(
    world: &World,
    state: EvmState,
) -> (Vec<AccountChange>, Vec<Bytecode>) {
    let mut accounts = Vec::with_capacity(state.len());
    let mut code = Vec::new();
    for (address, account) in state {
        if !account.is_touched() {
            continue;
        }
        let info = &account.info;
        let code_hash = if info.code_hash.is_zero() {
            KECCAK_EMPTY
        } else {
            info.code_hash
        };
        let removed = account.is_selfdestructed()
            || (info.balance.is_zero() && info.nonce == 0 && code_hash == KECCAK_EMPTY);
        if removed && !world.accounts.contains_key(&address) {
            // Touched but never existed (e.g. a coinbase that earned no tip): nothing to record.
            continue;
        }
        if !removed
            && code_hash != KECCAK_EMPTY
            && !world.code.contains_key(&code_hash)
            && let Some(bytecode) = &info.code
            && !bytecode.is_empty()
        {
            code.push(bytecode.clone());
        }
        let storage_reset = account.is_created();
        let slots = if removed {
            Vec::new()
        } else {
            account
                .storage
                .iter()
                .filter(|(_, slot)| storage_reset || slot.is_changed())
                .map(|(key, slot)| (*key, slot.present_value()))
                .collect()
        };
        accounts.push(AccountChange {
            address,
            removed,
            storage_reset,
            balance: info.balance,
            nonce: info.nonce,
            code_hash,
            slots,
        });
    }
    // Deterministic journal records regardless of hash map order.
    accounts.sort_by_key(|a| a.address);
    (accounts, code)
}

/// The synthetic hash of block `number` on chain `chain_id` (BLOCKHASH and PREVRANDAO source).
/// The embedded chain has no block headers to hash; this value is stable across restarts.
pub(crate) fn block_hash(chain_id: u64, number: u64) -> B256 {
    let mut preimage = [0u8; 24];
    preimage[..8].copy_from_slice(b"bursar/b");
    preimage[8..16].copy_from_slice(&chain_id.to_be_bytes());
    preimage[16..].copy_from_slice(&number.to_be_bytes());
    keccak256(preimage)
}

/// A read-only view of the world for revm. Borrowing (not cloning) the world keeps calls cheap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub world: &'a World,
    pub chain_id: u64,
}

impl DatabaseRef for View<'_> {
    type Error = Infallible;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, Self::Error> {
        Ok(self.world.accounts.get(&address).map(|account| {
            let code = if account.code_hash == KECCAK_EMPTY {
                Bytecode::default()
            } else {
                self.world
                    .code
                    .get(&account.code_hash)
                    .cloned()
                    .unwrap_or_default()
            };
            AccountInfo::new(account.balance, account.nonce, account.code_hash, code)
        }))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, Self::Error> {
        Ok(self.world.code.get(&code_hash).cloned().unwrap_or_default())
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, Self::Error> {
        Ok(self
            .world
            .accounts
            .get(&address)
            .and_then(|account| account.storage.get(&index).copied())
            .unwrap_or(U256::ZERO))
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, Self::Error> {
        Ok(block_hash(self.chain_id, number))
    }
}
