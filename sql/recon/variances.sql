-- Builds recon.variances for the hours $first_hour..$last_hour (one hour, or a chunk of a ranged
-- run), every hour on its own: per material x location x unit, the
-- three-way check of each system (beginning balance + ledger transactions - ending balance)
-- and the difference between the systems' ending balances.
-- NOT MATERIALIZED (events, effects, per_system): each is read twice, and computing it again from
-- the table scan is faster than copying millions of rows into memory.
-- The hours' movements as their first reconciliation saw them: one staged after that (a late
-- arrival, or a movement a correction re-sent under its own id) is left out, so a re-run or a
-- backfill gives the variances the live run gave. The next hours see it in their beginning balances.
WITH events AS NOT MATERIALIZED (
    SELECT e.*
    FROM staging.inventory_events AS e
    LEFT JOIN recon.reconciled_hours AS r USING (partition_hour)
    WHERE e.partition_hour BETWEEN $first_hour AND $last_hour
      AND (r.first_reconciled_at IS NULL OR e.received_at <= r.first_reconciled_at)
),

-- Every change of stock at one location. A transfer leaves `location` and arrives at
-- `to_location`; a cycle count is not a change but the counted balance (is_count).
effects AS NOT MATERIALIZED (
    SELECT
        partition_hour, transaction_id, event_time, material_number, location, unit, target_system,
        transaction_type = 'cycle_count' AS is_count,
        CASE WHEN transaction_type IN ('issue', 'transfer') THEN -quantity ELSE quantity END AS qty
    FROM events
    UNION ALL
    SELECT
        partition_hour, transaction_id, event_time, material_number, to_location AS location, unit, target_system,
        false AS is_count, quantity AS qty
    FROM events
    WHERE transaction_type = 'transfer'
),

-- Which system's books a movement belongs in: ERP and MES movements belong in both (each
-- system syncs the other's), a RECON correction only in its target system.
per_system AS NOT MATERIALIZED (
    SELECT 'ERP' AS system, * FROM effects WHERE coalesce(target_system, 'ERP') = 'ERP'
    UNION ALL
    SELECT 'MES' AS system, * FROM effects WHERE coalesce(target_system, 'MES') = 'MES'
),

last_counts AS (
    SELECT partition_hour, system, material_number, location, unit,
           arg_max(qty, event_time) AS counted, max(event_time) AS counted_at
    FROM per_system
    WHERE is_count
    GROUP BY ALL
),

ledger AS (
    SELECT
        p.partition_hour, p.system, p.material_number, p.location, p.unit,
        coalesce(sum(p.qty) FILTER (WHERE NOT p.is_count), 0) AS net_movement,
        any_value(c.counted) AS counted,
        coalesce(sum(p.qty) FILTER (WHERE NOT p.is_count AND p.event_time > c.counted_at), 0) AS net_after_count,
        count(*) AS transactions
    FROM per_system AS p
    LEFT JOIN last_counts AS c USING (partition_hour, system, material_number, location, unit)
    GROUP BY ALL
),

erp AS (
    SELECT * FROM snapshots.erp_inventory WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

mes AS (
    SELECT * FROM snapshots.mes_inventory WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

material_locations AS (
    SELECT partition_hour, material_number, location, unit FROM erp
    UNION
    SELECT partition_hour, material_number, location, unit FROM mes
    UNION
    SELECT partition_hour, material_number, location, unit FROM ledger
),

balances AS (
    SELECT
        k.partition_hour, k.material_number, k.location, k.unit,
        coalesce(erp.begin_quantity, 0) AS erp_begin,
        coalesce(erp.end_quantity, 0)   AS erp_end,
        coalesce(mes.begin_quantity, 0) AS mes_begin,
        coalesce(mes.end_quantity, 0)   AS mes_end,
        coalesce(le.net_movement, 0)    AS erp_ledger_net,
        coalesce(lm.net_movement, 0)    AS mes_ledger_net,
        coalesce(le.transactions, 0) + coalesce(lm.transactions, 0) AS ledger_transactions,
        le.counted AS erp_counted, le.net_after_count AS erp_net_after_count,
        lm.counted AS mes_counted, lm.net_after_count AS mes_net_after_count
    FROM material_locations AS k
    LEFT JOIN erp USING (partition_hour, material_number, location, unit)
    LEFT JOIN mes USING (partition_hour, material_number, location, unit)
    LEFT JOIN ledger AS le ON le.system = 'ERP' AND le.partition_hour = k.partition_hour
        AND le.material_number = k.material_number
        AND le.location = k.location AND le.unit = k.unit
    LEFT JOIN ledger AS lm ON lm.system = 'MES' AND lm.partition_hour = k.partition_hour
        AND lm.material_number = k.material_number
        AND lm.location = k.location AND lm.unit = k.unit
),

-- What the ledger says each system should end the hour with: from the last cycle count of
-- the hour when there was one, else from the beginning balance.
expected AS (
    SELECT
        *,
        CASE WHEN erp_counted IS NOT NULL THEN erp_counted + erp_net_after_count
             ELSE erp_begin + erp_ledger_net END AS erp_expected_end,
        CASE WHEN mes_counted IS NOT NULL THEN mes_counted + mes_net_after_count
             ELSE mes_begin + mes_ledger_net END AS mes_expected_end
    FROM balances
),

checked AS (
    SELECT
        e.*,
        erp_expected_end - erp_end AS erp_three_way,
        mes_expected_end - mes_end AS mes_three_way,
        erp_end - mes_end          AS cross_difference,
        m.material_type, m.base_unit, m.unit_cost, m.abc_class
    FROM expected AS e
    LEFT JOIN snapshots.erp_materials AS m USING (material_number)
)

SELECT
    partition_hour,
    material_number,
    material_type,
    abc_class,
    location,
    split_part(location, '/', 1) AS warehouse,
    unit,
    base_unit,
    erp_begin, erp_ledger_net, erp_expected_end, erp_end, erp_three_way,
    mes_begin, mes_ledger_net, mes_expected_end, mes_end, mes_three_way,
    cross_difference,
    abs(cross_difference) AS abs_difference,
    round(100 * abs(cross_difference) / nullif(greatest(abs(erp_end), abs(mes_end)), 0), 4) AS pct_difference,
    unit_cost,
    -- The unit cost is per base unit; a row in another unit (a unit mismatch) has no value.
    -- In DECIMAL(38,12): DECIMAL(18,6) x DECIMAL(18,6) overflows at a value of 1,000,000.
    CASE WHEN unit = base_unit THEN round(CAST(abs(cross_difference) AS DECIMAL(38, 12)) * unit_cost, 2) END
        AS value_difference,
    ledger_transactions,
    (abs(erp_three_way) > 0.000001 OR abs(mes_three_way) > 0.000001 OR abs(cross_difference) > 0.000001)
        AS is_variance
FROM checked
