-- Date values by the end of their range: `_sort=-date` reads a page's
-- resources from this index in descending order of the largest end
-- (store::search::SortDriver) instead of computing every match's largest
-- value and sorting them, and `ge` / `gt` conditions (`high >= …`) are a
-- range of it instead of a filter over the ranges that start before.
CREATE INDEX idx_date_high ON idx_date (project_id, resource_type, param, high, resource_id);
