-- Bulk Data $export jobs (server/src/export). Any instance takes a waiting
-- job, or a running one whose lease has passed (its instance stopped), with
-- FOR UPDATE SKIP LOCKED; the instance running a job renews the lease as it
-- writes, and stops when the row is gone (cancelled) or another runner
-- took it. The output is NDJSON in chunks of about a megabyte, per type.
CREATE TABLE export_job (
    id               uuid PRIMARY KEY,
    project_id       uuid NOT NULL,
    -- Who asked: only the same membership polls and downloads, and the
    -- export runs as that Login (with its scopes) would read.
    membership_id    uuid NOT NULL,
    login_id         uuid NOT NULL,
    scope            text NOT NULL,
    client_id        text NOT NULL,
    request          text NOT NULL,
    -- Level, group, types and since, as the kick-off parsed them.
    params           jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'accepted'
                     CHECK (status IN ('accepted', 'running', 'complete', 'failed')),
    runner           uuid,
    lease_until      timestamptz,
    progress         text NOT NULL DEFAULT '',
    error            text,
    transaction_time timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX export_job_waiting ON export_job (created_at) WHERE status IN ('accepted', 'running');
CREATE INDEX export_job_completed ON export_job (completed_at) WHERE completed_at IS NOT NULL;

CREATE TABLE export_output (
    job_id        uuid NOT NULL REFERENCES export_job (id) ON DELETE CASCADE,
    resource_type text NOT NULL,
    seq           integer NOT NULL,
    lines         integer NOT NULL,
    bytes         bytea NOT NULL,
    PRIMARY KEY (job_id, resource_type, seq)
);
