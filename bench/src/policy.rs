//! Access-policy cost: callers restricted by an AccessPolicy, set up through
//! the FHIR API by the admin client, measured next to the unrestricted one.

use clap::ValueEnum;
use rand::Rng;
use serde_json::{json, Value};

use crate::{client::Api, load::LoadedPatient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// The admin client itself.
    #[value(name = "none")]
    Unrestricted,
    /// `<Type>?_compartment=%patient`: one Patient and its resources.
    Compartment,
    /// About half of the data: female Patients, the rest from 2020 on.
    Criteria,
}

/// The types the scenarios touch, one policy entry each.
const TYPES: [&str; 4] = ["Patient", "Observation", "Encounter", "Condition"];

/// Dates are uniform over 2015-2024, so `ge2020` keeps about half.
const CRITERIA: [(&str, &str); 4] = [
    ("Patient", "Patient?gender=female"),
    ("Observation", "Observation?date=ge2020-01-01"),
    ("Encounter", "Encounter?date=ge2020-01-01"),
    ("Condition", "Condition?onset-date=ge2020-01-01"),
];

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Unrestricted => "none",
            Policy::Compartment => "compartment",
            Policy::Criteria => "criteria",
        }
    }

    /// The AccessPolicy resource; none for the unrestricted caller.
    fn access_policy(self) -> Option<Value> {
        let resource: Vec<Value> = match self {
            Policy::Unrestricted => return None,
            Policy::Compartment => TYPES
                .iter()
                .map(|t| json!({"resourceType": t, "criteria": format!("{t}?_compartment=%patient")}))
                .collect(),
            Policy::Criteria => CRITERIA
                .iter()
                .map(|(t, criteria)| json!({"resourceType": t, "criteria": criteria}))
                .collect(),
        };
        Some(json!({
            "resourceType": "AccessPolicy",
            "name": format!("fhirgate-bench {}", self.as_str()),
            "resource": resource
        }))
    }

    /// The loaded Patients whose data the policy lets the caller see, for the
    /// scenarios to pick from: for `compartment` the first one, whose
    /// compartment it grants.
    pub fn visible(self, patients: &[LoadedPatient]) -> Vec<LoadedPatient> {
        match self {
            Policy::Unrestricted => patients.to_vec(),
            Policy::Compartment => patients.iter().take(1).cloned().collect(),
            Policy::Criteria => patients
                .iter()
                .filter(|p| p.body["gender"] == "female")
                .cloned()
                .collect(),
        }
    }
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn project_of(api: &Api) -> Result<&str, String> {
    api.project.as_deref().ok_or_else(|| {
        "the token response names no project (`project.reference`); --policy needs it".into()
    })
}

/// A ClientApplication and its membership in `project` (`extra` merged into
/// the membership), signed in.
async fn new_client(
    creator: &Api,
    base_url: &str,
    project: &str,
    name: &str,
    extra: Value,
    concurrency: usize,
) -> Result<Api, String> {
    let secret = random_secret();
    let mut client = json!({"resourceType": "ClientApplication", "name": name, "secret": secret});
    let mut membership = json!({
        "resourceType": "ProjectMembership",
        "project": {"reference": format!("Project/{project}")},
    });
    if creator.project.as_deref() != Some(project) {
        // A super admin writing into another project names it.
        client["meta"] = json!({"project": project});
        membership["meta"] = json!({"project": project});
    }
    let id = creator.create(&client).await?;
    let client_ref = json!({"reference": format!("ClientApplication/{id}")});
    membership["user"] = client_ref.clone();
    membership["profile"] = client_ref;
    if let (Some(m), Value::Object(extra)) = (membership.as_object_mut(), extra) {
        m.extend(extra);
    }
    creator.create(&membership).await?;
    Api::connect(base_url, &id, &secret, concurrency).await
}

/// Every member of a `superAdmin` Project is a super admin, which no policy
/// restricts. So when the admin client is one, the run gets a Project of its
/// own with an admin client, and loads and measures everything as that client.
/// Answers the client to use and whether it is a new one.
pub async fn own_project(
    admin: Api,
    base_url: &str,
    seed: u64,
    concurrency: usize,
) -> Result<(Api, bool), String> {
    let project = project_of(&admin)?.to_string();
    let super_admin = admin
        .get_json(&format!("Project/{project}"))
        .await
        .is_ok_and(|p| p["superAdmin"] == true);
    if !super_admin {
        return Ok((admin, false));
    }
    let name = format!("fhirgate-bench seed {seed}");
    let own = admin
        .create(&json!({"resourceType": "Project", "name": name}))
        .await?;
    let client = new_client(
        &admin,
        base_url,
        &own,
        "fhirgate-bench admin",
        json!({"admin": true}),
        concurrency,
    )
    .await?;
    eprintln!("policy: the client is a super admin; running in a new Project/{own} as its admin");
    Ok((client, true))
}

/// Creates the policy's AccessPolicy and a ClientApplication whose membership
/// grants it (`%patient` = `patient`), and signs in as that client.
pub async fn restricted_client(
    admin: &Api,
    base_url: &str,
    policy: Policy,
    patient: &LoadedPatient,
    concurrency: usize,
) -> Result<Api, String> {
    let project = project_of(admin)?;
    let failed = |e: String| format!("policy {}: {e}", policy.as_str());
    let resource = policy
        .access_policy()
        .ok_or_else(|| failed("is the unrestricted caller".into()))?;
    let policy_id = admin.create(&resource).await.map_err(failed)?;
    let access = json!({"access": [{
        "policy": {"reference": format!("AccessPolicy/{policy_id}")},
        "parameter": [{"name": "patient", "valueReference": {"reference": format!("Patient/{}", patient.id)}}]
    }]});
    let name = format!("fhirgate-bench {}", policy.as_str());
    new_client(admin, base_url, project, &name, access, concurrency)
        .await
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compartment_policy_has_an_entry_per_type() {
        assert_eq!(Policy::Unrestricted.access_policy(), None);
        let policy = Policy::Compartment.access_policy().unwrap();
        let entries = policy["resource"].as_array().unwrap();
        assert_eq!(entries.len(), TYPES.len());
        assert_eq!(
            entries[1],
            json!({"resourceType": "Observation", "criteria": "Observation?_compartment=%patient"})
        );
    }

    #[test]
    fn secrets_are_long() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
