-- Monthly totals per resource, field and cohort month (YYYY-MM). Values are signed.
-- param start_month VARCHAR
-- param end_month VARCHAR = NULL
-- param resource VARCHAR = NULL
-- param field VARCHAR = NULL
SELECT resource, field, cohortMonth,
       count(*) AS transactionCount,
       count(*) FILTER (operation = 'set') AS setCount,
       count(*) FILTER (operation = 'add') AS addCount,
       count(*) FILTER (operation = 'sub') AS subCount,
       sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS totalValue,
       count(DISTINCT originalId) AS recordCount
FROM ec_transactions
WHERE cohortMonth >= $start_month AND ($end_month IS NULL OR cohortMonth <= $end_month)
  AND ($resource IS NULL OR resource = $resource)
  AND ($field IS NULL OR field = $field)
GROUP BY resource, field, cohortMonth
ORDER BY resource, field, cohortMonth
