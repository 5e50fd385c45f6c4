use std::sync::LazyLock;

use serde_json::json;

use super::*;

/// Shared so each type compiles once for the whole test run.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| Validator::new().unwrap());

fn issues(resource: Value) -> Vec<Issue> {
    VALIDATOR
        .validate(&resource)
        .expect_err("resource should be invalid")
}

/// The single issue for `resource`, as (expression, diagnostics).
fn only_issue(resource: Value) -> (String, String) {
    let issues = issues(resource);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issue = issues.into_iter().next().unwrap();
    (issue.expression.unwrap_or_default(), issue.diagnostics)
}

fn expressions(issues: &[Issue]) -> Vec<&str> {
    issues
        .iter()
        .map(|i| i.expression.as_deref().unwrap_or_default())
        .collect()
}

#[test]
fn valid_patient_passes() {
    let patient = json!({
        "resourceType": "Patient",
        "id": "example-1",
        "meta": { "versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z" },
        "active": true,
        "name": [{ "use": "official", "family": "Chalmers", "given": ["Peter", "James"] }],
        "gender": "male",
        "birthDate": "1974-12-25",
        "multipleBirthInteger": 2,
        "contained": [{ "resourceType": "Organization", "id": "org", "name": "Acme" }]
    });
    assert_eq!(VALIDATOR.validate(&patient), Ok(()));
}

#[test]
fn bad_date_names_the_element_and_the_format() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "birthDate": "1990-13-01"}));
    assert_eq!(at, "Patient.birthDate");
    assert_eq!(
        text,
        "Invalid date '1990-13-01' at Patient.birthDate: use YYYY, YYYY-MM or YYYY-MM-DD, \
         e.g. 1990-12-31"
    );
}

#[test]
fn unknown_element() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "foo": 1}));
    assert_eq!(at, "Patient.foo");
    assert_eq!(text, "Unknown element 'foo' in Patient");
}

#[test]
fn wrong_type_inside_an_array() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "name": [{"given": "Peter"}]}));
    assert_eq!(at, "Patient.name[0].given");
    assert_eq!(
        text,
        "Expected an array at Patient.name[0].given, found a string"
    );
}

#[test]
fn string_for_a_boolean_is_one_issue() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "active": "yes"}));
    assert_eq!(at, "Patient.active");
    assert_eq!(
        text,
        "Expected a boolean at Patient.active, found a string (boolean: use true or false, \
         without quotes)"
    );
}

#[test]
fn loose_r4_rules_are_tightened() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "meta": "v1"}));
    assert_eq!(at, "Patient.meta");
    assert_eq!(text, "Expected an object at Patient.meta, found a string");

    let (at, text) = only_issue(json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}));
    assert_eq!(at, "Patient.multipleBirthInteger");
    assert!(text.starts_with("Invalid integer '1.5'"), "{text}");
}

#[test]
fn enum_lists_the_allowed_codes() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "gender": "x"}));
    assert_eq!(at, "Patient.gender");
    assert_eq!(
        text,
        "Invalid value 'x' for Patient.gender: expected one of male, female, other, unknown"
    );
}

#[test]
fn primitive_patterns() {
    let (at, text) = only_issue(json!({"resourceType": "Patient", "id": "a b"}));
    assert_eq!(at, "Patient.id");
    assert!(
        text.starts_with("Invalid id 'a b' at Patient.id: use 1 to 64"),
        "{text}"
    );

    let (_, text) = only_issue(json!({"resourceType": "Patient", "name": [{"family": ""}]}));
    assert_eq!(
        text,
        "Invalid string '' at Patient.name[0].family: must not be empty"
    );
}

#[test]
fn missing_or_unknown_resource_type() {
    for (body, text) in [
        (json!({"id": "1"}), "Missing resourceType"),
        (json!({"resourceType": "Foo"}), "Unknown resourceType 'Foo'"),
        (json!({"resourceType": 7}), "resourceType must be a string"),
        (json!([1]), "A resource must be a JSON object"),
    ] {
        let issues = issues(body);
        assert_eq!(issues.len(), 1);
        assert!(issues[0].diagnostics.starts_with(text), "{issues:?}");
        assert_eq!(issues[0].expression, None);
    }
}

