-- Tables the reports are built from.
CREATE SCHEMA IF NOT EXISTS recon;

-- One row per variance of the hour and cause the investigation found for it (a variance with
-- two causes has two rows; one with none has one row with cause 'no_cause_found'), with what
-- the rules decided about it. The item's balances, difference and value repeat on each of its
-- rows; explained_quantity and explained_value are the cause's own share.
CREATE TABLE IF NOT EXISTS recon.variance_report (
    partition_hour     TIMESTAMPTZ   NOT NULL,
    warehouse          VARCHAR       NOT NULL,  -- the plant
    material_type      VARCHAR,                 -- NULL when the ERP material master does not know it
    abc_class          VARCHAR,
    material_number    VARCHAR       NOT NULL,
    location           VARCHAR       NOT NULL,
    unit               VARCHAR       NOT NULL,
    cause              VARCHAR       NOT NULL,  -- as in recon.variance_investigation, or no_cause_found
    system             VARCHAR,                 -- the system whose books miss the movement: ERP | MES
    is_timing          BOOLEAN       NOT NULL,  -- resolves by itself; never corrected
    erp_end            DECIMAL(18,6) NOT NULL,
    mes_end            DECIMAL(18,6) NOT NULL,
    erp_three_way      DECIMAL(18,6) NOT NULL,
    mes_three_way      DECIMAL(18,6) NOT NULL,
    cross_difference   DECIMAL(18,6) NOT NULL,  -- erp_end - mes_end
    pct_difference     DECIMAL(18,4),           -- of the larger ending balance
    unit_cost          DECIMAL(18,6),
    value_difference   DECIMAL(18,2),           -- the item's value at stake: |difference| x unit_cost
    explained_quantity DECIMAL(18,6),           -- signed: what this cause accounts for
    explained_value    DECIMAL(18,2),           -- |explained_quantity| x unit_cost
    transaction_ids    VARCHAR[]     NOT NULL,
    detail             VARCHAR,
    correction_id      VARCHAR,                 -- recon.corrections, when the rules decided one
    correction_status  VARCHAR,                 -- applied | held_for_review | approved | rejected
    critical           BOOLEAN
);
