//! SQL of sign-in state that is not a resource (`migrations/0004_identity.sql`):
//! one-time login secrets, lockout counters, client-assertion `jti`s.
//! A login secret is found by the digest of a random secret the client holds,
//! which is what names its tenant; the Login it leads to is then read with it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Executor, Query, Store, Tx, Version, VERSION_COLUMNS};
use crate::error::Result;

/// What a login secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Code,
    Refresh,
}

impl SecretKind {
    fn as_str(self) -> &'static str {
        match self {
            SecretKind::Code => "code",
            SecretKind::Refresh => "refresh",
        }
    }
}

/// A login secret, locked for the transaction that read it.
#[derive(Debug)]
pub struct LoginSecret {
    pub project_id: Uuid,
    pub login_id: Uuid,
    pub redirect_uri: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
}

/// A new login secret.
pub struct NewSecret<'a> {
    pub digest: &'a str,
    pub kind: SecretKind,
    pub project_id: Uuid,
    pub login_id: Uuid,
    pub redirect_uri: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
}

impl Tx {
    pub async fn insert_login_secret(&self, secret: &NewSecret<'_>) -> Result<()> {
        let mut q = Query::new(
            "INSERT INTO login_secret (digest, kind, project_id, login_id, redirect_uri, expires_at) VALUES (",
        );
        q.bind(secret.digest.to_string())
            .push(", ")
            .bind(secret.kind.as_str())
            .push(", ")
            .bind(secret.project_id)
            .push(", ")
            .bind(secret.login_id)
            .push(", ")
            .bind(secret.redirect_uri.map(str::to_string))
            .push(", ")
            .bind(secret.expires_at)
            .push(")");
        self.query(&q).await?;
        Ok(())
    }

    /// The secret with this digest, locked (`FOR UPDATE`) so two concurrent
    /// redemptions queue and only the first sees it unused.
    pub async fn lock_login_secret(
        &self,
        digest: &str,
        kind: SecretKind,
    ) -> Result<Option<LoginSecret>> {
        let mut q = Query::new(
            "SELECT project_id, login_id, redirect_uri, expires_at, used_at IS NOT NULL FROM login_secret WHERE digest = ",
        );
        q.bind(digest.to_string())
            .push(" AND kind = ")
            .bind(kind.as_str())
            .push(" FOR UPDATE");
        Ok(self.query(&q).await?.first().map(|row| LoginSecret {
            project_id: row.get(0),
            login_id: row.get(1),
            redirect_uri: row.get(2),
            expires_at: row.get(3),
            used: row.get(4),
        }))
    }

    pub async fn mark_login_secret_used(&self, digest: &str) -> Result<()> {
        let mut q = Query::new("UPDATE login_secret SET used_at = now() WHERE digest = ");
        q.bind(digest.to_string());
        self.query(&q).await?;
        Ok(())
    }

    /// Spends every secret of a login (it was revoked).
    pub async fn spend_login_secrets(&self, project_id: Uuid, login_id: Uuid) -> Result<()> {
        let mut q = Query::new(
            "UPDATE login_secret SET used_at = COALESCE(used_at, now()) WHERE project_id = ",
        );
        q.bind(project_id).push(" AND login_id = ").bind(login_id);
        self.query(&q).await?;
        Ok(())
    }
}

/// How failed sign-ins lock an account key.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub threshold: i32,
    pub base_seconds: f64,
    pub max_seconds: f64,
}

impl Store {
    /// Until when `key` is locked, if it is now.
    pub async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let mut q = Query::new("SELECT locked_until FROM login_lockout WHERE key = ");
        q.bind(key.to_string()).push(" AND locked_until > now()");
        Ok(self.query(&q).await?.first().map(|row| row.get(0)))
    }

    /// Counts a failure in one statement (concurrent failures all count):
    /// from the threshold on, the key is locked for the base period, doubled
    /// for each failure past it, up to the cap. Returns the lock's end.
    pub async fn record_login_failure(
        &self,
        key: &str,
        policy: LockoutPolicy,
    ) -> Result<Option<DateTime<Utc>>> {
        let mut q = Query::new(
            "INSERT INTO login_lockout (key, failures, last_failure, locked_until) VALUES (",
        );
        q.bind(key.to_string());
        let threshold = q.placeholder(policy.threshold);
        let base = q.placeholder(policy.base_seconds);
        let max = q.placeholder(policy.max_seconds);
        let lock = |n: &str| {
            format!(
                "CASE WHEN {n} >= {threshold}::int4 THEN now() + make_interval(secs => \
                 LEAST({max}::float8, {base}::float8 * power(2, {n} - {threshold}::int4))) END"
            )
        };
        q.push(&format!(
            ", 1, now(), {}) ON CONFLICT (key) DO UPDATE SET failures = login_lockout.failures + 1, \
             last_failure = now(), locked_until = {} RETURNING locked_until",
            lock("1"),
            lock("(login_lockout.failures + 1)")
        ));
        Ok(self.query(&q).await?.first().and_then(|row| row.get(0)))
    }

    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        let mut q = Query::new("DELETE FROM login_lockout WHERE key = ");
        q.bind(key.to_string());
        self.query(&q).await?;
        Ok(())
    }

    /// Records a client assertion's `jti`; false when it was seen before.
    /// Expired ones are dropped on the way.
    pub async fn remember_assertion_jti(
        &self,
        client_id: Uuid,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut purge = Query::new("DELETE FROM client_assertion_jti WHERE client_id = ");
        purge.bind(client_id).push(" AND expires_at < now()");
        self.query(&purge).await?;
        let mut q =
            Query::new("INSERT INTO client_assertion_jti (client_id, jti, expires_at) VALUES (");
        q.bind(client_id)
            .push(", ")
            .bind(jti.to_string())
            .push(", ")
            .bind(expires_at)
            .push(") ON CONFLICT DO NOTHING RETURNING 1");
        Ok(!self.query(&q).await?.is_empty())
    }
}

