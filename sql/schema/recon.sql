-- Tables of the reconciliation schema.
CREATE SCHEMA IF NOT EXISTS recon;

-- One row per hour x material x location x unit: the three-way check of each system
-- (begin + ledger - end; non-zero means the books disagree with the movements) and the
-- ERP - MES difference of the ending balances.
CREATE TABLE IF NOT EXISTS recon.variances (
    partition_hour     TIMESTAMPTZ   NOT NULL,
    material_number    VARCHAR       NOT NULL,
    material_type      VARCHAR,
    abc_class          VARCHAR,
    location           VARCHAR       NOT NULL,
    warehouse          VARCHAR       NOT NULL,
    unit               VARCHAR       NOT NULL,
    base_unit          VARCHAR,                 -- the ERP material master's unit
    erp_begin          DECIMAL(18,6) NOT NULL,
    erp_ledger_net     DECIMAL(18,6) NOT NULL,  -- movements that belong in the ERP's books
    erp_expected_end   DECIMAL(18,6) NOT NULL,
    erp_end            DECIMAL(18,6) NOT NULL,
    erp_three_way      DECIMAL(18,6) NOT NULL,  -- expected - actual end
    mes_begin          DECIMAL(18,6) NOT NULL,
    mes_ledger_net     DECIMAL(18,6) NOT NULL,
    mes_expected_end   DECIMAL(18,6) NOT NULL,
    mes_end            DECIMAL(18,6) NOT NULL,
    mes_three_way      DECIMAL(18,6) NOT NULL,
    cross_difference   DECIMAL(18,6) NOT NULL,  -- erp_end - mes_end
    abs_difference     DECIMAL(18,6) NOT NULL,
    pct_difference     DECIMAL(18,4),           -- of the larger ending balance
    unit_cost          DECIMAL(18,6),
    value_difference   DECIMAL(18,2),           -- abs_difference x unit_cost
    ledger_transactions BIGINT       NOT NULL,
    is_variance        BOOLEAN       NOT NULL
);

-- One row per variance and explanation: why the systems disagree, and the transaction_ids
-- that explain it. cause: in_flight | pending_sync | retrying | late_delivery (timing: never
-- corrected) | quarantined | dead_lettered | missing_in_mes | missing_in_erp | not_published |
-- unit_mismatch | carried_over | unexplained.
CREATE TABLE IF NOT EXISTS recon.variance_investigation (
    partition_hour     TIMESTAMPTZ   NOT NULL,
    material_number    VARCHAR       NOT NULL,
    location           VARCHAR       NOT NULL,
    unit               VARCHAR       NOT NULL,
    system             VARCHAR       NOT NULL,  -- the system whose books miss the movement: ERP | MES
    cause              VARCHAR       NOT NULL,
    is_timing          BOOLEAN       NOT NULL,  -- resolves by itself; never corrected
    explained_quantity DECIMAL(18,6) NOT NULL,  -- signed: what the system would need to agree
    transaction_ids    VARCHAR[]     NOT NULL,
    detail             VARCHAR
);

-- What the pipeline still holds when an hour is investigated: queued, retrying, parked or
-- quarantined messages (read from the broker and the staged quarantine).
CREATE TABLE IF NOT EXISTS recon.pipeline_backlog (
    partition_hour  TIMESTAMPTZ NOT NULL,
    transaction_id  VARCHAR,
    place           VARCHAR     NOT NULL,  -- queue name, retry.N, parking, quarantine
    kind            VARCHAR     NOT NULL,  -- pending_sync | retrying | dead_lettered | quarantined
    material_number VARCHAR,
    location        VARCHAR,
    unit            VARCHAR,
    quantity_effect DECIMAL(18,6),
    to_location     VARCHAR,
    reason          VARCHAR,
    observed_at     TIMESTAMPTZ NOT NULL
);

-- The MES applied log as read when the hour was first investigated (to tell a sync gap from a
-- lost event), and when that was. Kept, with recon.pipeline_backlog, so that re-running an
-- hour investigates with what was seen then: a backfill gives the same findings as the live run.
CREATE TABLE IF NOT EXISTS recon.mes_applied_observed (
    partition_hour  TIMESTAMPTZ NOT NULL,
    transaction_id  VARCHAR     NOT NULL,
    applied_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS recon.investigation_inputs (
    partition_hour  TIMESTAMPTZ NOT NULL,
    observed_at     TIMESTAMPTZ NOT NULL,
    backlog_rows    BIGINT      NOT NULL,
    applied_rows    BIGINT      NOT NULL,
    in_flight_window_minutes INTEGER       -- reconciliation.in_flight_window_minutes at that time
);
-- Warehouses made before the column existed get it (NULL: no window, as they were investigated).
ALTER TABLE recon.investigation_inputs ADD COLUMN IF NOT EXISTS in_flight_window_minutes INTEGER;

-- One row per variance and movement that explains it: recon.variance_investigation sums these
-- per cause. Kept per movement so that a movement found in flight is looked at again in later
-- hours, and a correction names exactly the movements it compensates.
CREATE TABLE IF NOT EXISTS recon.explained_movements (
    partition_hour   TIMESTAMPTZ   NOT NULL,
    material_number  VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    system           VARCHAR       NOT NULL,  -- the system whose books miss the movement: ERP | MES
    cause            VARCHAR       NOT NULL,
    transaction_id   VARCHAR       NOT NULL,
    quantity         DECIMAL(18,6) NOT NULL,  -- signed: this movement's share of the variance
    event_time       TIMESTAMPTZ,
    in_flight_since  TIMESTAMPTZ,             -- an earlier hour found it in flight; it has not arrived since
    detail           VARCHAR
);

-- Movements an earlier hour found in flight, whose window had passed when this hour was first
-- investigated, at a material-location where the systems still disagreed: what a look at the
-- pipeline and the system that lacked each one found then (arrived | in_pipeline | missing). Kept,
-- like recon.pipeline_backlog, so a re-run or a backfill of the hour decides the same.
CREATE TABLE IF NOT EXISTS recon.in_flight_checks (
    partition_hour   TIMESTAMPTZ   NOT NULL,
    transaction_id   VARCHAR       NOT NULL,
    material_number  VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    system           VARCHAR       NOT NULL,
    quantity         DECIMAL(18,6) NOT NULL,
    event_time       TIMESTAMPTZ,
    in_flight_since  TIMESTAMPTZ   NOT NULL,  -- the hour that found it in flight
    cause_if_missing VARCHAR       NOT NULL,  -- not_published | missing_in_mes | missing_in_erp
    state            VARCHAR       NOT NULL,  -- arrived | in_pipeline | missing
    checked_at       TIMESTAMPTZ   NOT NULL
);

-- When each hour was first reconciled. Movements staged for the hour after that (a late arrival,
-- or a correction that re-sent a movement under its own transaction_id) are left out of its
-- check, so a re-run or a backfill gives the same variances as the live run; the next hours see
-- them in their beginning balances.
CREATE TABLE IF NOT EXISTS recon.reconciled_hours (
    partition_hour       TIMESTAMPTZ NOT NULL,
    first_reconciled_at  TIMESTAMPTZ NOT NULL
);
