-- Resources created per project, added up by every instance, and the
-- growth step (FHIRGATE_ANALYZE_AFTER, then ten times it, ...) at which the
-- search tables were last analyzed for it: the steps of store::statistics
-- then hold across instances and restarts. A few statements a second at
-- most (each instance adds its creates in batches), one row per project.
CREATE TABLE project_growth (
    project_id  uuid PRIMARY KEY,
    created     bigint NOT NULL DEFAULT 0,
    analyzed_at bigint NOT NULL DEFAULT 0
);
