-- Type-level order by last update, then id, in one index: `_sort=_lastUpdated`
-- and `_sort=-_lastUpdated` pages (ties in id order following the key's
-- direction, store::search::ids_descending) and the pages before them read
-- twenty entries of it, where rows sharing a timestamp (a bulk load, a
-- Bundle's entries) used to be collected and sorted by id first. The index
-- it replaces had `last_updated DESC` alone; type history keeps its presorted
-- order by `last_updated` from either.
CREATE INDEX resource_type_updated_id ON resource (project_id, resource_type, last_updated, id);
DROP INDEX resource_type_updated;
ALTER INDEX resource_type_updated_id RENAME TO resource_type_updated;
