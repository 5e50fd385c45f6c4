//! Read-your-writes with a read replica (`store::replica`): after a request
//! that may have written, the primary's WAL position is remembered for the
//! caller (its membership) on this instance and answered in `X-Fhirgate-Lsn`;
//! the caller's reads wait for the replica to replay it, or go to the
//! primary. A client that may reach another instance next sends the header
//! back. Without a replica none of this runs.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{header::HeaderValue, Method},
    middleware::Next,
    web, HttpMessage, HttpRequest,
};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::Caller,
    store::replica::{Lsn, ReplicaReads},
};

/// Request: read nothing older than this position. Response to a write: the
/// primary's position after it.
pub const HEADER: &str = "x-fhirgate-lsn";

/// Whom a request's writes are remembered for: put in the request's
/// extensions when its caller is known.
#[derive(Debug, Clone, Copy)]
pub struct Writer(pub Uuid);

/// Reads by id, searches and history for `caller`: on the replica once it
/// has replayed the caller's last write (here, or as the request's header says).
pub fn reads<'a>(state: &'a AppState, caller: &Caller, req: &HttpRequest) -> ReplicaReads<'a> {
    let after = state.store.replica().and_then(|replica| {
        let told = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Lsn::parse);
        replica.read_after(caller.membership_id, told)
    });
    state.store.reads_after(after)
}

/// After a request that may have written: remembers the primary's position
/// for its caller and answers it in [`HEADER`]. Reads and searches skip it.
pub async fn remember_writes(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let reads_only = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req.path().ends_with("/_search");
    let mut response = next.call(req).await?;
    if reads_only {
        return Ok(response);
    }
    let request = response.request();
    let Some(writer) = request.extensions().get::<Writer>().copied() else {
        return Ok(response);
    };
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(response);
    };
    let Some(replica) = state.store.replica() else {
        return Ok(response);
    };
    match state.store.primary_lsn().await {
        Ok(lsn) => {
            replica.wrote(writer.0, lsn);
            if let Ok(value) = HeaderValue::from_str(&lsn.to_string()) {
                response.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static(HEADER),
                    value,
                );
            }
        }
        // Should the write have committed, this caller's next reads may
        // miss it on a lagging replica: logged, since nothing else can be done.
        Err(e) => {
            tracing::warn!(error = %e, "could not read the primary's WAL position after a write")
        }
    }
    Ok(response)
}
