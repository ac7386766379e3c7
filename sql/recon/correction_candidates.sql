-- The investigation rows of the hours $first_hour..$last_hour (one hour, or a chunk of a ranged
-- run) that a correction could fix, with what the source-of-truth rules need: the balances, the
-- material's type, ABC class and cost, the reason of the movements that explain the difference,
-- and whether each of them can be re-sent as itself. Every hour on its own.
WITH findings AS (
    SELECT *
    FROM recon.variance_investigation
    WHERE partition_hour BETWEEN $first_hour AND $last_hour AND NOT is_timing AND explained_quantity <> 0
      -- a difference carried over from an earlier hour was decided there
      AND cause <> 'carried_over'
),

finding_movements AS (
    SELECT f.partition_hour, f.material_number, f.location, f.unit, f.system, f.cause, t.transaction_id
    FROM findings AS f, unnest(f.transaction_ids) AS t(transaction_id)
),

-- The hours a movement that explains an hour's finding can belong to: back to the in-flight
-- window the hour was investigated with (a movement looked at again belongs to the hour that
-- found it in flight), plus a day, and two ahead. Reading only those keeps each hour's cost flat
-- as months of movements pile up.
windows AS (
    SELECT h.partition_hour,
           h.partition_hour - INTERVAL 1 DAY - to_minutes(coalesce(max(i.in_flight_window_minutes), 0)) AS seen_from,
           h.partition_hour + INTERVAL 2 HOUR AS seen_to
    FROM (SELECT DISTINCT partition_hour FROM findings) AS h
    LEFT JOIN recon.investigation_inputs AS i USING (partition_hour)
    GROUP BY h.partition_hour
),

-- Where each explaining movement was seen: the ledger has the event as it was published, the ERP
-- its document, the MES its log entry. A quarantined message may still carry its fields.
-- $seen_from..$seen_to spans every hour's window (recon/corrections.py `correction_candidates`),
-- so the scans skip the months outside it; `seen_per_hour` keeps each hour to its own window.
seen AS (
    SELECT partition_hour, transaction_id, reason FROM staging.inventory_events
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
    UNION ALL
    SELECT partition_hour, transaction_id, reason FROM snapshots.erp_movements
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
    UNION ALL
    SELECT partition_hour, transaction_id, NULL FROM snapshots.mes_applied
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
),

seen_per_hour AS (
    SELECT w.partition_hour, s.transaction_id, min(s.reason) AS reason
    FROM seen AS s
    JOIN windows AS w ON s.partition_hour BETWEEN w.seen_from AND w.seen_to
    GROUP BY ALL
),

per_finding AS (
    SELECT m.partition_hour, m.material_number, m.location, m.unit, m.system, m.cause,
           min(s.reason) AS reason,  -- a finding's transactions share a reason in practice; min() is deterministic
           -- every movement is known somewhere as a whole event, so a correction can re-send it
           bool_and(s.transaction_id IS NOT NULL) AS all_known
    FROM finding_movements AS m
    LEFT JOIN seen_per_hour AS s USING (partition_hour, transaction_id)
    GROUP BY ALL
)

SELECT
    f.partition_hour,
    f.material_number, f.location, f.unit, f.system, f.cause, f.explained_quantity, f.transaction_ids, f.detail,
    r.reason, coalesce(r.all_known, false) AS all_known,
    v.material_type, v.abc_class, v.unit_cost, v.erp_end, v.mes_end
FROM findings AS f
JOIN (SELECT * FROM recon.variances WHERE partition_hour BETWEEN $first_hour AND $last_hour) AS v
    ON v.partition_hour = f.partition_hour AND v.material_number = f.material_number
   AND v.location = f.location AND v.unit = f.unit
LEFT JOIN per_finding AS r
    ON r.partition_hour = f.partition_hour AND r.material_number = f.material_number AND r.location = f.location
   AND r.unit = f.unit AND r.system = f.system AND r.cause = f.cause
ORDER BY f.partition_hour, f.material_number, f.location, f.unit, f.system, f.cause
