-- The rows of the JSON Lines segments $files, all of the hour $partition_hour (the folder that
-- holds them), typed as staging.inventory_events holds them and still with every copy: one row
-- per line. The drain writes each segment's rows as its Parquet twin (messaging/staged_log.py);
-- staging reads the twins, and this for a segment that has none.
-- The fields are read as text and cast here, once: the contract checked each of them already.
SELECT
    CAST($partition_hour AS TIMESTAMPTZ)    AS partition_hour,
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
    parse_filename(filename, true)          AS segment_id
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
)
