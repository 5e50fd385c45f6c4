-- Identity: one-time secrets of a Login (authorization codes, refresh tokens),
-- brute-force lockout, and replay protection for client assertions. Only
-- SHA-256 digests of secrets are stored; the secrets themselves are shown once.

-- kind 'code': single-use authorization code; kind 'refresh': a refresh
-- token, rotated on every use. used_at set = redeemed; presenting it again
-- revokes the whole login (RFC 9700 §2.2.2, §4.14).
CREATE TABLE login_secret (
    digest       text        PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('code', 'refresh')),
    project_id   uuid        NOT NULL,
    login_id     uuid        NOT NULL,
    -- The redirect_uri the code was issued for (RFC 6749 §4.1.3), if any.
    redirect_uri text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX login_secret_login ON login_secret (project_id, login_id);

-- Failed sign-ins, keyed by scope and lower-cased email whether or not such a
-- user exists, so a lockout never reveals an account.
CREATE TABLE login_lockout (
    key          text        PRIMARY KEY,
    failures     integer     NOT NULL,
    last_failure timestamptz NOT NULL,
    locked_until timestamptz
);

-- jti values of accepted client assertions (RFC 7523 §3 item 7), kept until
-- the assertion itself expires.
CREATE TABLE client_assertion_jti (
    client_id  uuid        NOT NULL,
    jti        text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
