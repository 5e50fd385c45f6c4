//! Hashing and comparing secrets. Passwords use Argon2id (OWASP parameters:
//! 19 MiB, 2 passes, 1 lane); client secrets are long random strings, so a
//! SHA-256 digest is enough and keeps the token endpoint fast.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Shortest client secret accepted: enough entropy that a fast hash is safe.
pub const MIN_CLIENT_SECRET_LEN: usize = 32;

/// OWASP's first Argon2id configuration: 19 MiB, 2 passes, 1 lane.
const ARGON2_MEMORY_KIB: u32 = 19_456;
const ARGON2_PASSES: u32 = 2;
const ARGON2_LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .expect("constant Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A random URL-safe string carrying `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Argon2id hash in PHC format. Slow on purpose: call it off the async workers.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("argon2: {e}")))
}

/// Verifies a password against a PHC hash (constant time inside argon2),
/// with the parameters the hash names.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

/// Whether a PHC hash is Argon2id at today's parameters (else: re-hash).
pub fn password_params_are_current(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let param = |name: &str| hash.params.get_decimal(name);
    hash.algorithm.as_str() == "argon2id"
        && hash.version == Some(0x13)
        && param("m") == Some(ARGON2_MEMORY_KIB)
        && param("t") == Some(ARGON2_PASSES)
        && param("p") == Some(ARGON2_LANES)
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

pub fn hex(bytes: &[u8]) -> String {
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
        assert!(password_params_are_current(&hash));
        let weaker = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verify_password("pw", &weaker));
        assert!(!password_params_are_current(&weaker));
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
