//! [`EmbeddedChain`]: validation, execution, mining, and the [`EvmChain`]/[`DevChain`] impls.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{Transaction as _, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use async_trait::async_trait;
use bursar_chain::{
    BlockInfo, CallOutcome, CallRequest, ChainError, DevChain, EvmChain, Fees, Log, LogEntry,
    LogFilter, Receipt,
};
use revm::context::result::{EVMError, ExecutionResult, InvalidTransaction, ResultAndState};
use revm::context::{BlockEnv, CfgEnv, Context, TxEnv};
use revm::context::{Evm, LocalContext};
use revm::context_interface::FrameStack;
use revm::context_interface::block::BlobExcessGasAndPrice;
use revm::handler::instructions::EthInstructions;
use revm::handler::{EthFrame, EthPrecompiles};
use revm::interpreter::interpreter::EthInterpreter;
use revm::primitives::KECCAK_EMPTY;
use revm::primitives::eip4844::BLOB_BASE_FEE_UPDATE_FRACTION_PRAGUE;
use revm::primitives::eip7825::TX_GAS_LIMIT_CAP;
use revm::{ExecuteEvm, MainContext};

use crate::journal::{DirLock, Journal, Opened};
use crate::state::{
    AccountChange, Change, Head, Ledger, View, World, block_hash, changes_from_evm,
};
use crate::{EmbeddedConfig, EmbeddedError, HARDFORK};

type Scratch = (FrameStack<EthFrame<EthInterpreter>>, LocalContext);

