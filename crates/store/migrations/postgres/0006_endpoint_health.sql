-- Response validation per wallet and endpoint: consecutive failed validations of paid responses,
-- and the pause they caused (payments to the endpoint are refused until paused_until_ms, or
-- until an operator lifts it).
CREATE TABLE endpoint_health (
    wallet_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    consecutive_failures BIGINT NOT NULL,
    last_failure TEXT,
    paused_until_ms BIGINT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (wallet_id, endpoint)
);
