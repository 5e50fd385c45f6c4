//! The search-parameter registry: R4's 1,378 SearchParameters (vendored in
//! `data/`), fhirgate's admin-type parameters, and the Patient compartment.
//! OWNER: helper A.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;

use super::fhirpath::Expression;
use super::{ParamInfo, ParamLookup, ParamType};
use crate::resource_types::{all_resource_types, type_index};

/// R4 SearchParameters, trimmed by `data/vendor.py search-parameters`.
const R4_PARAMS: &str = include_str!("../../data/search-parameters.json");
/// fhirgate's administrative types, hand-written in the same format.
const ADMIN_PARAMS: &str = include_str!("../../data/admin-search-parameters.json");
/// The Patient compartment, from `data/vendor.py compartment`.
const PATIENT_COMPARTMENT: &str = include_str!("../../data/compartment-patient.json");

/// One parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub resource_type: String,
    pub kind: ParamType,
    /// The FHIRPath expression for this resource type only (the parts of the
    /// R4 union that start with this type, `Resource` or `DomainResource`).
    pub expression: String,
    pub targets: Vec<String>,
    /// Composite components: (component parameter's type, expression relative to the element).
    pub components: Vec<(ParamType, String)>,
    /// `expression`, parsed; `None` when there is none (`_text`, `_content`, `_query`).
    compiled: Option<Expression>,
    /// The component expressions, parsed, in order.
    compiled_components: Vec<Expression>,
    /// The parameters whose index rows a search on this one reads: itself,
    /// or, when its expression is the union of other parameters' of its type
    /// (`combo-code` is `code | component-code`), those, so the same values
    /// are not indexed twice. Set by [`stored_as_unions`].
    stored_as: Vec<String>,
    /// For a reference parameter that is another's references of one target
    /// type (`Observation.patient` is `Observation.subject.where(resolve()
    /// is Patient)`): that parameter and the type. Its references are read
    /// from that parameter's rows of that type instead of being indexed
    /// twice. Set by [`typed_reference_views`].
    reference_view: Option<ReferenceView>,
}

/// Where a typed view of another reference parameter finds its references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceView {
    /// The parameter whose rows hold them.
    pub base: String,
    /// The only target type they have.
    pub target_type: String,
}

impl SearchParam {
    /// The parsed expression; `None` for parameters without one (`_text`,
    /// `_content`, `_query`), which have nothing to index.
    pub fn compiled(&self) -> Option<&Expression> {
        self.compiled.as_ref()
    }

    /// The elements of its resource that a search, sort or include on this
    /// parameter reads (see [`Reach`](super::fhirpath::Reach)): its
    /// expression's, a composite's components' from where it stands, the
    /// narrative for `_text`, and everything (`""`) for `_content`.
    pub fn reachable_elements(&self) -> Vec<String> {
        match (&self.compiled, self.code.as_str()) {
            (Some(expression), _) => {
                let reach = expression.reach();
                let mut elements = reach.reads;
                if self.compiled_components.is_empty() {
                    elements.extend(reach.focus.iter().cloned());
                }
                // A composite's values are its components', read from where
                // its expression stands (`Observation`, `Observation.component`).
                for component in &self.compiled_components {
                    let part = component.reach_from(&reach.focus);
                    elements.extend(part.reads);
                    elements.extend(part.focus);
                }
                elements
            }
            (None, "_text") => vec!["text".into()],
            (None, "_content") => vec![String::new()],
            (None, _) => Vec::new(),
        }
    }

    /// The parsed component expressions of a composite, in component order.
    pub fn compiled_components(&self) -> &[Expression] {
        &self.compiled_components
    }

    /// The `param` of the index rows that hold this parameter's values.
    pub fn stored_as(&self) -> &[String] {
        &self.stored_as
    }

    /// See [`ReferenceView`]: `Some` when this parameter's references are
    /// another's rows of one target type (its `:identifier` rows stay its own).
    pub fn reference_view(&self) -> Option<&ReferenceView> {
        self.reference_view.as_ref()
    }

    /// Whether index rows are written under this parameter's own code
    /// (false for a union of other parameters, [`SearchParam::stored_as`]).
    pub fn is_stored(&self) -> bool {
        self.stored_as.len() == 1 && self.stored_as[0] == self.code
    }

