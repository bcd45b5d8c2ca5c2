-- The ledger also records budget alerts and compensation claims. SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt with its rows, indexes and append-only triggers.
CREATE TABLE ledger_entries_next (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('reserve', 'post', 'void', 'deny', 'alert', 'compensate')),
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

INSERT INTO ledger_entries_next (seq, kind, transfer_id, session_id, grant_id, wallet_id, agent,
        network, asset, amount, payee, resource, tx_hash, reason, at_ms)
    SELECT seq, kind, transfer_id, session_id, grant_id, wallet_id, agent,
        network, asset, amount, payee, resource, tx_hash, reason, at_ms
    FROM ledger_entries ORDER BY seq;

DROP TRIGGER ledger_entries_no_update;
DROP TRIGGER ledger_entries_no_delete;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_next RENAME TO ledger_entries;

-- One reserve/post/void/deny/compensate per transfer; a reservation may cross several alert
-- thresholds at once, so alerts are not unique per transfer.
CREATE UNIQUE INDEX ledger_entries_once ON ledger_entries (transfer_id, kind)
    WHERE transfer_id IS NOT NULL AND kind <> 'alert';
CREATE INDEX ledger_entries_session ON ledger_entries (session_id);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;
