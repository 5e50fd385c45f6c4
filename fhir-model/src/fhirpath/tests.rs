use super::*;
use serde_json::{json, Value};

fn eval_str<'a>(expr: &str, resource: &'a Value) -> Vec<Node<'a>> {
    Expression::parse(expr)
        .unwrap_or_else(|e| panic!("{e}"))
        .evaluate(resource)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn values(expr: &str, resource: &Value) -> Vec<Value> {
    eval_str(expr, resource)
        .into_iter()
        .map(|n| n.to_json().into_owned())
        .collect()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "name": [
            {"family": "Smith", "given": ["Ann", "Marie"]},
            {"family": "Jones"}
        ],
        "telecom": [
            {"system": "phone", "value": "555"},
            {"system": "email", "value": "a@b.c"}
        ],
        "deceasedBoolean": false,
        "generalPractitioner": [{"reference": "Practitioner/9"}, {"reference": "Organization/2"}],
        "extension": [{"url": "http://x/race", "valueString": "r"}],
        "link": [{"other": {"reference": "https://h/fhir/R4/RelatedPerson/7/_history/2"}}]
    })
}

#[test]
fn paths_flatten_arrays_and_skip_missing() {
    let p = patient();
    assert_eq!(
        values("Patient.name.given", &p),
        vec![json!("Ann"), json!("Marie")]
    );
    assert_eq!(
        values("Patient.name.family", &p),
        vec![json!("Smith"), json!("Jones")]
    );
    assert!(values("Patient.photo.url", &p).is_empty());
    assert!(values("Observation.code", &p).is_empty());
    assert_eq!(values("Resource.id", &p), vec![json!("p1")]);
    assert_eq!(values("DomainResource.id", &p), vec![json!("p1")]);
    assert_eq!(values("Patient.name[1].family", &p), vec![json!("Jones")]);
    assert_eq!(
        values("Patient.name.first().family", &p),
        vec![json!("Smith")]
    );
    assert_eq!(
        values("Patient.name.last().family", &p),
        vec![json!("Jones")]
    );
}

#[test]
fn choice_elements_carry_their_type() {
    let obs = json!({
        "resourceType": "Observation",
        "valueQuantity": {"value": 5, "unit": "mg"},
        "effectivePeriod": {"start": "2020"},
        "component": [
            {"valueCodeableConcept": {"text": "x"}},
            {"valueString": "y"}
        ]
    });
    let nodes = eval_str("Observation.value", &obs);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].fhir_type, Some("Quantity"));
    assert_eq!(
        eval_str("Observation.effective", &obs)[0].fhir_type,
        Some("Period")
    );
    let types: Vec<_> = eval_str("Observation.component.value", &obs)
        .into_iter()
        .map(|n| n.fhir_type)
        .collect();
    assert_eq!(types, vec![Some("CodeableConcept"), Some("string")]);
    // Element names that merely start like a type are not choices.
    let enc = json!({"resourceType": "Encounter", "classHistory": [{"class": {"code": "x"}}]});
    assert!(eval_str("Encounter.class", &enc).is_empty());
}

#[test]
fn of_type_as_and_is() {
    let obs = json!({
        "resourceType": "Observation",
        "valueQuantity": {"value": 5},
        "component": [{"valueString": "s"}, {"valueDateTime": "2020"}]
    });
    assert_eq!(
        eval_str("(Observation.value.ofType(Quantity))", &obs).len(),
        1
    );
    assert!(eval_str("Observation.value.ofType(CodeableConcept)", &obs).is_empty());
    assert_eq!(eval_str("Observation.value as Quantity", &obs).len(), 1);
    assert_eq!(eval_str("Observation.value.as(Quantity)", &obs).len(), 1);
    assert_eq!(
        values("Observation.value is Quantity", &obs),
        vec![json!(true)]
    );
    assert_eq!(
        values("Observation.value.is(FHIR.Range)", &obs),
        vec![json!(false)]
    );
    assert_eq!(
        values("Observation.component.value.ofType(string)", &obs),
        vec![json!("s")]
    );
    // System type names match FHIR primitives.
    assert_eq!(
        values(
            "Observation.component.value.ofType(DateTime) | Observation.component.value.ofType(Period)",
            &obs
        ),
        vec![json!("2020")]
    );
    // Untyped nodes are matched by shape.
    let p = json!({"resourceType": "Patient", "name": [{"family": "X"}], "gender": "male"});
    assert_eq!(eval_str("Patient.name.ofType(HumanName)", &p).len(), 1);
    assert_eq!(eval_str("Patient.gender.ofType(code)", &p).len(), 1);
    assert!(eval_str("Patient.gender.ofType(boolean)", &p).is_empty());
    // Age is a Quantity.
    let c = json!({"resourceType": "Condition", "onsetAge": {"value": 3}});
    assert_eq!(eval_str("Condition.onset.ofType(Quantity)", &c).len(), 1);
}

