//! A caller's effective policy, compiled once per request: which types and
//! interactions are open (the gate), which rows (search filters, ORed per
//! entry), which fields are hidden or kept, which writes pass the constraints.

use std::net::IpAddr;

use fhir_model::resource_types::is_admin_resource_type;
use fhir_model::search::fhirpath::Expression;
use fhir_model::search::Filter;
use serde_json::{json, Value};

use crate::ip::{self, IpRule};
use crate::model::{criteria_filters, AccessPolicy, ResourceRule};
use crate::params::{substitute, Parameter};
use crate::smart::ScopeGrant;
use crate::{Interaction, Role};

/// Types that hold other people's sessions (Login) or the server's keys
/// (JsonWebKey): super admins only, whatever a policy says.
pub const SUPER_ADMIN_ONLY: &[&str] = &["JsonWebKey", "Login"];

/// Ordinary types that `*` still leaves out: lifecycle AuditEvents tell
/// sign-in addresses and who invited whom, so a member sees AuditEvents
/// only where a policy names the type (project admins always do).
const NAMED_ONLY: &[&str] = &["AuditEvent"];

/// Whether `*` covers `resource_type`.
pub fn star_covers(resource_type: &str) -> bool {
    !is_admin_resource_type(resource_type) && !NAMED_ONLY.contains(&resource_type)
}

/// The types `*` leaves out (for the SQL of [`Types::Ordinary`]).
pub fn outside_star() -> impl Iterator<Item = &'static str> {
    fhir_model::resource_types::ADMIN_RESOURCE_TYPES
        .iter()
        .chain(NAMED_ONLY)
        .copied()
}

/// See [`CompiledPolicy::read_scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadScope {
    Everything,
    Ordinary,
    Less,
}

/// Which types an entry covers.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Type(String),
    /// `*`: every type but the administrative ones and AuditEvent.
    Ordinary,
    /// Every type (super admins).
    All,
}

impl Target {
    fn covers(&self, resource_type: &str) -> bool {
        match self {
            Target::Type(t) => t == resource_type,
            Target::Ordinary => star_covers(resource_type),
            Target::All => true,
        }
    }

    /// The types both cover.
    fn intersect(&self, other: &Target) -> Option<Target> {
        match (self, other) {
            (Target::All, t) | (t, Target::All) => Some(t.clone()),
            (Target::Ordinary, Target::Ordinary) => Some(Target::Ordinary),
            (Target::Type(t), Target::Ordinary) | (Target::Ordinary, Target::Type(t)) => {
                star_covers(t).then(|| Target::Type(t.clone()))
            }
            (Target::Type(a), Target::Type(b)) => (a == b).then(|| Target::Type(a.clone())),
        }
    }
}

fn mask(interactions: &[Interaction]) -> u8 {
    interactions.iter().fold(0, |m, i| m | i.bit())
}

const ALL: u8 = 0xff;

/// One compiled `resource[]` entry.
#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    interactions: u8,
    /// ANDed; empty: every row of the covered types.
    filters: Vec<Filter>,
    hidden: Vec<String>,
    readonly: Vec<String>,
    constraints: Vec<Expression>,
    /// What `filters` were compiled from, as search text (`a=1&b=2`), and
    /// the constraints' FHIRPath: to show the effective policy (`/auth/me`).
    criteria: Vec<String>,
    constraint_text: Vec<String>,
}

impl Rule {
    fn open(target: Target, interactions: u8) -> Rule {
        Rule {
            target,
            interactions,
            filters: Vec::new(),
            hidden: Vec::new(),
            readonly: Vec::new(),
            constraints: Vec::new(),
            criteria: Vec::new(),
            constraint_text: Vec::new(),
        }
    }

