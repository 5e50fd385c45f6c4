-- The statement triggers of 0025 record subscription events without
-- `NOTIFY`: a transaction that notifies holds PostgreSQL's global notify
-- lock from its pre-commit until its commit record is flushed, so every
-- watched write committed alone, one fsync after another, and group commit
-- was lost (creates fell to a fifth with one subscription). The server wakes
-- its own fan-out after each write it commits (`Store::committed_writes`);
-- other instances' events are matched by whichever instance's fan-out runs
-- next, and the workers poll every second.
CREATE OR REPLACE FUNCTION record_subscription_creates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_event (project_id, resource_type, resource_id, version_id, interaction)
    SELECT n.project_id, n.resource_type, n.id, n.version_id, 'create'
    FROM new_rows n
    WHERE subscription_watched(n.project_id, n.resource_type)
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION record_subscription_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_event
        (project_id, resource_type, resource_id, version_id, previous_version_id, interaction)
    SELECT n.project_id, n.resource_type, n.id, n.version_id, o.version_id,
           CASE WHEN n.deleted THEN 'delete' WHEN o.deleted THEN 'create' ELSE 'update' END
    FROM new_rows n
    JOIN old_rows o ON o.project_id = n.project_id AND o.resource_type = n.resource_type AND o.id = n.id
    WHERE n.version_id <> o.version_id
      AND NOT (n.deleted AND o.deleted)
      AND subscription_watched(n.project_id, n.resource_type)
    ORDER BY n.id;
    RETURN NULL;
END
$$;
