-- Budget alerts: one row per budget and threshold (per window period for caps over rolling
-- windows), written with an 'alert' ledger entry in the same transaction, and the state of its
-- webhook delivery (an outbox: rows are claimed with a lease, retried with backoff).
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    -- Names the budget: session:<id>, or wallet:/agent: ... with the window period and bucket.
    alert_key TEXT NOT NULL,
    threshold BIGINT NOT NULL CHECK (threshold >= 1 AND threshold <= 100),
    budget TEXT NOT NULL,
    session_id TEXT,
    grant_id TEXT,
    wallet_id TEXT,
    agent TEXT,
    transfer_id TEXT,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    currency TEXT NOT NULL,
    used TEXT NOT NULL,
    cap TEXT NOT NULL,
    window_ms BIGINT,
    window_start_ms BIGINT,
    reason TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    lease_holder TEXT,
    lease_until_ms BIGINT,
    last_error TEXT,
    last_attempt_at_ms BIGINT,
    delivered_at_ms BIGINT,
    CONSTRAINT alerts_once UNIQUE (alert_key, threshold)
);

CREATE INDEX alerts_due ON alerts (state, next_attempt_at_ms);
CREATE INDEX alerts_created ON alerts (created_at_ms);
