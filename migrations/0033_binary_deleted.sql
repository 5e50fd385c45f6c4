-- A Binary that is deleted (its row flagged, or removed) takes its bytes
-- with it, in the same transaction, whichever path deleted it (the REST
-- interaction, a Bundle entry, a conditional delete).
CREATE FUNCTION delete_binary_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM binary_chunk WHERE project_id = OLD.project_id AND binary_id = OLD.id;
    ELSE
        DELETE FROM binary_chunk WHERE project_id = NEW.project_id AND binary_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resource_binary_deleted AFTER UPDATE ON resource FOR EACH ROW
    WHEN (NEW.resource_type = 'Binary' AND NEW.deleted AND NOT OLD.deleted)
    EXECUTE FUNCTION delete_binary_chunks();
CREATE TRIGGER resource_binary_removed AFTER DELETE ON resource FOR EACH ROW
    WHEN (OLD.resource_type = 'Binary')
    EXECUTE FUNCTION delete_binary_chunks();
