-- Search indexes: one table per value kind, filled from fhir-model's index
-- extraction in the same transaction as the resource write. Every index
-- leads with (project_id, resource_type, param) so a search condition is an
-- index range scan inside one tenant; `resource_id` joins back to `resource`.
-- Rows are replaced on every write of the resource (delete by the resource,
-- then insert), hence the (project_id, resource_type, resource_id) indexes.

CREATE TABLE idx_token (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    system        text,
    code          text,
    -- Display or CodeableConcept.text, normalised, for :text.
    text          text
);
CREATE INDEX idx_token_value ON idx_token (project_id, resource_type, param, code, system);
CREATE INDEX idx_token_resource ON idx_token (project_id, resource_type, resource_id);

CREATE TABLE idx_string (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    normalized    text NOT NULL,
    exact         text NOT NULL
);
-- text_pattern_ops: the default search is a prefix LIKE on the normalised value.
CREATE INDEX idx_string_value ON idx_string (project_id, resource_type, param, normalized text_pattern_ops);
CREATE INDEX idx_string_resource ON idx_string (project_id, resource_type, resource_id);

CREATE TABLE idx_date (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    -- The instant range the value covers, microseconds since the epoch, inclusive.
    low           bigint NOT NULL,
    high          bigint NOT NULL
);
CREATE INDEX idx_date_value ON idx_date (project_id, resource_type, param, low, high);
CREATE INDEX idx_date_resource ON idx_date (project_id, resource_type, resource_id);

CREATE TABLE idx_number (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    value         double precision NOT NULL
);
CREATE INDEX idx_number_value ON idx_number (project_id, resource_type, param, value);
CREATE INDEX idx_number_resource ON idx_number (project_id, resource_type, resource_id);

CREATE TABLE idx_quantity (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    value         double precision NOT NULL,
    system        text,
    code          text,
    unit          text
);
CREATE INDEX idx_quantity_value ON idx_quantity (project_id, resource_type, param, value);
CREATE INDEX idx_quantity_resource ON idx_quantity (project_id, resource_type, resource_id);

CREATE TABLE idx_reference (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    -- Set when the reference names a resource on this server (Type/uuid).
    target_type   text,
    target_id     uuid,
    url           text NOT NULL
);
CREATE INDEX idx_reference_value ON idx_reference (project_id, resource_type, param, target_id);
-- _has, _revinclude and chains walk references backwards from the target.
CREATE INDEX idx_reference_target ON idx_reference (project_id, target_id, param);
CREATE INDEX idx_reference_resource ON idx_reference (project_id, resource_type, resource_id);

CREATE TABLE idx_uri (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    value         text NOT NULL
);
CREATE INDEX idx_uri_value ON idx_uri (project_id, resource_type, param, value text_pattern_ops);
CREATE INDEX idx_uri_resource ON idx_uri (project_id, resource_type, resource_id);

-- Composite values: each row one combination of component values, kept as
-- a JSON array of the components' index values.
CREATE TABLE idx_composite (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    parts         jsonb NOT NULL
);
CREATE INDEX idx_composite_value ON idx_composite (project_id, resource_type, param);
CREATE INDEX idx_composite_resource ON idx_composite (project_id, resource_type, resource_id);

-- The reference index replaces the stop-gap expression index of 0001.
DROP INDEX resource_membership_user;