#[test]
fn every_missing_required_element_is_reported() {
    let issues = issues(json!({"resourceType": "Observation"}));
    assert_eq!(
        expressions(&issues),
        ["Observation.code", "Observation.status"]
    );
    assert!(issues.iter().all(|i| i.code == IssueCode::Required));
    assert_eq!(
        issues[1].diagnostics,
        "Missing required element Observation.status"
    );
}

#[test]
fn errors_inside_contained_resources_are_located() {
    let (at, text) = only_issue(json!({
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "active": "yes"}]
    }));
    assert_eq!(at, "Patient.contained[0].active");
    assert!(text.starts_with("Expected a boolean"), "{text}");

    let (at, text) = only_issue(json!({
        "resourceType": "Patient",
        "contained": [{"resourceType": "Nope"}]
    }));
    assert_eq!(at, "Patient.contained[0]");
    assert_eq!(text, "Unknown resourceType 'Nope' at Patient.contained[0]");
}

#[test]
fn admin_types_validate() {
    let reference = json!({"reference": "Project/1"});
    let cases = [
        (
            json!({"resourceType": "Project", "name": "Demo", "setting": [{"name": "a", "valueInteger": 1}]}),
            json!({"resourceType": "Project", "setting": [{"valueString": "x"}]}),
            "Project.setting[0].name",
        ),
        (
            json!({"resourceType": "ProjectMembership", "project": reference, "user": reference,
                   "profile": reference, "access": [{"policy": reference,
                   "parameter": [{"name": "org", "valueReference": reference}]}]}),
            json!({"resourceType": "ProjectMembership", "user": reference, "profile": reference}),
            "ProjectMembership.project",
        ),
        (
            json!({"resourceType": "User", "email": "a@example.com", "emailVerified": true}),
            json!({"resourceType": "User", "email": "a@example.com", "passwordHash": "x"}),
            "User.passwordHash",
        ),
        (
            json!({"resourceType": "ClientApplication", "name": "app", "status": "active",
                   "redirectUris": ["https://app.example/cb"], "jwks": {"keys": [{"kty": "EC"}]}}),
            json!({"resourceType": "ClientApplication", "status": "enabled"}),
            "ClientApplication.status",
        ),
        (
            json!({"resourceType": "Bot", "name": "bot", "timeout": 30,
                   "sourceCode": {"contentType": "application/typescript", "url": "Binary/1"}}),
            json!({"resourceType": "Bot", "timeout": "30s"}),
            "Bot.timeout",
        ),
        (
            json!({"resourceType": "AccessPolicy", "name": "read-only",
                   "resource": [{"resourceType": "Patient", "interaction": ["read", "search"],
                                 "writeConstraint": [{"language": "text/fhirpath", "expression": "true"}]}],
                   "ipAccessRule": [{"value": "10.0.0.0/8", "action": "allow"}]}),
            json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient", "interaction": ["destroy"]}]}),
            "AccessPolicy.resource[0].interaction[0]",
        ),
        (
            json!({"resourceType": "Login", "user": reference, "authTime": "2024-01-02T03:04:05Z",
                   "authMethod": "password", "codeChallengeMethod": "S256"}),
            json!({"resourceType": "Login", "user": reference, "authTime": "2024-01-02"}),
            "Login.authTime",
        ),
        (
            json!({"resourceType": "JsonWebKey", "active": true, "kty": "EC", "crv": "P-256",
                   "x": "abc", "y": "def", "kid": "k1"}),
            json!({"resourceType": "JsonWebKey", "kty": "EC", "d": "secret"}),
            "JsonWebKey.d",
        ),
    ];
    assert_eq!(
        cases.len(),
        crate::resource_types::ADMIN_RESOURCE_TYPES.len()
    );
    for (valid, invalid, at) in cases {
        assert_eq!(VALIDATOR.validate(&valid), Ok(()), "{valid}");
        assert_eq!(only_issue(invalid).0, at);
    }
}

#[test]
fn usable_from_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Validator>();

    std::thread::scope(|scope| {
        for i in 0..4 {
            scope.spawn(move || {
                let good = json!({"resourceType": "Patient", "id": format!("p{i}")});
                let bad = json!({"resourceType": "Patient", "id": format!("p {i}")});
                assert_eq!(VALIDATOR.validate(&good), Ok(()));
                assert_eq!(VALIDATOR.validate(&bad).unwrap_err().len(), 1);
            });
        }
    });
}

