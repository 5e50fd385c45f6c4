//! The floor no AccessPolicy lowers: the fields of administrative resources
//! that decide who someone is and what they may do. Only super admins (and
//! the server itself) change them, whatever policies a caller holds, and no
//! one changes the privileges of their own membership.
//!
//! Policies can only add protection above this floor: the fixed lists live
//! here, not in policy rules, so that no combination of rules (an entry
//! without readonly fields, a SMART scope) can remove them.

use serde_json::Value;

/// Fields of `resource_type` that only super admins and the server write.
pub fn server_controlled(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Project" => &[
            "superAdmin",
            "features",
            "link",
            "owner",
            "systemSetting",
            "systemSecret",
        ],
        "ProjectMembership" => &["project", "user"],
        // Email changes go through a verified link; the scope of a user
        // decides where it signs in.
        "User" => &["project", "email", "emailVerified"],
        _ => &[],
    }
}

/// The fields of a membership that grant its privileges: a member may not
/// change them on its own membership.
pub const OWN_MEMBERSHIP_PRIVILEGES: &[&str] = &["admin", "accessPolicy", "access"];

/// Holds the floor for an update of `stored` to `new` by a caller who is not
/// a super admin (`own_membership`: the resource is the caller's own
/// ProjectMembership): a change of any such field, removing it included, is
/// refused with a message naming it. (Fields the caller's policy hides are
/// put back before this check, so a caller never has to send what it cannot
/// see.)
pub fn hold(
    resource_type: &str,
    own_membership: bool,
    new: &Value,
    stored: &Value,
) -> Result<(), String> {
    let own: &[&str] = if own_membership && resource_type == "ProjectMembership" {
        OWN_MEMBERSHIP_PRIVILEGES
    } else {
        &[]
    };
    for field in server_controlled(resource_type).iter().chain(own) {
        match (new.get(*field), stored.get(*field)) {
            (new_value, old_value) if new_value == old_value => {}
            _ if own.contains(field) => {
                return Err(format!(
                    "ProjectMembership.{field} of your own membership cannot be changed by you: ask another admin of the project"
                ))
            }
            _ => {
                return Err(format!(
                    "{resource_type}.{field} is managed by the server: only a super admin may change it"
                ))
            }
        }
    }
    Ok(())
}

/// Whether a caller who is not a super admin may create a `resource_type`
/// through FHIR: projects come from `/auth/newproject`, and a new one must
/// not be made with server-controlled fields set.
pub fn creatable(resource_type: &str) -> Result<(), String> {
    match resource_type {
        "Project" => {
            Err("Projects are created with POST /auth/newproject (or by a super admin)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn other_fields_change_freely_and_removal_is_a_change() {
        let stored = json!({"resourceType": "Project", "name": "a", "features": ["bots"]});
        let renamed = json!({"resourceType": "Project", "name": "b", "features": ["bots"]});
        assert!(hold("Project", false, &renamed, &stored).is_ok());
        let removed = json!({"resourceType": "Project", "name": "a"});
        assert!(hold("Project", false, &removed, &stored)
            .unwrap_err()
            .contains("Project.features"));
    }

    #[test]
    fn changes_to_server_controlled_fields_are_refused() {
        let stored = json!({"resourceType": "Project", "name": "a"});
        for (field, value) in [
            ("superAdmin", json!(true)),
            ("features", json!(["x"])),
            ("link", json!([{"project": {"reference": "Project/1"}}])),
            ("owner", json!({"reference": "User/1"})),
        ] {
            let mut new = stored.clone();
            new[field] = value;
            let error = hold("Project", false, &new, &stored).unwrap_err();
            assert!(error.contains(&format!("Project.{field}")), "{error}");
        }
        let user = json!({"resourceType": "User", "email": "a@b.c"});
        let new = json!({"resourceType": "User", "email": "evil@b.c"});
        assert!(hold("User", false, &new, &user).is_err());
        assert!(hold("User", false, &user.clone(), &user).is_ok());
    }

    #[test]
    fn own_membership_privileges_are_held_only_on_ones_own() {
        let stored = json!({"resourceType": "ProjectMembership", "admin": true,
            "project": {"reference": "Project/1"}, "user": {"reference": "User/1"}});
        let mut new = stored.clone();
        new["accessPolicy"] = json!({"reference": "AccessPolicy/1"});
        assert!(hold("ProjectMembership", true, &new, &stored).is_err());
        assert!(hold("ProjectMembership", false, &new, &stored).is_ok());
        let mut demoted = stored.clone();
        demoted["admin"] = json!(false);
        assert!(hold("ProjectMembership", true, &demoted, &stored).is_err());
        let mut moved = stored.clone();
        moved["user"] = json!({"reference": "User/2"});
        assert!(hold("ProjectMembership", false, &moved, &stored).is_err());
    }

    #[test]
    fn projects_are_not_created_through_fhir() {
        assert!(creatable("Project").is_err());
        assert!(creatable("User").is_ok());
    }
}
