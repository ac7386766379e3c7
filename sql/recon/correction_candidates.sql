-- The investigation rows of one hour ($partition_hour) that a correction could fix, with what the
-- source-of-truth rules need: the balances, the material's type, ABC class and cost, the reason of
-- the movements that explain the difference, and whether each of them can be re-sent as itself.
WITH findings AS (
    SELECT *
    FROM recon.variance_investigation
    WHERE partition_hour = $partition_hour AND NOT is_timing AND explained_quantity <> 0
      -- a difference carried over from an earlier hour was decided there
      AND cause <> 'carried_over'
),

finding_movements AS (
    SELECT f.material_number, f.location, f.unit, f.system, f.cause, t.transaction_id
    FROM findings AS f, unnest(f.transaction_ids) AS t(transaction_id)
),

-- Where each explaining movement was seen: the ledger has the event as it was published, the ERP
-- its document, the MES its log entry. A quarantined message may still carry its fields. Only the
-- hours $seen_from..$seen_to are read (recon/corrections.py `decide`: the hours a movement that
-- explains this hour can belong to), not the months the tables hold.
seen AS (
    SELECT transaction_id, reason FROM staging.inventory_events
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
    UNION ALL
    SELECT transaction_id, reason FROM snapshots.erp_movements
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
    UNION ALL
    SELECT transaction_id, NULL FROM snapshots.mes_applied
    WHERE partition_hour BETWEEN $seen_from AND $seen_to AND transaction_id IN (SELECT transaction_id FROM finding_movements)
),

per_finding AS (
    SELECT m.material_number, m.location, m.unit, m.system, m.cause,
           min(s.reason) AS reason,  -- a finding's transactions share a reason in practice; min() is deterministic
           -- every movement is known somewhere as a whole event, so a correction can re-send it
           bool_and(s.transaction_id IS NOT NULL) AS all_known
    FROM finding_movements AS m
    LEFT JOIN (SELECT transaction_id, min(reason) AS reason FROM seen GROUP BY ALL) AS s USING (transaction_id)
    GROUP BY ALL
)

SELECT
    f.material_number, f.location, f.unit, f.system, f.cause, f.explained_quantity, f.transaction_ids, f.detail,
    r.reason, coalesce(r.all_known, false) AS all_known,
    v.material_type, v.abc_class, v.unit_cost, v.erp_end, v.mes_end
FROM findings AS f
JOIN (SELECT * FROM recon.variances WHERE partition_hour = $partition_hour) AS v
    ON v.material_number = f.material_number
   AND v.location = f.location AND v.unit = f.unit
LEFT JOIN per_finding AS r
    ON r.material_number = f.material_number AND r.location = f.location AND r.unit = f.unit
   AND r.system = f.system AND r.cause = f.cause
ORDER BY f.material_number, f.location, f.unit, f.system, f.cause
