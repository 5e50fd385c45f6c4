//! The HTTP side: client-credentials tokens and FHIR requests, timed.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use reqwest::{header, Method, StatusCode};
use serde_json::Value;

pub const FHIR_JSON: &str = "application/fhir+json";

pub struct Api {
    http: reqwest::Client,
    base: String,
    fhir_root: String,
    client_id: String,
    client_secret: String,
    token: RwLock<Arc<str>>,
    refresh: tokio::sync::Mutex<()>,
    /// The id of the project the token response named (`project.reference`).
    pub project: Option<String>,
}

/// What one request came back with.
pub struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub location: Option<String>,
    /// From just before sending until the whole body was read.
    pub latency: Duration,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `STATUS: first 300 characters of the body`, for error reports.
    pub fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.chars().take(300).collect();
        format!("HTTP {}: {}", self.status.as_u16(), text.replace('\n', " "))
    }

    /// The id a create answered with: the body's `id`, else the `Location`.
    pub fn created_id(&self) -> Option<String> {
        if let Some(id) = self
            .json()
            .and_then(|v| v.get("id")?.as_str().map(String::from))
        {
            return Some(id);
        }
        // …/Type/id/_history/vid or …/Type/id
        let location = self.location.as_deref()?;
        let parts: Vec<&str> = location.trim_end_matches('/').split('/').collect();
        match parts.iter().position(|p| *p == "_history") {
            Some(i) if i >= 1 => Some(parts[i - 1].to_string()),
            _ => parts.last().map(|s| s.to_string()),
        }
    }
}

impl Api {
    pub async fn connect(
        base_url: &str,
        client_id: &str,
        client_secret: &str,
        pool: usize,
    ) -> Result<Api, String> {
        let mut base = base_url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool.max(1))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let api = Api {
            http,
            fhir_root: format!("{base}fhir/R4"),
            base,
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            token: RwLock::new(Arc::from("")),
            refresh: tokio::sync::Mutex::new(()),
            project: None,
        };
        let (token, project) = api.fetch_token().await?;
        *api.token.write().unwrap() = token;
        Ok(Api { project, ..api })
    }

    /// The access token and the project id the response names.
    async fn fetch_token(&self) -> Result<(Arc<str>, Option<String>), String> {
        let url = format!("{}oauth2/token", self.base);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
        ];
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST {url} answered {status}: {text}"));
        }
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| format!("POST {url}: not JSON ({e}): {text}"))?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .map(Arc::from)
            .ok_or_else(|| format!("POST {url}: no access_token in {text}"))?;
        let project = body
            .pointer("/project/reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Project/"))
            .map(String::from);
        Ok((token, project))
    }

    /// Gets a new token unless another task already did since `seen` was read.
    async fn refresh_token(&self, seen: &Arc<str>) -> Result<(), String> {
        let _guard = self.refresh.lock().await;
        if !Arc::ptr_eq(&self.token.read().unwrap(), seen) {
            return Ok(());
        }
        let (token, _) = self.fetch_token().await?;
        *self.token.write().unwrap() = token;
        Ok(())
    }

    /// `path` is relative to `{base}fhir/R4/` (query included); empty for the
    /// system endpoint `{base}fhir/R4` itself. `prefer` is sent as the
    /// `Prefer` header. A 401 refreshes the token and retries once; the
    /// latency then covers both tries.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        prefer: Option<&str>,
    ) -> Result<Reply, String> {
        let url = if path.is_empty() {
            self.fhir_root.clone()
        } else {
            format!("{}/{}", self.fhir_root, path)
        };
        let start = Instant::now();
        let mut retried = false;
        loop {
            let token = self.token.read().unwrap().clone();
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&*token)
                .header(header::ACCEPT, FHIR_JSON);
            if let Some(prefer) = prefer {
                request = request.header("Prefer", prefer);
            }
            if let Some(body) = body {
                request = request
                    .header(header::CONTENT_TYPE, FHIR_JSON)
                    .body(body.to_vec());
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                // Drain the body so the connection can be reused.
                let _ = response.bytes().await;
                self.refresh_token(&token).await?;
                continue;
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            return Ok(Reply {
                status,
                body: body.to_vec(),
                location,
                latency: start.elapsed(),
            });
        }
    }

    /// Creates `resource` (POST to its type); answers the new id.
    pub async fn create(&self, resource: &Value) -> Result<String, String> {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let body = serde_json::to_vec(resource).expect("JSON");
        let reply = self
            .send(Method::POST, resource_type, Some(&body), None)
            .await?;
        if !reply.ok() {
            return Err(format!(
                "POST {resource_type} answered {}",
                reply.describe()
            ));
        }
        reply
            .created_id()
            .ok_or_else(|| format!("POST {resource_type} answered no id"))
    }

    /// GET of one resource (or anything else answering JSON) that must succeed.
    pub async fn get_json(&self, path: &str) -> Result<Value, String> {
        let reply = self.send(Method::GET, path, None, None).await?;
        match reply.json() {
            Some(value) if reply.ok() => Ok(value),
            _ => Err(format!("GET {path} answered {}", reply.describe())),
        }
    }
}

/// The `Prefer` header of the Bundles posted (the load and `transaction`):
/// an ingesting client needs each entry's status and location, not its
/// resource echoed back (FHIR 3.1.0.8.1 applies it to each write entry; a
/// server that ignores it answers with the resources, which the tool reads
/// the ids from as well). A server may also answer with no entries at all
/// (Medplum: an empty body); the load then finds the ids by search and
/// sends its later Bundles without the header (`load::post_bundle`).
pub const BUNDLE_PREFER: &str = "return=minimal";

/// Percent-encodes a search parameter value (RFC 3986 unreserved kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_token_values() {
        assert_eq!(
            encode("urn:fhirgate-bench:mrn|1-0000001"),
            "urn%3Afhirgate-bench%3Amrn%7C1-0000001"
        );
    }

    #[test]
    fn id_from_location() {
        let reply = Reply {
            status: StatusCode::CREATED,
            body: Vec::new(),
            location: Some("http://x/fhir/R4/Patient/abc/_history/1".into()),
            latency: Duration::ZERO,
        };
        assert_eq!(reply.created_id().as_deref(), Some("abc"));
    }
}
