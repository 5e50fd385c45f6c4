//! Bulk Data `$export` routes: kick-off (system, Patient, Group), status
//! (202 with progress, then the manifest; `DELETE` cancels), and the NDJSON
//! files, streamed from PostgreSQL to those who asked for them only.

use super::{
    openapi::{JsonObject, OperationOutcome, Prefer},
    routes::Routes,
};
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};

use super::{informational, query_pairs, FHIR_JSON};
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    export::{self, Level},
};

type Data = web::Data<AppState>;

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_system, system)
        .add(__path_patient, patient)
        .add(__path_group, group)
        .add(__path_status, status)
        .add(__path_cancel, cancel)
        .add(__path_download, download);
}

/// `Prefer: respond-async` is required: an export is never answered inline.
fn check_respond_async(req: &HttpRequest) -> Result<()> {
    let asks = req
        .headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    if asks {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "$export runs in the background: send Prefer: respond-async".into(),
        ))
    }
}

async fn kick_off(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    level: Level<'_>,
) -> Result<HttpResponse> {
    check_respond_async(&req)?;
    let query = query_pairs(&req)?;
    let request = format!(
        "{}{}",
        state.base_url,
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default()
            .trim_start_matches('/')
    );
    let id = export::kick_off(&state, &caller, level, &query, &request).await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Content-Location", export::status_url(&state.base_url, id)))
        .content_type(FHIR_JSON)
        .body(informational(&format!("Export {id} accepted")).to_string()))
}

#[utoipa::path(method(get, post), path = "/fhir/R4/$export", params(Prefer), responses((status = 202, description = "Accepted; the status URL is in `Content-Location`", body = OperationOutcome, content_type = "application/fhir+json", headers(("Content-Location" = String, description = "The job's status URL: `<base>fhir/R4/$export-status/<job>`")))))]
async fn system(caller: Caller, state: Data, req: HttpRequest) -> Result<HttpResponse> {
    kick_off(caller, state, req, Level::System).await
}

#[utoipa::path(method(get, post), path = "/fhir/R4/Patient/$export", params(Prefer), responses((status = 202, description = "Accepted; the status URL is in `Content-Location`", body = OperationOutcome, content_type = "application/fhir+json", headers(("Content-Location" = String, description = "The job's status URL: `<base>fhir/R4/$export-status/<job>`")))))]
async fn patient(caller: Caller, state: Data, req: HttpRequest) -> Result<HttpResponse> {
    kick_off(caller, state, req, Level::Patient).await
}

#[utoipa::path(method(get, post), path = "/fhir/R4/Group/{id}/$export", params(Prefer), responses((status = 202, description = "Accepted; the status URL is in `Content-Location`", body = OperationOutcome, content_type = "application/fhir+json", headers(("Content-Location" = String, description = "The job's status URL: `<base>fhir/R4/$export-status/<job>`")))))]
async fn group(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    kick_off(caller, state, req, Level::Group(&path)).await
}

#[utoipa::path(get, path = "/fhir/R4/$export-status/{job}", responses((status = 200, description = "Complete: the manifest listing the output files", body = JsonObject), (status = 202, description = "Still running", headers(("X-Progress" = String, description = "How far the job is"), ("Retry-After" = u64, description = "Seconds before asking again")))))]
async fn status(caller: Caller, state: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let job = export::job_of(&state, &caller, &path).await?;
    match job.status.as_str() {
        "complete" => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(export::manifest(&state, &job).await?)),
        "failed" => Ok(HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
            .content_type(FHIR_JSON)
            .body(
                fhir_model::operation_outcome(&[fhir_model::Issue::error(
                    fhir_model::IssueCode::Exception,
                    format!(
                        "The export failed: {}",
                        job.error.as_deref().unwrap_or("no reason recorded")
                    ),
                )])
                .to_string(),
            )),
        _ => Ok(HttpResponse::Accepted()
            .insert_header((
                "X-Progress",
                match job.progress.as_str() {
                    "" => "queued",
                    progress => progress,
                },
            ))
            .insert_header(("Retry-After", "1"))
            .finish()),
    }
}

#[utoipa::path(delete, path = "/fhir/R4/$export-status/{job}", responses((status = 202, description = "Cancelled", body = OperationOutcome, content_type = "application/fhir+json")))]
async fn cancel(caller: Caller, state: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let job = export::job_of(&state, &caller, &path).await?;
    state
        .store
        .delete_export_job(job.project_id, job.id)
        .await?;
    Ok(HttpResponse::Accepted().content_type(FHIR_JSON).body(
        informational(&format!(
            "Export {} cancelled and its files removed",
            job.id
        ))
        .to_string(),
    ))
}

#[utoipa::path(get, path = "/fhir/R4/$export-output/{job}/{file}", responses((status = 200, description = "One file of the export: one resource per line", content_type = "application/fhir+ndjson")))]
async fn download(
    caller: Caller,
    state: Data,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (job, file) = path.into_inner();
    let job = export::job_of(&state, &caller, &job).await?;
    let missing = || Error::NotFound(format!("{file} is not a file of export {}", job.id));
    let resource_type = file.strip_suffix(".ndjson").ok_or_else(missing)?;
    if job.status != "complete"
        || !fhir_model::resource_types::is_known_resource_type(resource_type)
    {
        return Err(missing());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+ndjson")
        .streaming(
            state
                .store
                .export_file(job.project_id, job.id, resource_type),
        ))
}
