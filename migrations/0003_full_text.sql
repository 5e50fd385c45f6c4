-- Full-text parameters (_text, _content) hold long values that no btree may
-- index (PostgreSQL caps an index row at about 2.7 kB), so they get a table
-- of their own, searched by substring within one tenant, type and parameter.
CREATE TABLE idx_text (
    project_id    uuid NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    param         text NOT NULL,
    normalized    text NOT NULL,
    exact         text NOT NULL
);
CREATE INDEX idx_text_resource ON idx_text (project_id, resource_type, resource_id);
