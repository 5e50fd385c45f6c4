-- The ids of live resources, for finding a search page's ids without
-- reading the rows (an index-only scan once VACUUM has marked the pages
-- all-visible): `store::search::page_query` in the default order by id.
-- Measured on 100,000 Patients (2.1 million resources): a family-name prefix
-- matching 2,544 Patients went from 696 ms (every match's row read, then
-- sorted) to 1.7 ms.
CREATE INDEX resource_live ON resource (project_id, resource_type, id) WHERE NOT deleted;
