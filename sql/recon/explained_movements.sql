-- Builds recon.explained_movements for the hours $first_hour..$last_hour (one hour, or a chunk of
-- a ranged run whose hours were all investigated before), every hour on its own (each join keeps
-- partition_hour): for every variance, each movement that explains it and why, in the order an analyst would look: (a) still in the
-- pipeline (the ERP outbox, a work queue, a retry tier, parking, the quarantine), (b) arrived
-- late: the MES applied it only after its snapshot was taken (recon.mes_applied_observed: the
-- MES log as read when the hour was first investigated), (c) the ERP's documents and the MES's
-- applied log against the ledger, where a movement younger than the in-flight window may still be
-- on its way (in_flight), and (d) movements an earlier hour found in flight that have not arrived
-- after their window (recon.in_flight_checks). recon/variance_investigation.sql sums them per cause.
WITH variances AS (
    SELECT * FROM recon.variances WHERE partition_hour BETWEEN $first_hour AND $last_hour AND is_variance
),

-- When the hour was first investigated and the window then: a movement stamped after
-- `young_after` may still be on its way. No window (an hour investigated before it existed): none is.
inputs AS (
    SELECT partition_hour, observed_at,
           observed_at - to_minutes(coalesce(in_flight_window_minutes, 0)) AS young_after,
           coalesce(in_flight_window_minutes, 0) AS window_minutes
    FROM recon.investigation_inputs
    WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

-- The hour's movements as its first reconciliation saw them (as in recon/variances.sql).
-- NOT MATERIALIZED here and below: each is read more than once, and scanning the tables again is
-- faster than copying millions of rows into memory.
events AS NOT MATERIALIZED (
    SELECT e.*
    FROM staging.inventory_events AS e
    LEFT JOIN recon.reconciled_hours AS r USING (partition_hour)
    WHERE e.partition_hour BETWEEN $first_hour AND $last_hour
      AND (r.first_reconciled_at IS NULL OR e.received_at <= r.first_reconciled_at)
),

-- Each ledger event's change of stock per location (cycle counts carry no movement here).
all_ledger_fx AS NOT MATERIALIZED (
    SELECT partition_hour, transaction_id, material_number, location, unit, target_system, source_system, reason,
           received_at, event_time,
           CASE WHEN transaction_type IN ('issue', 'transfer') THEN -quantity ELSE quantity END AS qty
    FROM events WHERE transaction_type <> 'cycle_count'
    UNION ALL
    SELECT partition_hour, transaction_id, material_number, to_location, unit, target_system, source_system, reason,
           received_at, event_time, quantity
    FROM events WHERE transaction_type = 'transfer'
),

all_erp_fx AS NOT MATERIALIZED (
    SELECT partition_hour, transaction_id, material_number, location, unit, reason, event_time, quantity_effect AS qty
    FROM snapshots.erp_movements WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

all_mes_fx AS NOT MATERIALIZED (
    SELECT partition_hour, transaction_id, material_number, location, unit, event_time, quantity_effect AS qty
    FROM snapshots.mes_applied WHERE partition_hour BETWEEN $first_hour AND $last_hour AND status = 'applied'
),

-- Only a transaction with a row at a variance's material x location x unit can explain it, and
-- everything below compares transactions by transaction_id: keeping just those transactions
-- finds the same, without joining the hour's millions of transactions that explain nothing.
explaining AS (
    SELECT partition_hour, transaction_id FROM all_ledger_fx
    SEMI JOIN variances USING (partition_hour, material_number, location, unit)
    UNION
    SELECT partition_hour, transaction_id FROM all_erp_fx
    SEMI JOIN variances USING (partition_hour, material_number, location, unit)
    UNION
    SELECT partition_hour, transaction_id FROM all_mes_fx
    SEMI JOIN variances USING (partition_hour, material_number, location, unit)
),

ledger_fx AS (SELECT * FROM all_ledger_fx SEMI JOIN explaining USING (partition_hour, transaction_id)),

-- "Is it in the ledger?" asks of every event of the hour, cycle counts included: both systems
-- book a count (the ERP its difference document, the MES the change in its applied log) under
-- the count's transaction_id, though ledger_fx leaves counts out.
ledger_ids AS (
    SELECT partition_hour, transaction_id FROM events SEMI JOIN explaining USING (partition_hour, transaction_id)
),

erp_fx AS (SELECT * FROM all_erp_fx SEMI JOIN explaining USING (partition_hour, transaction_id)),

mes_fx AS (SELECT * FROM all_mes_fx SEMI JOIN explaining USING (partition_hour, transaction_id)),

backlog AS (
    SELECT partition_hour, transaction_id, any_value(kind) AS kind, any_value(place) AS place,
           any_value(reason) AS reason
    FROM recon.pipeline_backlog
    WHERE partition_hour BETWEEN $first_hour AND $last_hour AND transaction_id IS NOT NULL
    GROUP BY partition_hour, transaction_id
),

-- The ERP booked it under one unit, the message carried another: both unit rows are off.
unit_mismatches AS (
    SELECT partition_hour, e.transaction_id, e.material_number, e.location, e.unit AS erp_unit,
           l.unit AS ledger_unit, e.qty AS erp_qty, l.qty AS ledger_qty, e.event_time
    FROM erp_fx AS e
    JOIN ledger_fx AS l USING (partition_hour, transaction_id, material_number, location)
    WHERE e.unit <> l.unit
),

-- A movement absent from one system and from the pipeline, but younger than the window when the
-- hour was first investigated, may still be on its way: in_flight, looked at again later.
explanations AS (
    -- ERP side of a unit mismatch: the MES lacks the movement in the ERP's unit ...
    SELECT partition_hour, material_number, location, erp_unit AS unit, 'MES' AS system, 'unit_mismatch' AS cause,
           erp_qty AS qty, transaction_id, event_time, CAST(NULL AS TIMESTAMPTZ) AS in_flight_since,
           'the message carried ' || ledger_unit || ' where the ERP booked ' || erp_unit AS detail
    FROM unit_mismatches
    UNION ALL
    -- ... and the ERP lacks it in the message's unit.
    SELECT partition_hour, material_number, location, ledger_unit, 'ERP', 'unit_mismatch', ledger_qty, transaction_id,
           event_time,
           NULL, 'the message carried ' || ledger_unit || ' where the ERP booked ' || erp_unit
    FROM unit_mismatches

    UNION ALL
    -- Booked in the ERP, never in the ledger: still in the pipeline, on its way, quarantined, or never sent.
    SELECT partition_hour, e.material_number, e.location, e.unit, 'MES',
           coalesce(b.kind, CASE WHEN e.event_time > i.young_after THEN 'in_flight' ELSE 'not_published' END),
           e.qty, e.transaction_id, e.event_time, NULL,
           coalesce(b.place || ': ' || b.reason,
                    CASE WHEN e.event_time > i.young_after THEN
                        'ERP document not on the exchange yet, ' || date_diff('minute', e.event_time, i.observed_at) || ' min'
                        || ' old within the ' || i.window_minutes || '-min in-flight window; looked at again later'
                    END,
                    'ERP document with no event on the exchange')
    FROM erp_fx AS e
    JOIN inputs AS i USING (partition_hour)
    LEFT JOIN backlog AS b USING (partition_hour, transaction_id)
    ANTI JOIN ledger_ids USING (partition_hour, transaction_id)
    ANTI JOIN unit_mismatches USING (partition_hour, transaction_id)

    UNION ALL
    -- In the ledger and meant for the MES, not in the MES's applied log.
    SELECT partition_hour, l.material_number, l.location, l.unit, 'MES',
           CASE WHEN b.kind IS NOT NULL THEN b.kind
                WHEN now.applied_at IS NOT NULL THEN 'late_delivery'
                WHEN l.event_time > i.young_after THEN 'in_flight'
                ELSE 'missing_in_mes' END,
           l.qty, l.transaction_id, l.event_time, NULL,
           coalesce(b.place || ': ' || b.reason,
                    'applied by the MES at ' || strftime(now.applied_at, '%Y-%m-%d %H:%M:%S') || ', after its snapshot',
                    CASE WHEN l.event_time > i.young_after THEN
                        'not in the MES yet, ' || date_diff('minute', l.event_time, i.observed_at) || ' min' || ' old within the '
                        || i.window_minutes || '-min in-flight window; looked at again later'
                    END,
                    'received ' || strftime(l.received_at, '%Y-%m-%d %H:%M:%S') || '; not in the MES applied log')
    FROM ledger_fx AS l
    JOIN inputs AS i USING (partition_hour)
    LEFT JOIN backlog AS b USING (partition_hour, transaction_id)
    LEFT JOIN (
        SELECT partition_hour, transaction_id, applied_at FROM recon.mes_applied_observed
        WHERE partition_hour BETWEEN $first_hour AND $last_hour
    ) AS now USING (partition_hour, transaction_id)
    ANTI JOIN mes_fx USING (partition_hour, transaction_id)
    ANTI JOIN unit_mismatches USING (partition_hour, transaction_id)
    WHERE coalesce(l.target_system, 'MES') = 'MES'

    UNION ALL
    -- In the ledger and meant for the ERP (MES backflushes, ERP corrections), not in the ERP.
    SELECT partition_hour, l.material_number, l.location, l.unit, 'ERP',
           CASE WHEN l.event_time > i.young_after THEN 'in_flight' ELSE 'missing_in_erp' END,
           l.qty, l.transaction_id, l.event_time, NULL,
           'from ' || l.source_system || ', ' || l.reason
           || CASE WHEN l.event_time > i.young_after THEN
                  '; not in the ERP yet, ' || date_diff('minute', l.event_time, i.observed_at) || ' min' || ' old within the '
                  || i.window_minutes || '-min in-flight window; looked at again later'
              ELSE '' END
    FROM ledger_fx AS l
    JOIN inputs AS i USING (partition_hour)
    ANTI JOIN erp_fx USING (partition_hour, transaction_id)
    WHERE coalesce(l.target_system, 'ERP') = 'ERP'
      AND l.source_system <> 'ERP'

    UNION ALL
    -- Applied in the MES, never in the ledger (an MES posting that was not published).
    SELECT partition_hour, m.material_number, m.location, m.unit, 'ERP',
           CASE WHEN m.event_time > i.young_after THEN 'in_flight' ELSE 'not_published' END,
           m.qty, m.transaction_id, m.event_time, NULL,
           CASE WHEN m.event_time > i.young_after THEN
               'MES applied it; not on the exchange yet, ' || date_diff('minute', m.event_time, i.observed_at) || ' min' || ' old within the '
               || i.window_minutes || '-min in-flight window; looked at again later'
           ELSE 'MES applied it; no event on the exchange' END
    FROM mes_fx AS m
    JOIN inputs AS i USING (partition_hour)
    ANTI JOIN ledger_ids USING (partition_hour, transaction_id)
    ANTI JOIN erp_fx USING (partition_hour, transaction_id)

    UNION ALL
    -- Found in flight by an earlier hour, still missing after its window: now a finding like any
    -- other, with the cause it would have had (the next hours would only carry it over).
    SELECT partition_hour, c.material_number, c.location, c.unit, c.system, c.cause_if_missing, c.quantity,
           c.transaction_id,
           c.event_time, c.in_flight_since,
           'in flight since the hour of ' || strftime(c.in_flight_since, '%Y-%m-%d %H:00') || ' UTC; not arrived '
           || date_diff('minute', c.event_time, i.observed_at) || ' min' || ' after the movement, past the ' || i.window_minutes
           || '-min in-flight window'
    FROM recon.in_flight_checks AS c
    JOIN inputs AS i USING (partition_hour)
    WHERE c.partition_hour BETWEEN $first_hour AND $last_hour AND c.state = 'missing'
)

SELECT x.partition_hour, x.material_number, x.location, x.unit, x.system, x.cause, x.transaction_id,
       x.qty AS quantity, x.event_time, x.in_flight_since, x.detail
FROM explanations AS x
SEMI JOIN variances USING (partition_hour, material_number, location, unit)
