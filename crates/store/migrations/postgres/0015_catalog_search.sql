-- Catalog search (CatalogStore::search) without reading every listing:
-- - catalog_listings_order is the order of a page (most settlements, then last seen, then id):
--   a page's ids are found on it and only the rows kept are read;
-- - catalog_listings_words, a trigram index, finds the listings whose search text contains the
--   words (LIKE '%word%') without reading the others, when the pg_trgm extension can be had
--   (it is a trusted extension, so the database's owner may create it where the contrib modules
--   are installed); without it searches by words read the listings instead, and still work;
-- - catalog_terms_offer and catalog_terms_payee give the listings on some terms (network, asset,
--   price; payee) at once.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm is not available (%); catalog word searches read the listings', SQLERRM;
END
$$;
DROP INDEX catalog_listings_rank;
DROP INDEX catalog_terms_pay_to;
CREATE INDEX catalog_listings_order ON catalog_listings (settled_count DESC, last_seen_ms DESC, id);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX catalog_listings_words ON catalog_listings USING gin (search_text gin_trgm_ops);
    END IF;
END
$$;
CREATE INDEX catalog_terms_offer ON catalog_terms (network, asset, amount_key, listing_id);
CREATE INDEX catalog_terms_payee ON catalog_terms (pay_to, listing_id);
