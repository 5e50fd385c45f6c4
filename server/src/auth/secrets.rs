//! Hashing and comparing secrets. Passwords use Argon2id (OWASP parameters:
//! 19 MiB, 2 passes, 1 lane); client secrets are long random strings, so a
//! SHA-256 digest is enough and keeps the token endpoint fast.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Shortest client secret accepted: enough entropy that a fast hash is safe.
pub const MIN_CLIENT_SECRET_LEN: usize = 32;
pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 256;

/// A random URL-safe string carrying `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Argon2id hash in PHC format. Slow on purpose: call it off the async workers.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("argon2: {e}")))
}

/// [`hash_password`] on the blocking pool, so the async workers keep serving.
pub async fn hash_password_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// What is wrong with a new password, if anything. Only the length for now:
/// the full password policy replaces this function.
pub fn password_problem(password: &str) -> Option<String> {
    let length = password.chars().count();
    (!(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&length)).then(|| {
        format!("A password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long")
    })
}

/// Verifies a password against a PHC hash (constant time inside argon2).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn hash_client_secret(secret: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(secret.as_bytes())))
}

/// Compares a presented client secret with a stored hash in constant time.
/// With no stored hash (unknown client) it still does the same work, so the
/// response time does not tell whether the client exists.
pub fn client_secret_matches(presented: &str, stored: Option<&str>) -> bool {
    let computed = hash_client_secret(presented);
    let expected =
        stored.unwrap_or("sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let same = computed.as_bytes().ct_eq(expected.as_bytes());
    bool::from(same) && stored.is_some()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn password_length() {
        assert!(password_problem("1234567").is_some());
        assert!(password_problem("12345678").is_none());
        assert!(password_problem(&"x".repeat(257)).is_some());
    }

    #[test]
    fn client_secret_comparison() {
        let stored = hash_client_secret("s3cret-s3cret-s3cret-s3cret-s3cret");
        assert!(client_secret_matches(
            "s3cret-s3cret-s3cret-s3cret-s3cret",
            Some(&stored)
        ));
        assert!(!client_secret_matches(
            "s3cret-s3cret-s3cret-s3cret-s3creT",
            Some(&stored)
        ));
        assert!(!client_secret_matches("anything", None));
    }

    #[test]
    fn random_tokens_differ_and_are_long() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token(32));
    }
}
