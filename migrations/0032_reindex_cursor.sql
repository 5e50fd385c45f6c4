-- Where a `fhirgate reindex` stopped, per scope (`project=… type=…`), so a
-- run stopped halfway resumes after the last batch it finished. The row is
-- removed when the run completes.
CREATE TABLE reindex_cursor (
    scope         text PRIMARY KEY,
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    id            uuid NOT NULL
);
