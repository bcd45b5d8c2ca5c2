-- The endpoint (scheme://host[:port]/path) each transfer paid, so a session's history with one
-- endpoint is read through an index instead of every transfer of the session.
ALTER TABLE transfers ADD COLUMN endpoint TEXT;

-- Earlier rows: their resource is a normalized URL, so the endpoint is it without the query
-- string or fragment.
UPDATE transfers SET endpoint = CASE
    WHEN instr(resource, '?') > 0 THEN substr(resource, 1, instr(resource, '?') - 1)
    WHEN instr(resource, '#') > 0 THEN substr(resource, 1, instr(resource, '#') - 1)
    ELSE resource
END;

CREATE INDEX transfers_session_endpoint ON transfers (session_id, endpoint, created_at_ms);
