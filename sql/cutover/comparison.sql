-- Builds cutover.comparison for one day ($day): per material-location-unit, the ERP's stock at
-- the end of the day against the event-driven MES's and the batch-synced MES's, with the cause
-- of each disagreement. $scope: the material types in pilot scope that day; $tolerance: in base
-- units; $last_batch_run: the last batch sync the day-end stock includes.
WITH stock AS (
    SELECT * FROM cutover.day_end_stock WHERE day = $day
),

keys AS (
    SELECT DISTINCT material_number, location, unit FROM stock
),

types AS (
    SELECT material_number, any_value(material_type) AS material_type
    FROM stock WHERE material_type IS NOT NULL GROUP BY material_number
),

side_by_side AS (
    SELECT k.material_number, k.location, k.unit, t.material_type,
           coalesce(e.quantity, 0) AS erp_quantity,
           coalesce(v.quantity, 0) AS event_quantity,
           CASE WHEN $has_batch THEN coalesce(b.quantity, 0) END AS batch_quantity
    FROM keys k
    LEFT JOIN types t USING (material_number)
    LEFT JOIN stock e ON e.system = 'erp' AND (e.material_number, e.location, e.unit) = (k.material_number, k.location, k.unit)
    LEFT JOIN stock v ON v.system = 'event_driven' AND (v.material_number, v.location, v.unit) = (k.material_number, k.location, k.unit)
    LEFT JOIN stock b ON b.system = 'batch' AND (b.material_number, b.location, b.unit) = (k.material_number, k.location, k.unit)
),

judged AS (
    SELECT *,
           coalesce(list_contains($scope, material_type), false) AS in_scope,
           abs(erp_quantity - event_quantity) <= $tolerance AS event_agrees,
           abs(erp_quantity - batch_quantity) <= $tolerance AS batch_agrees
    FROM side_by_side
),

moves AS (
    SELECT * FROM cutover.day_movements WHERE day = $day
),

-- ERP documents of the day the event-driven MES never applied, and the reverse.
not_applied AS (
    SELECT material_number, location, unit, list(DISTINCT transaction_id ORDER BY transaction_id) AS ids
    FROM moves m WHERE system = 'erp'
      AND NOT EXISTS (SELECT 1 FROM moves x WHERE x.system = 'event_driven' AND x.transaction_id = m.transaction_id)
    GROUP BY ALL
),

not_in_erp AS (
    SELECT material_number, location, unit, list(DISTINCT transaction_id ORDER BY transaction_id) AS ids
    FROM moves m WHERE system = 'event_driven'
      AND NOT EXISTS (SELECT 1 FROM moves x WHERE x.system = 'erp' AND x.transaction_id = m.transaction_id)
      -- counts written by a switch or a re-seed carry no ERP document of their own
      AND NOT regexp_matches(transaction_id, '^(CUTOVER|SEED)')
    GROUP BY ALL
),

-- The same material at the same location held in another unit by the other side.
unit_mismatch AS (
    SELECT DISTINCT e.material_number, e.location, e.unit
    FROM stock e JOIN stock v ON v.system = 'event_driven' AND e.system = 'erp'
     AND (v.material_number, v.location) = (e.material_number, e.location) AND v.unit <> e.unit
     AND v.quantity <> 0
    UNION
    SELECT DISTINCT v.material_number, v.location, v.unit
    FROM stock e JOIN stock v ON v.system = 'event_driven' AND e.system = 'erp'
     AND (v.material_number, v.location) = (e.material_number, e.location) AND v.unit <> e.unit
     AND v.quantity <> 0
),

yesterday AS (
    SELECT material_number, location, unit, erp_quantity - event_quantity AS difference
    FROM cutover.comparison WHERE day = $day - INTERVAL 1 DAY AND NOT event_agrees
),

-- ERP documents after the last batch run that made it into the day-end stock.
since_batch AS (
    SELECT DISTINCT material_number, location, unit FROM moves
    WHERE system = 'erp' AND event_time >= $last_batch_run
)

SELECT $day::DATE AS day, j.material_number, j.location, j.unit, j.material_type, j.in_scope,
       $scope_label AS scope, j.erp_quantity, j.event_quantity, j.batch_quantity, j.event_agrees, j.batch_agrees,
       CASE
           WHEN j.event_agrees THEN NULL
           WHEN j.material_type IS NULL THEN 'unknown_material'
           WHEN NOT j.in_scope THEN 'out_of_scope'
           WHEN um.material_number IS NOT NULL THEN 'unit_mismatch'
           WHEN na.ids IS NOT NULL THEN 'not_applied'
           WHEN ne.ids IS NOT NULL THEN 'not_in_erp'
           WHEN abs(y.difference - (j.erp_quantity - j.event_quantity)) <= $tolerance THEN 'carried_over'
           ELSE 'unexplained'
       END AS event_cause,
       CASE
           WHEN j.batch_agrees IS NULL OR j.batch_agrees THEN NULL
           WHEN sb.material_number IS NOT NULL THEN 'batch_lag'
           ELSE 'unexplained'
       END AS batch_cause,
       CASE
           WHEN j.event_agrees THEN []
           ELSE coalesce(na.ids, []) || coalesce(ne.ids, [])
       END AS transaction_ids,
       CASE
           WHEN j.event_agrees THEN NULL
           WHEN NOT j.in_scope THEN 'the event-driven path does not carry ' || coalesce(j.material_type, 'this material') || ' yet'
           WHEN um.material_number IS NOT NULL THEN 'the other system holds this material here in another unit'
           WHEN na.ids IS NOT NULL THEN len(na.ids) || ' ERP document(s) of the day never applied by the event-driven path'
           WHEN ne.ids IS NOT NULL THEN len(ne.ids) || ' transaction(s) applied by the event-driven path that the ERP does not have'
           WHEN y.difference IS NOT NULL THEN 'the same difference as the day before'
       END AS detail
FROM judged j
LEFT JOIN unit_mismatch um USING (material_number, location, unit)
LEFT JOIN not_applied na USING (material_number, location, unit)
LEFT JOIN not_in_erp ne USING (material_number, location, unit)
LEFT JOIN yesterday y USING (material_number, location, unit)
LEFT JOIN since_batch sb USING (material_number, location, unit)
ORDER BY j.material_number, j.location, j.unit
