-- The discovery catalog: resources the facilitator saw paid for, with the bazaar extension their
-- sellers published, and the facts their reputation is computed from. Timestamps are unix
-- milliseconds; addresses lowercase 0x hex; amounts decimal text of atomic units.

-- One row per listed resource: (resource URL, kind, method or tool name), keyed by a digest of
-- the three. The counters are facts the facilitator saw (verified, settled, failed settlements,
-- distinct payers, terms changes) or that payers reported about their own payments.
CREATE TABLE catalog_listings (
    id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    kind TEXT NOT NULL,
    operation TEXT NOT NULL,
    route_template TEXT,
    x402_version BIGINT NOT NULL,
    description TEXT,
    mime_type TEXT,
    service_name TEXT,
    tags TEXT NOT NULL,
    extension TEXT NOT NULL,
    search_text TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    last_settled_ms BIGINT,
    verified_count BIGINT NOT NULL DEFAULT 0,
    settled_count BIGINT NOT NULL DEFAULT 0,
    settle_failures BIGINT NOT NULL DEFAULT 0,
    distinct_payers BIGINT NOT NULL DEFAULT 0,
    price_changes BIGINT NOT NULL DEFAULT 0,
    payee_changes BIGINT NOT NULL DEFAULT 0,
    validation_failures BIGINT NOT NULL DEFAULT 0,
    paid_then_required BIGINT NOT NULL DEFAULT 0,
    compensations BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX catalog_listings_rank ON catalog_listings (settled_count DESC, last_seen_ms DESC);
CREATE INDEX catalog_listings_seen ON catalog_listings (last_seen_ms);

-- The terms a listing is offered on, one row per (scheme, network, asset): the latest price and
-- payee seen. amount_key is the amount zero-padded to 78 digits, so text comparison is numeric.
CREATE TABLE catalog_terms (
    listing_id TEXT NOT NULL,
    scheme TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    pay_to TEXT NOT NULL,
    amount TEXT NOT NULL,
    amount_key TEXT NOT NULL,
    accepted TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (listing_id, scheme, network, asset)
);
CREATE INDEX catalog_terms_pay_to ON catalog_terms (pay_to);

-- Every change of a listing's terms (price or payee), for its history.
CREATE TABLE catalog_term_changes (
    listing_id TEXT NOT NULL,
    changed_at_ms BIGINT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    old_amount TEXT NOT NULL,
    new_amount TEXT NOT NULL,
    old_pay_to TEXT NOT NULL,
    new_pay_to TEXT NOT NULL
);
CREATE INDEX catalog_term_changes_listing ON catalog_term_changes (listing_id, changed_at_ms);

-- Each payment (EIP-3009 authorization) counted for a listing, once: its outcome so far.
CREATE TABLE catalog_payments (
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    listing_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (network, asset, payer, nonce)
);
CREATE INDEX catalog_payments_listing ON catalog_payments (listing_id);

-- The distinct payers of each listing's settled payments.
CREATE TABLE catalog_payers (
    listing_id TEXT NOT NULL,
    payer TEXT NOT NULL,
    PRIMARY KEY (listing_id, payer)
);

-- Problems payers reported about their own settled payments, at most one of each kind each.
CREATE TABLE catalog_reports (
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    kind TEXT NOT NULL,
    listing_id TEXT NOT NULL,
    reported_at_ms BIGINT NOT NULL,
    PRIMARY KEY (network, asset, payer, nonce, kind)
);
