-- Subscriptions (docs/subscriptions.md). A write to a resource type that an
-- active Subscription of its project watches records an event in the
-- writing transaction (so a rolled-back write notifies nothing and a crash
-- after the commit loses nothing); workers match events to subscriptions
-- and deliver them. Triggers do the recording, so every write path (single,
-- conditional, Bundle, the server's own lifecycle writes) records alike.

-- Which (project, type) active Subscriptions watch; kept by a trigger from
-- the Subscription resources themselves.
CREATE TABLE subscription_target (
    project_id uuid NOT NULL,
    resource_type text NOT NULL,
    subscription_id uuid NOT NULL,
    PRIMARY KEY (project_id, resource_type, subscription_id)
);
CREATE INDEX subscription_target_subscription ON subscription_target (subscription_id);

-- Writes to watched types, not yet matched against the subscriptions.
CREATE TABLE subscription_event (
    seq bigserial PRIMARY KEY,
    project_id uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id uuid NOT NULL,
    version_id uuid NOT NULL,
    -- The version this one replaced (update, delete); NULL for a create.
    previous_version_id uuid,
    interaction text NOT NULL CHECK (interaction IN ('create', 'update', 'delete')),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One notification of one subscription: pending until `finished_at`.
CREATE TABLE subscription_delivery (
    seq bigserial PRIMARY KEY,
    subscription_id uuid NOT NULL,
    project_id uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id uuid NOT NULL,
    version_id uuid NOT NULL,
    interaction text NOT NULL,
    -- 'rest-hook': any instance's worker delivers it; 'websocket': an
    -- instance where a client is bound to the subscription.
    channel text NOT NULL,
    -- When the write that caused it was recorded (commit-to-delivery latency).
    recorded_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- 'delivered', 'failed' (attempts used up) or 'dropped' (the
    -- subscription ended, or its author may no longer read the resource).
    outcome text,
    last_error text
);
-- The head of each subscription's queue, in write order.
CREATE INDEX subscription_delivery_pending ON subscription_delivery (subscription_id, seq)
    WHERE finished_at IS NULL;
-- Pending notifications oldest first: the oldest one due is a queue's head.
CREATE INDEX subscription_delivery_queue ON subscription_delivery (seq)
    WHERE finished_at IS NULL;
CREATE INDEX subscription_delivery_finished ON subscription_delivery (finished_at)
    WHERE finished_at IS NOT NULL;

-- An active Subscription with a channel fhirgate delivers watches the type
-- its criteria names (the part before '?').
CREATE FUNCTION subscription_target_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    subscription jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM subscription_target WHERE subscription_id = OLD.id;
        RETURN NULL;
    END IF;
    DELETE FROM subscription_target WHERE subscription_id = NEW.id;
    IF NOT NEW.deleted THEN
        subscription := NEW.content::jsonb;
        IF subscription->>'status' = 'active'
           AND subscription->'channel'->>'type' IN ('rest-hook', 'websocket')
           AND coalesce(subscription->>'criteria', '') <> '' THEN
            INSERT INTO subscription_target (project_id, resource_type, subscription_id)
            VALUES (NEW.project_id, split_part(subscription->>'criteria', '?', 1), NEW.id)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resource_subscription_write AFTER INSERT OR UPDATE ON resource FOR EACH ROW
    WHEN (NEW.resource_type = 'Subscription')
    EXECUTE FUNCTION subscription_target_sync();
CREATE TRIGGER resource_subscription_delete AFTER DELETE ON resource FOR EACH ROW
    WHEN (OLD.resource_type = 'Subscription')
    EXECUTE FUNCTION subscription_target_sync();

-- Whether an active Subscription watches a project's type.
CREATE FUNCTION subscription_watched(project uuid, kind text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM subscription_target t
                   WHERE t.project_id = project AND t.resource_type = kind)
$$;

-- Statement triggers see a statement's rows at once (a batch of creates is
-- one statement): one probe of the small target table per row.
CREATE FUNCTION record_subscription_creates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_event (project_id, resource_type, resource_id, version_id, interaction)
    SELECT n.project_id, n.resource_type, n.id, n.version_id, 'create'
    FROM new_rows n
    WHERE subscription_watched(n.project_id, n.resource_type)
    ORDER BY n.id;
    IF FOUND THEN
        PERFORM pg_notify('fhirgate_subscriptions', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION record_subscription_changes() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF FOUND THEN
        PERFORM pg_notify('fhirgate_subscriptions', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resource_subscription_creates AFTER INSERT ON resource
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_subscription_creates();
CREATE TRIGGER resource_subscription_changes AFTER UPDATE ON resource
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_subscription_changes();
