//! `fhirgate export`: drives a Bulk Data `$export` on any server that
//! implements the IG (kick-off, polling, manifest) and downloads its files
//! into a directory, each streamed to disk as it arrives.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::api::{outcome_message, Api};
use crate::progress::Progress;
use crate::{io, Error, Result};

pub struct ExportOptions {
    /// `$export`, `Patient/$export` or `Group/{id}/$export`.
    pub endpoint: String,
    pub types: Option<String>,
    pub since: Option<String>,
    pub out: PathBuf,
}

/// One downloaded file.
#[derive(Debug)]
pub struct Downloaded {
    pub resource_type: String,
    pub path: PathBuf,
    pub count: Option<u64>,
}

/// The longest wait between polls, whatever `Retry-After` says.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

pub async fn run(api: &Api, options: &ExportOptions) -> Result<Vec<Downloaded>> {
    let mut query = Vec::new();
    if let Some(types) = &options.types {
        query.push(("_type", types.as_str()));
    }
    if let Some(since) = &options.since {
        query.push(("_since", since.as_str()));
    }
    let url = api.url(&options.endpoint);
    let response = api
        .send(|http| {
            http.request(Method::GET, &url)
                .query(&query)
                .header("Prefer", "respond-async")
                .header("Accept", "application/fhir+json")
        })
        .await?;
    if response.status() != StatusCode::ACCEPTED {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        return Err(Error::Server(format!(
            "kick-off answered {status}: {}",
            outcome_message(&body)
        )));
    }
    let status_url = response
        .headers()
        .get("Content-Location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Server("kick-off answered 202 without Content-Location".into()))?
        .to_string();
    let manifest = poll(api, &status_url).await?;
    download_all(api, &manifest, options).await
}

/// Polls the status URL until the manifest.
async fn poll(api: &Api, status_url: &str) -> Result<Value> {
    let progress = Progress::new(0, "polls");
    let mut polls = 0;
    loop {
        let response = api.send(|http| http.get(status_url)).await?;
        match response.status() {
            StatusCode::OK => {
                progress.finish();
                return Ok(response.json().await?);
            }
            StatusCode::ACCEPTED => {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let wait = header("Retry-After")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(MAX_POLL_WAIT);
                polls += 1;
                progress.println(&format!(
                    "export in progress: {}",
                    header("X-Progress").unwrap_or_else(|| "working".into())
                ));
                progress.update(0, polls);
                tokio::time::sleep(wait).await;
            }
            status => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                return Err(Error::Server(format!(
                    "the export failed ({status}): {}",
                    outcome_message(&body)
                )));
            }
        }
    }
}

async fn download_all(
    api: &Api,
    manifest: &Value,
    options: &ExportOptions,
) -> Result<Vec<Downloaded>> {
    std::fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let progress = Progress::new(outputs.len() as u64, "resources");
    let mut downloaded: Vec<Downloaded> = Vec::new();
    let mut resources = 0;
    for (n, output) in outputs.iter().enumerate() {
        let resource_type = output["type"].as_str().unwrap_or("Unknown").to_string();
        let url = output["url"]
            .as_str()
            .ok_or_else(|| Error::Server(format!("manifest output {n} has no url")))?;
        let same_type = downloaded
            .iter()
            .filter(|d| d.resource_type == resource_type)
            .count();
        let path = options.out.join(match same_type {
            0 => format!("{resource_type}.ndjson"),
            k => format!("{resource_type}.{k}.ndjson"),
        });
        let response = api.send(|http| http.get(url)).await?;
        if !response.status().is_success() {
            return Err(Error::Server(format!(
                "downloading {url} answered {}",
                response.status()
            )));
        }
        let mut file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk?).map_err(io(&path))?;
        }
        let count = output["count"].as_u64();
        resources += count.unwrap_or(0);
        progress.update(n as u64 + 1, resources);
        downloaded.push(Downloaded {
            resource_type,
            path,
            count,
        });
    }
    progress.finish();
    Ok(downloaded)
}
