-- Tables of the ledger schema.
CREATE SCHEMA IF NOT EXISTS ledger;

-- Movements per hour x material x location x unit x source system (and target system for
-- RECON corrections). Quantities are in `unit`; a transfer counts out at its location and in
-- at its to_location. net_movement = receipts - issues + transfers_in - transfers_out + adjustments.
CREATE TABLE IF NOT EXISTS ledger.transaction_ledger (
    partition_hour      TIMESTAMPTZ   NOT NULL,
    material_number     VARCHAR       NOT NULL,
    material_type       VARCHAR       NOT NULL,
    location            VARCHAR       NOT NULL,
    unit                VARCHAR       NOT NULL,
    source_system       VARCHAR       NOT NULL,
    target_system       VARCHAR,                 -- ERP | MES for RECON corrections, else NULL
    receipts            DECIMAL(18,6) NOT NULL,
    issues              DECIMAL(18,6) NOT NULL,
    transfers_in        DECIMAL(18,6) NOT NULL,
    transfers_out       DECIMAL(18,6) NOT NULL,
    adjustments         DECIMAL(18,6) NOT NULL,  -- signed
    net_movement        DECIMAL(18,6) NOT NULL,  -- receipts - issues + transfers_in - transfers_out + adjustments
    last_counted_balance DECIMAL(18,6),          -- the latest cycle count in the hour, if any
    last_counted_at     TIMESTAMPTZ,
    receipt_count       INTEGER       NOT NULL,
    issue_count         INTEGER       NOT NULL,
    transfer_in_count   INTEGER       NOT NULL,
    transfer_out_count  INTEGER       NOT NULL,
    adjustment_count    INTEGER       NOT NULL,
    cycle_count_count   INTEGER       NOT NULL,
    transaction_count   INTEGER       NOT NULL   -- movements touching this row (a transfer touches two rows)
);
