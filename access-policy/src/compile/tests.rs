use serde_json::json;

use super::*;
use crate::smart::parse_scope;

fn input<'a>(role: Role, profile: &'a str, policies: Vec<Value>) -> PolicyInput<'a> {
    PolicyInput {
        role,
        profile,
        policies: policies
            .into_iter()
            .map(|policy| MembershipPolicy {
                policy,
                parameters: Vec::new(),
            })
            .collect(),
        policy_required: false,
        scopes: &[],
    }
}

fn compile(role: Role, policies: Vec<Value>) -> CompiledPolicy {
    CompiledPolicy::compile(&input(role, "Practitioner/d1", policies))
}

/// The filters of a search on `resource_type` (`query` without the `?`).
fn filters(resource_type: &str, query: &str) -> Vec<Filter> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    fhir_model::search::parse_search(
        fhir_model::search::Registry::get(),
        Some(resource_type),
        &pairs,
        false,
    )
    .unwrap()
    .filters
}

fn one(t: &str) -> Vec<String> {
    vec![t.to_string()]
}

/// The filters of a single-type row filter's branches.
fn groups(filter: RowFilter<'_>) -> Vec<Vec<Filter>> {
    match filter {
        RowFilter::AnyOf(branches) => branches.into_iter().map(|b| b.filters.to_vec()).collect(),
        other => panic!("expected branches, got {other:?}"),
    }
}

#[test]
fn super_admins_see_everything() {
    let p = compile(
        Role::SuperAdmin,
        vec![json!({"resource": [{"resourceType": "Patient"}]})],
    );
    for t in ["Login", "JsonWebKey", "Project", "User", "Patient"] {
        for i in Interaction::ALL {
            assert!(p.allows(t, i), "{t} {i}");
        }
    }
    assert_eq!(p.row_filter(&[], Interaction::Search), RowFilter::All);
}

#[test]
fn members_without_policy_get_ordinary_types_only() {
    let p = compile(Role::Member, vec![]);
    for i in Interaction::ALL {
        assert!(p.allows("Observation", i));
        for t in fhir_model::resource_types::ADMIN_RESOURCE_TYPES {
            assert!(!p.allows(t, i), "{t} {i}");
        }
    }
    assert_eq!(
        p.row_filter(&one("Observation"), Interaction::Search),
        RowFilter::All
    );
    assert_eq!(
        p.row_filter(&[], Interaction::History),
        RowFilter::AnyOf(vec![Branch {
            types: Types::Ordinary,
            filters: &[]
        }])
    );
}

#[test]
fn policy_required_means_nothing_without_a_policy() {
    let mut i = input(Role::Member, "Practitioner/d1", vec![]);
    i.policy_required = true;
    let p = CompiledPolicy::compile(&i);
    assert!(!p.allows("Patient", Interaction::Read));
    assert_eq!(p.row_filter(&[], Interaction::Search), RowFilter::Nothing);
    // An admin still manages the project's memberships and policies.
    i.role = Role::ProjectAdmin;
    let p = CompiledPolicy::compile(&i);
    assert!(p.allows("AccessPolicy", Interaction::Create));
    assert!(!p.allows("Patient", Interaction::Read));
}

#[test]
fn project_admins_get_synthetic_rules() {
    let p = compile(Role::ProjectAdmin, vec![]);
    assert!(p.allows("Patient", Interaction::Delete));
    assert!(p.allows("ProjectMembership", Interaction::Create));
    assert!(p.allows("Project", Interaction::Update));
    assert!(!p.allows("Project", Interaction::Create));
    assert!(!p.allows("Project", Interaction::Delete));
    assert!(!p.allows("Login", Interaction::Read));
    assert!(!p.allows("JsonWebKey", Interaction::Search));
    assert_eq!(p.hidden_fields("User"), vec!["passwordHash", "mfaSecret"]);
}

#[test]
fn members_never_write_admin_types_or_reach_logins() {
    let p = compile(
        Role::Member,
        vec![json!({"resource": [
            {"resourceType": "ProjectMembership"},
            {"resourceType": "Login"},
            {"resourceType": "Patient"}
        ]})],
    );
    assert!(p.allows("ProjectMembership", Interaction::Read));
    assert!(!p.allows("ProjectMembership", Interaction::Update));
    assert!(!p.allows("Login", Interaction::Read));
    assert!(p.allows("Patient", Interaction::Update));
    assert!(!p.allows("Observation", Interaction::Read));
}

