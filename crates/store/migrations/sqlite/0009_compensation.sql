-- Compensation for failed steps: the evidence of every paid request (kept from the moment it was
-- paid, for refund claims) and one compensation record per transfer of a failed step or session.

-- What was asked, what came back and what was signed, per transfer. `request`, `response`,
-- `receipt` and `authorization` are JSON documents written by the runtime (bodies capped, with the
-- SHA-256 of the whole body; credentials removed from headers).
CREATE TABLE payment_evidence (
    transfer_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    step TEXT,
    request TEXT NOT NULL,
    response TEXT,
    error TEXT,
    receipt TEXT,
    authorization_doc TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);

CREATE INDEX payment_evidence_session ON payment_evidence (session_id, step);

-- One per transfer. `cancelling` (with the cancel transaction recorded before it is broadcast)
-- and `cancel_failed` may still change; `cancelled`, `refund_claim` and `nothing_spent` are final.
CREATE TABLE compensations (
    id TEXT PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    step TEXT,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN
        ('cancelling', 'cancelled', 'refund_claim', 'nothing_spent', 'cancel_failed')),
    amount TEXT NOT NULL,
    cancel_tx_hash TEXT,
    settle_tx_hash TEXT,
    message TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    CONSTRAINT compensations_transfer_unique UNIQUE (transfer_id)
);

CREATE INDEX compensations_session ON compensations (session_id);
