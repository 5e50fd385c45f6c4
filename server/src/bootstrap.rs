//! On an empty database: the super-admin Project, its User (with a
//! Practitioner profile and an admin membership) and a super-admin
//! ClientApplication. Credentials not given in the environment are generated
//! and printed once, here, and never again.

use fhir_model::Validator;
use serde_json::json;
use uuid::Uuid;

use crate::{
    auth::{
        password::{self, MIN_PASSWORD_LEN},
        secrets::{random_token, MIN_CLIENT_SECRET_LEN},
    },
    config::AdminBootstrap,
    error::{Error, Result},
    fhir::{insert, parse_id, resource::Stamp},
    store::Store,
};

/// Creates the super admin when no Project exists yet. Runs under the
/// start-up lock, so concurrent instances bootstrap once.
pub async fn bootstrap(store: &Store, validator: &Validator, admin: &AdminBootstrap) -> Result<()> {
    if store.any_project().await? {
        return Ok(());
    }
    let email = admin
        .email
        .clone()
        .unwrap_or_else(|| "admin@example.com".into());
    if !email.contains('@') {
        return Err(Error::Config(format!(
            "FHIRGATE_ADMIN_EMAIL '{email}' is not an email address"
        )));
    }
    let password = admin.password.clone().unwrap_or_else(|| random_token(18));
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::Config(format!(
            "FHIRGATE_ADMIN_PASSWORD must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    let client_id = match &admin.client_id {
        Some(id) => parse_id(id).ok_or_else(|| {
            Error::Config(format!(
                "FHIRGATE_ADMIN_CLIENT_ID '{id}' must be a lower-case UUID"
            ))
        })?,
        None => Uuid::new_v4(),
    };
    let client_secret = admin
        .client_secret
        .clone()
        .unwrap_or_else(|| random_token(32));
    if client_secret.chars().count() < MIN_CLIENT_SECRET_LEN {
        return Err(Error::Config(format!(
            "FHIRGATE_ADMIN_CLIENT_SECRET must be at least {MIN_CLIENT_SECRET_LEN} characters"
        )));
    }
    let password_hash = password::hash(&password).await?;

    let project_id = Uuid::new_v4();
    let user_id = Uuid::new_v4();
    let practitioner_id = Uuid::new_v4();
    let user_ref = format!("User/{user_id}");
    let client_ref = format!("ClientApplication/{client_id}");
    let project = json!({"reference": format!("Project/{project_id}")});
    let resources = [
        (
            project_id,
            user_ref.clone(),
            json!({
                "resourceType": "Project", "name": "Super Admin", "superAdmin": true,
                "owner": {"reference": user_ref}
            }),
        ),
        (
            practitioner_id,
            user_ref.clone(),
            json!({
                "resourceType": "Practitioner",
                "name": [{"given": ["Super"], "family": "Admin"}],
                "telecom": [{"system": "email", "use": "work", "value": email}]
            }),
        ),
        (
            user_id,
            user_ref.clone(),
            json!({
                "resourceType": "User", "firstName": "Super", "lastName": "Admin",
                "email": email, "emailVerified": true
            }),
        ),
        (
            Uuid::new_v4(),
            user_ref.clone(),
            json!({
                "resourceType": "ProjectMembership", "project": project, "admin": true,
                "user": {"reference": user_ref},
                "profile": {"reference": format!("Practitioner/{practitioner_id}")}
            }),
        ),
        (
            client_id,
            user_ref.clone(),
            json!({
                "resourceType": "ClientApplication", "name": "Super Admin Client",
                "description": "Created on first start; rotate its secret with a PUT",
                "secret": client_secret
            }),
        ),
        (
            Uuid::new_v4(),
            user_ref.clone(),
            json!({
                "resourceType": "ProjectMembership", "project": project, "admin": true,
                "user": {"reference": client_ref}, "profile": {"reference": client_ref}
            }),
        ),
    ];
    let tx = store.begin().await?;
    for (id, author, resource) in resources {
        insert(
            validator,
            &tx,
            resource,
            &Stamp::new(id, project_id, &author),
        )
        .await?;
    }
    tx.set_secret(project_id, "User", user_id, "password", &password_hash)
        .await?;
    tx.commit().await?;

    let generated = |given: &Option<String>, value: &str| match given {
        Some(_) => "(from the environment)".to_string(),
        None => value.to_string(),
    };
    tracing::warn!(
        "Created the super admin on an empty database. These credentials are shown once:\n\
         \x20 email:         {email}\n\
         \x20 password:      {}\n\
         \x20 client id:     {client_id}\n\
         \x20 client secret: {}",
        generated(&admin.password, &password),
        generated(&admin.client_secret, &client_secret),
    );
    Ok(())
}
