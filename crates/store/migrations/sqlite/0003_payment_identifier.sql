-- The x402 `payment-identifier` extension: a client-chosen id (16 to 128 characters) naming one
-- payment. The same id may only ever name one authorization; a retry with the same id and the
-- same payload gets the recorded outcome, the same id with another payload is a conflict.
ALTER TABLE settlements ADD COLUMN payment_id TEXT;

CREATE UNIQUE INDEX settlements_payment_id_unique ON settlements (payment_id)
    WHERE payment_id IS NOT NULL;
