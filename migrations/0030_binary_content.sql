-- The bytes of Binary resources, in chunks beside the resource row (whose
-- JSON keeps contentType, securityContext and the size and digest in
-- meta.extension, never the bytes). Keyed by project first, like every
-- table, so each statement stays in one tenant. Chunks are written and read
-- one at a time, so neither side holds a whole file.
CREATE TABLE binary_chunk (
    project_id uuid NOT NULL,
    binary_id uuid NOT NULL,
    seq integer NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (project_id, binary_id, seq)
);

-- Images and PDFs are compressed already: do not try again.
ALTER TABLE binary_chunk ALTER COLUMN bytes SET STORAGE EXTERNAL;
