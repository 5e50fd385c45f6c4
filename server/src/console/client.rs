//! The console's ClientApplication: public (no secret, PKCE required), in the
//! super-admin project, at a fixed id, with one redirect URI that follows the
//! server's public URL. It is the one client whose sign-ins are not limited
//! to its own project: anyone with a membership may use the console, and sees
//! there only what the API lets their membership see.

use fhir_model::Validator;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    error::Result,
    fhir::{self, resource::Stamp},
    store::{Store, Tenant},
};
use access_policy::RowFilter;

/// The console's client id, the same on every server.
pub const CLIENT_ID: Uuid = Uuid::from_u128(0x0c0501e0_0000_4000_8000_00000000c0de);

/// Where the authorization server sends the browser back, under the base URL.
pub const CALLBACK_PATH: &str = "console/callback";

/// The console client as this instance checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleClient {
    pub id: Uuid,
    pub project_id: Uuid,
}

impl ConsoleClient {
    /// Whether `client` is the console's own (its id in the super-admin project).
    pub fn is(&self, client: &crate::auth::client::Client) -> bool {
        client.id == self.id && client.project_id == self.project_id
    }
}

/// Creates the console client in the super-admin project, or brings its
/// redirect URI and status up to date (`status: off` while the console is
/// turned off, so nobody signs in through it). Runs under the start-up lock.
/// `None` when the console is off or there is no super-admin project.
pub async fn ensure(
    store: &Store,
    validator: &Validator,
    base_url: &str,
    enabled: bool,
) -> Result<Option<ConsoleClient>> {
    let Some(project_id) = store.super_admin_project().await? else {
        return Ok(None);
    };
    let tx = store.begin().await?;
    let current = tx
        .lock_current(
            Tenant::AllProjects,
            "ClientApplication",
            CLIENT_ID,
            &RowFilter::All,
        )
        .await?;
    if let Some(version) = &current {
        if version.project_id != project_id {
            tracing::warn!(
                client = %CLIENT_ID,
                project = %version.project_id,
                "the console's client id belongs to another project; the console cannot sign anyone in"
            );
            tx.commit().await?;
            return Ok(None);
        }
    }
    let stored = match &current {
        Some(version) if !version.is_deleted() => Some(fhir::parse_stored(version)?),
        _ => None,
    };
    let wanted = |mut client: Value| {
        client["redirectUri"] = json!(format!("{base_url}{CALLBACK_PATH}"));
        client["status"] = json!(if enabled { "active" } else { "off" });
        client
    };
    let author = format!("ClientApplication/{CLIENT_ID}");
    let stamp = Stamp::new(CLIENT_ID, project_id, &author);
    match stored {
        None => {
            // New, or deleted by someone: the console needs it back.
            let client = wanted(json!({
                "resourceType": "ClientApplication",
                "name": "fhirgate console",
                "description": "The administration console at /console/ (FHIRGATE_CONSOLE). \
                     A public client: PKCE, no secret; its redirect URI follows FHIRGATE_BASE_URL at each start.",
            }));
            if current.is_none() {
                fhir::insert(validator, &tx, client, &stamp).await?;
            } else {
                fhir::overwrite(validator, &tx, client, &stamp).await?;
            }
        }
        Some(client) => {
            let updated = wanted(client.clone());
            if updated != client {
                fhir::overwrite(validator, &tx, updated, &stamp).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(enabled.then_some(ConsoleClient {
        id: CLIENT_ID,
        project_id,
    }))
}
