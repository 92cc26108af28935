-- Reconciliation: each record's consolidated value against a recomputation from its applied
-- history with the default reducer (last set, then signed adds and subs; ties by transaction id),
-- over the applied rows the views show (the key rule already applied: a retry or a conflicting reuse
-- of a key is not among them, while a key reused after dedup_window is a second transaction, which
-- consolidation counted too), starting from the record's base (ec_bases: the value it
-- was inserted with, else the field default; after a delete-mode retention, the retention base, as
-- the deleted days are gone while archived days are read from the archive). Lists only the records where
-- they differ. Fields with another reducer are skipped. After a delete-mode retention, the base
-- stands at the cut like a set, so transactions dated before the cut (late arrivals) are left out,
-- as consolidation leaves them out. Consolidation folds late data in event order, so this lists
-- only values changed behind the ledger's back; recalculate() repairs them.
-- param resource VARCHAR = NULL
-- param tolerance DOUBLE = 1e-9
WITH fields AS (
    SELECT * FROM ec_fields WHERE reducer = 'default' AND ($resource IS NULL OR resource = $resource)
),
history AS (
    SELECT t.resource, t.field, t.originalId, t.id, t.value, t.operation, t.timestamp
    FROM ec_transactions t JOIN fields USING (resource, field)
    WHERE t.applied AND (fields.deletedBefore IS NULL OR t.timestamp >= fields.deletedBefore)
),
last_set AS (
    SELECT resource, field, originalId, value AS set_value, timestamp AS set_ts, id AS set_id
    FROM history WHERE operation = 'set'
    QUALIFY row_number() OVER (PARTITION BY resource, field, originalId ORDER BY timestamp DESC, id DESC) = 1
),
after_set AS (
    SELECT h.resource, h.field, h.originalId,
           sum(CASE WHEN h.operation = 'sub' THEN -h.value ELSE h.value END) AS delta
    FROM history h LEFT JOIN last_set s USING (resource, field, originalId)
    WHERE h.operation <> 'set'
      AND (s.set_ts IS NULL OR h.timestamp > s.set_ts OR (h.timestamp = s.set_ts AND h.id > s.set_id))
    GROUP BY ALL
),
recomputed AS (
    SELECT k.resource, k.field, k.originalId AS id,
           coalesce(s.set_value, b.value, f."default") + coalesce(a.delta, 0) AS recomputed
    FROM (SELECT DISTINCT resource, field, originalId FROM history) k
    JOIN fields f USING (resource, field)
    LEFT JOIN ec_bases b ON b.resource = k.resource AND b.field = k.field AND b.id = k.originalId
    LEFT JOIN last_set s USING (resource, field, originalId)
    LEFT JOIN after_set a USING (resource, field, originalId)
)
SELECT resource, field, id, v.value AS consolidated,
       coalesce(r.recomputed, b.value, f."default") AS recomputed,
       v.value - coalesce(r.recomputed, b.value, f."default") AS difference
FROM ec_values v
JOIN fields f USING (resource, field)
LEFT JOIN recomputed r USING (resource, field, id)
LEFT JOIN ec_bases b USING (resource, field, id)
WHERE abs(v.value - coalesce(r.recomputed, b.value, f."default")) > $tolerance
ORDER BY resource, field, id
