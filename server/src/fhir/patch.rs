//! The two patch formats FHIR R4 defines: JSON Patch (RFC 6902) and FHIRPath
//! Patch (a Parameters resource). Either way `id`, `meta` and `resourceType`
//! stay the server's.

use fhir_model::fhirpath_patch::{self, PatchError};
use serde_json::Value;

use crate::error::{Error, Result};

/// The operations of a patch body: a JSON Patch array's items, a FHIRPath
/// Patch's parameters.
fn operations_in(body: &Value) -> usize {
    match body {
        Value::Array(operations) => operations.len(),
        parameters => parameters["parameter"].as_array().map_or(0, Vec::len),
    }
}

/// Patches with more operations than this apply off the HTTP worker.
const PATCH_OFF_WORKER_OPERATIONS: usize = 100;

/// Elements a patch may not change.
const SERVER_MANAGED: &[&str] = &["id", "meta", "resourceType"];

pub enum PatchDocument {
    Json(json_patch::Patch),
    FhirPath(Value),
}

impl PatchDocument {
    /// Reads a body by its media type: `application/json-patch+json`, or a
    /// FHIR `Parameters` resource for FHIRPath Patch.
    /// At most `max_operations` operations (FHIRGATE_MAX_PATCH_OPERATIONS).
    pub fn parse(body: Value, max_operations: usize) -> Result<PatchDocument> {
        let operations = operations_in(&body);
        if operations > max_operations {
            return Err(Error::TooLarge(format!(
                "The patch has {operations} operations; at most {max_operations} are allowed (FHIRGATE_MAX_PATCH_OPERATIONS)"
            )));
        }
        if body["resourceType"] == "Parameters" {
            return Ok(PatchDocument::FhirPath(body));
        }
        let operations: json_patch::Patch = serde_json::from_value(body).map_err(|e| {
            Error::BadRequest(format!(
                "The body is not a JSON Patch document (an array of operations with op and path) or a FHIRPath Patch Parameters resource: {e}"
            ))
        })?;
        for op in &operations.0 {
            let (path, is_test) = match op {
                json_patch::PatchOperation::Test(t) => (t.path.as_str(), true),
                json_patch::PatchOperation::Add(o) => (o.path.as_str(), false),
                json_patch::PatchOperation::Remove(o) => (o.path.as_str(), false),
                json_patch::PatchOperation::Replace(o) => (o.path.as_str(), false),
                json_patch::PatchOperation::Move(o) => (o.path.as_str(), false),
                json_patch::PatchOperation::Copy(o) => (o.path.as_str(), false),
            };
            let protected = SERVER_MANAGED
                .iter()
                .any(|p| path == format!("/{p}") || path.starts_with(&format!("/{p}/")));
            if protected && !is_test {
                return Err(managed(path));
            }
        }
        Ok(PatchDocument::Json(operations))
    }

    /// Applies the patch to `resource` and returns the result, on a blocking
    /// thread when the patch or the resource is large (the HTTP worker that
    /// received it serves other requests meanwhile).
    pub async fn apply_to(self, resource_type: &str, mut resource: Value) -> Result<Value> {
        let large = self.operation_count() > PATCH_OFF_WORKER_OPERATIONS
            || super::resource::more_values_than(
                &resource,
                super::resource::VALIDATE_OFF_WORKER_VALUES,
            );
        if !large {
            self.apply(resource_type, &mut resource)?;
            return Ok(resource);
        }
        let resource_type = resource_type.to_string();
        tokio::task::spawn_blocking(move || {
            self.apply(&resource_type, &mut resource).map(|()| resource)
        })
        .await
        .map_err(|e| Error::Internal(format!("applying a patch: {e}")))?
    }

    fn operation_count(&self) -> usize {
        match self {
            PatchDocument::Json(operations) => operations.0.len(),
            PatchDocument::FhirPath(parameters) => operations_in(parameters),
        }
    }

    /// Applies the patch to `resource`; on error `resource` may be partly
    /// changed, so callers patch a copy they can drop.
    fn apply(&self, resource_type: &str, resource: &mut Value) -> Result<()> {
        match self {
            PatchDocument::Json(operations) => json_patch::patch(resource, operations).map_err(|e| match e.kind {
                json_patch::PatchErrorKind::TestFailed => Error::PreconditionFailed(format!(
                    "Patch test failed at {} (operation {}): the resource does not hold the tested value",
                    e.path, e.operation
                )),
                _ => Error::Unprocessable(format!(
                    "Patch operation {} cannot be applied at {}: {}",
                    e.operation,
                    fhir_model::pointer_to_expression(resource_type, e.path.as_str()),
                    e.kind
                )),
            }),
            PatchDocument::FhirPath(parameters) => {
                let before: Vec<Value> = SERVER_MANAGED.iter().map(|k| resource[*k].clone()).collect();
                fhirpath_patch::apply(resource, parameters).map_err(|e| match e {
                    PatchError::Invalid(_) => Error::BadRequest(e.to_string()),
                    PatchError::Unprocessable(_) => Error::Unprocessable(e.to_string()),
                })?;
                match SERVER_MANAGED.iter().zip(before).find(|(k, v)| resource[**k] != *v) {
                    Some((k, _)) => Err(managed(k)),
                    None => Ok(()),
                }
            }
        }
    }
}

fn managed(path: &str) -> Error {
    Error::BadRequest(format!(
        "A patch may not change {path}: id, resourceType and meta are managed by the server"
    ))
}
