-- Stock of each system per hour: the balance at the start and at the end of the UTC hour.
-- Rows are written once, when the hour is first reconciled, and kept: a backfill reads what was
-- true then instead of asking the systems again (invsync reconcile --refresh-snapshots re-reads).
CREATE SCHEMA IF NOT EXISTS snapshots;

CREATE TABLE IF NOT EXISTS snapshots.erp_inventory (
    partition_hour   TIMESTAMPTZ   NOT NULL,  -- start of the UTC hour
    material_number  VARCHAR       NOT NULL,
    material_type    VARCHAR,
    location         VARCHAR       NOT NULL,  -- WAREHOUSE/STORAGE_LOCATION (SAP WERKS/LGORT)
    unit             VARCHAR       NOT NULL,
    begin_quantity   DECIMAL(18,6) NOT NULL,  -- as of the hour's start
    end_quantity     DECIMAL(18,6) NOT NULL,  -- as of the hour's end
    taken_at         TIMESTAMPTZ   NOT NULL,
    method           VARCHAR       NOT NULL   -- as_of_reconstruction (current stock minus later movements)
);

CREATE TABLE IF NOT EXISTS snapshots.mes_inventory (
    partition_hour   TIMESTAMPTZ   NOT NULL,
    material_number  VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    begin_quantity   DECIMAL(18,6) NOT NULL,
    end_quantity     DECIMAL(18,6) NOT NULL,
    taken_at         TIMESTAMPTZ   NOT NULL,
    method           VARCHAR       NOT NULL   -- as_of_api (the MES's as-of stock endpoint)
);

-- The ERP material master as seen at reconciliation: type, base unit, cost, ABC class.
CREATE TABLE IF NOT EXISTS snapshots.erp_materials (
    material_number VARCHAR NOT NULL,
    material_type   VARCHAR,
    base_unit       VARCHAR,
    unit_cost       DECIMAL(18,6),
    currency        VARCHAR,
    abc_class       VARCHAR,
    taken_at        TIMESTAMPTZ NOT NULL
);

-- ERP material documents of the hour, as contract events: what the ERP booked, published or not.
CREATE TABLE IF NOT EXISTS snapshots.erp_movements (
    partition_hour   TIMESTAMPTZ   NOT NULL,
    transaction_id   VARCHAR       NOT NULL,
    event_time       TIMESTAMPTZ   NOT NULL,
    material_number  VARCHAR       NOT NULL,
    location         VARCHAR       NOT NULL,
    unit             VARCHAR       NOT NULL,
    transaction_type VARCHAR       NOT NULL,
    reason           VARCHAR       NOT NULL,
    quantity_effect  DECIMAL(18,6) NOT NULL   -- signed change of stock at `location`
);

-- The MES applied log of the hour (by event time): what the MES booked.
CREATE TABLE IF NOT EXISTS snapshots.mes_applied (
    partition_hour     TIMESTAMPTZ   NOT NULL,
    transaction_id     VARCHAR       NOT NULL,
    mes_transaction_id VARCHAR,
    status             VARCHAR       NOT NULL,  -- applied | duplicate | not_applicable
    event_time         TIMESTAMPTZ   NOT NULL,
    applied_at         TIMESTAMPTZ   NOT NULL,
    material_number    VARCHAR       NOT NULL,
    location           VARCHAR       NOT NULL,
    unit               VARCHAR       NOT NULL,
    quantity_effect    DECIMAL(18,6) NOT NULL
);