#[test]
fn where_with_equality_and_logic() {
    let p = patient();
    assert_eq!(
        values("Patient.telecom.where(system='email')", &p),
        vec![json!({"system": "email", "value": "a@b.c"})]
    );
    assert_eq!(
        values("Patient.telecom.where(system != 'email').value", &p),
        vec![json!("555")]
    );
    assert_eq!(
        values(
            "Patient.telecom.where(system='email' or system='phone').value",
            &p
        ),
        vec![json!("555"), json!("a@b.c")]
    );
    assert!(values("Patient.telecom.where(system='email' and value='555')", &p).is_empty());
    assert_eq!(
        values("Patient.telecom.where(value.exists()).count()", &p),
        vec![json!(2)]
    );
    assert_eq!(
        values("Patient.name.where(given.empty()).family", &p),
        vec![json!("Jones")]
    );
    assert_eq!(
        values("Patient.name.where(given.exists().not()).family", &p),
        vec![json!("Jones")]
    );
    assert_eq!(
        values("Patient.name.exists(family = 'Jones')", &p),
        vec![json!(true)]
    );
    assert_eq!(
        values("Patient.telecom.where(value.startsWith('55')).system", &p),
        vec![json!("phone")]
    );
    assert_eq!(
        values("Patient.telecom.where(value.contains('@')).system", &p),
        vec![json!("email")]
    );
    assert_eq!(
        values("Patient.active.exists() xor Patient.id.exists()", &p),
        vec![json!(true)]
    );
}

#[test]
fn deceased_expression_is_three_valued() {
    let expr = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(values(expr, &patient()), vec![json!(false)]);
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    assert_eq!(values(expr, &dead), vec![json!(true)]);
    let alive = json!({"resourceType": "Patient"});
    assert_eq!(values(expr, &alive), vec![json!(false)]);
}

#[test]
fn resolve_checks_the_reference_type() {
    let p = patient();
    assert_eq!(
        values(
            "Patient.generalPractitioner.where(resolve() is Practitioner)",
            &p
        ),
        vec![json!({"reference": "Practitioner/9"})]
    );
    assert_eq!(
        eval_str("Patient.link.other.where(resolve() is RelatedPerson)", &p).len(),
        1
    );
    let two = Expression::parse("Patient.generalPractitioner.resolve() is Organization").unwrap();
    assert!(
        matches!(two.evaluate(&p), Err(FhirPathError::Evaluation(_))),
        "is on two items is an error"
    );
    assert_eq!(
        eval_str(
            "Patient.generalPractitioner.where((resolve() is Organization).not())",
            &p
        )
        .len(),
        1
    );
    assert!(split_reference("#c1").is_none());
    assert!(split_reference("urn:uuid:1").is_none());
    assert_eq!(split_reference("Patient/1"), Some(("Patient", "1")));
    assert!(split_reference("Nope/1").is_none());
}

#[test]
fn unions_extensions_and_variables() {
    let p = patient();
    assert_eq!(
        values("Patient.name.family | Patient.name.given", &p),
        vec![json!("Smith"), json!("Jones"), json!("Ann"), json!("Marie")]
    );
    // The same element twice appears once.
    assert_eq!(values("Patient.id | Resource.id", &p), vec![json!("p1")]);
    assert_eq!(
        values("Patient.extension('http://x/race').value", &p),
        vec![json!("r")]
    );
    assert_eq!(values("%resource.id", &p), vec![json!("p1")]);
    let expr = Expression::parse("family | %resource.id").unwrap();
    let name = &p["name"][1];
    let got: Vec<Value> = expr
        .evaluate_on(&Node::json(name, None), &p)
        .unwrap()
        .into_iter()
        .map(|n| n.to_json().into_owned())
        .collect();
    assert_eq!(got, vec![json!("Jones"), json!("p1")]);
    assert_eq!(
        values("(Patient.name.family).first() | `Patient`.id", &p),
        vec![json!("Smith"), json!("p1")]
    );
}

