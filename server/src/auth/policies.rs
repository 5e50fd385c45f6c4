//! A membership's AccessPolicies as stored, with the policies they are
//! based on (`access_policy::based_on`): loaded for a caller, and checked
//! when a policy is saved.

use std::collections::{HashMap, HashSet};

use access_policy::based_on::{self, MAX_POLICIES};
use access_policy::{MembershipPolicy, Parameter};
use serde_json::Value;
use uuid::Uuid;

use super::reference_id;
use crate::{
    error::{Error, Result},
    store::{Reads, Tenant},
};

/// A membership's policies, each followed by those it is based on with the
/// same parameters (`accessPolicy`, then each `access[]` entry's), and the
/// ids of every policy they reach: the caller may not change those. A
/// policy that cannot be loaded still counts, and grants nothing.
pub(super) async fn membership_policies(
    db: &impl Reads,
    project_id: Uuid,
    membership: &Value,
) -> Result<(Vec<MembershipPolicy>, Vec<Uuid>)> {
    let mut wanted: Vec<(&Value, Vec<Parameter>)> = Vec::new();
    if !membership["accessPolicy"].is_null() {
        wanted.push((&membership["accessPolicy"], Vec::new()));
    }
    for access in membership["access"].as_array().into_iter().flatten() {
        let parameters = access["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let value = p["valueReference"]["reference"]
                    .as_str()
                    .or(p["valueString"].as_str())?;
                Some(Parameter::new(p["name"].as_str()?, value))
            })
            .collect();
        wanted.push((&access["policy"], parameters));
    }
    let roots: Vec<Uuid> = wanted
        .iter()
        .filter_map(|(reference, _)| reference_id(reference, "AccessPolicy"))
        .collect();
    let stored = load_with_bases(db, project_id, &roots).await?;
    let mut policies = Vec::new();
    let mut reached = Vec::new();
    for (reference, parameters) in wanted {
        let Some(root) = reference_id(reference, "AccessPolicy") else {
            policies.push(grants_nothing(parameters));
            continue;
        };
        let root = root.to_string();
        for id in based_on::closure(&root, &stored) {
            reached.extend(Uuid::parse_str(id).ok());
            policies.push(match stored.get(id) {
                Some(policy) => MembershipPolicy {
                    policy: policy.clone(),
                    parameters: parameters.clone(),
                },
                None => grants_nothing(parameters.clone()),
            });
        }
    }
    reached.sort_unstable();
    reached.dedup();
    Ok((policies, reached))
}

fn grants_nothing(parameters: Vec<Parameter>) -> MembershipPolicy {
    MembershipPolicy {
        policy: serde_json::json!({}),
        parameters,
    }
}

/// The live policies of the project among `roots` and those they are based
/// on, by id: one statement per level of `basedOn`, at most
/// [`MAX_POLICIES`] per root.
async fn load_with_bases(
    db: &impl Reads,
    project_id: Uuid,
    roots: &[Uuid],
) -> Result<HashMap<String, Value>> {
    let most = MAX_POLICIES * roots.len();
    let mut stored = HashMap::new();
    let mut asked = HashSet::new();
    let mut level: Vec<Uuid> = roots.to_vec();
    while !level.is_empty() && asked.len() < most {
        level.retain(|id| asked.insert(*id));
        if level.is_empty() {
            break;
        }
        let found = db
            .read_live_many(Tenant::Project(project_id), "AccessPolicy", &level)
            .await?;
        level = Vec::new();
        for (id, content) in found {
            let policy = serde_json::from_str::<Value>(&content).map_err(|e| {
                Error::Internal(format!("stored AccessPolicy/{id} is not JSON: {e}"))
            })?;
            level.extend(
                based_on::bases(&policy)
                    .into_iter()
                    .filter_map(|base| Uuid::parse_str(base).ok()),
            );
            stored.insert(id.to_string(), policy);
        }
    }
    Ok(stored)
}

/// An AccessPolicy about to be saved as `id` in the project: every policy
/// it is based on must be one of the project's, and none may lead back to
/// it (400, naming the cycle).
pub async fn check_bases(
    db: &impl Reads,
    project_id: Uuid,
    id: Uuid,
    policy: &Value,
) -> Result<()> {
    let bases = based_on::bases(policy);
    if bases.is_empty() {
        return Ok(());
    }
    let id = id.to_string();
    let direct: Vec<Uuid> = bases
        .iter()
        .filter_map(|b| Uuid::parse_str(b).ok())
        .collect();
    let stored = load_with_bases(db, project_id, &direct).await?;
    // Itself is no missing base, but a cycle.
    let is_missing = |base: &&str| *base != id && !stored.contains_key(*base);
    if let Some((n, missing)) = bases.iter().enumerate().find(|(_, base)| is_missing(base)) {
        return Err(unusable(
            format!("AccessPolicy.basedOn[{n}]"),
            format!("AccessPolicy/{missing} is not an AccessPolicy of this project"),
        ));
    }
    match based_on::cycle(&id, policy, &stored) {
        Some(path) => Err(unusable(
            "AccessPolicy.basedOn".into(),
            based_on::describe_cycle(&path),
        )),
        None => Ok(()),
    }
}

fn unusable(path: String, message: String) -> Error {
    Error::Invalid(vec![fhir_model::Issue::error(
        fhir_model::IssueCode::Value,
        message,
    )
    .at(path)])
}
