-- Keys that must compare exactly: utf8mb4_bin is a PAD SPACE collation in MariaDB 10.x
-- ('k' = 'k ' is true), so an idempotency key differing only by trailing spaces collided
-- with another request's key. utf8mb4_nopad_bin compares every byte. payment.id and
-- ledger_entry.payment_id (a foreign key pair) stay: they are canonical UUIDs, never padded.

ALTER TABLE payment
    DEFAULT COLLATE utf8mb4_nopad_bin,
    MODIFY merchant_id     VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    MODIFY idempotency_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;

ALTER TABLE idempotency_record
    DEFAULT COLLATE utf8mb4_nopad_bin,
    MODIFY merchant_id     VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    MODIFY idempotency_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;

ALTER TABLE outbox_event
    DEFAULT COLLATE utf8mb4_nopad_bin,
    MODIFY event_id CHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;

ALTER TABLE processed_event
    DEFAULT COLLATE utf8mb4_nopad_bin,
    MODIFY consumer VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    MODIFY event_id CHAR(36)    CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;

ALTER TABLE merchant_balance
    DEFAULT COLLATE utf8mb4_nopad_bin,
    MODIFY merchant_id VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;
