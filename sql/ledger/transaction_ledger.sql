-- Builds ledger.transaction_ledger for the hours $first_hour..$last_hour (one hour, or a chunk of
-- a ranged run) from staging.inventory_events; every hour on its own.
WITH events AS (
    SELECT *
    FROM staging.inventory_events
    WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

-- One row per change of stock at one location: a transfer leaves its location and arrives
-- at its to_location, so it becomes two movements.
movements AS (
    SELECT
        partition_hour, material_number, material_type, location, unit, source_system, target_system, event_time,
        CASE transaction_type WHEN 'transfer' THEN 'transfer_out' ELSE transaction_type END AS movement,
        quantity
    FROM events
    UNION ALL
    SELECT
        partition_hour, material_number, material_type, to_location AS location, unit, source_system, target_system,
        event_time, 'transfer_in' AS movement, quantity
    FROM events
    WHERE transaction_type = 'transfer'
),

per_key AS (
    SELECT
        partition_hour,
        material_number,
        material_type,
        location,
        unit,
        source_system,
        target_system,
        coalesce(sum(quantity) FILTER (WHERE movement = 'receipt'), 0)      AS receipts,
        coalesce(sum(quantity) FILTER (WHERE movement = 'issue'), 0)        AS issues,
        coalesce(sum(quantity) FILTER (WHERE movement = 'transfer_in'), 0)  AS transfers_in,
        coalesce(sum(quantity) FILTER (WHERE movement = 'transfer_out'), 0) AS transfers_out,
        coalesce(sum(quantity) FILTER (WHERE movement = 'adjustment'), 0)   AS adjustments,
        arg_max(quantity, event_time) FILTER (WHERE movement = 'cycle_count') AS last_counted_balance,
        max(event_time) FILTER (WHERE movement = 'cycle_count')              AS last_counted_at,
        count(*) FILTER (WHERE movement = 'receipt')      AS receipt_count,
        count(*) FILTER (WHERE movement = 'issue')        AS issue_count,
        count(*) FILTER (WHERE movement = 'transfer_in')  AS transfer_in_count,
        count(*) FILTER (WHERE movement = 'transfer_out') AS transfer_out_count,
        count(*) FILTER (WHERE movement = 'adjustment')   AS adjustment_count,
        count(*) FILTER (WHERE movement = 'cycle_count')  AS cycle_count_count,
        count(*)                                          AS transaction_count
    FROM movements
    GROUP BY ALL
)

SELECT
    partition_hour,
    material_number, material_type, location, unit, source_system, target_system,
    receipts, issues, transfers_in, transfers_out, adjustments,
    receipts - issues + transfers_in - transfers_out + adjustments AS net_movement,
    last_counted_balance, last_counted_at,
    receipt_count, issue_count, transfer_in_count, transfer_out_count, adjustment_count,
    cycle_count_count, transaction_count
FROM per_key