#[test]
fn criteria_become_ored_filter_groups() {
    let p = CompiledPolicy::compile(&input(
        Role::Member,
        "Patient/p1",
        vec![
            json!({"resource": [
                {"resourceType": "Observation", "criteria": "Observation?subject=%patient&status=final"},
                {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id", "readonly": true}
            ]}),
            json!({"resource": [{"resourceType": "Observation", "criteria": "Observation?category=lab", "interaction": ["search"]}]}),
        ],
    ));
    let read = groups(p.row_filter(&one("Observation"), Interaction::Read));
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].len(), 2);
    let Filter::Param { code, values, .. } = &read[0][0] else {
        panic!()
    };
    assert_eq!(code, "subject");
    assert_eq!(
        values[0],
        fhir_model::search::SearchValue::Reference {
            target_type: Some("Patient".into()),
            id: Some("p1".into()),
            url: None
        }
    );
    assert_eq!(
        groups(p.row_filter(&one("Observation"), Interaction::Search)).len(),
        2
    );
    assert!(p.allows("Patient", Interaction::Read));
    assert!(!p.allows("Patient", Interaction::Update));
    // Two types: each branch says its type.
    let RowFilter::AnyOf(branches) = p.row_filter(
        &["Observation".to_string(), "Patient".to_string()],
        Interaction::Search,
    ) else {
        panic!()
    };
    assert_eq!(branches.len(), 3);
    assert!(branches.iter().any(|b| b.types == Types::One("Patient")));
    assert_eq!(
        p.row_filter(&one("Encounter"), Interaction::Read),
        RowFilter::Nothing
    );
}

#[test]
fn patient_compartment_policy_covers_every_ordinary_type() {
    let p = CompiledPolicy::compile(&input(
        Role::Member,
        "Patient/p1",
        vec![json!({"resource": [{"resourceType": "*", "criteria": "*?_compartment=%patient"}]})],
    ));
    let compartment = vec![Filter::Compartment {
        compartment_type: "Patient".into(),
        id: "p1".into(),
    }];
    for t in ["Patient", "Observation", "Organization"] {
        assert_eq!(
            groups(p.row_filter(&one(t), Interaction::Read)),
            vec![compartment.clone()]
        );
    }
    assert!(!p.allows("ProjectMembership", Interaction::Read));
    assert_eq!(
        p.row_filter(&[], Interaction::Search),
        RowFilter::AnyOf(vec![Branch {
            types: Types::Ordinary,
            filters: &compartment
        }])
    );
}

#[test]
fn legacy_compartments_restrict_entries() {
    let p = CompiledPolicy::compile(&input(
        Role::Member,
        "Patient/p1",
        vec![json!({"resource": [
            {"resourceType": "Observation", "compartment": {"reference": "%patient"}},
            {"resourceType": "Patient"}]})],
    ));
    assert_eq!(
        groups(p.row_filter(&one("Observation"), Interaction::Read)),
        vec![vec![Filter::Compartment {
            compartment_type: "Patient".into(),
            id: "p1".into()
        }]]
    );
    assert_eq!(
        p.row_filter(&one("Patient"), Interaction::Read),
        RowFilter::All
    );
}

#[test]
fn access_entry_parameters_are_substituted() {
    let mut i = input(Role::Member, "Practitioner/d1", vec![]);
    i.policies.push(MembershipPolicy {
        policy: json!({"resource": [{"resourceType": "Patient", "criteria": "Patient?organization=%org"}]}),
        parameters: vec![Parameter::new("org", "Organization/o1")],
    });
    let p = CompiledPolicy::compile(&i);
    let g = groups(p.row_filter(&one("Patient"), Interaction::Read));
    assert!(format!("{g:?}").contains("o1"));
    assert!(p.problems().is_empty());
    // An unusable criteria (after substitution) grants nothing and is reported.
    let mut bad = input(Role::Member, "Practitioner/d1", vec![]);
    bad.policies.push(MembershipPolicy {
        policy: json!({"resource": [{"resourceType": "Patient", "criteria": "Patient?nosuch=%org"}]}),
        parameters: vec![],
    });
    let p = CompiledPolicy::compile(&bad);
    assert!(!p.allows("Patient", Interaction::Read));
    assert_eq!(p.problems().len(), 1);
}

