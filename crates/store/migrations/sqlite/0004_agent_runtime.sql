-- The agent runtime: wallets the agent never sees, grants, payment sessions, two-phase transfers
-- (reserve, then post or void) and the append-only ledger of everything that happened.
-- Addresses and nonces are lowercase 0x hex; amounts are decimal strings of atomic units;
-- timestamps are unix milliseconds unless a name says otherwise.

-- A signing key, only ever stored encrypted (Web3 Secret Storage v3 JSON).
CREATE TABLE wallets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    keystore TEXT NOT NULL,
    idempotency_key TEXT,
    request_digest TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CONSTRAINT wallets_name_unique UNIQUE (name),
    CONSTRAINT wallets_address_unique UNIQUE (address),
    CONSTRAINT wallets_idempotency_unique UNIQUE (idempotency_key)
);

-- The wallet owner's time-bound authorization for one named agent to spend from a wallet.
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    wallet_id TEXT NOT NULL REFERENCES wallets (id),
    agent TEXT NOT NULL,
    idempotency_key TEXT,
    request_digest TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    revoke_reason TEXT,
    CONSTRAINT grants_idempotency_unique UNIQUE (idempotency_key)
);

CREATE INDEX grants_wallet ON grants (wallet_id);

-- One agent run under a grant, with a budget. `reserved` + `posted` never exceed `max_spend`.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL REFERENCES grants (id),
    wallet_id TEXT NOT NULL REFERENCES wallets (id),
    agent TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    currency TEXT NOT NULL,
    max_spend TEXT NOT NULL,
    reserved TEXT NOT NULL,
    posted TEXT NOT NULL,
    client_token TEXT,
    request_digest TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    closed_at_ms BIGINT,
    lock_version BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT sessions_client_token_unique UNIQUE (grant_id, client_token)
);

-- A pending transfer: the amount of one signed EIP-3009 authorization, held against a session
-- until the chain shows it settled (posted) or unusable (voided). Each resolves exactly once.
CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    grant_id TEXT NOT NULL,
    wallet_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    amount TEXT NOT NULL,
    nonce TEXT NOT NULL,
    valid_before_s BIGINT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'posted', 'voided')),
    tx_hash TEXT,
    void_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT,
    CONSTRAINT transfers_authorization_unique UNIQUE (network, asset, payer, nonce)
);

CREATE INDEX transfers_pending ON transfers (created_at_ms) WHERE state = 'pending';
CREATE INDEX transfers_session ON transfers (session_id);

-- Operator API keys for the runtime's admin endpoints; only SHA-256 digests are stored.
CREATE TABLE operator_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    CONSTRAINT operator_keys_digest_unique UNIQUE (digest)
);

-- Runtime settings shared by every process on this database (for example the session-token key,
-- stored encrypted).
CREATE TABLE runtime_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every reservation, post, void and denial, in order. Rows are never changed or deleted.
CREATE TABLE ledger_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('reserve', 'post', 'void', 'deny')),
    transfer_id TEXT,
    session_id TEXT,
    grant_id TEXT,
    wallet_id TEXT,
    agent TEXT,
    network TEXT,
    asset TEXT,
    amount TEXT,
    payee TEXT,
    resource TEXT,
    tx_hash TEXT,
    reason TEXT,
    at_ms BIGINT NOT NULL
);

CREATE UNIQUE INDEX ledger_entries_once ON ledger_entries (transfer_id, kind)
    WHERE transfer_id IS NOT NULL;
CREATE INDEX ledger_entries_session ON ledger_entries (session_id);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;
