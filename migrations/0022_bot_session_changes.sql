-- A Bot's tokens end with the Bot (its Login's session reads it, see
-- store/identity.rs), so a change to a Bot is announced like a change to a
-- ClientApplication: every instance forgets the callers it remembered.
DROP TRIGGER resource_session_write ON resource;
DROP TRIGGER resource_session_delete ON resource;
CREATE TRIGGER resource_session_write AFTER INSERT OR UPDATE ON resource FOR EACH ROW
    WHEN (NEW.resource_type IN ('Login', 'ProjectMembership', 'Project', 'User', 'AccessPolicy', 'ClientApplication', 'Bot'))
    EXECUTE FUNCTION notify_session_change();
CREATE TRIGGER resource_session_delete AFTER DELETE ON resource FOR EACH ROW
    WHEN (OLD.resource_type IN ('Login', 'ProjectMembership', 'Project', 'User', 'AccessPolicy', 'ClientApplication', 'Bot'))
    EXECUTE FUNCTION notify_session_change();
