//! Who may do what to which resource type.
//!
//! Pure logic, no I/O. Today this holds fhirgate's built-in rules for its
//! administrative resource types, decided by the caller's role in the project.
//! AccessPolicy resources will compile into the same gate (and into search
//! filters) so that every route keeps asking one function.

pub mod scopes;

use std::fmt;

/// The FHIR interactions an access rule can allow, as AccessPolicy spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    History,
    Search,
}

impl Interaction {
    pub const ALL: [Interaction; 8] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Vread,
        Interaction::Update,
        Interaction::Patch,
        Interaction::Delete,
        Interaction::History,
        Interaction::Search,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::History => "history",
            Interaction::Search => "search",
        }
    }

    /// Whether the interaction changes stored data.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Interaction::Create | Interaction::Update | Interaction::Patch | Interaction::Delete
        )
    }
}

impl fmt::Display for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller's standing, from its ProjectMembership and Project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Member of a project with `superAdmin: true`: crosses projects.
    SuperAdmin,
    /// `ProjectMembership.admin = true`: manages its own project.
    ProjectAdmin,
    /// Any other member.
    Member,
}

/// Resource types only super admins may touch: they hold other people's
/// sessions (Login) or the server's keys (JsonWebKey).
const SUPER_ADMIN_ONLY: &[&str] = &["JsonWebKey", "Login"];

/// Resource types that define who is in a project and how they sign in.
/// Only admins see or change them, as in Medplum.
const PROJECT_ADMIN_ONLY: &[&str] = &[
    "AccessPolicy",
    "Bot",
    "ClientApplication",
    "ProjectMembership",
    "User",
];

/// Whether `role` may perform `interaction` on resources of `resource_type`.
///
/// A Project can only be created or changed by a super admin (changing a
/// Project could grant `superAdmin`); project admins may read their own.
pub fn is_allowed(role: Role, resource_type: &str, interaction: Interaction) -> bool {
    if role == Role::SuperAdmin {
        return true;
    }
    if SUPER_ADMIN_ONLY.contains(&resource_type) {
        return false;
    }
    if resource_type == "Project" {
        return role == Role::ProjectAdmin && !interaction.is_write();
    }
    if PROJECT_ADMIN_ONLY.contains(&resource_type) {
        return role == Role::ProjectAdmin;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_admin_may_do_everything() {
        for t in ["Login", "JsonWebKey", "Project", "User", "Patient"] {
            for i in Interaction::ALL {
                assert!(is_allowed(Role::SuperAdmin, t, i), "{t} {i}");
            }
        }
    }

    #[test]
    fn sessions_and_keys_are_super_admin_only() {
        for t in SUPER_ADMIN_ONLY {
            for i in Interaction::ALL {
                assert!(!is_allowed(Role::ProjectAdmin, t, i));
                assert!(!is_allowed(Role::Member, t, i));
            }
        }
    }

    #[test]
    fn project_admins_read_but_never_write_projects() {
        for i in Interaction::ALL {
            assert_eq!(
                is_allowed(Role::ProjectAdmin, "Project", i),
                !i.is_write(),
                "{i}"
            );
            assert!(!is_allowed(Role::Member, "Project", i));
        }
    }

    #[test]
    fn membership_types_are_for_admins() {
        for t in PROJECT_ADMIN_ONLY {
            for i in Interaction::ALL {
                assert!(is_allowed(Role::ProjectAdmin, t, i));
                assert!(!is_allowed(Role::Member, t, i));
            }
        }
    }

    #[test]
    fn clinical_types_are_open_to_members() {
        for i in Interaction::ALL {
            assert!(is_allowed(Role::Member, "Observation", i));
        }
    }
}
