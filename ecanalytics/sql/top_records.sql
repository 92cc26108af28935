-- The most active records between two cohort days, by transaction count (ties: larger total, then id).
-- param start DATE
-- param end DATE = NULL
-- param limit INTEGER = 10
-- param resource VARCHAR = NULL
-- param field VARCHAR = NULL
SELECT resource, field, originalId,
       count(*) AS transactionCount,
       sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS totalValue
FROM ec_transactions
WHERE cohortDate >= $start AND ($end IS NULL OR cohortDate <= $end)
  AND ($resource IS NULL OR resource = $resource)
  AND ($field IS NULL OR field = $field)
GROUP BY resource, field, originalId
ORDER BY transactionCount DESC, totalValue DESC, resource, field, originalId
LIMIT $limit
