-- Builds recon.variance_investigation for one hour ($partition_hour): for every
-- variance, the transactions that explain it and why, in the order an analyst would look:
-- (a) still in the pipeline (queued, retrying, parked, quarantined), (b) arrived late: the MES
-- applied it only after its snapshot was taken (recon.mes_applied_observed: the MES log as read
-- when the hour was first investigated), (c) the ERP's documents and the MES's applied log against the ledger,
-- (d) what is left.
WITH variances AS (
    SELECT * FROM recon.variances WHERE partition_hour = $partition_hour AND is_variance
),

-- NOT MATERIALIZED here and below: each is read more than once, and scanning the tables again is
-- faster than copying millions of rows into memory.
events AS NOT MATERIALIZED (
    SELECT * FROM staging.inventory_events WHERE partition_hour = $partition_hour
),

-- Each ledger event's change of stock per location (cycle counts carry no movement here).
all_ledger_fx AS NOT MATERIALIZED (
    SELECT transaction_id, material_number, location, unit, target_system, source_system, reason, received_at,
           CASE WHEN transaction_type IN ('issue', 'transfer') THEN -quantity ELSE quantity END AS qty
    FROM events WHERE transaction_type <> 'cycle_count'
    UNION ALL
    SELECT transaction_id, material_number, to_location, unit, target_system, source_system, reason, received_at,
           quantity
    FROM events WHERE transaction_type = 'transfer'
),

all_erp_fx AS NOT MATERIALIZED (
    SELECT transaction_id, material_number, location, unit, reason, quantity_effect AS qty
    FROM snapshots.erp_movements WHERE partition_hour = $partition_hour
),

all_mes_fx AS NOT MATERIALIZED (
    SELECT transaction_id, material_number, location, unit, quantity_effect AS qty
    FROM snapshots.mes_applied WHERE partition_hour = $partition_hour AND status = 'applied'
),

-- Only a transaction with a row at a variance's material x location x unit can explain it, and
-- everything below compares transactions by transaction_id: keeping just those transactions
-- finds the same, without joining the hour's millions of transactions that explain nothing.
explaining AS (
    SELECT transaction_id FROM all_ledger_fx SEMI JOIN variances USING (material_number, location, unit)
    UNION
    SELECT transaction_id FROM all_erp_fx SEMI JOIN variances USING (material_number, location, unit)
    UNION
    SELECT transaction_id FROM all_mes_fx SEMI JOIN variances USING (material_number, location, unit)
),

ledger_fx AS (SELECT * FROM all_ledger_fx SEMI JOIN explaining USING (transaction_id)),

-- "Is it in the ledger?" asks of every event of the hour, cycle counts included: both systems
-- book a count (the ERP its difference document, the MES the change in its applied log) under
-- the count's transaction_id, though ledger_fx leaves counts out.
ledger_ids AS (SELECT transaction_id FROM events SEMI JOIN explaining USING (transaction_id)),

erp_fx AS (SELECT * FROM all_erp_fx SEMI JOIN explaining USING (transaction_id)),

mes_fx AS (SELECT * FROM all_mes_fx SEMI JOIN explaining USING (transaction_id)),

backlog AS (
    SELECT transaction_id, any_value(kind) AS kind, any_value(place) AS place, any_value(reason) AS reason
    FROM recon.pipeline_backlog
    WHERE partition_hour = $partition_hour AND transaction_id IS NOT NULL
    GROUP BY transaction_id
),

-- The ERP booked it under one unit, the message carried another: both unit rows are off.
unit_mismatches AS (
    SELECT e.transaction_id, e.material_number, e.location, e.unit AS erp_unit, l.unit AS ledger_unit,
           e.qty AS erp_qty, l.qty AS ledger_qty
    FROM erp_fx AS e
    JOIN ledger_fx AS l USING (transaction_id, material_number, location)
    WHERE e.unit <> l.unit
),

