-- The investigation rows of one hour ($partition_hour) that a correction could fix, with what the
-- source-of-truth rules need: the balances, the material's type, ABC class and cost, and the
-- reason of the movement that explains the difference.
WITH findings AS (
    SELECT *
    FROM recon.variance_investigation
    WHERE partition_hour = $partition_hour AND NOT is_timing AND explained_quantity <> 0
      -- a difference carried over from an earlier hour was decided there
      AND cause <> 'carried_over'
),

-- The reason of each explaining transaction, from wherever it was seen: the ledger, the ERP's
-- documents, or the pipeline (a quarantined message may still carry its fields).
reasons AS (
    SELECT transaction_id, reason FROM staging.inventory_events WHERE partition_hour = $partition_hour
    UNION ALL
    SELECT transaction_id, reason FROM snapshots.erp_movements WHERE partition_hour = $partition_hour
),

first_reason AS (
    SELECT f.material_number, f.location, f.unit, f.system, f.cause,
           min(r.reason) AS reason  -- a finding's transactions share a reason in practice; min() is deterministic
    FROM findings AS f, unnest(f.transaction_ids) AS t(transaction_id)
    JOIN reasons AS r ON r.transaction_id = t.transaction_id
    GROUP BY ALL
)

SELECT
    f.material_number, f.location, f.unit, f.system, f.cause, f.explained_quantity, f.transaction_ids, f.detail,
    r.reason,
    v.material_type, v.abc_class, v.unit_cost, v.erp_end, v.mes_end
FROM findings AS f
JOIN recon.variances AS v
    ON v.partition_hour = f.partition_hour AND v.material_number = f.material_number
   AND v.location = f.location AND v.unit = f.unit
LEFT JOIN first_reason AS r
    ON r.material_number = f.material_number AND r.location = f.location AND r.unit = f.unit
   AND r.system = f.system AND r.cause = f.cause
ORDER BY f.material_number, f.location, f.unit, f.system, f.cause
