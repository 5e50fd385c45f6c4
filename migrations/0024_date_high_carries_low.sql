-- `ge` on a date is a range of the index on the end of the value's range
-- (`high >= start of the searched value`) filtered by its start (the target
-- ends after the searched value, or starts within it: R4 search prefixes on
-- ranges, store::search::Compiler::range). Carrying `low` in the index keeps
-- that an index-only scan; its order (and `_sort=-date`'s walk) is unchanged.
CREATE INDEX idx_date_high_low ON idx_date (project_id, resource_type, param, high, resource_id) INCLUDE (low);
DROP INDEX idx_date_high;
ALTER INDEX idx_date_high_low RENAME TO idx_date_high;
