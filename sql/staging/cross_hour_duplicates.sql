-- Deletes, from the hours $first_hour..$last_hour just loaded in one run, every event whose
-- transaction_id is also staged under another hour: a copy outside the range (loaded before)
-- wins, else the earliest hour's. One pass for the whole range, instead of one per hour.
DELETE FROM staging.inventory_events AS e
USING (
    SELECT
        transaction_id,
        arg_min(
            partition_hour,
            (CASE WHEN partition_hour BETWEEN $first_hour AND $last_hour THEN 1 ELSE 0 END) * 1e12
                + epoch(partition_hour)
        ) AS kept_hour
    FROM staging.inventory_events
    GROUP BY transaction_id
    HAVING count(*) > 1
) AS duplicated
WHERE e.transaction_id = duplicated.transaction_id
  AND e.partition_hour <> duplicated.kept_hour
  AND e.partition_hour BETWEEN $first_hour AND $last_hour
