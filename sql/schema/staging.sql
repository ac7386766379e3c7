-- Tables of the staging schema. Timestamps are TIMESTAMPTZ in UTC (connections SET TimeZone = 'UTC').
CREATE SCHEMA IF NOT EXISTS staging;

-- One row per movement (transaction_id), as staged from the ledger tap; contract v1 fields.
CREATE TABLE IF NOT EXISTS staging.inventory_events (
    partition_hour   TIMESTAMPTZ   NOT NULL,  -- start of the UTC hour the event happened in
    transaction_id   VARCHAR       NOT NULL,  -- idempotency key, unique in the table
    event_time       TIMESTAMPTZ   NOT NULL,  -- contract field `timestamp`: when it happened at the source
    source_system    VARCHAR       NOT NULL,  -- ERP | MES | RECON
    target_system    VARCHAR,                 -- ERP | MES for RECON corrections, else NULL
    material_number  VARCHAR       NOT NULL,
    material_type    VARCHAR       NOT NULL,  -- raw | wip | finished | packaging | mro
    transaction_type VARCHAR       NOT NULL,  -- receipt | issue | transfer | adjustment | cycle_count
    reason           VARCHAR       NOT NULL,
    quantity         DECIMAL(18,6) NOT NULL,  -- as published: > 0, signed for adjustments, balance for counts
    unit             VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,  -- WAREHOUSE/STORAGE_LOCATION
    to_location      VARCHAR,                 -- transfers only
    erp_reference    VARCHAR       NOT NULL,
    movement_type    VARCHAR,                 -- SAP movement type when known
    published_at     TIMESTAMPTZ,             -- AMQP timestamp set by the publisher, if any
    received_at      TIMESTAMPTZ   NOT NULL,  -- when the drain staged it
    routing_key      VARCHAR       NOT NULL,
    segment_id       VARCHAR       NOT NULL   -- the staged segment the row was loaded from
);

-- What each materialization of an hour loaded: one row per segment read.
CREATE TABLE IF NOT EXISTS staging.loaded_segments (
    partition_hour TIMESTAMPTZ NOT NULL,
    segment_id     VARCHAR     NOT NULL,
    rows_read      BIGINT      NOT NULL,
    loaded_at      TIMESTAMPTZ NOT NULL,
    run_id         VARCHAR
);
