-- The movements to look at again when hour $partition_hour is first investigated (at
-- $observed_at, with a window of $window_minutes): found in flight by an earlier hour, past their
-- window now, not looked at again before, at a material-location where the systems still
-- disagreed when this hour began. Whether each has arrived since is asked of the pipeline and of
-- the system that lacked it; recon.in_flight_checks keeps the answers.
WITH carried_keys AS (
    SELECT material_number, location, unit
    FROM recon.variances
    WHERE partition_hour = $partition_hour AND is_variance AND abs(erp_begin - mes_begin) > 0.000001
),

in_flight AS (
    SELECT transaction_id, material_number, location, unit, system,
           arg_min(quantity, partition_hour) AS quantity,
           min(event_time) AS event_time,
           min(partition_hour) AS in_flight_since
    FROM recon.explained_movements
    WHERE partition_hour < $partition_hour AND cause = 'in_flight'
    GROUP BY ALL
),

-- Looked at again by an hour before this one (found missing then, and a finding of that hour).
looked_at AS (
    SELECT DISTINCT transaction_id, material_number, location, unit, system
    FROM recon.explained_movements
    WHERE partition_hour < $partition_hour AND in_flight_since IS NOT NULL
),

-- Looked at again before and found to have arrived: nothing left to ask.
arrived AS (
    SELECT DISTINCT transaction_id, material_number, location, unit, system
    FROM recon.in_flight_checks
    WHERE partition_hour < $partition_hour AND state = 'arrived'
),

-- Whether the movement reached the ledger at all, for the cause it gets if it is still missing.
in_ledger AS (
    SELECT DISTINCT transaction_id
    FROM staging.inventory_events
    WHERE transaction_id IN (SELECT transaction_id FROM in_flight)
)

SELECT f.transaction_id, f.material_number, f.location, f.unit, f.system, f.quantity, f.event_time,
       f.in_flight_since,
       CASE WHEN f.transaction_id NOT IN (SELECT transaction_id FROM in_ledger) THEN 'not_published'
            WHEN f.system = 'MES' THEN 'missing_in_mes'
            ELSE 'missing_in_erp' END AS cause_if_missing
FROM in_flight AS f
SEMI JOIN carried_keys USING (material_number, location, unit)
ANTI JOIN looked_at USING (transaction_id, material_number, location, unit, system)
ANTI JOIN arrived USING (transaction_id, material_number, location, unit, system)
WHERE f.event_time IS NULL
   OR f.event_time + to_minutes(CAST($window_minutes AS INTEGER)) <= CAST($observed_at AS TIMESTAMPTZ)
ORDER BY f.transaction_id, f.material_number, f.location, f.unit, f.system
