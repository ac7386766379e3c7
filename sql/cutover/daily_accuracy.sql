-- Builds cutover.daily_accuracy for one day ($day) from cutover.comparison: the share of
-- material-locations where each path agrees with the ERP, for the pilot scope, everything, and
-- each material type.
WITH rows AS (
    SELECT * FROM cutover.comparison WHERE day = $day
),

slices AS (
    SELECT 'in_scope' AS slice, * FROM rows WHERE in_scope
    UNION ALL
    SELECT 'all' AS slice, * FROM rows
    UNION ALL
    SELECT 'type:' || coalesce(material_type, 'unknown') AS slice, * FROM rows
)

SELECT $day::DATE AS day, slice, any_value(scope) AS scope,
       count(*)::INTEGER AS material_locations,
       count(*) FILTER (WHERE event_agrees)::INTEGER AS event_agree,
       avg(event_agrees::INTEGER)::DOUBLE AS event_accuracy,
       count(*) FILTER (WHERE batch_agrees)::INTEGER AS batch_agree,
       avg(batch_agrees::INTEGER)::DOUBLE AS batch_accuracy
FROM slices
GROUP BY slice
ORDER BY slice