thread_local! {
    /// Per-thread revm buffers, reused across executions.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Poll interval reported to receipt waiters: receipts exist as soon as a send returns.
const RECEIPT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The embedded, in-process EVM chain. Cheap to share: clone the `Arc` that [`EmbeddedChain::open`]
/// returns.
pub struct EmbeddedChain {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain")
            .field("chain_id", &self.inner.chain_id)
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    chain_id: u64,
    base_fee: u64,
    block_gas_limit: u64,
    /// Gas available to `call` / `estimate_gas`.
    call_gas_limit: u64,
    coinbase: Address,
    data_dir: Option<PathBuf>,
    /// Configuration for mined transactions.
    tx_cfg: CfgEnv,
    /// Configuration for calls: no nonce check.
    call_cfg: CfgEnv,
    /// What readers see. Writers hold it only while applying an already-computed change.
    ledger: RwLock<Ledger>,
    /// Serializes changes: validation, execution and the journal write happen under it, so the
    /// ledger cannot change between execution and apply while readers keep reading.
    writer: Mutex<Writer>,
}

struct Writer {
    journal: Option<Journal>,
    /// Set when a journal write failed and the file may end in a partial record.
    broken: Option<String>,
    _lock: Option<DirLock>,
}

impl EmbeddedChain {
    /// Opens the chain: memory-only when `config.data_dir` is `None`, otherwise the journal in
    /// the data dir is replayed (or created, with the genesis allocations).
    pub fn open(config: EmbeddedConfig) -> Result<Arc<EmbeddedChain>, EmbeddedError> {
        if config.chain_id == 0 {
            return Err(EmbeddedError::InvalidConfig(
                "chain id must not be 0".into(),
            ));
        }
        if config.block_gas_limit < 21_000 {
            return Err(EmbeddedError::InvalidConfig(format!(
                "block gas limit {} is below the 21000 a plain transfer needs",
                config.block_gas_limit
            )));
        }
        let genesis = genesis_change(&config.genesis);
        let mut ledger = Ledger::default();
        let (journal, lock) = match &config.data_dir {
            None => {
                ledger.apply(genesis);
                (None, None)
            }
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let lock = DirLock::acquire(dir)?;
                let journal = match Journal::open(dir, config.chain_id, config.sync_writes)? {
                    Opened::Fresh(mut journal) => {
                        journal
                            .append(&genesis)
                            .map_err(|source| EmbeddedError::Io {
                                path: journal.path().to_path_buf(),
                                source,
                            })?;
                        ledger.apply(genesis);
                        journal
                    }
                    Opened::Existing(journal, changes) => {
                        let records = changes.len();
                        for change in changes {
                            ledger.apply(change);
                        }
                        tracing::info!(
                            path = %journal.path().display(),
                            records,
                            block = ledger.head.number,
                            "embedded chain restored"
                        );
                        journal
                    }
                };
                (Some(journal), Some(lock))
            }
        };

        let mut tx_cfg = CfgEnv::new_with_spec(HARDFORK);
        tx_cfg.chain_id = config.chain_id;
        tx_cfg.tx_chain_id_check = true;
        let mut call_cfg = tx_cfg.clone();
        call_cfg.disable_nonce_check = true;

        Ok(Arc::new(EmbeddedChain {
            inner: Arc::new(Inner {
                chain_id: config.chain_id,
                base_fee: config.base_fee_per_gas,
                block_gas_limit: config.block_gas_limit,
                call_gas_limit: config.block_gas_limit.min(TX_GAS_LIMIT_CAP),
                coinbase: config.coinbase,
                data_dir: config.data_dir,
                tx_cfg,
                call_cfg,
                ledger: RwLock::new(ledger),
                writer: Mutex::new(Writer {
                    journal,
                    broken: None,
                    _lock: lock,
                }),
            }),
        }))
    }

    /// A fresh memory-only chain with the default configuration.
    pub fn memory() -> Arc<EmbeddedChain> {
        // The default configuration is valid and touches no files, so this cannot fail.
        match EmbeddedChain::open(EmbeddedConfig::default()) {
            Ok(chain) => chain,
            Err(error) => unreachable!("the default embedded configuration is valid: {error}"),
        }
    }

    /// The data dir, when the chain persists.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.data_dir.as_deref()
    }

    /// The base fee every block charges, in wei per gas.
    pub fn base_fee_per_gas(&self) -> u64 {
        self.inner.base_fee
    }

    /// The latest block, without going through the async trait.
    pub fn head(&self) -> BlockInfo {
        let head = self.inner.read().head;
        BlockInfo {
            number: head.number,
            timestamp: head.timestamp,
        }
    }

    /// [`EvmChain::call`] without the async wrapper, for callers on a hot synchronous path.
    pub fn call_blocking(&self, request: &CallRequest) -> Result<CallOutcome, ChainError> {
        match self.inner.simulate(request)? {
            ExecutionResult::Success { output, .. } => Ok(CallOutcome::Success(output.into_data())),
            ExecutionResult::Revert { output, .. } => Ok(CallOutcome::Revert(output)),
            ExecutionResult::Halt { .. } => Ok(CallOutcome::Revert(Bytes::new())),
        }
    }

    /// [`EvmChain::send_raw_transaction`] without the async wrapper. Blocks for the journal's
    /// fsync when the chain persists.
    pub fn send_raw_transaction_blocking(&self, raw: &[u8]) -> Result<B256, ChainError> {
        self.inner.send_raw(raw)
    }

    /// Runs a state change on a blocking thread when it may wait for the disk.
    async fn mutate<T, F>(&self, f: F) -> Result<T, ChainError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, ChainError> + Send + 'static,
    {
        if self.inner.data_dir.is_none() || tokio::runtime::Handle::try_current().is_err() {
            return f(&self.inner);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| ChainError::Transport(format!("embedded chain task failed: {e}")))?
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Ledger> {
        self.ledger.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Computes a change from the current ledger, makes it durable, then makes it visible.
    fn commit<T>(
        &self,
        build: impl FnOnce(&Ledger) -> Result<(Change, T), ChainError>,
    ) -> Result<T, ChainError> {
        let mut writer = self.lock_writer();
        if let Some(reason) = &writer.broken {
            return Err(ChainError::Transport(reason.clone()));
        }
        // Only writer-lock holders change the ledger, so this view stays current until we apply.
        let (change, output) = build(&self.read())?;
        if let Some(journal) = writer.journal.as_mut()
            && let Err(error) = journal.append(&change)
        {
            let message = format!(
                "writing the chain journal {} failed: {error}",
                journal.path().display()
            );
            tracing::error!("{message}");
            if journal.is_broken() {
                writer.broken = Some(format!(
                    "{message}; the journal could not be restored, reopen the chain"
                ));
            }
            return Err(ChainError::Transport(message));
        }
        self.ledger
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(change);
        Ok(output)
    }

    /// The block environment for block `number`.
    fn block_env(&self, number: u64, timestamp: u64, base_fee: u64) -> BlockEnv {
        BlockEnv {
            number: U256::from(number),
            beneficiary: self.coinbase,
            timestamp: U256::from(timestamp),
            gas_limit: self.block_gas_limit,
            basefee: base_fee,
            difficulty: U256::ZERO,
            prevrandao: Some(block_hash(self.chain_id, number)),
            blob_excess_gas_and_price: Some(BlobExcessGasAndPrice::new(
                0,
                BLOB_BASE_FEE_UPDATE_FRACTION_PRAGUE,
            )),
            ..BlockEnv::default()
        }
    }

    fn execute(
        &self,
        world: &World,
        block: BlockEnv,
        cfg: CfgEnv,
        tx: TxEnv,
    ) -> Result<ResultAndState, EVMError<std::convert::Infallible>> {
        let view = View {
            world,
            chain_id: self.chain_id,
        };
        // revm's call frames (each with a 32 KiB stack) and its memory buffer are reused from
        // the previous execution on this thread instead of being allocated per call.
        let (frame_stack, local) = SCRATCH
            .with(|scratch| scratch.borrow_mut().take())
            .unwrap_or_else(|| (FrameStack::new_prealloc(8), LocalContext::default()));
        let ctx = Context::mainnet()
            .with_cfg(cfg)
            .with_block(block)
            .with_ref_db(view)
            .with_local(local);
        let mut evm = Evm {
            ctx,
            inspector: (),
            instruction: EthInstructions::new_mainnet_with_spec(HARDFORK),
            precompiles: EthPrecompiles::new(HARDFORK),
            frame_stack,
        };
        let result = evm.transact(tx);
        let Evm {
            ctx, frame_stack, ..
        } = evm;
        SCRATCH.with(|scratch| *scratch.borrow_mut() = Some((frame_stack, ctx.local)));
        result
    }

    /// Executes a call against the latest state in the block that would be mined next, without
    /// committing anything. Gas is free (price 0, base fee 0) and the nonce is not checked.
    fn simulate(&self, request: &CallRequest) -> Result<ExecutionResult, ChainError> {
        let ledger = self.read();
        let head = ledger.head;
        let block = self.block_env(head.number + 1, next_timestamp(&head), 0);
        let tx = TxEnv {
            tx_type: 0,
            caller: request.from.unwrap_or(Address::ZERO),
            gas_limit: self.call_gas_limit,
            gas_price: 0,
            kind: request.to.map_or(TxKind::Create, TxKind::Call),
            value: request.value,
            data: request.data.clone(),
            nonce: 0,
            chain_id: None,
            ..TxEnv::default()
        };
        match self.execute(&ledger.world, block, self.call_cfg.clone(), tx) {
            Ok(outcome) => Ok(outcome.result),
            Err(EVMError::Transaction(invalid)) => {
                Err(ChainError::Rejected(format!("call refused: {invalid}")))
            }
            Err(other) => Err(ChainError::Transport(format!(
                "embedded EVM failed: {other}"
            ))),
        }
    }

    fn send_raw(&self, raw: &[u8]) -> Result<B256, ChainError> {
        let envelope = TxEnvelope::decode_2718_exact(raw)
            .map_err(|e| ChainError::Rejected(format!("malformed transaction: {e}")))?;
        let hash = *envelope.tx_hash();
        let tx = self.validate_static(&envelope)?;
        let sender = envelope
            .recover_signer()
            .map_err(|e| ChainError::Rejected(format!("invalid transaction signature: {e}")))?;
        self.commit(|ledger| {
            let (balance, account_nonce) = ledger.balance_and_nonce(&sender);
            if tx.nonce < account_nonce {
                return Err(ChainError::NonceTooLow(format!(
                    "nonce {} of {sender} is below the account's next nonce {account_nonce}",
                    tx.nonce
                )));
            }
            if tx.nonce > account_nonce {
                return Err(ChainError::Rejected(format!(
                    "nonce gap: transaction nonce {} but the account's next nonce is {account_nonce} for {sender} \
                     (the embedded chain has no pending pool)",
                    tx.nonce
                )));
            }
            let cost = U256::from(tx.gas_limit)
                .checked_mul(U256::from(tx.gas_price))
                .and_then(|gas| gas.checked_add(tx.value))
                .ok_or_else(|| ChainError::Rejected("gas * price + value overflows".into()))?;
            if cost > balance {
                return Err(ChainError::Rejected(format!(
                    "insufficient funds for gas * price + value: {sender} has {balance} wei, needs {cost} wei"
                )));
            }
            let head = ledger.head;
            let number = head.number + 1;
            let timestamp = next_timestamp(&head);
            let block = self.block_env(number, timestamp, self.base_fee);
            let effective_gas_price = match tx.gas_priority_fee {
                Some(priority) => tx.gas_price.min(u128::from(self.base_fee).saturating_add(priority)),
                None => tx.gas_price,
            };
            let contract_address = match tx.kind {
                TxKind::Create => Some(sender.create(tx.nonce)),
                TxKind::Call(_) => None,
            };
            let tx = TxEnv { caller: sender, ..tx };
            let outcome = match self.execute(&ledger.world, block, self.tx_cfg.clone(), tx) {
                Ok(outcome) => outcome,
                Err(EVMError::Transaction(InvalidTransaction::NonceTooLow { tx, state })) => {
                    return Err(ChainError::NonceTooLow(format!("nonce {tx} is below the account's {state}")));
                }
                Err(EVMError::Transaction(invalid)) => return Err(ChainError::Rejected(invalid.to_string())),
                Err(other) => return Err(ChainError::Transport(format!("embedded EVM failed: {other}"))),
            };
            let result = outcome.result;
            let receipt = Receipt {
                transaction_hash: hash,
                success: result.is_success(),
                block_number: number,
                gas_used: result.tx_gas_used(),
                effective_gas_price,
                contract_address,
                logs: result
                    .logs()
                    .iter()
                    .map(|log| Log { address: log.address, topics: log.data.topics().to_vec(), data: log.data.data.clone() })
                    .collect(),
            };
            let (accounts, code) = changes_from_evm(&ledger.world, outcome.state);
            let change = Change {
                head: Head { number, timestamp, time_offset: head.time_offset },
                accounts,
                code,
                receipts: vec![receipt],
            };
            Ok((change, hash))
        })
    }

    /// Checks that need no state: type, chain id, gas limit and fee caps. Returns the revm
    /// transaction without its caller.
    fn validate_static(&self, envelope: &TxEnvelope) -> Result<TxEnv, ChainError> {
        let tx_type = envelope.tx_type() as u8;
        let (gas_priority_fee, access_list) = match envelope {
            TxEnvelope::Legacy(_) => (None, Default::default()),
            TxEnvelope::Eip2930(signed) => (None, signed.tx().access_list.clone()),
            TxEnvelope::Eip1559(signed) => (
                Some(signed.tx().max_priority_fee_per_gas),
                signed.tx().access_list.clone(),
            ),
            _ => {
                return Err(ChainError::Rejected(format!(
                    "transaction type {tx_type} is not supported (legacy, EIP-2930 and EIP-1559 are)"
                )));
            }
        };
        let chain_id = envelope.chain_id().ok_or_else(|| {
            ChainError::Rejected("unprotected transaction (no EIP-155 chain id) refused".into())
        })?;
        if chain_id != self.chain_id {
            return Err(ChainError::Rejected(format!(
                "wrong chain id: transaction is for chain {chain_id}, this chain is {}",
                self.chain_id
            )));
        }
        let gas_limit = envelope.gas_limit();
        let gas_cap = self.block_gas_limit.min(TX_GAS_LIMIT_CAP);
        if gas_limit > gas_cap {
            return Err(ChainError::Rejected(format!(
                "gas limit {gas_limit} exceeds the block gas limit {} (per-transaction cap {TX_GAS_LIMIT_CAP})",
                self.block_gas_limit
            )));
        }
        let max_fee = envelope.max_fee_per_gas();
        if max_fee < u128::from(self.base_fee) {
            return Err(ChainError::Rejected(format!(
                "max fee per gas {max_fee} wei is below the base fee {} wei",
                self.base_fee
            )));
        }
        if let Some(priority) = gas_priority_fee
            && priority > max_fee
        {
            return Err(ChainError::Rejected(format!(
                "max priority fee per gas {priority} exceeds max fee per gas {max_fee}"
            )));
        }
        Ok(TxEnv {
            tx_type,
            caller: Address::ZERO,
            gas_limit,
            gas_price: max_fee,
            kind: envelope.kind(),
            value: envelope.value(),
            data: envelope.input().clone(),
            nonce: envelope.nonce(),
            chain_id: Some(chain_id),
            access_list,
            gas_priority_fee,
            ..TxEnv::default()
        })
    }

    fn mine(&self, extra_seconds: u64) -> Result<(), ChainError> {
        self.commit(|ledger| {
            let head = ledger.head;
            let time_offset = head.time_offset.saturating_add(extra_seconds);
            let timestamp = (now_seconds().saturating_add(time_offset))
                .max(head.timestamp.saturating_add(extra_seconds));
            let change = Change {
                head: Head {
                    number: head.number + 1,
                    timestamp,
                    time_offset,
                },
                ..Change::default()
            };
            Ok((change, ()))
        })
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The next block's timestamp: the wall clock plus the time-travel offset, never before the parent.
fn next_timestamp(head: &Head) -> u64 {
    now_seconds()
        .saturating_add(head.time_offset)
        .max(head.timestamp)
}

/// Block 0: the genesis allocations (the last entry wins for a repeated address).
fn genesis_change(allocations: &[(Address, U256)]) -> Change {
    let mut accounts: Vec<AccountChange> = Vec::with_capacity(allocations.len());
    for (address, balance) in allocations {
        accounts.retain(|a| a.address != *address);
        accounts.push(AccountChange {
            address: *address,
            removed: balance.is_zero(),
            storage_reset: false,
            balance: *balance,
            nonce: 0,
            code_hash: KECCAK_EMPTY,
            slots: Vec::new(),
        });
    }
    accounts.sort_by_key(|a| a.address);
    Change {
        head: Head {
            number: 0,
            timestamp: now_seconds(),
            time_offset: 0,
        },
        accounts,
        ..Change::default()
    }
}

#[async_trait]
impl EvmChain for EmbeddedChain {
    fn chain_id(&self) -> u64 {
        self.inner.chain_id
    }

    async fn latest_block(&self) -> Result<BlockInfo, ChainError> {
        Ok(self.head())
    }

    async fn call(&self, request: CallRequest) -> Result<CallOutcome, ChainError> {
        self.call_blocking(&request)
    }

    async fn estimate_gas(&self, request: CallRequest) -> Result<u64, ChainError> {
        match self.inner.simulate(&request)? {
            ExecutionResult::Success { gas, .. } => {
                Ok(gas.tx_gas_used().max(gas.total_gas_spent()))
            }
            ExecutionResult::Revert { output, .. } => {
                Err(ChainError::Reverted(format!("{output}")))
            }
            ExecutionResult::Halt { reason, .. } => {
                Err(ChainError::Reverted(format!("halted: {reason:?}")))
            }
        }
    }

    async fn transaction_count(&self, address: Address) -> Result<u64, ChainError> {
        Ok(self.inner.read().balance_and_nonce(&address).1)
    }

    async fn mined_transaction_count(&self, address: Address) -> Result<u64, ChainError> {
        // Every accepted transaction is mined at once: there is no pending state.
        Ok(self.inner.read().balance_and_nonce(&address).1)
    }

    async fn logs(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, ChainError> {
        let ledger = self.inner.read();
        let Some(emitted) = ledger.log_emitters.get(&filter.address) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for hash in emitted {
            let Some(receipt) = ledger.receipts.get(hash) else {
                continue;
            };
            if receipt.block_number < filter.from_block || receipt.block_number > filter.to_block {
                continue;
            }
            entries.extend(
                receipt
                    .logs
                    .iter()
                    .filter(|log| filter.matches(log))
                    .map(|log| LogEntry {
                        log: log.clone(),
                        transaction_hash: receipt.transaction_hash,
                        block_number: receipt.block_number,
                    }),
            );
        }
        Ok(entries)
    }

    async fn native_balance(&self, address: Address) -> Result<U256, ChainError> {
        Ok(self.inner.read().balance_and_nonce(&address).0)
    }

    async fn code(&self, address: Address) -> Result<Bytes, ChainError> {
        let ledger = self.inner.read();
        let code = ledger
            .world
            .accounts
            .get(&address)
            .and_then(|account| ledger.world.code.get(&account.code_hash))
            .map(|code| code.original_bytes())
            .unwrap_or_default();
        Ok(code)
    }

    async fn fees(&self) -> Result<Fees, ChainError> {
        // The base fee is fixed and blocks are never full, so no tip is needed; twice the base
        // fee leaves room should a future version let it move.
        Ok(Fees {
            max_fee_per_gas: u128::from(self.inner.base_fee) * 2,
            max_priority_fee_per_gas: 0,
        })
    }

    async fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, ChainError> {
        self.mutate(move |inner| inner.send_raw(&raw)).await
    }

    async fn receipt(&self, hash: B256) -> Result<Option<Receipt>, ChainError> {
        Ok(self.inner.read().receipts.get(&hash).cloned())
    }

    fn receipt_poll_interval(&self) -> Duration {
        RECEIPT_POLL_INTERVAL
    }
}

#[async_trait]
impl DevChain for EmbeddedChain {
    async fn set_native_balance(&self, address: Address, wei: U256) -> Result<(), ChainError> {
        self.mutate(move |inner| {
            inner.commit(|ledger| {
                let change = Change {
                    head: ledger.head,
                    accounts: vec![ledger.balance_change(address, wei)],
                    ..Change::default()
                };
                Ok((change, ()))
            })
        })
        .await
    }

    async fn increase_time(&self, seconds: u64) -> Result<(), ChainError> {
        self.mutate(move |inner| inner.mine(seconds)).await
    }

    async fn mine(&self) -> Result<(), ChainError> {
        self.mutate(|inner| inner.mine(0)).await
    }
}
