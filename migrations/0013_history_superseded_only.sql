-- A resource's current version lives only in `resource`; `resource_history`
-- keeps the versions it superseded (copied there by the update that
-- supersedes them), so a create writes one row instead of two.
-- The table is rebuilt rather than thinned by DELETE: most of its rows are
-- current versions, and deleting them leaves its five indexes mostly empty
-- pages (on a copy of a 10,000-Patient database, updates afterwards ran at
-- about half the rate, VACUUM or not); rebuilt, they hold only what is kept.
CREATE TEMPORARY TABLE superseded ON COMMIT DROP AS
    SELECT h.* FROM resource_history h
     WHERE NOT EXISTS (
        SELECT 1 FROM resource r
         WHERE r.project_id = h.project_id AND r.resource_type = h.resource_type
           AND r.id = h.id AND r.version_id = h.version_id);
TRUNCATE resource_history;
INSERT INTO resource_history SELECT * FROM superseded;
-- History listings read both tables, so `resource` gets the orderings that
-- the history table has for project-wide and (super admin) server-wide history.
CREATE INDEX resource_system_updated ON resource (project_id, last_updated DESC, version_id DESC);
CREATE INDEX resource_all_updated ON resource (last_updated DESC, version_id DESC);