    /// This rule as an `AccessPolicy.resource[]` entry.
    fn to_entry(&self) -> Value {
        let resource_type = match &self.target {
            Target::Type(t) => t.as_str(),
            Target::Ordinary | Target::All => "*",
        };
        let interactions: Vec<&str> = Interaction::ALL
            .iter()
            .filter(|i| self.interactions & i.bit() != 0)
            .map(|i| i.as_str())
            .collect();
        let mut entry = json!({"resourceType": resource_type, "interaction": interactions});
        if !self.criteria.is_empty() {
            entry["criteria"] = json!(format!("{resource_type}?{}", self.criteria.join("&")));
        }
        if !self.hidden.is_empty() {
            entry["hiddenFields"] = json!(self.hidden);
        }
        if !self.readonly.is_empty() {
            entry["readonlyFields"] = json!(self.readonly);
        }
        if !self.constraint_text.is_empty() {
            entry["writeConstraint"] = self
                .constraint_text
                .iter()
                .map(|e| json!({"language": "text/fhirpath", "expression": e}))
                .collect();
        }
        entry
    }

    fn hiding(mut self, hidden: &[&str]) -> Rule {
        self.hidden = hidden.iter().map(|f| f.to_string()).collect();
        self
    }

    fn grants(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.interactions & interaction.bit() != 0 && self.target.covers(resource_type)
    }

    /// Whether the write constraints hold for this change.
    fn constraints_hold(&self, before: Option<&Value>, after: Option<&Value>) -> bool {
        if self.constraints.is_empty() {
            return true;
        }
        let empty = Value::Object(Default::default());
        let context = after.or(before).unwrap_or(&empty);
        let mut variables: Vec<(&str, &Value)> = Vec::new();
        if let Some(before) = before {
            variables.push(("before", before));
        }
        if let Some(after) = after {
            variables.push(("after", after));
        }
        // A constraint that cannot be evaluated on this change does not hold.
        self.constraints
            .iter()
            .all(|c| matches!(c.test(context, &variables), Ok(Some(true))))
    }
}

/// The rules Medplum gives project admins on their project's administrative
/// resources (secrets hidden). The fields only the server writes are not
/// readonly fields of these rules: they are a floor under every policy
/// ([`crate::floor`]).
fn project_admin_rules() -> Vec<Rule> {
    use Interaction::*;
    let reads_and_updates = mask(&[Read, Vread, Search, History, Update, Patch]);
    vec![
        Rule::open(Target::Type("Project".into()), reads_and_updates),
        Rule::open(Target::Type("ProjectMembership".into()), ALL),
        Rule::open(Target::Type("User".into()), ALL).hiding(&["passwordHash", "mfaSecret"]),
        Rule::open(Target::Type("ClientApplication".into()), ALL),
        Rule::open(Target::Type("Bot".into()), ALL),
        Rule::open(Target::Type("AccessPolicy".into()), ALL),
        Rule::open(Target::Type("AuditEvent".into()), mask(&Interaction::READS)),
    ]
}

/// One policy of a membership (its `accessPolicy`, or an `access[]` entry's)
/// with the parameters that entry gives it.
#[derive(Debug, Clone)]
pub struct MembershipPolicy {
    pub policy: Value,
    pub parameters: Vec<Parameter>,
}

/// Everything a caller's policy is compiled from.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    pub role: Role,
    /// `Patient/…`, `Practitioner/…`, `ClientApplication/…`.
    pub profile: &'a str,
    pub policies: Vec<MembershipPolicy>,
    /// The project's "policy required" setting: no policy, no access.
    pub policy_required: bool,
    /// The login's SMART resource scopes; empty narrows nothing.
    pub scopes: &'a [ScopeGrant],
}

/// Which rows an interaction may touch: everything, nothing, or the rows
/// that any branch admits.
#[derive(Debug, Clone, PartialEq)]
pub enum RowFilter<'a> {
    All,
    Nothing,
    AnyOf(Vec<Branch<'a>>),
}

