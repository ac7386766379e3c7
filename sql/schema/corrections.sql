-- Corrections, their audit trail, and alerts.
CREATE SCHEMA IF NOT EXISTS recon;

-- Every correction decided by the source-of-truth rules, applied or waiting for a supervisor.
-- correction_id is derived from the hour, the material-location, the cause and the explaining
-- transactions, so deciding the same hour again finds the same id and corrects nothing twice.
-- It is also the transaction_id of the RECON adjustment event that carries the correction.
CREATE TABLE IF NOT EXISTS recon.corrections (
    correction_id    VARCHAR       NOT NULL,
    partition_hour   TIMESTAMPTZ   NOT NULL,
    material_number  VARCHAR       NOT NULL,
    material_type    VARCHAR,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    cause            VARCHAR       NOT NULL,
    target_system    VARCHAR       NOT NULL,  -- the system that is wrong and gets the adjustment
    quantity         DECIMAL(18,6) NOT NULL,  -- signed adjustment for the target system
    truth            VARCHAR       NOT NULL,  -- the system the rule says is right
    rule             VARCHAR       NOT NULL,  -- source-of-truth rule name (data/rules.yaml)
    pct_of_balance   DECIMAL(18,4),
    value            DECIMAL(18,2),
    critical         BOOLEAN       NOT NULL,
    status           VARCHAR       NOT NULL,  -- applied | held_for_review | approved | rejected | resolved
    decided_by       VARCHAR       NOT NULL,  -- auto:<rule> or supervisor:<name>
    decided_at       TIMESTAMPTZ   NOT NULL,
    before_quantity  DECIMAL(18,6),           -- target system's balance at the hour's end
    after_quantity   DECIMAL(18,6),
    explained_by     VARCHAR[]     NOT NULL,  -- transaction_ids that explain the difference
    effective_at     TIMESTAMPTZ,             -- timestamp of the correction event once applied
    note             VARCHAR,
    -- resend: the movements themselves, re-sent to the system that lacks them under their own
    --         transaction_ids (a late original is then a duplicate that idempotency refuses);
    -- adjust: a RECON adjustment; a late original of a movement it compensates is refused as such;
    -- count:  no movement explains it: a physical count is requested, nothing is posted.
    method           VARCHAR
);
ALTER TABLE recon.corrections ADD COLUMN IF NOT EXISTS method VARCHAR;

-- Append-only: one row per action on a correction (held, applied, approved, rejected, resolved,
-- refused: an approval refused because the variance had resolved itself).
CREATE TABLE IF NOT EXISTS recon.correction_audit_log (
    logged_at        TIMESTAMPTZ   NOT NULL,
    correction_id    VARCHAR       NOT NULL,
    action           VARCHAR       NOT NULL,
    actor            VARCHAR       NOT NULL,
    partition_hour   TIMESTAMPTZ   NOT NULL,
    material_number  VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    target_system    VARCHAR       NOT NULL,
    quantity         DECIMAL(18,6) NOT NULL,
    rule             VARCHAR       NOT NULL,
    cause            VARCHAR       NOT NULL,
    before_quantity  DECIMAL(18,6),
    after_quantity   DECIMAL(18,6),
    transaction_ids  VARCHAR[]     NOT NULL,
    note             VARCHAR
);

-- Alerts live in <INVSYNC_HOME>/ops.sqlite (table alerts), written by sensors and runs alike.

-- How far the review store's audit trail (recon/review_store.py, outside DuckDB: supervisors
-- decide there while a run writes) has been copied into the two tables above.
CREATE TABLE IF NOT EXISTS recon.review_copies (
    last_audit_id    BIGINT        NOT NULL,
    copied_at        TIMESTAMPTZ   NOT NULL
);