    pub fn info(&self) -> ParamInfo {
        ParamInfo {
            kind: self.kind,
            targets: self.targets.clone(),
            components: self.components.iter().map(|(kind, _)| *kind).collect(),
        }
    }
}

#[derive(Default)]
struct TypeParams {
    params: Vec<SearchParam>,
    by_code: HashMap<String, usize>,
}

pub struct Registry {
    /// Indexed by `resource_types::type_index`.
    types: Vec<TypeParams>,
    patient_compartment: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct RawParam {
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawComponent {
    #[serde(rename = "type")]
    kind: String,
    expression: String,
}

fn param_type(name: &str) -> ParamType {
    match name {
        "number" => ParamType::Number,
        "date" => ParamType::Date,
        "string" => ParamType::String,
        "token" => ParamType::Token,
        "reference" => ParamType::Reference,
        "composite" => ParamType::Composite,
        "quantity" => ParamType::Quantity,
        "uri" => ParamType::Uri,
        _ => ParamType::Special,
    }
}

/// The top-level members of a `|` union (outside parentheses and quotes).
pub(crate) fn split_union(expression: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in expression.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, '|') if depth == 0 => {
                members.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(expression[start..].trim());
    members
}

/// The type name a union member starts with: `(Observation.value.ofType(X))` -> `Observation`.
fn member_root(member: &str) -> &str {
    let member = member.trim_start_matches(|c: char| c == '(' || c.is_whitespace());
    let end = member
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(member.len());
    &member[..end]
}

/// The part of a multi-base expression that applies to `resource_type`.
fn expression_for(expression: &str, resource_type: &str) -> String {
    split_union(expression)
        .into_iter()
        .filter(|member| {
            matches!(member_root(member), root if root == resource_type || root == "Resource" || root == "DomainResource")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A union member without the parentheses around all of it:
/// `(Observation.value.ofType(Quantity))` -> `Observation.value.ofType(Quantity)`.
fn bare_member(member: &str) -> &str {
    let mut member = member.trim();
    while let Some(inner) = member.strip_prefix('(').and_then(|m| m.strip_suffix(')')) {
        // Only when the first parenthesis closes at the end: not `(a).b(c)`.
        if !balanced(inner) {
            break;
        }
        member = inner.trim();
    }
    member
}

/// Whether every parenthesis in `text` closes after it opens.
fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

/// Sets [`SearchParam::stored_as`] for the parameters of one type whose
/// expression is exactly the union of other parameters' expressions (same
/// type, same components), or exactly another's (`Patient.phonetic` and
/// `Patient.name` are both `Patient.name`; the code first in byte order keeps
/// the rows): a search reads those parameters' rows. Reference parameters
/// are left alone: chains, `_has` and includes name one each.
fn stored_as_unions(params: &mut [SearchParam]) {
    let members: Vec<HashSet<&str>> = params
        .iter()
        .map(|p| {
            split_union(&p.expression)
                .into_iter()
                .map(bare_member)
                .collect()
        })
        .collect();
    // Smaller unions first, so a part that is itself a union is resolved.
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| members[i].len());
    let mut stored: Vec<Vec<String>> = params.iter().map(|p| p.stored_as.clone()).collect();
    for &p in &order {
        let param = &params[p];
        if param.compiled.is_none()
            || matches!(param.kind, ParamType::Reference | ParamType::Special)
        {
            continue;
        }
        if members[p].len() < 2 {
            // The first twin in byte order, which keeps its own rows.
            let twin = (0..params.len())
                .filter(|&q| {
                    params[q].code < param.code
                        && params[q].kind == param.kind
                        && params[q].components == param.components
                        && params[q].compiled.is_some()
                        && members[q] == members[p]
                })
                .min_by(|&a, &b| params[a].code.cmp(&params[b].code));
            if let Some(q) = twin {
                stored[p] = stored[q].clone();
            }
            continue;
        }
        let mut parts: Vec<usize> = (0..params.len())
            .filter(|&q| {
                q != p
                    && params[q].kind == param.kind
                    && params[q].components == param.components
                    && params[q].compiled.is_some()
                    && members[q].len() < members[p].len()
                    && members[q].is_subset(&members[p])
            })
            .collect();
        parts.sort_by_key(|&q| std::cmp::Reverse(members[q].len()));
        let mut covered: HashSet<&str> = HashSet::new();
        let mut chosen = Vec::new();
        for q in parts {
            if members[q].is_disjoint(&covered) {
                covered.extend(&members[q]);
                chosen.extend(stored[q].iter().cloned());
            }
        }
        if covered == members[p] {
            chosen.sort();
            stored[p] = chosen;
        }
    }
    for (param, stored_as) in params.iter_mut().zip(stored) {
        param.stored_as = stored_as;
    }
}

/// Sets [`SearchParam::reference_view`] for the reference parameters of one
/// type whose expression is `E.where(resolve() is T)` where `E` is the whole
/// expression of another reference parameter of the type.
fn typed_reference_views(params: &mut [SearchParam]) {
    let views: Vec<Option<ReferenceView>> = params
        .iter()
        .map(|param| {
            if param.kind != ParamType::Reference || param.compiled.is_none() {
                return None;
            }
            let (of, rest) = param.expression.rsplit_once(".where(resolve() is ")?;
            let target_type = rest.strip_suffix(')')?;
            if !crate::resource_types::is_known_resource_type(target_type) {
                return None;
            }
            let base = params.iter().find(|other| {
                other.kind == ParamType::Reference
                    && other.compiled.is_some()
                    && other.expression == of
            })?;
            Some(ReferenceView {
                base: base.code.clone(),
                target_type: target_type.to_string(),
            })
        })
        .collect();
    for (param, view) in params.iter_mut().zip(views) {
        param.reference_view = view;
    }
}

impl Registry {
    /// The registry, parsed once per process.
    pub fn get() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(Registry::build)
    }

    fn build() -> Registry {
        let mut types: Vec<TypeParams> = all_resource_types()
            .map(|_| TypeParams::default())
            .collect();
        let mut raw: Vec<RawParam> =
            serde_json::from_str(R4_PARAMS).expect("vendored search parameters parse");
        raw.extend(
            serde_json::from_str::<Vec<RawParam>>(ADMIN_PARAMS)
                .expect("vendored admin search parameters parse"),
        );
        for param in &raw {
            let kind = param_type(&param.kind);
            let components: Vec<(ParamType, String)> = param
                .component
                .iter()
                .map(|c| (param_type(&c.kind), c.expression.clone()))
                .collect();
            let compiled_components: Vec<Expression> = components
                .iter()
                .filter_map(|(_, e)| Expression::parse(e).ok())
                .collect();
            // A composite whose components do not all parse cannot be indexed.
            let components_ok = compiled_components.len() == components.len();
            let mut add = |resource_type: &str, expression: String| {
                let Some(index) = type_index(resource_type) else {
                    return;
                };
                let compiled = if expression.is_empty() || !components_ok {
                    None
                } else {
                    Expression::parse(&expression).ok()
                };
                let entry = &mut types[index];
                if entry.by_code.contains_key(&param.code) {
                    return;
                }
                entry.by_code.insert(param.code.clone(), entry.params.len());
                entry.params.push(SearchParam {
                    code: param.code.clone(),
                    resource_type: resource_type.to_string(),
                    kind,
                    expression,
                    targets: param.target.clone(),
                    components: components.clone(),
                    compiled,
                    compiled_components: compiled_components.clone(),
                    stored_as: vec![param.code.clone()],
                    reference_view: None,
                });
            };
            let expression = param.expression.as_deref().unwrap_or("");
            for base in &param.base {
                match base.as_str() {
                    "Resource" | "DomainResource" => {
                        for resource_type in all_resource_types() {
                            if base == "DomainResource"
                                && matches!(resource_type, "Bundle" | "Binary" | "Parameters")
                            {
                                continue;
                            }
                            add(resource_type, expression.to_string());
                        }
                    }
                    resource_type if param.base.len() > 1 => {
                        add(resource_type, expression_for(expression, resource_type));
                    }
                    resource_type => add(resource_type, expression.to_string()),
                }
            }
        }
        for entry in &mut types {
            stored_as_unions(&mut entry.params);
            typed_reference_views(&mut entry.params);
        }
        let patient_compartment =
            serde_json::from_str(PATIENT_COMPARTMENT).expect("vendored Patient compartment parses");
        Registry {
            types,
            patient_compartment,
        }
    }

    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        let entry = &self.types[type_index(resource_type)?];
        entry.by_code.get(code).map(|&i| &entry.params[i])
    }

    /// Every parameter of a resource type (including Resource/DomainResource ones).
    pub fn params_for(&self, resource_type: &str) -> Vec<&SearchParam> {
        match type_index(resource_type) {
            Some(index) => self.types[index].params.iter().collect(),
            None => Vec::new(),
        }
    }
}

impl ParamLookup for Registry {
    fn lookup(&self, resource_type: &str, code: &str) -> Option<ParamInfo> {
        self.param(resource_type, code).map(SearchParam::info)
    }

    fn compartment_params(&self, compartment_type: &str, resource_type: &str) -> Vec<String> {
        if compartment_type != "Patient" {
            return Vec::new();
        }
        // A typed view's references are its base's rows of the view's type
        // (compartment membership only counts references of the compartment's type).
        let mut params: Vec<String> = Vec::new();
        for code in self
            .patient_compartment
            .get(resource_type)
            .into_iter()
            .flatten()
        {
            let stored = match self
                .param(resource_type, code)
                .and_then(SearchParam::reference_view)
            {
                Some(view) if view.target_type == compartment_type => &view.base,
                Some(_) => continue,
                None => code,
            };
            if !params.contains(stored) {
                params.push(stored.clone());
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource_types::{ADMIN_RESOURCE_TYPES, R4_RESOURCE_TYPES};

    fn codes(resource_type: &str) -> Vec<String> {
        Registry::get()
            .params_for(resource_type)
            .into_iter()
            .map(|p| p.code.clone())
            .collect()
    }

    #[test]
    fn every_definition_lands_on_a_type() {
        let registry = Registry::get();
        let raw: Vec<RawParam> = serde_json::from_str(R4_PARAMS).unwrap();
        assert_eq!(raw.len(), 1378);
        for param in &raw {
            for base in &param.base {
                let resource_type = match base.as_str() {
                    "Resource" | "DomainResource" => "Patient",
                    other => other,
                };
                let found = registry
                    .param(resource_type, &param.code)
                    .unwrap_or_else(|| panic!("{resource_type}.{}", param.code));
                if param.expression.is_some() {
                    assert!(
                        !found.expression.is_empty(),
                        "{resource_type}.{} lost its expression",
                        param.code
                    );
                }
            }
        }
    }

    #[test]
    fn every_expression_parses() {
        let registry = Registry::get();
        let mut checked = 0;
        for resource_type in all_resource_types() {
            for param in registry.params_for(resource_type) {
                if !param.expression.is_empty() {
                    if let Err(e) = Expression::parse(&param.expression) {
                        panic!("{resource_type}.{}: {e}", param.code);
                    }
                    assert!(param.compiled().is_some());
                    checked += 1;
                }
                assert_eq!(param.compiled_components().len(), param.components.len());
            }
        }
        assert!(checked > 2000, "{checked}");
    }

    #[test]
    fn observation_parameters() {
        let registry = Registry::get();
        let obs = codes("Observation");
        for code in [
            "code",
            "subject",
            "date",
            "value-quantity",
            "code-value-quantity",
            "component-code-value-quantity",
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
            "_security",
            "_source",
            "_text",
        ] {
            assert!(obs.contains(&code.to_string()), "{code}");
        }
        let code = registry.param("Observation", "code").unwrap();
        assert_eq!(code.kind, ParamType::Token);
        assert_eq!(code.expression, "Observation.code");
        let subject = registry.lookup("Observation", "subject").unwrap();
        assert_eq!(subject.kind, ParamType::Reference);
        assert!(subject.targets.contains(&"Patient".to_string()));
        let composite = registry
            .lookup("Observation", "code-value-quantity")
            .unwrap();
        assert_eq!(composite.kind, ParamType::Composite);
        assert_eq!(
            composite.components,
            vec![ParamType::Token, ParamType::Quantity]
        );
        let param = registry
            .param("Observation", "code-value-quantity")
            .unwrap();
        assert_eq!(param.components[1].1, "value.ofType(Quantity)");
        assert!(registry.lookup("Observation", "nope").is_none());
        assert!(registry.lookup("NoSuchType", "code").is_none());
        assert!(registry.params_for("NoSuchType").is_empty());
    }

    #[test]
    fn unions_of_other_parameters_are_stored_as_them() {
        let registry = Registry::get();
        let stored = |code: &str| {
            registry
                .param("Observation", code)
                .unwrap()
                .stored_as()
                .to_vec()
        };
        assert_eq!(stored("combo-code"), ["code", "component-code"]);
        assert_eq!(
            stored("combo-value-quantity"),
            ["component-value-quantity", "value-quantity"]
        );
        assert_eq!(
            stored("combo-code-value-quantity"),
            ["code-value-quantity", "component-code-value-quantity"]
        );
        assert_eq!(
            stored("combo-value-concept"),
            ["component-value-concept", "value-concept"]
        );
        assert!(registry.param("Observation", "code").unwrap().is_stored());
        assert!(!registry
            .param("Observation", "combo-code")
            .unwrap()
            .is_stored());
        // Every other parameter of every type is its own: only the
        // Observation combinations are unions of others, and a few have the
        // expression of another.
        let mut unions = Vec::new();
        for resource_type in all_resource_types() {
            for param in registry.params_for(resource_type) {
                if !param.is_stored() {
                    unions.push(format!("{resource_type}.{}", param.code));
                }
            }
        }
        unions.sort();
        assert_eq!(
            unions,
            [
                "CapabilityStatement.version",
                "CodeSystem.url",
                "Observation.combo-code",
                "Observation.combo-code-value-concept",
                "Observation.combo-code-value-quantity",
                "Observation.combo-data-absent-reason",
                "Observation.combo-value-concept",
                "Observation.combo-value-quantity",
                "Patient.phonetic",
                "Person.phonetic",
                "Practitioner.phonetic",
                "RelatedPerson.phonetic",
            ]
        );
        let stored_as = |t: &str, code: &str| registry.param(t, code).unwrap().stored_as().to_vec();
        assert_eq!(stored_as("Patient", "phonetic"), ["name"]);
        assert_eq!(stored_as("Patient", "name"), ["name"]);
        assert_eq!(stored_as("CodeSystem", "url"), ["system"]);
        assert_eq!(stored_as("CapabilityStatement", "version"), ["fhirversion"]);
    }

    #[test]
    fn bare_members_lose_only_enclosing_parentheses() {
        assert_eq!(
            bare_member(" (Observation.value.ofType(Quantity)) "),
            "Observation.value.ofType(Quantity)"
        );
        assert_eq!(bare_member("(a).b(c)"), "(a).b(c)");
        assert_eq!(bare_member("((a.b))"), "a.b");
    }

    #[test]
    fn multi_base_expressions_are_split_per_type() {
        let registry = Registry::get();
        let code = |t: &str, c: &str| registry.param(t, c).unwrap().expression.clone();
        assert_eq!(
            code("AllergyIntolerance", "code"),
            "AllergyIntolerance.code | AllergyIntolerance.reaction.substance"
        );
        assert_eq!(
            code("MedicationRequest", "code"),
            "(MedicationRequest.medication.ofType(CodeableConcept))"
        );
        assert_eq!(code("Observation", "date"), "Observation.effective");
        assert_eq!(
            code("Patient", "phone"),
            "Patient.telecom.where(system='phone')"
        );
        assert_eq!(
            code("ActivityDefinition", "context-quantity"),
            "(ActivityDefinition.useContext.value.ofType(Quantity)) | (ActivityDefinition.useContext.value.ofType(Range))"
        );
        assert_eq!(
            code("CodeSystem", "context-quantity"),
            "(CodeSystem.useContext.value.ofType(Quantity)) | (CodeSystem.useContext.value.ofType(Range))"
        );
        assert_eq!(
            code("Observation", "value-string"),
            "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text"
        );
        assert_eq!(code("Patient", "_tag"), "Resource.meta.tag");
        assert_eq!(
            split_union("a.where(x='|') | (b | c) | d"),
            vec!["a.where(x='|')", "(b | c)", "d"]
        );
    }

    #[test]
    fn common_parameters_apply_to_every_type() {
        let registry = Registry::get();
        for resource_type in R4_RESOURCE_TYPES.iter().chain(ADMIN_RESOURCE_TYPES) {
            for code in [
                "_id",
                "_lastUpdated",
                "_tag",
                "_profile",
                "_security",
                "_source",
            ] {
                assert!(
                    registry.param(resource_type, code).is_some(),
                    "{resource_type}.{code}"
                );
            }
        }
        let updated = registry.lookup("User", "_lastUpdated").unwrap();
        assert_eq!(updated.kind, ParamType::Date);
        assert_eq!(
            registry.lookup("Patient", "_id").unwrap().kind,
            ParamType::Token
        );
        assert!(registry.param("Bundle", "_text").is_none());
        assert!(registry.param("Bundle", "_content").is_some());
        for code in ["_text", "_content"] {
            let param = registry.param("Patient", code).unwrap();
            assert_eq!(param.kind, ParamType::String, "{code}");
            assert!(param.compiled().is_none(), "{code}");
        }
    }

    #[test]
    fn near_is_special_on_location_position() {
        let near = Registry::get().param("Location", "near").unwrap();
        assert_eq!(near.kind, ParamType::Special);
        assert_eq!(near.expression, "Location.position");
        assert!(near.compiled().is_some());
    }

    #[test]
    fn admin_parameters() {
        let registry = Registry::get();
        let user = codes("User");
        for code in ["email", "project", "external-id", "identifier", "name"] {
            assert!(user.contains(&code.to_string()), "User.{code}");
        }
        let membership = codes("ProjectMembership");
        for code in [
            "project",
            "user",
            "profile",
            "profile-type",
            "admin",
            "active",
            "access-policy",
            "external-id",
            "user-name",
        ] {
            assert!(
                membership.contains(&code.to_string()),
                "ProjectMembership.{code}"
            );
        }
        for (t, code) in [
            ("ClientApplication", "name"),
            ("Bot", "name"),
            ("AccessPolicy", "name"),
            ("Project", "name"),
            ("Project", "owner"),
            ("Login", "user"),
            ("Login", "project"),
        ] {
            assert!(registry.param(t, code).is_some(), "{t}.{code}");
        }
        let name = registry.lookup("User", "name").unwrap();
        assert_eq!(name.kind, ParamType::String);
        let policy = registry
            .lookup("ProjectMembership", "access-policy")
            .unwrap();
        assert_eq!(policy.kind, ParamType::Reference);
        assert_eq!(policy.targets, vec!["AccessPolicy".to_string()]);
    }

    #[test]
    fn typed_reference_parameters_are_views_of_their_base() {
        let registry = Registry::get();
        let view = |t: &str, code: &str| {
            registry
                .param(t, code)
                .unwrap()
                .reference_view()
                .map(|v| (v.base.as_str(), v.target_type.as_str()))
        };
        assert_eq!(view("Observation", "patient"), Some(("subject", "Patient")));
        assert_eq!(view("Condition", "patient"), Some(("subject", "Patient")));
        assert_eq!(
            view("Encounter", "practitioner"),
            Some(("participant", "Practitioner"))
        );
        assert_eq!(view("Appointment", "location"), Some(("actor", "Location")));
        assert_eq!(view("Observation", "subject"), None);
        // A union of typed references (agent and entity) is not one view.
        assert_eq!(view("AuditEvent", "patient"), None);
        // Patient.general-practitioner has no untyped twin.
        assert_eq!(view("Patient", "general-practitioner"), None);
    }

    #[test]
    fn patient_compartment() {
        let registry = Registry::get();
        assert_eq!(
            registry.compartment_params("Patient", "Observation"),
            vec!["subject".to_string(), "performer".to_string()]
        );
        assert_eq!(
            registry.compartment_params("Patient", "Patient"),
            vec!["link".to_string()]
        );
        // Condition's compartment parameters are `patient` and `asserter`;
        // `patient` is `subject` of type Patient and has no rows of its own.
        assert_eq!(
            registry.compartment_params("Patient", "Condition"),
            vec!["subject".to_string(), "asserter".to_string()]
        );
        assert!(registry
            .compartment_params("Patient", "ActivityDefinition")
            .is_empty());
        assert!(registry
            .compartment_params("Encounter", "Observation")
            .is_empty());
        // Every compartment parameter exists on its type.
        for resource_type in all_resource_types() {
            for code in registry.compartment_params("Patient", resource_type) {
                assert!(
                    registry.param(resource_type, &code).is_some(),
                    "{resource_type}.{code}"
                );
            }
        }
    }
}
