-- A resource's current version lives only in `resource`; `resource_history`
-- keeps the versions it superseded (copied there by the update that
-- supersedes them). A create writes one row instead of two: measured on
-- 10,000 Patients together with fewer index rows, creates +37-43%.
-- History listings read both tables, so `resource` gets the orderings that
-- the history table has for project-wide and (super admin) server-wide history.
DELETE FROM resource_history h
 USING resource r
 WHERE h.project_id = r.project_id AND h.resource_type = r.resource_type
   AND h.id = r.id AND h.version_id = r.version_id;
CREATE INDEX resource_system_updated ON resource (project_id, last_updated DESC, version_id DESC);
CREATE INDEX resource_all_updated ON resource (last_updated DESC, version_id DESC);
