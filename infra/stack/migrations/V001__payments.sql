-- Payments, their ledger, the transactional outbox and idempotency storage.
-- Amounts are BIGINT minor units; timestamps keep milliseconds (DATETIME(3), UTC).

CREATE TABLE IF NOT EXISTS payment (
    id              CHAR(36)     NOT NULL,
    merchant_id     VARCHAR(32)  NOT NULL,
    amount          BIGINT       NOT NULL,
    currency        CHAR(3)      NOT NULL,
    status          VARCHAR(16)  NOT NULL,
    idempotency_key VARCHAR(64)  NOT NULL,
    request_hash    CHAR(64)     NOT NULL,
    created_at      DATETIME(3)  NOT NULL,
    updated_at      DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_payment_merchant_idempotency (merchant_id, idempotency_key),
    KEY ix_payment_status_created (status, created_at),
    KEY ix_payment_created (created_at),
    CONSTRAINT ck_payment_amount CHECK (amount > 0),
    CONSTRAINT ck_payment_status CHECK (status IN ('REQUESTED', 'COMPLETED', 'REFUNDED'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS ledger_entry (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    payment_id      CHAR(36)     NOT NULL,
    transition      VARCHAR(16)  NOT NULL,
    debit_account   VARCHAR(64)  NOT NULL,
    credit_account  VARCHAR(64)  NOT NULL,
    amount          BIGINT       NOT NULL,
    currency        CHAR(3)      NOT NULL,
    created_at      DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_ledger_payment_transition (payment_id, transition),
    KEY ix_ledger_created (created_at),
    CONSTRAINT fk_ledger_payment FOREIGN KEY (payment_id) REFERENCES payment (id),
    CONSTRAINT ck_ledger_amount CHECK (amount > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS outbox_event (
    id              BIGINT        NOT NULL AUTO_INCREMENT,
    event_id        CHAR(36)      NOT NULL,
    aggregate_id    CHAR(36)      NOT NULL,
    event_type      VARCHAR(32)   NOT NULL,
    topic           VARCHAR(128)  NOT NULL,
    partition_key   VARCHAR(64)   NOT NULL,
    payload         JSON          NOT NULL,
    created_at      DATETIME(3)   NOT NULL,
    published_at    DATETIME(3)   NULL,
    attempts        INT           NOT NULL DEFAULT 0,
    last_error      VARCHAR(512)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_outbox_event_id (event_id),
    KEY ix_outbox_relay (published_at, id),
    KEY ix_outbox_aggregate (aggregate_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS idempotency_record (
    merchant_id          VARCHAR(32)  NOT NULL,
    idempotency_key      VARCHAR(64)  NOT NULL,
    request_hash         CHAR(64)     NOT NULL,
    status               VARCHAR(16)  NOT NULL,
    payment_id           CHAR(36)     NULL,
    response_status      SMALLINT     NULL,
    response_body        MEDIUMTEXT   NULL,
    created_at           DATETIME(3)  NOT NULL,
    in_progress_until    DATETIME(3)  NOT NULL,
    expires_at           DATETIME(3)  NOT NULL,
    PRIMARY KEY (merchant_id, idempotency_key),
    KEY ix_idempotency_expires (expires_at),
    CONSTRAINT ck_idempotency_status CHECK (status IN ('IN_PROGRESS', 'COMPLETED'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS processed_event (
    consumer        VARCHAR(64)  NOT NULL,
    event_id        CHAR(36)     NOT NULL,
    processed_at    DATETIME(3)  NOT NULL,
    PRIMARY KEY (consumer, event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS merchant_balance (
    merchant_id       VARCHAR(32)  NOT NULL,
    currency          CHAR(3)      NOT NULL,
    authorized_total  BIGINT       NOT NULL DEFAULT 0,
    captured_total    BIGINT       NOT NULL DEFAULT 0,
    refunded_total    BIGINT       NOT NULL DEFAULT 0,
    updated_at        DATETIME(3)  NOT NULL,
    PRIMARY KEY (merchant_id, currency)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