/// What a bearer token's Login stands on, read in one statement: the live
/// Login, the live membership it names, that membership's Project, and
/// whether the signed-in User (if it is one) still exists.
pub struct SessionRows {
    pub login: String,
    /// `(project, content)` of the membership, when it is live.
    pub membership: Option<(Uuid, String)>,
    pub project: Option<String>,
    /// `false` only when the Login's user is a `User/…` that is gone.
    pub user_live: bool,
    /// `false` when the Login was issued to a ClientApplication (its
    /// `client`, or its user for client credentials) or a Bot that is
    /// deleted or `status: off`: its tokens stop with it.
    pub client_live: bool,
}

/// References are read out of the stored JSON; one that is not
/// `Type/<uuid>` matches nothing (NULL), so it cannot make the cast fail.
const SESSION_SQL: &str = "
SELECT l.content, m.project_id, m.content, p.content,
       (u.id IS NOT NULL OR NOT (l.content::jsonb #>> '{user,reference}' LIKE 'User/%')) AS user_live,
       (c.id IS NOT NULL AND (c.content::jsonb ->> 'status') IS DISTINCT FROM 'off'
        OR COALESCE(l.content::jsonb #>> '{client,reference}', l.content::jsonb #>> '{user,reference}', '')
           !~ '^(ClientApplication|Bot)/') AS client_live
FROM resource l
LEFT JOIN resource m ON m.resource_type = 'ProjectMembership' AND NOT m.deleted
     AND m.id = substring(l.content::jsonb #>> '{membership,reference}'
                          from '^ProjectMembership/([0-9a-f-]{36})$')::uuid
LEFT JOIN resource p ON p.project_id = m.project_id AND p.resource_type = 'Project'
     AND p.id = m.project_id AND NOT p.deleted
LEFT JOIN resource u ON u.resource_type = 'User' AND NOT u.deleted
     AND u.id = substring(l.content::jsonb #>> '{user,reference}' from '^User/([0-9a-f-]{36})$')::uuid
LEFT JOIN resource c ON c.resource_type IN ('ClientApplication', 'Bot') AND NOT c.deleted
     AND c.id = substring(COALESCE(l.content::jsonb #>> '{client,reference}', l.content::jsonb #>> '{user,reference}')
                          from '^(?:ClientApplication|Bot)/([0-9a-f-]{36})$')::uuid
WHERE l.resource_type = 'Login' AND l.id = ";

impl Store {
    /// The session behind `login_id` (across projects: a Login lives with its
    /// user, the membership may be elsewhere); `None` when no live Login.
    pub async fn session(&self, login_id: Uuid) -> Result<Option<SessionRows>> {
        let mut q = Query::new(SESSION_SQL);
        q.bind(login_id).push(" AND NOT l.deleted");
        Ok(self.query(&q).await?.first().map(|row| {
            let membership_project: Option<Uuid> = row.get(1);
            let membership_content: Option<String> = row.get(2);
            SessionRows {
                login: row.get(0),
                membership: membership_project.zip(membership_content),
                project: row.get(3),
                user_live: row.get::<_, Option<bool>>(4).unwrap_or(false),
                client_live: row.get::<_, Option<bool>>(5).unwrap_or(false),
            }
        }))
    }
}

impl Store {
    /// The live Users with this email (compared as the unique index of
    /// `migrations/0021_user_email_unique.sql` does) in each of `scopes`
    /// (`Project/<id>` for project-scoped Users, `""` for server-scoped
    /// ones), in the order of `scopes`: one probe of that index per scope,
    /// however many projects there are.
    pub async fn users_by_email(&self, scopes: &[String], email: &str) -> Result<Vec<Version>> {
        let mut q = Query::new(&format!(
            "SELECT {VERSION_COLUMNS} FROM resource r \
             JOIN unnest("
        ));
        q.bind(scopes.to_vec())
            .push(
                "::text[]) WITH ORDINALITY AS scope(reference, position) \
                 ON COALESCE(r.content::jsonb #>> '{project,reference}', '') = scope.reference \
                 WHERE r.resource_type = 'User' AND NOT r.deleted \
                 AND lower(btrim(r.content::jsonb ->> 'email')) = lower(btrim(",
            )
            .bind(email.to_string())
            .push(")) ORDER BY scope.position");
        Ok(self
            .query(&q)
            .await?
            .iter()
            .map(Version::from_row)
            .collect())
    }
}
