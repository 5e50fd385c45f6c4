//! Passwords: the policy for new ones, and hashing and verifying off the
//! async workers. Argon2id at OWASP's parameters; a hash made with other
//! parameters is replaced at the next successful sign-in.

use std::sync::OnceLock;

use super::secrets::{hash_password, password_params_are_current, verify_password};
use crate::error::{Error, Result};

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 256;

/// The policy every route that sets a password applies: length 8..=256
/// characters, and not a common or easily guessed password (zxcvbn's offline
/// dictionaries of leaked passwords, names and words; no network call).
/// `user_inputs` (email, names) count as guessable too.
pub fn check_new_password(password: &str, user_inputs: &[&str]) -> Result<()> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(Error::BadRequest(format!(
            "The password must be at least {MIN_PASSWORD_LEN} characters long"
        )));
    }
    if length > MAX_PASSWORD_LEN {
        return Err(Error::BadRequest(format!(
            "The password must be at most {MAX_PASSWORD_LEN} characters long"
        )));
    }
    // zxcvbn's cost grows with length; past 100 characters a password is not
    // in any dictionary that matters, and the check would only cost time.
    if length <= 100 {
        let entropy = zxcvbn::zxcvbn(password, user_inputs);
        if (entropy.score() as u8) < 3 {
            let hint = entropy
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(Error::BadRequest(format!(
                "The password is too easy to guess{hint}; use a longer phrase of uncommon words"
            )));
        }
    }
    Ok(())
}

/// Hashes on the blocking pool: one Argon2id hash takes tens of milliseconds.
pub async fn hash(password: &str) -> Result<String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// What a verification found.
pub struct Verified {
    pub ok: bool,
    /// A fresh hash at today's parameters when the stored one used others.
    pub rehash: Option<String>,
}

/// Verifies `password` against `stored`, or, when there is no stored hash
/// (unknown user), against a dummy hash, so both take the same time.
pub async fn verify(password: &str, stored: Option<String>) -> Result<Verified> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let found = stored.is_some();
        let phc = stored.unwrap_or_else(|| dummy_hash().to_string());
        let ok = verify_password(&password, &phc) && found;
        let rehash = if ok && !password_params_are_current(&phc) {
            Some(hash_password(&password)?)
        } else {
            None
        };
        Ok(Verified { ok, rehash })
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// A hash of a random password at today's parameters, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&super::secrets::random_token(16)).unwrap_or_else(|_| {
            // Never fails with valid parameters; a PHC string that never verifies
            // keeps the call shape if it somehow did.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$invalid".into()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_long_and_common_passwords() {
        assert!(check_new_password("short", &[]).is_err());
        assert!(check_new_password(&"x".repeat(257), &[]).is_err());
        for common in ["password123", "qwertyuiop", "iloveyou2", "Password1!"] {
            assert!(check_new_password(common, &[]).is_err(), "{common}");
        }
        assert!(check_new_password("alice@example.com1", &["alice@example.com"]).is_err());
        assert!(check_new_password("correct horse battery staple", &[]).is_ok());
        assert!(check_new_password(&"Zq9!".repeat(60), &[]).is_ok());
    }
}
