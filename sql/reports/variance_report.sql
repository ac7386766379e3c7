-- Builds recon.variance_report for the hours $first_hour..$last_hour (one hour, or a chunk of a
-- ranged run), every hour on its own: each variance of an hour, once per cause the investigation
-- found, with the correction the rules decided for that cause.
WITH variances AS (
    SELECT * FROM recon.variances WHERE partition_hour BETWEEN $first_hour AND $last_hour AND is_variance
),

causes AS (
    SELECT * FROM recon.variance_investigation WHERE partition_hour BETWEEN $first_hour AND $last_hour
),

-- A correction is decided for one investigation row: same material-location, unit and cause,
-- explained by the same transactions. Its status is read now, so a supervisor's approval or
-- rejection since shows when the hour is reported again.
corrections AS (
    SELECT partition_hour, correction_id, material_number, location, unit, cause, explained_by, status, critical
    FROM recon.corrections WHERE partition_hour BETWEEN $first_hour AND $last_hour
)

SELECT
    v.partition_hour,
    v.warehouse,
    v.material_type,
    v.abc_class,
    v.material_number,
    v.location,
    v.unit,
    coalesce(c.cause, 'no_cause_found') AS cause,
    c.system,
    coalesce(c.is_timing, false) AS is_timing,
    v.erp_end,
    v.mes_end,
    v.erp_three_way,
    v.mes_three_way,
    v.cross_difference,
    v.pct_difference,
    v.unit_cost,
    v.value_difference,
    c.explained_quantity,
    -- In DECIMAL(38,12): DECIMAL(18,6) x DECIMAL(18,6) overflows at a value of 1,000,000.
    round(CAST(abs(c.explained_quantity) AS DECIMAL(38, 12)) * v.unit_cost, 2) AS explained_value,
    coalesce(c.transaction_ids, []::VARCHAR[]) AS transaction_ids,
    c.detail,
    k.correction_id,
    k.status AS correction_status,
    k.critical
FROM variances AS v
LEFT JOIN causes AS c USING (partition_hour, material_number, location, unit)
LEFT JOIN corrections AS k
    ON k.partition_hour = v.partition_hour AND k.material_number = v.material_number AND k.location = v.location AND k.unit = v.unit
   AND k.cause = c.cause AND k.explained_by = c.transaction_ids
