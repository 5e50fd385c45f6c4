-- One User per email in each scope: server-scoped Users (no User.project)
-- across the server, project-scoped ones within their project. Sign-in and
-- password reset find a user by email and must never choose between two.
-- Writers check under the identity lock first (a clear 409); this index is
-- the backstop no path can bypass. Its predicate is evaluated for every
-- resource row written, so it tests the type before anything else.
CREATE UNIQUE INDEX resource_user_email ON resource (
    (COALESCE(content::jsonb #>> '{project,reference}', '')),
    (lower(btrim(content::jsonb ->> 'email')))
) WHERE resource_type = 'User' AND NOT deleted;
