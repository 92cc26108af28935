-- The pending backlog per managed field: transactions not applied yet, and how long the oldest has
-- waited since it was WRITTEN (ageSeconds: what an alert on a stuck consolidator needs); the oldest
-- event time (a backfill can be old and yet new) is the second pair of columns. Reads only the
-- pending objects (ec_pending), never the whole history.
-- param resource VARCHAR = NULL
SELECT f.resource, f.field,
       count(p.id) AS pending,
       count(DISTINCT p.originalId) AS recordCount,
       min(p.writtenAt) AS oldestWrittenAt,
       coalesce(epoch(now() - min(p.writtenAt)), 0) AS ageSeconds,
       min(p.timestamp) AS oldestEventAt,
       coalesce(epoch(now() - min(p.timestamp)), 0) AS eventAgeSeconds
FROM ec_fields f
LEFT JOIN ec_pending p ON p.resource = f.resource AND p.field = f.field
WHERE $resource IS NULL OR f.resource = $resource
GROUP BY f.resource, f.field
ORDER BY f.resource, f.field
