//! ES256 signing keys: generated on first start, kept in PostgreSQL so that
//! every instance signs and verifies with the same keys, and published (public
//! part only) at `/.well-known/jwks.json`.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::{
    elliptic_curve::rand_core::OsRng,
    pkcs8::{EncodePrivateKey, LineEnding},
    SecretKey,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    store::{SigningKeyRow, Store},
};

pub struct Keys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    /// The JWKS document, rendered once.
    jwks: String,
}

impl Keys {
    /// Creates a key when the database has none. Runs under the start-up lock.
    pub async fn ensure(store: &Store) -> Result<()> {
        if !store.signing_keys().await?.is_empty() {
            return Ok(());
        }
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
                kid,
                private_pem,
                public_jwk,
            })
            .await?;
        tracing::info!("generated a new ES256 signing key");
        Ok(())
    }

    pub async fn load(store: &Store) -> Result<Keys> {
        let rows = store.signing_keys().await?;
        let newest = rows
            .first()
            .ok_or_else(|| Error::Internal("no signing key in the database".into()))?;
        let signing = EncodingKey::from_ec_pem(newest.private_pem.as_bytes())
            .map_err(|e| Error::Internal(format!("signing key {}: {e}", newest.kid)))?;
        let mut verifying = HashMap::new();
        for row in &rows {
            let x = row.public_jwk["x"].as_str().unwrap_or_default();
            let y = row.public_jwk["y"].as_str().unwrap_or_default();
            let key = DecodingKey::from_ec_components(x, y)
                .map_err(|e| Error::Internal(format!("public key {}: {e}", row.kid)))?;
            verifying.insert(row.kid.clone(), key);
        }
        let jwks = json!({ "keys": rows.iter().map(|r| &r.public_jwk).collect::<Vec<_>>() });
        Ok(Keys {
            signing_kid: newest.kid.clone(),
            signing,
            verifying,
            jwks: jwks.to_string(),
        })
    }

    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }

    /// Checks signature, algorithm, issuer and expiry. Any failure is one
    /// 401 whose message does not help an attacker tell the cases apart.
    pub fn verify<C: DeserializeOwned>(&self, token: &str, issuer: &str) -> Result<C> {
        let invalid = || Error::Unauthorized("Invalid or expired access token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or_else(invalid)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<C>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| invalid())
    }
}