#[test]
fn smart_scopes_narrow() {
    let scopes = parse_scope("openid patient/Observation.read patient/Patient.rs?gender=female");
    let mut i = input(Role::Member, "Practitioner/d1", vec![]);
    i.scopes = &scopes;
    let p = CompiledPolicy::compile(&i);
    assert!(p.allows("Observation", Interaction::Read));
    assert!(!p.allows("Observation", Interaction::Create));
    assert!(!p.allows("Encounter", Interaction::Read));
    assert!(p.allows("Patient", Interaction::Search));
    assert!(!p.allows("Patient", Interaction::Update));
    assert_eq!(
        groups(p.row_filter(&one("Patient"), Interaction::Search)).len(),
        1
    );
    assert_eq!(
        p.row_filter(&one("Observation"), Interaction::Search),
        RowFilter::All
    );
    // A wildcard scope keeps what the policy gives.
    let all = parse_scope("user/*.*");
    i.scopes = &all;
    assert!(CompiledPolicy::compile(&i).allows("Encounter", Interaction::Delete));
    assert!(!CompiledPolicy::compile(&i).allows("User", Interaction::Read));
}

#[test]
fn hidden_and_readonly_fields_combine_by_or() {
    let p = compile(
        Role::Member,
        vec![json!({"resource": [
            {"resourceType": "Patient", "hiddenFields": ["birthDate", "address.line"], "readonlyFields": ["gender"]},
            {"resourceType": "Patient", "criteria": "Patient?gender=male", "hiddenFields": ["address.line"]}
        ]})],
    );
    // A field is hidden only if every entry that lets you read hides it.
    assert_eq!(p.hidden_fields("Patient"), vec!["address.line"]);
    assert_eq!(
        p.protected_fields("Patient", Interaction::Update),
        vec!["address.line"]
    );
    let mut patient = json!({"resourceType": "Patient", "birthDate": "1970", "address": [{"line": ["1"], "city": "c"}]});
    p.redact(&mut patient);
    assert_eq!(
        patient,
        json!({"resourceType": "Patient", "birthDate": "1970", "address": [{"city": "c"}]})
    );
    let stored = json!({"resourceType": "Patient", "address": [{"line": ["1"], "city": "c"}]});
    let mut sent = json!({"resourceType": "Patient", "address": [{"city": "d"}]});
    p.keep_protected(Interaction::Update, &mut sent, &stored);
    assert_eq!(sent["address"][0]["line"], json!(["1"]));
}

#[test]
fn searching_a_hidden_field_is_found() {
    let p = compile(
        Role::Member,
        vec![
            json!({"resource": [{"resourceType": "Patient", "hiddenFields": ["birthDate", "address.line"]},
            {"resourceType": "Observation"}]}),
        ],
    );
    assert_eq!(
        p.hidden_condition(&filters("Patient", "birthdate=1970")),
        Some(("birthdate".into(), "birthDate".into()))
    );
    assert_eq!(
        p.hidden_condition(&filters("Patient", "address=x")),
        Some(("address".into(), "address.line".into()))
    );
    assert_eq!(
        p.hidden_condition(&filters("Observation", "subject:Patient.birthdate=1970")),
        Some(("birthdate".into(), "birthDate".into()))
    );
    assert_eq!(
        p.hidden_condition(&filters("Patient", "name=x&gender=male")),
        None
    );
    assert!(p
        .hidden_condition(&filters("Patient", "_content=x"))
        .is_some());
    assert_eq!(p.hidden_condition(&filters("Observation", "code=x")), None);
}

/// What a parameter reads is worked out from its FHIRPath: choice types,
/// composites, `Resource.*`, `_text`, chain and `_has` links.
#[test]
fn hidden_fields_are_found_through_what_expressions_reach() {
    let p = compile(
        Role::Member,
        vec![json!({"resource": [
            {"resourceType": "Patient", "hiddenFields": [
                "deceasedDateTime", "managingOrganization", "generalPractitioner",
                "text", "meta.tag", "address.line"]},
            {"resourceType": "Observation", "hiddenFields": ["effectiveDateTime", "valueQuantity"]},
            {"resourceType": "Organization"}
        ]})],
    );
    let refused = |t: &str, q: &str| p.hidden_condition(&filters(t, q)).map(|(_, field)| field);
    for (t, q, field) in [
        ("Patient", "death-date=2020", "deceasedDateTime"),
        ("Patient", "deceased=true", "deceasedDateTime"),
        ("Patient", "_text=x", "text"),
        ("Patient", "_tag=x", "meta.tag"),
        ("Patient", "organization.name=x", "managingOrganization"),
        (
            "Patient",
            "general-practitioner:Practitioner.name=x",
            "generalPractitioner",
        ),
        (
            "Organization",
            "_has:Patient:organization:_id=x",
            "managingOrganization",
        ),
        ("Observation", "date=2020", "effectiveDateTime"),
        ("Observation", "value-quantity=5", "valueQuantity"),
        ("Observation", "code-value-quantity=x$5", "valueQuantity"),
        ("Observation", "combo-value-quantity=5", "valueQuantity"),
    ] {
        assert_eq!(refused(t, q).as_deref(), Some(field), "{t}?{q}");
    }
    for (t, q) in [
        ("Patient", "_lastUpdated=gt2020"),
        ("Patient", "address-city=x"),
        ("Patient", "name=x"),
        ("Observation", "code=x"),
        ("Observation", "value-string=x"),
    ] {
        assert_eq!(refused(t, q), None, "{t}?{q}");
    }
    assert!(p.hidden_parameter("Patient", "*").is_some());
    assert!(p.hidden_parameter("Patient", "organization").is_some());
    assert!(p.hidden_parameter("Observation", "subject").is_none());
}

