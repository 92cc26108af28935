-- The pending backlog per managed field: transactions not applied yet, and how old the oldest is.
-- Reads only the pending objects (ec_pending), never the whole history.
-- param resource VARCHAR = NULL
SELECT f.resource, f.field,
       count(p.id) AS pending,
       count(DISTINCT p.originalId) AS records,
       min(p.timestamp) AS oldest,
       coalesce(epoch(now() - min(p.timestamp)), 0) AS oldest_age_seconds
FROM ec_fields f
LEFT JOIN ec_pending p ON p.resource = f.resource AND p.field = f.field
WHERE $resource IS NULL OR f.resource = $resource
GROUP BY f.resource, f.field
ORDER BY f.resource, f.field