/// Rows of `types` matching every filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch<'a> {
    pub types: Types<'a>,
    pub filters: &'a [Filter],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Types<'a> {
    /// No type condition (the statement has one already, or any type).
    Any,
    One(&'a str),
    /// Every type `*` covers (not the administrative ones, not AuditEvent).
    Ordinary,
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    rules: Vec<Rule>,
    ip_rules: Vec<IpRule>,
    /// Entries that could not be used (they grant nothing), for the log.
    problems: Vec<String>,
}

/// Substitutes parameters in every string of a policy.
fn substitute_json(value: &Value, parameters: &[Parameter]) -> Value {
    match value {
        Value::String(s) => Value::String(substitute(s, parameters)),
        Value::Array(items) => items
            .iter()
            .map(|v| substitute_json(v, parameters))
            .collect(),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute_json(v, parameters)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl CompiledPolicy {
    /// Full access to everything (the server's own lookups).
    pub fn unrestricted() -> CompiledPolicy {
        CompiledPolicy {
            rules: vec![Rule::open(Target::All, ALL)],
            ip_rules: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn compile(input: &PolicyInput<'_>) -> CompiledPolicy {
        let mut compiled = CompiledPolicy {
            rules: Vec::new(),
            ip_rules: Vec::new(),
            problems: Vec::new(),
        };
        if input.role == Role::SuperAdmin {
            compiled.rules.push(Rule::open(Target::All, ALL));
        } else if input.policies.is_empty() {
            if !input.policy_required {
                compiled.rules.push(Rule::open(Target::Ordinary, ALL));
            }
        } else {
            for entry in &input.policies {
                compiled.add_policy(input, entry);
            }
        }
        if input.role == Role::ProjectAdmin {
            compiled.rules.extend(project_admin_rules());
        }
        if !input.scopes.is_empty() {
            compiled.narrow(input.scopes);
        }
        compiled
    }

    fn add_policy(&mut self, input: &PolicyInput<'_>, entry: &MembershipPolicy) {
        // The entry's own parameters first: they win over the defaults.
        let mut parameters = entry.parameters.clone();
        parameters.push(Parameter::new("profile", input.profile));
        if input.profile.starts_with("Patient/") {
            parameters.push(Parameter::new("patient", input.profile));
        }
        let policy = substitute_json(&entry.policy, &parameters);
        let name = policy["name"]
            .as_str()
            .or(policy["id"].as_str())
            .unwrap_or("AccessPolicy")
            .to_string();
        let parsed = match AccessPolicy::from_json(&policy) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                return;
            }
        };
        self.ip_rules.extend(parsed.ip_rules.iter().cloned());
        for (n, rule) in parsed.resources.iter().enumerate() {
            match compile_rule(rule, parsed.compartment.as_deref(), input.role) {
                Ok(Some(rule)) => self.rules.push(rule),
                Ok(None) => {}
                Err(e) => self
                    .problems
                    .push(format!("{name}: AccessPolicy.resource[{n}]: {e}")),
            }
        }
    }

    /// SMART scopes: an interaction stays only where a scope grants it too,
    /// and a scope's search is added to the entry's criteria.
    fn narrow(&mut self, grants: &[ScopeGrant]) {
        let mut narrowed = Vec::new();
        for rule in &self.rules {
            for grant in grants {
                let grant_target = match grant.resource_type.as_str() {
                    "*" => Target::All,
                    t => Target::Type(t.to_string()),
                };
                let Some(target) = rule.target.intersect(&grant_target) else {
                    continue;
                };
                let interactions = rule.interactions & mask(&grant.interactions);
                if interactions == 0 {
                    continue;
                }
                let mut filters = rule.filters.clone();
                let mut criteria = rule.criteria.clone();
                if let Some(query) = &grant.query {
                    criteria.push(query.clone());
                    let (rule_type, resource_type) = match &target {
                        Target::Type(t) => (t.as_str(), Some(t.as_str())),
                        _ => ("*", None),
                    };
                    match criteria_filters(
                        &format!("{rule_type}?{query}"),
                        rule_type,
                        resource_type,
                    ) {
                        Ok(more) => filters.extend(more),
                        Err(e) => {
                            self.problems
                                .push(format!("scope {}?{query}: {e}", grant.resource_type));
                            continue;
                        }
                    }
                }
                narrowed.push(Rule {
                    target,
                    interactions,
                    filters,
                    criteria,
                    ..rule.clone()
                });
            }
        }
        self.rules = narrowed;
    }

    /// The effective policy as one AccessPolicy resource, parameters
    /// substituted and scopes applied (what `/auth/me` shows).
    pub fn to_access_policy(&self) -> Value {
        let mut policy = json!({
            "resourceType": "AccessPolicy",
            "resource": self.rules.iter().map(Rule::to_entry).collect::<Vec<_>>(),
        });
        if !self.ip_rules.is_empty() {
            policy["ipAccessRule"] = self.ip_rules.iter().map(IpRule::to_json).collect();
        }
        policy
    }

    /// What could not be compiled (those entries grant nothing).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The gate: whether any entry allows `interaction` on some
    /// `resource_type` resources.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.grants(resource_type, interaction))
    }

    /// Whether the caller's address may use this policy at all.
    pub fn allows_address(&self, address: IpAddr) -> bool {
        ip::allows(&self.ip_rules, address)
    }

    fn granting(&self, interaction: Interaction, admit: &dyn Fn(&Rule) -> bool) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.interactions & interaction.bit() != 0 && admit(rule))
            .collect()
    }

    /// The rows of `types` (empty: of any type) that `interaction` may touch.
    /// What the caller reads without criteria: every type, every ordinary
    /// type (`*`), or less.
    pub fn read_scope(&self) -> ReadScope {
        let open = self.granting(Interaction::Read, &|rule| rule.filters.is_empty());
        if open.iter().any(|r| r.target == Target::All) {
            ReadScope::Everything
        } else if open.iter().any(|r| r.target == Target::Ordinary) {
            ReadScope::Ordinary
        } else {
            ReadScope::Less
        }
    }

    pub fn row_filter(&self, types: &[String], interaction: Interaction) -> RowFilter<'_> {
        self.filter_where(types, interaction, &|_| true)
    }

    /// Each granting entry is one branch: its types and its criteria. The
    /// statement's own type condition intersects them.
    fn filter_where(
        &self,
        types: &[String],
        interaction: Interaction,
        admit: &dyn Fn(&Rule) -> bool,
    ) -> RowFilter<'_> {
        let granting = self.granting(interaction, admit);
        let open = if types.is_empty() {
            granting
                .iter()
                .any(|r| r.target == Target::All && r.filters.is_empty())
        } else {
            types.iter().all(|t| {
                granting
                    .iter()
                    .any(|r| r.filters.is_empty() && r.target.covers(t))
            })
        };
        if open {
            return RowFilter::All;
        }
        let single = types.len() == 1;
        let branches: Vec<Branch<'_>> = granting
            .into_iter()
            .filter(|r| types.is_empty() || types.iter().any(|t| r.target.covers(t)))
            .map(|r| Branch {
                types: match &r.target {
                    _ if single => Types::Any,
                    Target::Type(t) => Types::One(t),
                    Target::Ordinary => Types::Ordinary,
                    Target::All => Types::Any,
                },
                filters: &r.filters,
            })
            .collect();
        if branches.is_empty() {
            RowFilter::Nothing
        } else {
            RowFilter::AnyOf(branches)
        }
    }

    /// The rows a write may leave behind (or, for a delete, start from):
    /// those of entries that allow it and whose write constraints hold.
    /// `Err` names the failed constraint when every allowing entry has one.
    pub fn write_filter(
        &self,
        resource_type: &str,
        interaction: Interaction,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<RowFilter<'_>, String> {
        let types = [resource_type.to_string()];
        let filter = self.filter_where(&types, interaction, &|rule| {
            rule.target.covers(resource_type) && rule.constraints_hold(before, after)
        });
        if filter == RowFilter::Nothing && self.allows(resource_type, interaction) {
            return Err(format!(
                "The {interaction} of this {resource_type} fails a write constraint of your access policy"
            ));
        }
        Ok(filter)
    }

    /// Fields removed from every `resource_type` resource returned: those
    /// that every entry letting the caller read the type hides.
    pub fn hidden_fields(&self, resource_type: &str) -> Vec<&str> {
        let covers = |r: &Rule| r.target.covers(resource_type);
        let lists: Vec<Vec<&str>> = self
            .granting(Interaction::Read, &covers)
            .into_iter()
            .chain(self.granting(Interaction::Search, &covers))
            .map(|r| r.hidden.iter().map(String::as_str).collect())
            .collect();
        intersection(lists)
    }

    /// Fields a write keeps at their stored values: hidden or readonly in
    /// every entry that allows the write.
    pub fn protected_fields(&self, resource_type: &str, interaction: Interaction) -> Vec<&str> {
        let lists: Vec<Vec<&str>> = self
            .granting(interaction, &|r| r.target.covers(resource_type))
            .into_iter()
            .map(|r| {
                r.hidden
                    .iter()
                    .chain(&r.readonly)
                    .map(String::as_str)
                    .collect()
            })
            .collect();
        intersection(lists)
    }

    /// Removes the hidden fields from a resource about to be returned.
    pub fn redact(&self, resource: &mut Value) {
        let resource_type = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for field in self.hidden_fields(&resource_type) {
            crate::fields::remove(resource, field);
        }
    }

    /// Puts the protected fields of `new` back to their values in `stored`.
    /// A protected form of a choice element protects the element: hiding
    /// `deceasedDateTime` must not let a write add `deceasedBoolean` beside it.
    pub fn keep_protected(&self, interaction: Interaction, new: &mut Value, stored: &Value) {
        let resource_type = new["resourceType"].as_str().unwrap_or_default().to_string();
        for field in self.protected_fields(&resource_type, interaction) {
            let forms = fhir_model::choice_forms(&resource_type, field);
            if forms.is_empty() {
                crate::fields::restore(new, Some(stored), field);
            }
            for form in forms {
                crate::fields::restore(new, Some(stored), &form);
            }
        }
    }

    /// A search condition that reads a field the caller may not see (matching
    /// on it would tell the value): `(parameter, field)`. Full-text `_content`
    /// reads every field.
    pub fn hidden_condition(&self, filters: &[Filter]) -> Option<(String, String)> {
        filters.iter().find_map(|filter| match filter {
            Filter::Param {
                resource_type,
                code,
                ..
            } => self.hidden_parameter(resource_type, code),
            // The link itself reads the reference it follows.
            Filter::Chain {
                resource_type,
                code,
                inner,
                ..
            } => self
                .hidden_parameter(resource_type, code)
                .or_else(|| self.hidden_condition(std::slice::from_ref(inner))),
            Filter::Has {
                source_type,
                reference_param,
                inner,
            } => self
                .hidden_parameter(source_type, reference_param)
                .or_else(|| self.hidden_condition(std::slice::from_ref(inner))),
            Filter::AnyOf(inner) => self.hidden_condition(inner),
            Filter::Compartment { .. } => None,
        })
    }

    /// Whether parameter `code` of `resource_type` reads a hidden field (a
    /// condition, a `_sort`, a chain or an include through it would tell the
    /// value): `(code, field)`. What the parameter reads is worked out from
    /// its FHIRPath (choice types, `Resource.*` and composites included), not
    /// from its text; `*` (every reference, `_include=Patient:*`) reads all.
    pub fn hidden_parameter(&self, resource_type: &str, code: &str) -> Option<(String, String)> {
        let hidden = self.hidden_fields(resource_type);
        if hidden.is_empty() {
            return None;
        }
        let elements = match code {
            "*" => vec![String::new()],
            _ => fhir_model::search::Registry::get()
                .param(resource_type, code)
                .map(|p| p.reachable_elements())
                .unwrap_or_default(),
        };
        hidden
            .into_iter()
            .find(|field| elements.iter().any(|element| overlaps(element, field)))
            .map(|field| (code.to_string(), field.to_string()))
    }

    /// Whether responses need rewriting for `resource_type` (cheap check).
    pub fn hides_fields(&self, resource_type: &str) -> bool {
        !self.hidden_fields(resource_type).is_empty()
    }
}

