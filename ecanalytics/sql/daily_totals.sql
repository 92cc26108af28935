-- Daily totals per resource, field and cohort day (in each field's zone) from start to end (open-ended
-- without end). Values are signed.
-- param start DATE
-- param end DATE = NULL
-- param resource VARCHAR = NULL
-- param field VARCHAR = NULL
SELECT resource, field, cohortDate,
       count(*) AS transactionCount,
       count(*) FILTER (operation = 'set') AS setCount,
       count(*) FILTER (operation = 'add') AS addCount,
       count(*) FILTER (operation = 'sub') AS subCount,
       sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS totalValue,
       count(DISTINCT originalId) AS recordCount
FROM ec_transactions
WHERE cohortDate >= $start AND ($end IS NULL OR cohortDate <= $end)
  AND ($resource IS NULL OR resource = $resource)
  AND ($field IS NULL OR field = $field)
GROUP BY resource, field, cohortDate
ORDER BY resource, field, cohortDate
