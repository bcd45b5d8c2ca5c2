-- One row per EIP-3009 authorization the facilitator has taken on.
-- Addresses and the nonce are lowercase 0x hex; timestamps are unix milliseconds.
CREATE TABLE settlements (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('received', 'submitted', 'confirmed', 'failed')),
    tx_hash TEXT,
    valid_before_s BIGINT,
    response TEXT,
    error_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    CONSTRAINT settlements_authorization_unique UNIQUE (network, asset, payer, nonce)
);

CREATE INDEX settlements_submitted ON settlements (created_at_ms) WHERE state = 'submitted';
