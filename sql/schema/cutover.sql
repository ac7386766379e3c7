-- Tables of the cutover from the old batch sync (assets/cutover.py, docs/cutover.md).
CREATE SCHEMA IF NOT EXISTS cutover;

-- What each system held at the end of a day, stored the first time the day is compared and
-- reused after that, so a backfill compares what was true then. system: erp | event_driven
-- (the MES the event-driven path wrote that day: shadow, or live after go-live) | batch (the
-- live MES the batch sync copies to, while shadow mode lasted).
CREATE TABLE IF NOT EXISTS cutover.day_end_stock (
    day             DATE          NOT NULL,
    system          VARCHAR       NOT NULL,
    material_number VARCHAR       NOT NULL,
    location        VARCHAR       NOT NULL,
    unit            VARCHAR       NOT NULL,
    material_type   VARCHAR,                -- from the ERP material master; NULL if it does not know it
    quantity        DECIMAL(18,6) NOT NULL,
    taken_at        TIMESTAMPTZ   NOT NULL,
    source          VARCHAR       NOT NULL  -- the ERP URL's dialect or the MES URL it was read from
);

-- The day's transactions per key in the ERP and in the event-driven MES's applied log: what the
-- causes of a disagreement are found from.
CREATE TABLE IF NOT EXISTS cutover.day_movements (
    day             DATE        NOT NULL,
    system          VARCHAR     NOT NULL,  -- erp | event_driven
    transaction_id  VARCHAR     NOT NULL,
    event_time      TIMESTAMPTZ NOT NULL,
    material_number VARCHAR     NOT NULL,
    location        VARCHAR     NOT NULL,
    unit            VARCHAR     NOT NULL
);

-- One row per material-location-unit and day: the batch result vs the event-driven result vs ERP.
CREATE TABLE IF NOT EXISTS cutover.comparison (
    day             DATE          NOT NULL,
    material_number VARCHAR       NOT NULL,
    location        VARCHAR       NOT NULL,
    unit            VARCHAR       NOT NULL,
    material_type   VARCHAR,
    in_scope        BOOLEAN       NOT NULL,  -- the pilot scope carried this type that day
    scope           VARCHAR       NOT NULL,  -- e.g. mro+packaging, or all
    erp_quantity    DECIMAL(18,6) NOT NULL,
    event_quantity  DECIMAL(18,6) NOT NULL,
    batch_quantity  DECIMAL(18,6),           -- NULL once live (no batch result to compare)
    event_agrees    BOOLEAN       NOT NULL,  -- |erp - event| <= tolerance
    batch_agrees    BOOLEAN,
    event_cause     VARCHAR,                 -- why the event-driven result differs; NULL when it agrees
    batch_cause     VARCHAR,                 -- why the batch result differs; NULL when it agrees
    transaction_ids VARCHAR[]     NOT NULL,  -- the transactions behind event_cause
    detail          VARCHAR
);

-- The day's accuracy per slice: the whole pilot scope, each material type, and everything.
CREATE TABLE IF NOT EXISTS cutover.daily_accuracy (
    day                DATE    NOT NULL,
    slice              VARCHAR NOT NULL,  -- in_scope | all | type:<material_type>
    scope              VARCHAR NOT NULL,
    material_locations INTEGER NOT NULL,
    event_agree        INTEGER NOT NULL,
    event_accuracy     DOUBLE,            -- NULL when the slice is empty
    batch_agree        INTEGER,
    batch_accuracy     DOUBLE
);
