-- Who holds an unfinished settlement, which account transaction it was recorded with, and what
-- the payment pays.
--
-- holder: the facilitator process that claimed the row ("<instance>/<life>"). Only the holder may
--   record a broadcast (received -> submitted) or release its claim; a claim older than the
--   facilitator's hold, or one left by an earlier life of the same instance, may be taken over
--   or released, because a row still 'received' was provably never broadcast (the broadcast is
--   recorded before it happens).
-- sender, sender_nonce: the account that signed the recorded transaction and that account's
--   nonce. If the chain has no receipt for the transaction and the account's nonce has not
--   reached sender_nonce, the transaction never reached the chain and the claim can be released.
-- pay_to, amount: the payee (lowercase 0x hex) and the amount (atomic units, decimal) the payment
--   names, so a transfer found on chain can be checked against the payment without its request.
ALTER TABLE settlements ADD COLUMN holder TEXT;
ALTER TABLE settlements ADD COLUMN sender TEXT;
ALTER TABLE settlements ADD COLUMN pay_to TEXT;
ALTER TABLE settlements ADD COLUMN amount TEXT;
ALTER TABLE settlements ADD COLUMN sender_nonce BIGINT;

CREATE INDEX settlements_received ON settlements (updated_at_ms) WHERE state = 'received';
