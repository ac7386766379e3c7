-- Builds recon.variance_investigation for one hour ($partition_hour): for every variance, the
-- causes that explain it with their transaction_ids, summed from the movements in
-- recon.explained_movements (recon/explained_movements.sql), then what the systems already
-- disagreed on when the hour began (carried_over), and whatever is left (unexplained).
WITH variances AS (
    SELECT * FROM recon.variances WHERE partition_hour = $partition_hour AND is_variance
),

movements AS (
    SELECT * FROM recon.explained_movements WHERE partition_hour = $partition_hour
),

explained AS (
    SELECT
        material_number, location, unit, system, cause,
        sum(quantity) AS explained_quantity,
        list(DISTINCT transaction_id ORDER BY transaction_id) AS transaction_ids,
        string_agg(DISTINCT detail, '; ' ORDER BY detail) AS detail
    FROM movements
    GROUP BY ALL
),

-- Movements an earlier hour found in flight and this hour found still missing: they are part of
-- the difference the hour began with, now explained on their own, so the carried part shrinks.
looked_at_again AS (
    SELECT material_number, location, unit,
           coalesce(sum(quantity) FILTER (WHERE system = 'MES'), 0) AS mes_lacks,
           coalesce(sum(quantity) FILTER (WHERE system = 'ERP'), 0) AS erp_lacks
    FROM movements
    WHERE in_flight_since IS NOT NULL
    GROUP BY ALL
),

-- The RECON corrections posted within the hour, per system they correct: each closes (part of)
-- a difference the systems began the hour with. As in recon/variances.sql, only what the hour's
-- first reconciliation saw.
corrected AS (
    SELECT e.material_number, e.location, e.unit,
           coalesce(sum(e.quantity) FILTER (WHERE e.target_system = 'ERP'), 0) AS to_erp,
           coalesce(sum(e.quantity) FILTER (WHERE e.target_system = 'MES'), 0) AS to_mes
    FROM staging.inventory_events AS e
    LEFT JOIN recon.reconciled_hours AS r USING (partition_hour)
    SEMI JOIN variances AS v
        ON v.material_number = e.material_number AND v.location = e.location AND v.unit = e.unit
    WHERE e.partition_hour = $partition_hour
      AND (r.first_reconciled_at IS NULL OR e.received_at <= r.first_reconciled_at)
      AND e.source_system = 'RECON' AND e.reason = 'correction' AND e.transaction_type = 'adjustment'
    GROUP BY ALL
),

-- The systems already disagreed when the hour began: a difference found (and corrected, or
-- held for review, or still in flight) in an earlier hour, not a new one. It names that hour's
-- transactions. Only what the hour's corrections and the movements looked at again left of it is
-- carried to the hour's end; a correction its system did not book is explained above
-- (missing_in_mes or missing_in_erp), as any other transaction.
carried AS (
    SELECT
        v.material_number, v.location, v.unit, 'MES' AS system, 'carried_over' AS cause,
        (v.erp_begin + coalesce(c.to_erp, 0)) - (v.mes_begin + coalesce(c.to_mes, 0))
            - coalesce(a.mes_lacks, 0) + coalesce(a.erp_lacks, 0) AS explained_quantity,
        coalesce(earlier.transaction_ids, []) AS transaction_ids,
        'the systems already disagreed when the hour began'
            || CASE WHEN c.material_number IS NOT NULL THEN '; less the RECON corrections of the hour' ELSE '' END
            || CASE WHEN a.material_number IS NOT NULL THEN '; less the movements looked at again' ELSE '' END
            AS detail
    FROM variances AS v
    LEFT JOIN corrected AS c USING (material_number, location, unit)
    LEFT JOIN looked_at_again AS a USING (material_number, location, unit)
    LEFT JOIN (
        SELECT material_number, location, unit, arg_max(transaction_ids, partition_hour) AS transaction_ids
        FROM recon.variance_investigation
        WHERE partition_hour < $partition_hour AND cause <> 'carried_over'
        GROUP BY ALL
    ) AS earlier USING (material_number, location, unit)
    WHERE v.erp_begin <> v.mes_begin
      AND abs((v.erp_begin + coalesce(c.to_erp, 0)) - (v.mes_begin + coalesce(c.to_mes, 0))
              - coalesce(a.mes_lacks, 0) + coalesce(a.erp_lacks, 0)) > 0.000001
),

all_explained AS (
    SELECT * FROM explained
    UNION ALL
    SELECT * FROM carried
),

-- Whatever the explanations do not cover: what the MES would still need to match the ERP.
residuals AS (
    SELECT
        v.material_number, v.location, v.unit,
        v.cross_difference
          + coalesce(sum(e.explained_quantity) FILTER (WHERE e.system = 'ERP'), 0)
          - coalesce(sum(e.explained_quantity) FILTER (WHERE e.system = 'MES'), 0) AS residual,
        v.erp_three_way, v.mes_three_way
    FROM variances AS v
    LEFT JOIN all_explained AS e USING (material_number, location, unit)
    GROUP BY v.material_number, v.location, v.unit, v.cross_difference, v.erp_three_way, v.mes_three_way
)

SELECT CAST($partition_hour AS TIMESTAMPTZ) AS partition_hour, material_number, location, unit, system, cause,
       cause IN ('in_flight', 'pending_sync', 'retrying', 'late_delivery') AS is_timing,
       explained_quantity, transaction_ids, detail
FROM all_explained
UNION ALL
SELECT CAST($partition_hour AS TIMESTAMPTZ), material_number, location, unit, 'MES', 'unexplained', false,
       residual, [], 'three-way ERP ' || erp_three_way || ', MES ' || mes_three_way
FROM residuals
WHERE abs(residual) > 0.000001
