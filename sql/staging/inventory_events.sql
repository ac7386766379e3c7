-- Builds staging.inventory_events for the hours $first_hour..$last_hour (one hour, or a chunk of
-- a ranged run) from their staged segments: the table `segment_hours` (file, partition_hour)
-- lists each segment file with the hour whose folder holds it.
-- Within an hour a redelivered message can sit in two segments: the first copy staged wins.
-- An id already loaded for another hour is a duplicate too and is left out. That check reads
-- every id ever staged, so a run over a range of hours turns it off ($check_other_hours false)
-- and settles such duplicates once for the whole range (staging/cross_hour_duplicates.sql).
WITH staged AS (
    SELECT
        segment_hours.partition_hour,
        json.*,
        parse_filename(json.filename, true) AS segment_id
    FROM read_json(
        $files,
        format = 'newline_delimited',
        filename = true,
        columns = {
            schema_version: 'VARCHAR', transaction_id: 'VARCHAR', timestamp: 'VARCHAR',
            source_system: 'VARCHAR', material_number: 'VARCHAR', material_type: 'VARCHAR',
            quantity: 'VARCHAR', unit: 'VARCHAR', location: 'VARCHAR', to_location: 'VARCHAR',
            transaction_type: 'VARCHAR', reason: 'VARCHAR', erp_reference: 'VARCHAR',
            movement_type: 'VARCHAR', target_system: 'VARCHAR', received_at: 'VARCHAR',
            routing_key: 'VARCHAR', published_at: 'VARCHAR'
        }
    ) AS json
    JOIN segment_hours ON segment_hours.file = json.filename
),

first_copies AS (
    SELECT *
    FROM staged
    QUALIFY row_number() OVER (PARTITION BY partition_hour, transaction_id ORDER BY segment_id) = 1
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
    CAST(partition_hour AS TIMESTAMPTZ)     AS partition_hour,
    transaction_id,
    CAST("timestamp" AS TIMESTAMPTZ)        AS event_time,
    source_system,
    target_system,
    material_number,
    material_type,
    transaction_type,
    reason,
    CAST(quantity AS DECIMAL(18, 6))        AS quantity,
    unit,
    location,
    to_location,
    erp_reference,
    movement_type,
    CAST(published_at AS TIMESTAMPTZ)       AS published_at,
    CAST(received_at AS TIMESTAMPTZ)        AS received_at,
    routing_key,
    segment_id
FROM not_seen_in_other_hours
