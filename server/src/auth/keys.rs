//! ES256 signing keys: generated on first start, kept in PostgreSQL so that
//! every instance signs and verifies with the same keys, and published (public
//! part only) at `/.well-known/jwks.json`.
//!
//! Rotation: a new key is added (`POST /admin/super/keys/rotate`) and signs
//! from then on; an older key stays published and trusted until every token
//! it signed has expired (one token lifetime after it was superseded). An
//! instance that meets a token signed with a key it does not know yet (made
//! by another instance) reloads the keys from the database, and every
//! instance reloads them when another announces a rotation
//! ([`crate::store::changes::Change::SigningKeys`]), so each publishes the
//! new key at once.
//!
//! Verifying an ES256 signature is most of the CPU a small request costs, so
//! a token whose signature was checked once is remembered (by its SHA-256)
//! until it expires. That is safe because a token's claims never change;
//! revocation is decided from the Login on every request, not here.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::{
    elliptic_curve::rand_core::OsRng,
    pkcs8::{EncodePrivateKey, LineEnding},
    SecretKey,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    store::{SigningKeyRow, Store},
};

pub struct Keys {
    store: Store,
    /// How long a superseded key stays trusted: the longest token lifetime.
    retain: Duration,
    current: RwLock<KeySet>,
    verified: Mutex<HashMap<[u8; 32], VerifiedToken>>,
    /// Another instance changed the keys since they were loaded.
    stale: AtomicBool,
}

/// Tokens remembered at most; when full, the cache starts over (tokens are
/// short-lived, so a simple reset costs one verification per live token).
const VERIFIED_CAPACITY: usize = 50_000;

/// The claims of a token whose signature, issuer and algorithm were checked.
struct VerifiedToken {
    kid: String,
    exp: i64,
    claims: Value,
}

struct KeySet {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    /// The JWKS document, rendered once per load.
    jwks: String,
    /// HMAC keys for the sign-in page's anti-forgery tokens, derived from
    /// the trusted keys' private parts (newest first): shared by every
    /// instance through the database, replaced with the signing keys.
    form_keys: Vec<[u8; 32]>,
}

impl Keys {
    /// Creates a key when the database has none. Runs under the start-up lock.
    pub async fn ensure(store: &Store) -> Result<()> {
        if store.signing_keys().await?.is_empty() {
            generate(store).await?;
        }
        Ok(())
    }

    pub async fn load(store: &Store, retain: Duration) -> Result<Keys> {
        Ok(Keys {
            current: RwLock::new(key_set(store, retain).await?),
            store: store.clone(),
            retain,
            verified: Mutex::new(HashMap::new()),
            stale: AtomicBool::new(false),
        })
    }

    /// Adds a new key, which signs from now on; returns its kid.
    pub async fn rotate(&self) -> Result<String> {
        let kid = generate(&self.store).await?;
        self.reload().await?;
        Ok(kid)
    }

    /// Reads the keys again: picks up keys of other instances, drops expired ones.
    pub async fn reload(&self) -> Result<()> {
        let set = key_set(&self.store, self.retain).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(())
    }

    /// Another instance changed the keys: reload them now, in the
    /// background, and before the next JWKS is served.
    pub fn reload_soon(self: &Arc<Self>) {
        self.stale.store(true, Ordering::Release);
        let keys = self.clone();
        tokio::spawn(async move {
            if let Err(e) = keys.reload_if_stale().await {
                tracing::warn!(error = %e, "reloading signing keys failed");
            }
        });
    }

