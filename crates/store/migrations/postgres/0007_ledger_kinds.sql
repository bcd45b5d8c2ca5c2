-- The ledger also records budget alerts and compensation claims.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('reserve', 'post', 'void', 'deny', 'alert', 'compensate'));

-- One reserve/post/void/deny/compensate per transfer; a reservation may cross several alert
-- thresholds at once, so alerts are not unique per transfer.
DROP INDEX ledger_entries_once;
CREATE UNIQUE INDEX ledger_entries_once ON ledger_entries (transfer_id, kind)
    WHERE transfer_id IS NOT NULL AND kind <> 'alert';
