-- Instances keep the signing keys in memory (to sign, verify and publish the
-- JWKS). A key added or removed by one instance (rotation) is announced on
-- the session channel so every other instance reloads its key set at once,
-- instead of publishing the old set until its next periodic reload.
CREATE FUNCTION notify_signing_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fhirgate_sessions', 'SigningKey');
    RETURN NULL;
END
$$;

CREATE TRIGGER signing_key_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signing_key
    FOR EACH STATEMENT EXECUTE FUNCTION notify_signing_key_change();
