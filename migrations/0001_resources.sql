-- fhirgate storage: every resource, FHIR or administrative, is a JSON document
-- in one generic table, keyed by its project (tenant) first so that every
-- query is tenant-scoped by index and the tables can be distributed by
-- project_id later without redesign.

-- The current version of each resource (deleted ones stay, flagged, so a read
-- can answer 410 Gone).
CREATE TABLE resource (
    project_id    uuid        NOT NULL,
    resource_type text        NOT NULL,
    id            uuid        NOT NULL,
    version_id    uuid        NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    -- The JSON exactly as served: kept as text so reads send bytes as they are.
    content       text        NOT NULL,
    PRIMARY KEY (project_id, resource_type, id)
);

-- Super admins read across projects by type and id.
CREATE INDEX resource_type_id ON resource (resource_type, id);
-- Type-level listing and (later) search default order.
CREATE INDEX resource_type_updated ON resource (project_id, resource_type, last_updated DESC);
-- Client credentials find the membership of a ClientApplication; replaced by
-- the generic reference index when search lands.
CREATE INDEX resource_membership_user ON resource ((content::jsonb #>> '{user,reference}'))
    WHERE resource_type = 'ProjectMembership';

-- Every version, including deletes (content NULL), written in the same
-- transaction as the resource row.
CREATE TABLE resource_history (
    project_id    uuid        NOT NULL,
    resource_type text        NOT NULL,
    id            uuid        NOT NULL,
    version_id    uuid        NOT NULL,
    last_updated  timestamptz NOT NULL,
    content       text,
    PRIMARY KEY (project_id, resource_type, id, version_id)
);

-- Instance history, newest first, with a stable tiebreak for keyset paging.
CREATE INDEX resource_history_instance
    ON resource_history (project_id, resource_type, id, last_updated DESC, version_id DESC);
CREATE INDEX resource_history_type
    ON resource_history (project_id, resource_type, last_updated DESC, version_id DESC);
CREATE INDEX resource_history_system
    ON resource_history (project_id, last_updated DESC, version_id DESC);
-- Super admins' history crosses projects.
CREATE INDEX resource_history_all ON resource_history (last_updated DESC, version_id DESC);

-- Secrets never live in resource content (so no route can leak them and
-- history never keeps them): password hashes, client secret hashes.
CREATE TABLE resource_secret (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    kind          text NOT NULL,
    hash          text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, resource_type, resource_id, kind)
);
CREATE INDEX resource_secret_lookup ON resource_secret (resource_type, resource_id, kind);

-- Token signing keys (ES256). The private key never leaves the server; the
-- public part is published at /.well-known/jwks.json.
CREATE TABLE signing_key (
    kid         text        PRIMARY KEY,
    private_pem text        NOT NULL,
    public_jwk  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    active      boolean     NOT NULL DEFAULT true
);
