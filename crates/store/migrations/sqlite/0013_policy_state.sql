-- Governance state that every runtime sharing the database must see.

-- Response-validation pauses belong to the policy whose validations observed the failures,
-- named by its source ("default policy", "file /etc/bursar/policy.toml", "wallet wal_...",
-- "grant gra_...", "session ses_..."), and apply only to the sessions that policy covers.
-- (endpoint_health kept one row per wallet and endpoint, which paused every session of the
-- wallet whatever its policy.) wallet_id and session_id name where the last result was seen.
CREATE TABLE endpoint_pauses (
    policy TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    consecutive_failures BIGINT NOT NULL,
    last_failure TEXT,
    paused_until_ms BIGINT,
    wallet_id TEXT,
    session_id TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (policy, endpoint)
);

-- Earlier rows are kept, as pauses of their wallet's policy.
INSERT INTO endpoint_pauses (policy, endpoint, consecutive_failures, last_failure,
    paused_until_ms, wallet_id, session_id, updated_at_ms)
SELECT 'wallet ' || wallet_id, endpoint, consecutive_failures, last_failure, paused_until_ms,
    wallet_id, NULL, updated_at_ms
FROM endpoint_health;

DROP TABLE endpoint_health;

CREATE INDEX endpoint_pauses_until ON endpoint_pauses (paused_until_ms);

-- Paid requests in a row that an endpoint answered with 402 again, per session and endpoint,
-- and when the last was: the backoff rule's state (it was kept in one process's memory).
CREATE TABLE endpoint_rejections (
    session_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    rejections BIGINT NOT NULL,
    last_rejection_ms BIGINT NOT NULL,
    PRIMARY KEY (session_id, endpoint)
);