    async fn reload_if_stale(&self) -> Result<()> {
        if self.stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.reload().await {
                self.stale.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The JWKS document, with any key another instance announced.
    pub async fn current_jwks(&self) -> Result<String> {
        self.reload_if_stale().await?;
        Ok(self.jwks())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn jwks(&self) -> String {
        self.read().jwks.clone()
    }

    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String> {
        let set = self.read();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(set.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &set.signing)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }

    /// HMAC-SHA-256 of `message` with the newest form key, hex.
    pub fn form_mac(&self, message: &[u8]) -> String {
        let set = self.read();
        form_mac(&set.form_keys[0], message)
    }

    /// Whether `mac` is `message`'s under any trusted form key (constant time).
    pub fn form_mac_matches(&self, message: &[u8], mac: &str) -> bool {
        use subtle::ConstantTimeEq;
        let set = self.read();
        set.form_keys.iter().fold(false, |found, key| {
            let expected = form_mac(key, message);
            found | bool::from(expected.as_bytes().ct_eq(mac.as_bytes()))
        })
    }

    /// Checks signature, algorithm, issuer and expiry. Any failure is one
    /// 401 whose message does not help an attacker tell the cases apart.
    pub async fn verify<C: DeserializeOwned>(&self, token: &str, issuer: &str) -> Result<C> {
        let invalid = || Error::Unauthorized("Invalid or expired access token".into());
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.remembered(&digest) {
            Some(claims) => claims,
            None => self.verify_signature(token, issuer, digest).await?,
        };
        serde_json::from_value(claims).map_err(|_| invalid())
    }

    /// The claims of a token verified before, if it has not expired and its
    /// key is still trusted.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Value> {
        let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(digest)?;
        let live =
            entry.exp > Utc::now().timestamp() && self.read().verifying.contains_key(&entry.kid);
        live.then(|| entry.claims.clone())
    }

    async fn verify_signature(&self, token: &str, issuer: &str, digest: [u8; 32]) -> Result<Value> {
        let invalid = || Error::Unauthorized("Invalid or expired access token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let kid = header.kid.ok_or_else(invalid)?;
        let known = self.read().verifying.contains_key(&kid);
        // Only a kid that exists in the database causes a reload, so random
        // kids cannot make every request read the key table twice.
        if !known && self.store.signing_key_exists(&kid).await? {
            self.reload().await?;
        }
        let claims = {
            let set = self.read();
            let key = set.verifying.get(&kid).ok_or_else(invalid)?;
            let mut validation = Validation::new(Algorithm::ES256);
            validation.set_issuer(&[issuer]);
            validation.validate_aud = false;
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            jsonwebtoken::decode::<Value>(token, key, &validation)
                .map_err(|_| invalid())?
                .claims
        };
        let exp = claims["exp"].as_i64().ok_or_else(invalid)?;
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CAPACITY {
            cache.clear();
        }
        cache.insert(
            digest,
            VerifiedToken {
                kid,
                exp,
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }
}

fn form_mac(key: &[u8; 32], message: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    super::secrets::hex(&mac.finalize().into_bytes())
}

async fn generate(store: &Store) -> Result<String> {
    let secret = SecretKey::random(&mut OsRng);
    let kid = uuid::Uuid::new_v4().to_string();
    let private_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("encoding signing key: {e}")))?
        .to_string();
    let mut public_jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string())
        .map_err(|e| Error::Internal(format!("encoding public key: {e}")))?;
    public_jwk["kid"] = json!(kid);
    public_jwk["alg"] = json!("ES256");
    public_jwk["use"] = json!("sig");
    store
        .insert_signing_key(&SigningKeyRow {
            kid: kid.clone(),
            private_pem,
            public_jwk,
            created_at: Utc::now(),
        })
        .await?;
    tracing::info!(%kid, "generated a new ES256 signing key");
    Ok(kid)
}

/// The newest key signs; an older key is kept while tokens it signed may
/// still be valid, i.e. until `retain` after the next key replaced it.
async fn key_set(store: &Store, retain: Duration) -> Result<KeySet> {
    let rows = store.signing_keys().await?;
    let newest = rows
        .first()
        .ok_or_else(|| Error::Internal("no signing key in the database".into()))?;
    let signing = EncodingKey::from_ec_pem(newest.private_pem.as_bytes())
        .map_err(|e| Error::Internal(format!("signing key {}: {e}", newest.kid)))?;
    let horizon = Utc::now()
        - chrono::Duration::from_std(retain)
            .map_err(|e| Error::Internal(format!("key retention: {e}")))?;
    let mut kept = vec![newest];
    for pair in rows.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        if newer.created_at > horizon {
            kept.push(older);
        }
    }
    let mut verifying = HashMap::new();
    for row in &kept {
        let x = row.public_jwk["x"].as_str().unwrap_or_default();
        let y = row.public_jwk["y"].as_str().unwrap_or_default();
        let key = DecodingKey::from_ec_components(x, y)
            .map_err(|e| Error::Internal(format!("public key {}: {e}", row.kid)))?;
        verifying.insert(row.kid.clone(), key);
    }
    let jwks = json!({ "keys": kept.iter().map(|r| &r.public_jwk).collect::<Vec<_>>() });
    let form_keys = kept
        .iter()
        .map(|row| {
            let mut digest = Sha256::new();
            digest.update(b"fhirgate sign-in form\0");
            digest.update(row.private_pem.as_bytes());
            digest.finalize().into()
        })
        .collect();
    Ok(KeySet {
        signing_kid: newest.kid.clone(),
        signing,
        verifying,
        jwks: jwks.to_string(),
        form_keys,
    })
}
