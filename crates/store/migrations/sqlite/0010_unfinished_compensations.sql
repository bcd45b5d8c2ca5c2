-- The resolver finishes compensations waiting on the chain: find them without a scan.
CREATE INDEX compensations_unfinished ON compensations (updated_at_ms, id)
    WHERE outcome IN ('cancelling', 'cancel_failed');