#[test]
fn inline_choice_primitives_use_the_shared_definitions() {
    assert!(is_choice_of("valueDateTime", "dateTime"));
    assert!(is_choice_of("multipleBirthInteger", "integer"));
    assert!(!is_choice_of("valueDate", "dateTime"));
    assert!(!is_choice_of("integer", "integer"));
    assert!(!is_choice_of("xé", "ab"));

    let (at, text) = only_issue(json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "effectiveDateTime": "2020-01-01T10:00"
    }));
    assert_eq!(at, "Observation.effectiveDateTime");
    assert!(
        text.starts_with("Invalid dateTime '2020-01-01T10:00' at"),
        "{text}"
    );
}

#[test]
fn pointers_become_fhirpath() {
    assert_eq!(pointer_to_expression("Patient", ""), "Patient");
    assert_eq!(
        pointer_to_expression("Patient", "/birthDate"),
        "Patient.birthDate"
    );
    assert_eq!(
        pointer_to_expression("Patient", "/name/0/given/1"),
        "Patient.name[0].given[1]"
    );
    assert_eq!(
        pointer_to_expression("Patient", "name/0"),
        "Patient.name[0]"
    );
    assert_eq!(
        pointer_to_expression("Binary", "/a~1b/c~0d"),
        "Binary.a/b.c~d"
    );
}

/// The one schema compiles and dispatches to every type's definition (all 154 types).
#[test]
fn every_type_is_checked_against_its_own_definition() {
    let validator = Validator::new().unwrap();
    for resource_type in all_resource_types() {
        let issues = validator
            .validate(&json!({"resourceType": resource_type, "id": 5}))
            .expect_err(resource_type);
        assert!(
            issues.iter().any(|i| i
                .expression
                .iter()
                .any(|e| e == &format!("{resource_type}.id"))),
            "{resource_type}: {issues:?}"
        );
    }
}

#[test]
fn two_forms_of_one_choice_element_are_refused() {
    let (expression, diagnostics) = only_issue(json!({
        "resourceType": "Patient",
        "deceasedBoolean": true,
        "deceasedDateTime": "2020-01-01"
    }));
    assert_eq!(expression, "Patient.deceased[x]");
    assert!(
        diagnostics.contains("deceasedBoolean and deceasedDateTime"),
        "{diagnostics}"
    );
    // Nested: an Observation component, an extension.
    let nested = issues(json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "component": [{"code": {"text": "c"}, "valueString": "a", "valueInteger": 1}],
        "extension": [{"url": "http://e", "valueCode": "a", "valueBoolean": true}]
    }));
    assert_eq!(
        expressions(&nested),
        vec![
            "Observation.component[0].value[x]",
            "Observation.extension[0].value[x]"
        ]
    );
    // One form each, and elements that merely share a prefix, pass; so do
    // separate elements that look like forms of one (Encounter's reasons,
    // a finding's item, a device property's values).
    assert!(VALIDATOR
        .validate(
            &json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01",
            "multipleBirthInteger": 2, "birthDate": "1970-01-01"})
        )
        .is_ok());
    for resource in [
        json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "reasonCode": [{"text": "r"}], "reasonReference": [{"reference": "Condition/1"}]}),
        json!({"resourceType": "ClinicalImpression", "status": "completed", "subject": {"reference": "Patient/1"},
            "finding": [{"itemCodeableConcept": {"text": "a"}, "itemReference": {"reference": "Condition/1"}}]}),
        json!({"resourceType": "Device", "property": [{"type": {"text": "t"},
            "valueQuantity": [{"value": 1}], "valueCode": [{"text": "c"}]}]}),
    ] {
        assert!(VALIDATOR.validate(&resource).is_ok(), "{resource}");
    }
    // In a contained resource, by its own type.
    let contained = issues(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p", "deceasedBoolean": true, "deceasedDateTime": "2020"}]}),
    );
    assert_eq!(
        expressions(&contained),
        vec!["Observation.contained[0].deceased[x]"]
    );
}