explanations AS (
    -- ERP side of a unit mismatch: the MES lacks the movement in the ERP's unit ...
    SELECT material_number, location, erp_unit AS unit, 'MES' AS system, 'unit_mismatch' AS cause,
           erp_qty AS qty, transaction_id, reason_text
    FROM (SELECT *, 'the message carried ' || ledger_unit || ' where the ERP booked ' || erp_unit AS reason_text
          FROM unit_mismatches)
    UNION ALL
    -- ... and the ERP lacks it in the message's unit.
    SELECT material_number, location, ledger_unit, 'ERP', 'unit_mismatch', ledger_qty, transaction_id,
           'the message carried ' || ledger_unit || ' where the ERP booked ' || erp_unit
    FROM unit_mismatches

    UNION ALL
    -- Booked in the ERP, never in the ledger: still in the pipeline, quarantined, or never sent.
    SELECT e.material_number, e.location, e.unit, 'MES',
           coalesce(b.kind, 'not_published'), e.qty, e.transaction_id,
           coalesce(b.place || ': ' || b.reason, 'ERP document with no event on the exchange')
    FROM erp_fx AS e
    LEFT JOIN backlog AS b USING (transaction_id)
    WHERE e.transaction_id NOT IN (SELECT transaction_id FROM ledger_ids)
      AND e.transaction_id NOT IN (SELECT transaction_id FROM unit_mismatches)

    UNION ALL
    -- In the ledger and meant for the MES, not in the MES's applied log.
    SELECT l.material_number, l.location, l.unit, 'MES',
           CASE WHEN b.kind IS NOT NULL THEN b.kind
                WHEN now.applied_at IS NOT NULL THEN 'late_delivery'
                ELSE 'missing_in_mes' END,
           l.qty, l.transaction_id,
           coalesce(b.place || ': ' || b.reason,
                    'applied by the MES at ' || strftime(now.applied_at, '%Y-%m-%d %H:%M:%S') || ', after its snapshot',
                    'received ' || strftime(l.received_at, '%Y-%m-%d %H:%M:%S') || '; not in the MES applied log')
    FROM ledger_fx AS l
    LEFT JOIN backlog AS b USING (transaction_id)
    LEFT JOIN (
        SELECT transaction_id, applied_at FROM recon.mes_applied_observed WHERE partition_hour = $partition_hour
    ) AS now USING (transaction_id)
    WHERE coalesce(l.target_system, 'MES') = 'MES'
      AND l.transaction_id NOT IN (SELECT transaction_id FROM mes_fx)
      AND l.transaction_id NOT IN (SELECT transaction_id FROM unit_mismatches)

    UNION ALL
    -- In the ledger and meant for the ERP (MES backflushes, ERP corrections), not in the ERP.
    SELECT l.material_number, l.location, l.unit, 'ERP',
           'missing_in_erp',
           l.qty, l.transaction_id, 'from ' || l.source_system || ', ' || l.reason
    FROM ledger_fx AS l
    WHERE coalesce(l.target_system, 'ERP') = 'ERP'
      AND l.source_system <> 'ERP'
      AND l.transaction_id NOT IN (SELECT transaction_id FROM erp_fx)

    UNION ALL
    -- Applied in the MES, never in the ledger (an MES posting that was not published).
    SELECT m.material_number, m.location, m.unit, 'ERP', 'not_published', m.qty, m.transaction_id,
           'MES applied it; no event on the exchange'
    FROM mes_fx AS m
    WHERE m.transaction_id NOT IN (SELECT transaction_id FROM ledger_ids)
      AND m.transaction_id NOT IN (SELECT transaction_id FROM erp_fx)
),

explained AS (
    SELECT
        x.material_number, x.location, x.unit, x.system, x.cause,
        sum(x.qty) AS explained_quantity,
        list(DISTINCT x.transaction_id ORDER BY x.transaction_id) AS transaction_ids,
        string_agg(DISTINCT x.reason_text, '; ') AS detail
    FROM explanations AS x
    JOIN variances AS v USING (material_number, location, unit)
    GROUP BY ALL
),

-- The RECON corrections posted within the hour, per system they correct: each closes (part of)
-- a difference the systems began the hour with.
corrected AS (
    SELECT material_number, location, unit,
           coalesce(sum(qty) FILTER (WHERE target_system = 'ERP'), 0) AS to_erp,
           coalesce(sum(qty) FILTER (WHERE target_system = 'MES'), 0) AS to_mes
    FROM ledger_fx
    WHERE source_system = 'RECON' AND reason = 'correction'
    GROUP BY ALL
),

-- The systems already disagreed when the hour began: a difference found (and corrected, or
-- held for review) in an earlier hour, not a new one. It names that hour's transactions. Only
-- what the hour's corrections left of it is carried to the hour's end; a correction its system
-- did not book is explained above (missing_in_mes or missing_in_erp), as any other transaction.
carried AS (
    SELECT
        v.material_number, v.location, v.unit, 'MES' AS system, 'carried_over' AS cause,
        (v.erp_begin + coalesce(c.to_erp, 0)) - (v.mes_begin + coalesce(c.to_mes, 0)) AS explained_quantity,
        coalesce(earlier.transaction_ids, []) AS transaction_ids,
        'the systems already disagreed when the hour began'
            || CASE WHEN c.material_number IS NOT NULL THEN '; less the RECON corrections of the hour' ELSE '' END
            AS detail
    FROM variances AS v
    LEFT JOIN corrected AS c USING (material_number, location, unit)
    LEFT JOIN (
        SELECT material_number, location, unit, arg_max(transaction_ids, partition_hour) AS transaction_ids
        FROM recon.variance_investigation
        WHERE partition_hour < $partition_hour AND cause <> 'carried_over'
        GROUP BY ALL
    ) AS earlier USING (material_number, location, unit)
    WHERE v.erp_begin <> v.mes_begin
      AND abs((v.erp_begin + coalesce(c.to_erp, 0)) - (v.mes_begin + coalesce(c.to_mes, 0))) > 0.000001
),

all_explained AS (
    SELECT * FROM explained
    UNION ALL
    SELECT * FROM carried
),

-- Whatever the explanations do not cover: what the MES would still need to match the ERP.
residuals AS (
    SELECT
        v.material_number, v.location, v.unit,
        v.cross_difference
          + coalesce(sum(e.explained_quantity) FILTER (WHERE e.system = 'ERP'), 0)
          - coalesce(sum(e.explained_quantity) FILTER (WHERE e.system = 'MES'), 0) AS residual,
        v.erp_three_way, v.mes_three_way
    FROM variances AS v
    LEFT JOIN all_explained AS e USING (material_number, location, unit)
    GROUP BY v.material_number, v.location, v.unit, v.cross_difference, v.erp_three_way, v.mes_three_way
)

SELECT CAST($partition_hour AS TIMESTAMPTZ) AS partition_hour, material_number, location, unit, system, cause,
       cause IN ('pending_sync', 'retrying', 'late_delivery') AS is_timing,
       explained_quantity, transaction_ids, detail
FROM all_explained
UNION ALL
SELECT CAST($partition_hour AS TIMESTAMPTZ), material_number, location, unit, 'MES', 'unexplained', false,
       residual, [], 'three-way ERP ' || erp_three_way || ', MES ' || mes_three_way
FROM residuals
WHERE abs(residual) > 0.000001