#[test]
fn parse_errors_not_panics() {
    for bad in [
        "",
        "Patient.",
        "Patient.name.frobnicate()",
        "Patient.where(",
        "Patient.name[",
        "1 +",
        "@2020-13-01",
        "Patient.name.given.first(",
        "'open",
        "Patient.name.ofType('x')",
        "Patient.name ^ 2",
        "Patient.extension(url)",
        "first(1)",
    ] {
        assert!(Expression::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn variables_and_implies() {
    let before = json!({"resourceType": "Observation", "status": "final"});
    let after = json!({"resourceType": "Observation", "status": "amended"});
    let vars = [("before", &before), ("after", &after)];
    let test = |expr: &str| {
        Expression::parse(expr)
            .unwrap()
            .test(&after, &vars)
            .unwrap()
    };
    assert_eq!(test("%before.status = 'final'"), Some(true));
    assert_eq!(test("%after.status = status"), Some(true));
    assert_eq!(
        test("%before.status = 'final' implies %after.status = 'final'"),
        Some(false)
    );
    assert_eq!(test("%before.exists().not() implies false"), Some(true));
    assert_eq!(test("%nothing.exists()"), Some(false));
    assert!(Expression::parse("%").is_err());
}

#[test]
fn subscription_condition_on_current_and_previous() {
    let expr =
        Expression::parse("%current.effective > @2024-01-01 and %previous.status != 'final'")
            .unwrap();
    let current = json!({"resourceType": "Observation", "status": "final",
        "effectiveDateTime": "2024-03-01T10:00:00Z"});
    let test = |previous: &Value, current: &Value| {
        let vars = [("current", current), ("previous", previous)];
        expr.test(current, &vars).unwrap()
    };
    let preliminary = json!({"resourceType": "Observation", "status": "preliminary"});
    let final_before = json!({"resourceType": "Observation", "status": "final"});
    assert_eq!(test(&preliminary, &current), Some(true));
    assert_eq!(test(&final_before, &current), Some(false));
    let earlier = json!({"resourceType": "Observation", "effectiveDateTime": "2023-12-31"});
    assert_eq!(test(&preliminary, &earlier), Some(false));
    // A period is not comparable with a date: an error rather than a guess.
    let period = json!({"resourceType": "Observation", "effectivePeriod": {"start": "2024-02-01"}});
    let vars = [("current", &period), ("previous", &preliminary)];
    assert!(expr.test(&period, &vars).is_err());
    // On create there is no %previous: the condition has no answer.
    let vars = [("current", &current)];
    assert_eq!(expr.test(&current, &vars).unwrap(), None);
}

#[test]
fn typed_values_and_errors() {
    let p = patient();
    let one = |expr: &str| {
        Expression::parse(expr)
            .unwrap()
            .evaluate(&p)
            .unwrap()
            .into_iter()
            .map(|n| n.value)
            .collect::<Vec<_>>()
    };
    assert_eq!(one("1 + 2"), vec![Val::Integer(3)]);
    assert_eq!(
        one("(1.50 + 1).toString()"),
        vec![Val::String("2.50".into())]
    );
    assert_eq!(one("Patient.deceased is boolean"), vec![Val::Boolean(true)]);
    assert_eq!(
        one("Patient.deceased is Boolean"),
        vec![Val::Boolean(false)]
    );
    assert_eq!(one("@2024-01 < @2024-02-03"), vec![Val::Boolean(true)]);
    assert!(one("@2024-01 < @2024-01-03").is_empty());
    assert!(matches!(
        Expression::parse("(1 | 2).not()").unwrap().evaluate(&p),
        Err(FhirPathError::Evaluation(_))
    ));
    match Expression::parse("Patient.name.where(given = 'x'") {
        Err(FhirPathError::Syntax { position, .. }) => assert_eq!(position, 30),
        other => panic!("{other:?}"),
    }
}
