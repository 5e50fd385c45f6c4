//! SQL of users' second factors (`migrations/0023_user_mfa.sql`). Every
//! change that spends something (a time step, a recovery code) is one
//! conditional statement, so two instances can never both accept it.

use uuid::Uuid;

use super::{Executor, Query, Store, Tx};
use crate::error::Result;

/// A user's second factor as stored.
#[derive(Debug, Clone)]
pub struct MfaRow {
    /// Base32 TOTP key.
    pub key: String,
    pub enrolled: bool,
    pub recovery_codes_left: usize,
}

impl Store {
    pub async fn mfa(&self, user_id: Uuid) -> Result<Option<MfaRow>> {
        let mut q = Query::new(
            "SELECT key, enrolled_at IS NOT NULL, cardinality(recovery_codes) FROM user_mfa WHERE user_id = ",
        );
        q.bind(user_id);
        Ok(self.query(&q).await?.first().map(|row| MfaRow {
            key: row.get(0),
            enrolled: row.get(1),
            recovery_codes_left: row.get::<_, i32>(2).max(0) as usize,
        }))
    }

    /// The key being enrolled: `key` unless one is already waiting (or enrolled).
    pub async fn pending_mfa_key(&self, user_id: Uuid, key: &str) -> Result<MfaRow> {
        let mut q = Query::new("INSERT INTO user_mfa (user_id, key) VALUES (");
        q.bind(user_id)
            .push(", ")
            .bind(key.to_string())
            .push(") ON CONFLICT (user_id) DO UPDATE SET key = user_mfa.key RETURNING key, enrolled_at IS NOT NULL");
        let rows = self.query(&q).await?;
        let row = rows.first().ok_or_else(|| {
            crate::error::Error::Internal("user_mfa upsert returned no row".into())
        })?;
        Ok(MfaRow {
            key: row.get(0),
            enrolled: row.get(1),
            recovery_codes_left: 0,
        })
    }

    /// Completes enrolment with the code of `step` and the recovery codes'
    /// digests; false if already enrolled or the step was used.
    pub async fn complete_mfa_enrolment(
        &self,
        user_id: Uuid,
        step: u64,
        recovery_digests: Vec<String>,
    ) -> Result<bool> {
        let mut q = Query::new("UPDATE user_mfa SET enrolled_at = now(), last_step = ");
        let step = q.placeholder(step as i64);
        q.push(&step)
            .push(", recovery_codes = ")
            .bind(recovery_digests)
            .push(" WHERE user_id = ")
            .bind(user_id)
            .push(&format!(
                " AND enrolled_at IS NULL AND last_step < {step} RETURNING 1"
            ));
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Spends `step` of an enrolled user: true once per step, and only for a
    /// step later than every step accepted before (replay protection).
    pub async fn accept_mfa_step(&self, user_id: Uuid, step: u64) -> Result<bool> {
        let mut q = Query::new("UPDATE user_mfa SET last_step = ");
        let step = q.placeholder(step as i64);
        q.push(&step)
            .push(" WHERE user_id = ")
            .bind(user_id)
            .push(&format!(
                " AND enrolled_at IS NOT NULL AND last_step < {step} RETURNING 1"
            ));
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Spends a recovery code by its digest; true if it was unused.
    pub async fn spend_recovery_code(&self, user_id: Uuid, digest: &str) -> Result<bool> {
        let mut q =
            Query::new("UPDATE user_mfa SET recovery_codes = array_remove(recovery_codes, ");
        let digest = q.placeholder(digest.to_string());
        q.push(&digest)
            .push(") WHERE user_id = ")
            .bind(user_id)
            .push(&format!(
                " AND enrolled_at IS NOT NULL AND {digest} = ANY(recovery_codes) RETURNING 1"
            ));
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Forgets a user's second factor; the next enrolment gets a new key.
    pub async fn remove_mfa(&self, user_id: Uuid) -> Result<()> {
        remove(self, user_id).await
    }
}

impl Tx {
    /// Forgets a deleted user's second factor with the deletion, so its key
    /// does not outlive the user.
    pub async fn remove_mfa(&self, user_id: Uuid) -> Result<()> {
        remove(self, user_id).await
    }
}

async fn remove(executor: &impl Executor, user_id: Uuid) -> Result<()> {
    let mut q = Query::new("DELETE FROM user_mfa WHERE user_id = ");
    q.bind(user_id);
    executor.query(&q).await?;
    Ok(())
}