#[test]
fn write_constraints_see_before_and_after() {
    let p = compile(
        Role::Member,
        vec![json!({"resource": [
            {"resourceType": "Observation", "writeConstraint": [
                {"language": "text/fhirpath", "expression": "%before.exists() implies %before.status != 'final'"}]},
            {"resourceType": "Patient"}
        ]})],
    );
    let draft = json!({"resourceType": "Observation", "status": "preliminary"});
    let last = json!({"resourceType": "Observation", "status": "final"});
    let w = |before: Option<&Value>, after: Option<&Value>| {
        p.write_filter("Observation", Interaction::Update, before, after)
    };
    assert_eq!(w(None, Some(&draft)), Ok(RowFilter::All));
    assert_eq!(w(Some(&draft), Some(&last)), Ok(RowFilter::All));
    let err = w(Some(&last), Some(&draft)).unwrap_err();
    assert!(err.contains("write constraint"), "{err}");
    assert_eq!(
        p.write_filter("Encounter", Interaction::Update, None, Some(&draft)),
        Ok(RowFilter::Nothing)
    );
}

#[test]
fn ip_rules_apply() {
    let p = compile(
        Role::Member,
        vec![json!({"resource": [{"resourceType": "Patient"}],
            "ipAccessRule": [{"value": "127.0.0.0/8", "action": "allow"}, {"value": "*", "action": "block"}]})],
    );
    assert!(p.allows_address("127.0.0.1".parse().unwrap()));
    assert!(!p.allows_address("::1".parse().unwrap()));
    assert!(!p.allows_address("192.0.2.1".parse().unwrap()));
}

#[test]
fn effective_policy_renders_substituted_entries_and_scope_queries() {
    let policy = json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Observation", "criteria": "Observation?subject=%patient",
         "interaction": ["read", "search"], "hiddenFields": ["note"]},
        {"resourceType": "Patient", "readonly": true}
    ], "ipAccessRule": [{"value": "10.0.0.0/8", "action": "block"}]});
    let scopes = parse_scope("patient/Observation.rs?category=vital-signs patient/Patient.r");
    let mut compiled_input = input(Role::Member, "Patient/p1", vec![policy]);
    compiled_input.scopes = &scopes;
    let effective = CompiledPolicy::compile(&compiled_input).to_access_policy();
    assert_eq!(
        effective,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Observation", "interaction": ["read", "search"],
             "criteria": "Observation?subject=Patient/p1&category=vital-signs",
             "hiddenFields": ["note"]},
            {"resourceType": "Patient", "interaction": ["read", "vread", "history"]}
        ], "ipAccessRule": [{"value": "10.0.0.0/8", "action": "block"}]})
    );
}

#[test]
fn a_protected_choice_form_protects_the_element() {
    let p = compile(
        Role::Member,
        vec![
            json!({"resource": [{"resourceType": "Patient", "readonlyFields": ["deceasedDateTime"]}]}),
        ],
    );
    let stored = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    let mut new = json!({"resourceType": "Patient", "deceasedBoolean": false, "gender": "male"});
    p.keep_protected(Interaction::Update, &mut new, &stored);
    assert_eq!(
        new,
        json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01", "gender": "male"})
    );
}

#[test]
fn audit_events_are_named_not_starred() {
    let starred = compile(
        Role::Member,
        vec![json!({"resource": [{"resourceType": "*"}]})],
    );
    assert!(!starred.allows("AuditEvent", Interaction::Search));
    assert!(starred.allows("Observation", Interaction::Search));
    let named = compile(
        Role::Member,
        vec![json!({"resource": [{"resourceType": "AuditEvent", "readonly": true}]})],
    );
    assert!(named.allows("AuditEvent", Interaction::Search));
    let admin = compile(Role::ProjectAdmin, vec![]);
    assert!(admin.allows("AuditEvent", Interaction::Read));
    assert!(!admin.allows("AuditEvent", Interaction::Update));
    let none = compile(Role::Member, vec![]);
    assert!(!none.allows("AuditEvent", Interaction::Read));
}
