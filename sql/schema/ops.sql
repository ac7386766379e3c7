-- Tables of the ops schema: how the flow of events behaved, one row per UTC hour.
-- Created by the flow_metrics asset itself (idempotent), before it writes its hour.
CREATE SCHEMA IF NOT EXISTS ops;

-- One row per hour, about the movements that happened in it (event time): staged and applied events, their rates, sync lag and what went wrong.
CREATE TABLE IF NOT EXISTS ops.flow_metrics (
    partition_hour         TIMESTAMPTZ NOT NULL,  -- start of the UTC hour
    staged_events          BIGINT      NOT NULL,  -- rows of the hour in staging.inventory_events
    staged_erp             BIGINT      NOT NULL,  -- of them, per source_system
    staged_mes             BIGINT      NOT NULL,
    staged_recon           BIGINT      NOT NULL,
    applied_events         BIGINT      NOT NULL,  -- the hour's staged events the sync log shows applied
    staged_per_s           DOUBLE      NOT NULL,  -- staged_events / 3600
    applied_per_s          DOUBLE      NOT NULL,  -- applied_events / 3600
    lag_samples            BIGINT      NOT NULL,  -- of those, the ones that carry published_ms
    lag_p50_ms             DOUBLE,                -- confirmed_ms - published_ms; NULL without samples
    lag_p95_ms             DOUBLE,
    lag_p99_ms             DOUBLE,
    retries                BIGINT      NOT NULL,  -- the hour's events that needed more than one attempt
    dead_letters           BIGINT      NOT NULL,  -- parked messages whose event time falls in the hour
    dead_letters_by_reason VARCHAR     NOT NULL,  -- JSON object: reason -> messages
    parking_read           BOOLEAN     NOT NULL,  -- false when the broker was unreachable (dead_letters is 0 then)
    computed_at            TIMESTAMPTZ NOT NULL
);
