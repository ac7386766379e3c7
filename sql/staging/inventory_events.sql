-- Builds staging.inventory_events for the hours $first_hour..$last_hour (one hour, or a chunk of
-- a ranged run) from the temporary table `staged_rows`: every line of the hours' segments, typed,
-- copies included (sql/staging/segment_rows.sql, or the segments' Parquet twins).
-- Within an hour a redelivered message can sit in two segments: the first copy staged wins.
-- An id already loaded for another hour is a duplicate too and is left out. That check reads
-- every id ever staged, so a run over a range of hours turns it off ($check_other_hours false)
-- and settles such duplicates once for the whole range (staging/cross_hour_duplicates.sql).
-- Copies are rare (a redelivery), so only the ids staged more than once are ordered by segment:
-- ordering the hours' millions of rows to find a few dozen copies cost more than the rest.
WITH copied AS (
    SELECT partition_hour, transaction_id
    FROM staged_rows
    GROUP BY ALL
    HAVING count(*) > 1
),

first_copies AS (
    SELECT * FROM staged_rows ANTI JOIN copied USING (partition_hour, transaction_id)
    UNION ALL
    (
        SELECT * FROM staged_rows SEMI JOIN copied USING (partition_hour, transaction_id)
        QUALIFY row_number() OVER (PARTITION BY partition_hour, transaction_id ORDER BY segment_id) = 1
    )
),

not_seen_in_other_hours AS (
    SELECT first_copies.*
    FROM first_copies
    ANTI JOIN (
        SELECT transaction_id FROM staging.inventory_events
        WHERE $check_other_hours AND partition_hour NOT BETWEEN $first_hour AND $last_hour
    ) AS other_hours USING (transaction_id)
)

SELECT
    partition_hour, transaction_id, event_time, source_system, target_system, material_number, material_type,
    transaction_type, reason, quantity, unit, location, to_location, erp_reference, movement_type, published_at,
    received_at, routing_key, segment_id
FROM not_seen_in_other_hours
