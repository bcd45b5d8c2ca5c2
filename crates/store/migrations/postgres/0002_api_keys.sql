-- Facilitator API keys, one or more per seller. Only the SHA-256 digest of a key is stored
-- (lowercase hex); the key itself is shown once, when created. Timestamps are unix milliseconds.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    seller TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    requests_per_second BIGINT NOT NULL CHECK (requests_per_second > 0),
    burst BIGINT NOT NULL CHECK (burst > 0),
    daily_settlements_max BIGINT CHECK (daily_settlements_max IS NULL OR daily_settlements_max >= 0),
    CONSTRAINT api_keys_digest_unique UNIQUE (digest)
);

-- Settlements requested per key per UTC day (days since the unix epoch), for daily quotas.
CREATE TABLE api_key_usage (
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    day BIGINT NOT NULL,
    settlements BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
