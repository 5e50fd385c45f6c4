-- A user's second factor (TOTP, RFC 6238). The key is a shared secret the
-- server must read to check codes, so it is stored as is (like a signing
-- key) and never returned after enrolment. enrolled_at is null while the
-- user has been shown the key but has not yet proven a code from it.
-- last_step is the newest time step accepted: a code is accepted only for a
-- later step, so one code cannot be used twice, on any instance.
-- recovery_codes holds SHA-256 digests of the unused single-use codes.
CREATE TABLE user_mfa (
    user_id        uuid        PRIMARY KEY,
    key            text        NOT NULL,
    enrolled_at    timestamptz,
    last_step      bigint      NOT NULL DEFAULT 0,
    recovery_codes text[]      NOT NULL DEFAULT '{}'
);
