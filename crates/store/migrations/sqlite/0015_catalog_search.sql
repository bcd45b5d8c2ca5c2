-- Catalog search (CatalogStore::search) without reading every listing. SQLite keeps no statistics
-- here, so the indexes carry what the searches test and each search is answered from one of them:
-- - catalog_listings_order is the order of a page (most settlements, then last seen, then id):
--   a page walks it, testing the kind, the words and the age on the index itself, and reads only
--   the rows it keeps;
-- - catalog_listings_seen_search answers the counts (and the pruning) without the rows;
-- - catalog_terms_offer and catalog_terms_payee give the listings on some terms (network, asset,
--   price; payee) at once, and catalog_listings_id_seen tests those listings (age, kind, settled)
--   without their rows.
DROP INDEX catalog_listings_rank;
DROP INDEX catalog_listings_seen;
DROP INDEX catalog_terms_pay_to;
CREATE INDEX catalog_listings_order
    ON catalog_listings (settled_count DESC, last_seen_ms DESC, id, kind, search_text);
CREATE INDEX catalog_listings_seen_search
    ON catalog_listings (last_seen_ms, settled_count, kind, search_text);
CREATE INDEX catalog_listings_id_seen
    ON catalog_listings (id, last_seen_ms, settled_count, kind);
CREATE INDEX catalog_terms_offer ON catalog_terms (network, asset, amount_key, listing_id);
CREATE INDEX catalog_terms_payee ON catalog_terms (pay_to, listing_id);
