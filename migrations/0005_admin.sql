-- The user lifecycle: single-use links (invitation, password reset, email
-- verification) and the mail the server sends.

-- A link's secret is kept only as a SHA-256 digest (it is a long random
-- string); `used_at` makes it single-use, `expires_at` bounds its life.
CREATE TABLE user_security_request (
    id              uuid        PRIMARY KEY,
    -- The tenant the User resource lives in, and the User.
    user_project_id uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    -- The project the request was made for (its name goes into the mail and
    -- its AuditEvents record what happens).
    project_id      uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('invite', 'reset', 'verify-email')),
    secret_hash     text        NOT NULL,
    -- verify-email: the address being verified (a pending email change).
    email           text,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_security_request_user ON user_security_request (user_project_id, user_id);

-- Every message the server composes. Without FHIRGATE_SMTP_URL this table
-- (and the log) is where they go, so the flows can be followed locally.
CREATE TABLE email_outbox (
    id         uuid        PRIMARY KEY,
    project_id uuid        NOT NULL,
    recipient  text        NOT NULL,
    subject    text        NOT NULL,
    text_body  text        NOT NULL,
    html_body  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when an SMTP server accepted the message.
    sent_at    timestamptz,
    -- Why sending failed, when it did.
    error      text
);
CREATE INDEX email_outbox_project ON email_outbox (project_id, created_at DESC);
