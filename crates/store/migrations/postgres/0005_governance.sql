-- Governance: policies attached to wallets, grants and sessions; the decision trace (every allow
-- and deny with the rules that ran, hash-chained so an edit is detectable); and a lock column on
-- wallets so caps over rolling windows are checked atomically across sessions and processes.

-- A policy document (TOML) attached to one wallet, grant or session.
CREATE TABLE policies (
    scope TEXT NOT NULL CHECK (scope IN ('wallet', 'grant', 'session')),
    subject_id TEXT NOT NULL,
    document TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, subject_id)
);

ALTER TABLE wallets ADD COLUMN lock_version BIGINT NOT NULL DEFAULT 0;

-- The head of the decision chain: one row, updated with every decision, so writers serialize.
CREATE TABLE decision_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL
);

INSERT INTO decision_chain (id, seq, head_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- One row per payment decision. hash = SHA-256 over prev_hash and the row's canonical content.
CREATE TABLE decisions (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    session_id TEXT,
    wallet_id TEXT,
    agent TEXT,
    transfer_id TEXT,
    resource TEXT,
    payee TEXT,
    amount TEXT,
    allowed BOOLEAN NOT NULL,
    reason TEXT,
    rules TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    CONSTRAINT decisions_id_unique UNIQUE (id)
);

CREATE INDEX decisions_transfer ON decisions (transfer_id);
CREATE INDEX decisions_session ON decisions (session_id);