/// Whether two element paths share data: one lies within the other (`""`,
/// the resource, holds everything). A choice element's name (`deceased`)
/// stands for each of its typed variants (`deceasedDateTime`).
fn overlaps(element: &str, field: &str) -> bool {
    element.is_empty()
        || element
            .split('.')
            .zip(field.split('.'))
            .all(|(a, b)| a == b || is_variant_of(a, b) || is_variant_of(b, a))
}

/// `deceasedDateTime` of `deceased`.
fn is_variant_of(variant: &str, choice: &str) -> bool {
    variant
        .strip_prefix(choice)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The strings every list holds (none when there is no list).
fn intersection(lists: Vec<Vec<&str>>) -> Vec<&str> {
    let mut lists = lists.into_iter();
    let Some(first) = lists.next() else {
        return Vec::new();
    };
    lists.fold(first, |acc, list| {
        acc.into_iter().filter(|f| list.contains(f)).collect()
    })
}

/// One entry, parameters substituted; `Ok(None)` when it can never grant.
/// Its own `compartment`, else the policy's, restricts it further.
fn compile_rule(
    rule: &ResourceRule,
    compartment: Option<&str>,
    role: Role,
) -> Result<Option<Rule>, String> {
    let target = match rule.resource_type.as_str() {
        "*" => Target::Ordinary,
        t if SUPER_ADMIN_ONLY.contains(&t) => return Ok(None),
        t => Target::Type(t.to_string()),
    };
    let mut interactions = mask(&rule.allowed());
    // A policy lets members look at administrative resources, never change
    // them: that would let them grant themselves more.
    if role == Role::Member && matches!(&target, Target::Type(t) if is_admin_resource_type(t)) {
        interactions &= mask(&Interaction::READS);
    }
    let resource_type = match &target {
        Target::Type(t) => Some(t.as_str()),
        _ => None,
    };
    let mut filters = match &rule.criteria {
        Some(criteria) => criteria_filters(criteria, &rule.resource_type, resource_type)?,
        None => Vec::new(),
    };
    let mut criteria: Vec<String> = rule
        .criteria
        .iter()
        .filter_map(|c| c.split_once('?').map(|(_, query)| query.to_string()))
        .filter(|query| !query.is_empty())
        .collect();
    if let Some(compartment) = rule.compartment.as_deref().or(compartment) {
        criteria.push(format!("_compartment={compartment}"));
        let (compartment_type, id) = compartment
            .split_once('/')
            .ok_or_else(|| format!("compartment '{compartment}' is not Type/id"))?;
        filters.push(
            fhir_model::search::parse::compartment_filter(
                fhir_model::search::Registry::get(),
                compartment_type,
                id,
                None,
            )
            .map_err(|e| e.to_string())?,
        );
    }
    let constraints = rule
        .write_constraints
        .iter()
        .map(|e| Expression::parse(e).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(Some(Rule {
        target,
        interactions,
        filters,
        hidden: rule.hidden_fields.clone(),
        readonly: rule.readonly_fields.clone(),
        constraints,
        criteria,
        constraint_text: rule.write_constraints.clone(),
    }))
}

#[cfg(test)]
mod tests;
