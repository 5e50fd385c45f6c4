//! Client-credentials tokens (renewed when the server says 401) and FHIR
//! requests.

use std::sync::RwLock;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::{Error, Result};

pub struct Api {
    http: reqwest::Client,
    /// Server root ending in `/` (token at `oauth2/token`, FHIR at `fhir/R4/`).
    base: String,
    client_id: String,
    client_secret: String,
    token: RwLock<String>,
}

impl Api {
    /// Signs in with the client-credentials grant.
    pub async fn connect(base_url: &str, client_id: &str, client_secret: &str) -> Result<Api> {
        let base = if base_url.ends_with('/') {
            base_url.to_string()
        } else {
            format!("{base_url}/")
        };
        let api = Api {
            http: reqwest::Client::builder().build()?,
            base,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            token: RwLock::new(String::new()),
        };
        api.sign_in().await?;
        Ok(api)
    }

    async fn sign_in(&self) -> Result<()> {
        let response = self
            .http
            .post(format!("{}oauth2/token", self.base))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let token = body["access_token"].as_str().ok_or_else(|| {
            Error::Server(format!(
                "sign-in at {}oauth2/token failed ({status}): {}",
                self.base,
                body["error_description"].as_str().unwrap_or("no token")
            ))
        })?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token.to_string();
        Ok(())
    }

    /// A FHIR URL from a path under `fhir/R4/`, or an absolute URL as is.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}fhir/R4/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Sends the request `build` makes with the current token, signing in
    /// again once if the token expired.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        for attempt in 0..2 {
            let token = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
            let response = build(&self.http).bearer_auth(token).send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.sign_in().await?;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Posts a Bundle to the FHIR root; the status and the parsed body.
    pub async fn post_bundle(&self, bundle: &Value) -> Result<(StatusCode, Value)> {
        let body = bundle.to_string();
        let url = self.url("");
        let response = self
            .send(|http| {
                http.request(Method::POST, &url)
                    .header("Content-Type", "application/fhir+json")
                    .body(body.clone())
            })
            .await?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// The diagnostics of an OperationOutcome, joined, or the body itself.
pub fn outcome_message(body: &Value) -> String {
    let issues: Vec<String> = body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|issue| {
            let text = issue["diagnostics"]
                .as_str()
                .or(issue["details"]["text"].as_str())
                .unwrap_or("error");
            match issue["expression"][0].as_str() {
                Some(at) => format!("{text} (at {at})"),
                None => text.to_string(),
            }
        })
        .collect();
    if issues.is_empty() {
        body.to_string().chars().take(300).collect()
    } else {
        issues.join("; ")
    }
}
