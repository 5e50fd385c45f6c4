//! Who may do what to which resources.
//!
//! Pure logic, no I/O. An [`AccessPolicy`] resource (Medplum's shape) is
//! validated when it is saved ([`validate`]); when a caller is loaded, its
//! membership's policies, their parameters, the project's settings and the
//! login's SMART scopes compile into one [`CompiledPolicy`]: the gate (type ×
//! interaction), the row filter every statement carries (criteria as search
//! filters), hidden and readonly fields, write constraints and IP rules.

pub mod based_on;
mod compile;
mod error;
pub mod fields;
pub mod floor;
mod ip;
mod model;
mod params;
mod smart;

pub mod scopes;

use std::fmt;

pub use compile::{
    outside_star, star_covers, Branch, CompiledPolicy, MembershipPolicy, PolicyInput, ReadScope,
    RowFilter, Types,
};
pub use error::PolicyError;
pub use ip::IpRule;
pub use model::{validate, AccessPolicy, ResourceRule};
pub use params::{substitute, Parameter};
pub use smart::{is_full_access, parse_scope, ScopeGrant};

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

    /// The interactions that only look.
    pub const READS: [Interaction; 4] = [
        Interaction::Read,
        Interaction::Vread,
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

    pub fn parse(text: &str) -> Option<Interaction> {
        Interaction::ALL.into_iter().find(|i| i.as_str() == text)
    }

    /// Whether the interaction changes stored data.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Interaction::Create | Interaction::Update | Interaction::Patch | Interaction::Delete
        )
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
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
