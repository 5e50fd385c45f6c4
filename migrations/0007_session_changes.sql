-- Instances remember the callers they loaded (Login, membership, Project,
-- user, AccessPolicies, compiled). Every committed change to a resource of
-- those types, from any instance or by hand in SQL, is announced on the
-- `fhirgate_sessions` channel so that each instance forgets what it depended
-- on. PostgreSQL delivers a notification only when its transaction commits,
-- and once per distinct payload per transaction.
CREATE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('fhirgate_sessions', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('fhirgate_sessions', OLD.resource_type || '/' || OLD.id);
    ELSE
        PERFORM pg_notify('fhirgate_sessions', NEW.resource_type || '/' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resource_session_write AFTER INSERT OR UPDATE ON resource FOR EACH ROW
    WHEN (NEW.resource_type IN ('Login', 'ProjectMembership', 'Project', 'User', 'AccessPolicy', 'ClientApplication'))
    EXECUTE FUNCTION notify_session_change();
CREATE TRIGGER resource_session_delete AFTER DELETE ON resource FOR EACH ROW
    WHEN (OLD.resource_type IN ('Login', 'ProjectMembership', 'Project', 'User', 'AccessPolicy', 'ClientApplication'))
    EXECUTE FUNCTION notify_session_change();
CREATE TRIGGER resource_session_truncate AFTER TRUNCATE ON resource
    FOR EACH STATEMENT EXECUTE FUNCTION notify_session_change();
