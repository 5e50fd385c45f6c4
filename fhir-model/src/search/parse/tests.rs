use super::*;
use crate::search::{Prefix, SearchValue};

/// A few R4 parameters, enough to exercise every type and modifier.
struct Lookup;

fn info(kind: ParamType, targets: &[&str]) -> ParamInfo {
    ParamInfo {
        kind,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        components: Vec::new(),
    }
}

impl ParamLookup for Lookup {
    fn lookup(&self, resource_type: &str, code: &str) -> Option<ParamInfo> {
        use ParamType::*;
        let common = match code {
            "_id" => Some(info(Token, &[])),
            "_lastUpdated" => Some(info(Date, &[])),
            "_tag" | "_security" => Some(info(Token, &[])),
            "_profile" | "_source" => Some(info(Uri, &[])),
            "_content" => Some(info(String, &[])),
            "_text" if resource_type != "Bundle" => Some(info(String, &[])),
            _ => None,
        };
        if common.is_some() {
            return common;
        }
        Some(match (resource_type, code) {
            ("Patient" | "Practitioner", "name" | "family") => info(String, &[]),
            ("Patient" | "Practitioner", "identifier" | "gender" | "active") => info(Token, &[]),
            ("Patient", "birthdate") => info(Date, &[]),
            ("Practitioner", "birthdate") => info(Date, &[]),
            ("Patient", "organization") => info(Reference, &["Organization"]),
            ("Patient", "general-practitioner") => info(
                Reference,
                &["Organization", "Practitioner", "PractitionerRole"],
            ),
            ("Patient", "link") => info(Reference, &["Patient", "RelatedPerson"]),
            ("Observation", "code") => info(Token, &[]),
            ("Observation", "subject") => {
                info(Reference, &["Group", "Device", "Patient", "Location"])
            }
            ("Observation", "patient") => info(Reference, &["Patient"]),
            ("Observation", "performer") => {
                info(Reference, &["Practitioner", "Organization", "Patient"])
            }
            ("Observation", "focus") => info(Reference, &[]),
            ("Observation", "value-quantity") => info(Quantity, &[]),
            ("Observation", "value-string") => info(String, &[]),
            ("Observation", "date") => info(Date, &[]),
            ("Observation", "code-value-quantity") => ParamInfo {
                kind: Composite,
                targets: Vec::new(),
                components: vec![Token, Quantity],
            },
            ("RiskAssessment", "probability") => info(Number, &[]),
            ("Organization", "name") => info(String, &[]),
            ("Organization", "partof") => info(Reference, &["Organization"]),
            ("AuditEvent", "entity") => info(Reference, &[]),
            ("AuditEvent", "type") => info(Token, &[]),
            ("ValueSet", "url") => info(Uri, &[]),
            ("Location", "near") => info(Special, &[]),
            // Not R4: a special parameter other than near.
            ("Location", "nearby") => info(Special, &[]),
            ("Encounter", "patient") => info(Reference, &["Patient"]),
            // Not R4: a code whose type differs between two types.
            ("Group", "family") => info(Token, &[]),
            _ => return None,
        })
    }

    fn compartment_params(&self, compartment_type: &str, resource_type: &str) -> Vec<String> {
        let params: &[&str] = match (compartment_type, resource_type) {
            ("Patient", "Observation") => &["subject", "performer"],
            ("Patient", "Patient") => &["link"],
            ("Patient", "Encounter") => &["patient"],
            _ => &[],
        };
        params.iter().map(|p| p.to_string()).collect()
    }
}

/// `a=1&b=2` as already-decoded pairs.
fn q(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (n.to_string(), v.to_string())
        })
        .collect()
}

fn ok_on(resource_type: Option<&str>, query: &str) -> SearchRequest {
    parse_search(&Lookup, resource_type, &q(query), false)
        .unwrap_or_else(|e| panic!("{query}: {e:?}"))
}

fn ok(resource_type: &str, query: &str) -> SearchRequest {
    ok_on(Some(resource_type), query)
}

/// The error for `query`, checking it names `param` both in `param` and in words.
fn fail_on(resource_type: Option<&str>, query: &str, param: &str) -> String {
    match parse_search(&Lookup, resource_type, &q(query), false) {
        Ok(r) => panic!("{query} parsed: {r:?}"),
        Err(SearchError::Param { param: p, message }) => {
            assert_eq!(p, param, "{query}: {message}");
            message
        }
    }
}

fn fail(resource_type: &str, query: &str, param: &str) -> String {
    fail_on(Some(resource_type), query, param)
}

/// The single filter's values, checking its code and modifier.
fn values(resource_type: &str, query: &str, code: &str, modifier: Modifier) -> Vec<SearchValue> {
    let r = ok(resource_type, query);
    match r.filters.as_slice() {
        [Filter::Param {
            code: c,
            modifier: m,
            values,
            ..
        }] => {
            assert_eq!((c.as_str(), m), (code, &modifier), "{query}");
            values.clone()
        }
        other => panic!("{query}: {other:?}"),
    }
}

fn one(resource_type: &str, query: &str) -> SearchValue {
    let code = query.split(['=', ':']).next().unwrap();
    let modifier = match query.split_once('=').unwrap().0.split_once(':') {
        None => Modifier::None,
        Some((_, m)) => match m {
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "of-type" => Modifier::OfType,
            "identifier" => Modifier::Identifier,
            "below" => Modifier::Below,
            "above" => Modifier::Above,
            "missing" => Modifier::Missing,
            t => Modifier::Type(t.to_string()),
        },
    };
    let mut v = values(resource_type, query, code, modifier);
    assert_eq!(v.len(), 1, "{query}");
    v.remove(0)
}

fn token(system: Option<&str>, code: Option<&str>) -> SearchValue {
    SearchValue::Token {
        system: system.map(str::to_string),
        code: code.map(str::to_string),
    }
}

fn text(s: &str) -> SearchValue {
    SearchValue::Text(s.to_string())
}

fn reference(t: Option<&str>, id: Option<&str>, url: Option<&str>) -> SearchValue {
    SearchValue::Reference {
        target_type: t.map(str::to_string),
        id: id.map(str::to_string),
        url: url.map(str::to_string),
    }
}

const S: i64 = 1_000_000;

// ---- defaults, canonical query, AND/OR, escapes ----

#[test]
fn empty_query_has_defaults() {
    let r = ok("Patient", "");
    assert_eq!(r.types, vec!["Patient".to_string()]);
    assert!(r.filters.is_empty() && r.sort.is_empty() && r.include.is_empty());
    assert_eq!((r.count, r.offset), (DEFAULT_COUNT, 0));
    assert_eq!((r.total, r.summary), (Total::None, Summary::False));
    assert_eq!(r.cursor, None);
    assert!(r.canonical_query.is_empty());
}

#[test]
fn repeats_are_anded_and_commas_ored() {
    let r = ok("Patient", "name=a,b&name=c");
    assert_eq!(r.filters.len(), 2);
    let Filter::Param {
        resource_type,
        code,
        kind,
        values,
        ..
    } = &r.filters[0]
    else {
        panic!()
    };
    assert_eq!(
        (resource_type.as_str(), code.as_str(), *kind),
        ("Patient", "name", ParamType::String)
    );
    assert_eq!(values, &vec![text("a"), text("b")]);
    let Filter::Param { values, .. } = &r.filters[1] else {
        panic!()
    };
    assert_eq!(values, &vec![text("c")]);
}

#[test]
fn escapes_are_honoured_then_removed() {
    let cases: &[(&str, Vec<SearchValue>)] = &[
        (r"name=a\,b", vec![text("a,b")]),
        (r"name=a\\,b", vec![text(r"a\"), text("b")]),
        (r"name=a\|b\$c", vec![text("a|b$c")]),
        (r"name=a\xb", vec![text(r"a\xb")]),
        (
            r"identifier=sys\|tem|co\,de",
            vec![token(Some("sys|tem"), Some("co,de"))],
        ),
        (
            r"identifier=a\,b,c",
            vec![token(None, Some("a,b")), token(None, Some("c"))],
        ),
    ];
    for (query, expected) in cases {
        let code = query.split('=').next().unwrap();
        assert_eq!(
            &values("Patient", query, code, Modifier::None),
            expected,
            "{query}"
        );
    }
}

#[test]
fn canonical_query_keeps_accepted_parameters_in_order() {
    let r = ok(
        "Patient",
        "name=x&_format=json&_count=5&_pretty=true&_cursor=abc&gender=female&_sort=-birthdate",
    );
    assert_eq!(
        r.canonical_query,
        q("name=x&_count=5&gender=female&_sort=-birthdate")
    );
    assert_eq!(r.cursor.as_deref(), Some("abc"));
}

#[test]
fn unknown_parameters_fail_strictly_and_are_dropped_leniently() {
    for (query, param) in [
        ("foo=1", "foo"),
        ("_foo=1", "_foo"),
        ("foo:exact=1", "foo:exact"),
        ("organization.foo=1", "organization.foo"),
        (
            "_has:Observation:patient:foo=1",
            "_has:Observation:patient:foo",
        ),
        ("_has:Observation:foo:code=1", "_has:Observation:foo:code"),
        ("_filter=name eq x", "_filter"),
        ("_list=x", "_list"),
    ] {
        let message = fail("Patient", query, param);
        assert!(
            message.contains("foo") || message.contains("not supported"),
            "{message}"
        );
        let full = format!("name=a&{query}&gender=male");
        let r = parse_search(&Lookup, Some("Patient"), &q(&full), true).unwrap();
        assert_eq!(r.canonical_query, q("name=a&gender=male"), "{query}");
        assert_eq!(r.filters.len(), 2, "{query}");
    }
    assert_eq!(
        fail("Patient", "foo=1", "foo"),
        "Unknown search parameter 'foo' for Patient"
    );
    let message = fail("Location", "nearby=1|2|3|km", "nearby");
    assert!(message.contains("not supported"), "{message}");
}

#[test]
fn lenient_still_rejects_malformed_values_and_bad_modifiers() {
    for (query, param) in [
        ("birthdate=soon", "birthdate"),
        ("name:fuzzy=x", "name:fuzzy"),
        ("_count=x", "_count"),
    ] {
        let e = parse_search(&Lookup, Some("Patient"), &q(query), true).unwrap_err();
        let SearchError::Param { param: p, .. } = e;
        assert_eq!(p, param);
    }
}

#[test]
fn empty_values_are_errors() {
    assert!(fail("Patient", "name=", "name").contains("empty"));
    assert!(fail("Patient", "name=a,,b", "name").contains("empty"));
    assert!(fail("Patient", "identifier=a,", "identifier").contains("empty"));
}

// ---- string, token, uri ----

#[test]
fn string_modifiers() {
    assert_eq!(one("Patient", "name=Eve"), text("Eve"));
    assert_eq!(one("Patient", "name:exact=Eve"), text("Eve"));
    assert_eq!(one("Patient", "name:contains=ev"), text("ev"));
    assert_eq!(
        one("Patient", "name:missing=true"),
        SearchValue::Missing(true)
    );
    assert_eq!(
        one("Patient", "name:missing=false"),
        SearchValue::Missing(false)
    );
    let message = fail("Patient", "name:missing=yes", "name:missing");
    assert!(
        message.contains("name:missing") && message.contains("true or false"),
        "{message}"
    );
    for bad in ["name:text", "name:not", "name:below", "name:Patient"] {
        let message = fail("Patient", &format!("{bad}=x"), bad);
        assert!(
            message.contains(bad) && message.contains(":exact"),
            "{message}"
        );
    }
}

#[test]
fn full_text_parameters_match_contained_words() {
    for (query, code, expected) in [
        ("_text=heart attack", "_text", vec![text("heart attack")]),
        (
            "_content=Zoë,a\\,b",
            "_content",
            vec![text("Zoë"), text("a,b")],
        ),
    ] {
        let r = ok("Patient", query);
        assert_eq!(
            r.filters,
            vec![Filter::Param {
                resource_type: "Patient".into(),
                code: code.into(),
                kind: ParamType::String,
                modifier: Modifier::Contains,
                values: expected,
            }],
            "{query}"
        );
        assert_eq!(r.canonical_query, q(query));
    }
    assert_eq!(
        values(
            "Patient",
            "_content:missing=true",
            "_content",
            Modifier::Missing
        ),
        vec![SearchValue::Missing(true)]
    );
    assert_eq!(
        values("Patient", "_text:missing=false", "_text", Modifier::Missing),
        vec![SearchValue::Missing(false)]
    );
    // Through a chain and in a system search.
    let r = ok("Observation", "subject:Patient._text=x");
    let [Filter::Chain { inner, .. }] = r.filters.as_slice() else {
        panic!("{:?}", r.filters);
    };
    assert!(
        matches!(&**inner, Filter::Param { code, modifier: Modifier::Contains, .. } if code == "_text"),
        "{inner:?}"
    );
    let r = ok_on(None, "_type=Patient,Observation&_content=x");
    assert!(
        matches!(
            &r.filters[..],
            [Filter::Param {
                kind: ParamType::String,
                modifier: Modifier::Contains,
                ..
            }]
        ),
        "{:?}",
        r.filters
    );
    for bad in [
        "_text:exact",
        "_text:contains",
        "_content:text",
        "_content:not",
    ] {
        let message = fail("Patient", &format!("{bad}=x"), bad);
        assert!(
            message.contains(bad) && message.contains(":missing"),
            "{message}"
        );
    }
    assert!(fail("Patient", "_text=", "_text").contains("empty"));
    // Bundle has no narrative parameter.
    assert!(fail("Bundle", "_text=x", "_text").contains("Unknown"));
}

#[test]
fn token_forms() {
    let cases = [
        ("gender=female", token(None, Some("female"))),
        (
            "identifier=http://x|123",
            token(Some("http://x"), Some("123")),
        ),
        ("identifier=|123", token(Some(""), Some("123"))),
        ("identifier=http://x|", token(Some("http://x"), None)),
        ("active=true", token(None, Some("true"))),
        ("_id=abc", token(None, Some("abc"))),
        ("_tag=http://t|vip", token(Some("http://t"), Some("vip"))),
        ("gender:not=male", token(None, Some("male"))),
        ("identifier:text=hospital", text("hospital")),
        ("identifier:text=a|b", text("a|b")),
        (
            "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053",
            SearchValue::OfType {
                type_system: "http://terminology.hl7.org/CodeSystem/v2-0203".into(),
                type_code: "MR".into(),
                value: "446053".into(),
            },
        ),
        ("gender:missing=true", SearchValue::Missing(true)),
    ];
    for (query, expected) in cases {
        assert_eq!(one("Patient", query), expected, "{query}");
    }
    let r = ok("Patient", "_id=a,b");
    assert!(
        matches!(&r.filters[0], Filter::Param { code, kind: ParamType::Token, .. } if code == "_id")
    );
}

#[test]
fn token_errors_name_the_parameter() {
    for (query, param, words) in [
        ("identifier=a|b|c", "identifier", "system|code"),
        ("identifier=|", "identifier", "token"),
        (
            "identifier:of-type=a|b",
            "identifier:of-type",
            "type-system|type-code|value",
        ),
        ("identifier:of-type=a||c", "identifier:of-type", "all three"),
        ("gender:above=x", "gender:above", "not supported"),
        ("gender:below=x", "gender:below", "not supported"),
        ("gender:in=http://vs", "gender:in", "not supported"),
        ("gender:not-in=http://vs", "gender:not-in", "not supported"),
        ("gender:exact=x", "gender:exact", "not a valid modifier"),
    ] {
        let message = fail("Patient", query, param);
        assert!(
            message.contains(param) && message.contains(words),
            "{query}: {message}"
        );
    }
}

#[test]
fn uri_modifiers() {
    assert_eq!(one("ValueSet", "url=http://x/vs"), text("http://x/vs"));
    assert_eq!(one("ValueSet", "url:below=http://x/"), text("http://x/"));
    assert_eq!(
        one("ValueSet", "url:above=http://x/vs/1"),
        text("http://x/vs/1")
    );
    assert_eq!(one("Patient", "_profile=http://p"), text("http://p"));
    assert!(fail("ValueSet", "url:contains=x", "url:contains").contains("url:contains"));
}

// ---- reference ----

#[test]
fn reference_forms() {
    let cases = [
        (
            "subject=Patient/123",
            reference(Some("Patient"), Some("123"), None),
        ),
        ("subject=123", reference(None, Some("123"), None)),
        (
            "subject=Patient/123/_history/2",
            reference(Some("Patient"), Some("123"), None),
        ),
        (
            "subject=https://fhir.example.com/fhir/R4/Patient/abc-1",
            reference(
                Some("Patient"),
                Some("abc-1"),
                Some("https://fhir.example.com/fhir/R4/Patient/abc-1"),
            ),
        ),
        (
            "subject=http://example.org/things/x",
            reference(None, None, Some("http://example.org/things/x")),
        ),
        (
            "subject=urn:uuid:6f1f0b5e-3f1e-4c8e-9f7d-2b2e1d8f0a11",
            reference(
                None,
                None,
                Some("urn:uuid:6f1f0b5e-3f1e-4c8e-9f7d-2b2e1d8f0a11"),
            ),
        ),
        (
            "subject:Patient=123",
            reference(Some("Patient"), Some("123"), None),
        ),
        (
            "subject:Patient=Patient/123",
            reference(Some("Patient"), Some("123"), None),
        ),
        (
            "subject:identifier=http://mrn|77",
            SearchValue::Identifier {
                system: Some("http://mrn".into()),
                value: "77".into(),
            },
        ),
        (
            "subject:identifier=77",
            SearchValue::Identifier {
                system: None,
                value: "77".into(),
            },
        ),
        ("subject:missing=false", SearchValue::Missing(false)),
        ("focus=Basic/1", reference(Some("Basic"), Some("1"), None)),
    ];
    for (query, expected) in cases {
        assert_eq!(one("Observation", query), expected, "{query}");
    }
}

#[test]
fn reference_errors_name_the_parameter() {
    for (query, param, words) in [
        ("subject=Foo/1", "subject", "'Foo'"),
        ("subject=Patient/a b", "subject", "not a valid id"),
        ("subject=a b", "subject", "not a reference"),
        ("subject=Patient/1/2", "subject", "not a valid id"),
        ("subject=Practitioner/1", "subject", "refers to"),
        (
            "subject:Practitioner=1",
            "subject:Practitioner",
            "cannot refer to",
        ),
        (
            "subject:Patient=Group/1",
            "subject:Patient",
            "id of a Patient",
        ),
        (
            "subject:Patient=http://x/y",
            "subject:Patient",
            "id of a Patient",
        ),
        (
            "subject:identifier=a|",
            "subject:identifier",
            "system|value",
        ),
        ("subject:above=x", "subject:above", "not supported"),
        ("subject:exact=x", "subject:exact", "not a valid modifier"),
    ] {
        let message = fail("Observation", query, param);
        assert!(
            message.contains(param) && message.contains(words),
            "{query}: {message}"
        );
    }
}

// ---- date ----

fn date(query: &str) -> (Prefix, i64, i64) {
    match one("Patient", query) {
        SearchValue::Date { prefix, low, high } => (prefix, low, high),
        other => panic!("{query}: {other:?}"),
    }
}

#[test]
fn date_precision_ranges() {
    let cases: &[(&str, i64, i64)] = &[
        ("2020", 1577836800 * S, 1609459200 * S - 1),
        ("2020-02", 1580515200 * S, 1583020800 * S - 1),
        ("2019-02", 1548979200 * S, 1551398400 * S - 1),
        ("2000-02", 949363200 * S, 951868800 * S - 1),
        ("1900-02", -2206310400 * S, -2203891200 * S - 1),
        ("2020-12", 1606780800 * S, 1609459200 * S - 1),
        ("2020-04", 1585699200 * S, 1588291200 * S - 1),
        ("2020-03-05", 1583366400 * S, 1583452800 * S - 1),
        ("2020-02-29", 1582934400 * S, 1583020800 * S - 1),
        ("2024-02-29", 1709164800 * S, (1709164800 + 86400) * S - 1),
        ("1969-12-31", -86400 * S, -1),
        (
            "0001-01-01",
            -62135596800 * S,
            (-62135596800 + 86400) * S - 1,
        ),
        (
            "9999-12-31",
            253402214400 * S,
            (253402214400 + 86400) * S - 1,
        ),
        (
            "2020-03-05T10:15Z",
            1583403300 * S,
            (1583403300 + 60) * S - 1,
        ),
        (
            "2020-03-05T10:15",
            1583403300 * S,
            (1583403300 + 60) * S - 1,
        ),
        ("2020-03-05T10:15:30Z", 1583403330 * S, 1583403331 * S - 1),
        ("2020-03-05T10:15:30", 1583403330 * S, 1583403331 * S - 1),
        (
            "2020-03-05T10:15:30+02:00",
            1583396130 * S,
            1583396131 * S - 1,
        ),
        (
            "2020-03-05T10:15:30 02:00",
            1583396130 * S,
            1583396131 * S - 1,
        ),
        (
            "2020-03-05T01:00:00-05:00",
            1583388000 * S,
            1583388001 * S - 1,
        ),
        (
            "2020-01-01T00:30:00+01:00",
            1577835000 * S,
            1577835001 * S - 1,
        ),
        (
            "2020-03-05T10:15:30.5Z",
            1583403330 * S + 500_000,
            1583403330 * S + 599_999,
        ),
        (
            "2020-03-05T10:15:30.123Z",
            1583403330 * S + 123_000,
            1583403330 * S + 123_999,
        ),
        (
            "2020-03-05T10:15:30.123456Z",
            1583403330 * S + 123_456,
            1583403330 * S + 123_456,
        ),
        (
            "2020-03-05T10:15:30.1234567Z",
            1583403330 * S + 123_456,
            1583403330 * S + 123_456,
        ),
        (
            "2020-03-05T10:15:30.5+02:00",
            1583396130 * S + 500_000,
            1583396130 * S + 599_999,
        ),
    ];
    for (value, low, high) in cases {
        assert_eq!(
            date(&format!("birthdate={value}")),
            (Prefix::Eq, *low, *high),
            "{value}"
        );
    }
}

#[test]
fn date_prefixes() {
    let cases = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in cases {
        let (p, low, high) = date(&format!("birthdate={text}2020"));
        assert_eq!(
            (p, low, high),
            (prefix, 1577836800 * S, 1609459200 * S - 1),
            "{text}"
        );
    }
    let r = ok("Patient", "birthdate=ge2020&birthdate=lt2021-06,2022");
    assert_eq!(r.filters.len(), 2);
    let Filter::Param { values, .. } = &r.filters[1] else {
        panic!()
    };
    assert!(matches!(
        values.as_slice(),
        [
            SearchValue::Date {
                prefix: Prefix::Lt,
                ..
            },
            SearchValue::Date {
                prefix: Prefix::Eq,
                ..
            }
        ]
    ));
    assert!(matches!(
        one("Patient", "_lastUpdated=gt2020-01-01"),
        SearchValue::Date {
            prefix: Prefix::Gt,
            ..
        }
    ));
    assert_eq!(
        one("Patient", "birthdate:missing=true"),
        SearchValue::Missing(true)
    );
}

#[test]
fn malformed_dates_name_the_parameter() {
    for value in [
        "soon",
        "20",
        "2020-3",
        "2020-13",
        "2020-00",
        "2019-02-29",
        "2020-04-31",
        "2020-03-00",
        "2020-03-05T",
        "2020-03-05T10",
        "2020-03-05T24:00",
        "2020-03-05T10:60",
        "2020-03-05T10:15:60",
        "2020-03-05T10:15:30.",
        "2020-03-05T10:15+15:00",
        "2020-03-05T10:15+02",
        "2020-03-05T10:15Zx",
        "2020-03-05Z",
        "0000",
        "gt",
        "xx2020",
    ] {
        let message = fail("Patient", &format!("birthdate={value}"), "birthdate");
        assert!(
            message.contains("birthdate") && message.contains(value),
            "{value}: {message}"
        );
    }
    assert!(fail("Patient", "birthdate:exact=2020", "birthdate:exact").contains(":missing"));
}

// ---- number, quantity ----

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn near(query: &str) -> (f64, f64, f64) {
    match one("Location", query) {
        SearchValue::Near {
            latitude,
            longitude,
            distance_km,
        } => (latitude, longitude, distance_km),
        other => panic!("{query}: {other:?}"),
    }
}

#[test]
fn near_positions() {
    for (query, expected) in [
        (
            "near=42.373222|-72.519854|5|km",
            (42.373222, -72.519854, 5.0),
        ),
        ("near=42.373222|-72.519854", (42.373222, -72.519854, 10.0)),
        ("near=-90|180|2.5", (-90.0, 180.0, 2.5)),
        ("near=1|2|1500|m", (1.0, 2.0, 1.5)),
        ("near=1|2|1|[mi_i]", (1.0, 2.0, 1.609344)),
        ("near=1|2|10|mi", (1.0, 2.0, 16.09344)),
        ("near=1|2||m", (1.0, 2.0, 10.0)),
        ("near=1|2|0|km", (1.0, 2.0, 0.0)),
    ] {
        let got = near(query);
        assert!(
            close(got.0, expected.0) && close(got.1, expected.1) && close(got.2, expected.2),
            "{query}: {got:?}"
        );
    }
    let r = ok("Location", "near=1|2,3|4|1|km");
    assert_eq!(
        r.filters,
        vec![Filter::Param {
            resource_type: "Location".into(),
            code: "near".into(),
            kind: ParamType::Special,
            modifier: Modifier::None,
            values: vec![
                SearchValue::Near {
                    latitude: 1.0,
                    longitude: 2.0,
                    distance_km: 10.0
                },
                SearchValue::Near {
                    latitude: 3.0,
                    longitude: 4.0,
                    distance_km: 1.0
                },
            ],
        }]
    );
    assert_eq!(
        one("Location", "near:missing=true"),
        SearchValue::Missing(true)
    );
    for (query, words) in [
        ("near=42", "not a position"),
        ("near=1|2|3|km|x", "not a position"),
        ("near=1|2|3|ft", "'ft'"),
        ("near=1|2|3|KM", "'KM'"),
        ("near=91|0", "latitude"),
        ("near=0|-180.5", "longitude"),
        ("near=x|0", "'x'"),
        ("near=1||3", "longitude"),
        ("near=1|2|-1|km", "distance"),
        ("near=1|2|far", "distance"),
        ("near=", "empty"),
    ] {
        let message = fail("Location", query, "near");
        assert!(
            message.contains("near") && message.contains(words),
            "{query}: {message}"
        );
    }
    let message = fail("Location", "near:exact=1|2", "near:exact");
    assert!(message.contains(":missing"), "{message}");
}

#[test]
fn number_precision_ranges() {
    let cases = [
        ("100", Prefix::Eq, 100.0, 99.5, 100.5),
        ("100.0", Prefix::Eq, 100.0, 99.95, 100.05),
        ("0.8", Prefix::Eq, 0.8, 0.75, 0.85),
        ("-2.50", Prefix::Eq, -2.5, -2.505, -2.495),
        ("gt0.8", Prefix::Gt, 0.8, 0.75, 0.85),
        ("le1", Prefix::Le, 1.0, 0.5, 1.5),
        ("ap5", Prefix::Ap, 5.0, 4.5, 5.5),
        ("1e2", Prefix::Eq, 100.0, 50.0, 150.0),
        ("1.0e2", Prefix::Eq, 100.0, 95.0, 105.0),
        ("5E-1", Prefix::Eq, 0.5, 0.45, 0.55),
    ];
    for (input, prefix, value, low, high) in cases {
        match one("RiskAssessment", &format!("probability={input}")) {
            SearchValue::Number {
                prefix: p,
                value: v,
                low: l,
                high: h,
            } => {
                assert_eq!(p, prefix, "{input}");
                assert!(
                    close(v, value) && close(l, low) && close(h, high),
                    "{input}: {v} [{l}, {h})"
                );
            }
            other => panic!("{input}: {other:?}"),
        }
    }
    for bad in [
        "abc", "1.", ".5", "1e", "--1", "1,5x", "gt", "1e400", "NaN", "inf",
    ] {
        let message = fail(
            "RiskAssessment",
            &format!("probability={bad}"),
            "probability",
        );
        assert!(
            message.contains("probability") && message.contains("not a number"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn quantity_forms() {
    let quantity = |query: &str| match one("Observation", query) {
        SearchValue::Quantity {
            prefix,
            value,
            low,
            high,
            system,
            code,
        } => (prefix, value, low, high, system, code),
        other => panic!("{query}: {other:?}"),
    };
    let (p, v, l, h, s, c) = quantity("value-quantity=gt5.4|http://unitsofmeasure.org|mg");
    assert_eq!(
        (p, s.as_deref(), c.as_deref()),
        (Prefix::Gt, Some("http://unitsofmeasure.org"), Some("mg"))
    );
    assert!(close(v, 5.4) && close(l, 5.35) && close(h, 5.45));
    let (p, v, _, _, s, c) = quantity("value-quantity=5.4||mg");
    assert_eq!((p, v, s, c.as_deref()), (Prefix::Eq, 5.4, None, Some("mg")));
    let (_, v, l, h, s, c) = quantity("value-quantity=100");
    assert_eq!((v, l, h, s, c), (100.0, 99.5, 100.5, None, None));
    let (_, _, _, _, s, c) = quantity("value-quantity=1|http://u|");
    assert_eq!((s.as_deref(), c), (Some("http://u"), None));
    for bad in ["5.4|mg", "a|b|c", "5|a|b|c", "lt"] {
        let message = fail(
            "Observation",
            &format!("value-quantity={bad}"),
            "value-quantity",
        );
        assert!(message.contains("value-quantity"), "{bad}: {message}");
    }
}

// ---- composite ----

#[test]
fn composite_values() {
    let v = one(
        "Observation",
        "code-value-quantity=http://loinc.org|8480-6$gt100",
    );
    let SearchValue::Composite(parts) = v else {
        panic!("{v:?}")
    };
    assert_eq!(parts[0], token(Some("http://loinc.org"), Some("8480-6")));
    assert!(
        matches!(parts[1], SearchValue::Quantity { prefix: Prefix::Gt, value, .. } if value == 100.0)
    );
    let r = ok("Observation", "code-value-quantity=a$1,b$2|http://u|mm");
    let Filter::Param {
        values,
        kind: ParamType::Composite,
        ..
    } = &r.filters[0]
    else {
        panic!()
    };
    assert_eq!(values.len(), 2);
    let SearchValue::Composite(parts) = &values[0] else {
        panic!()
    };
    assert_eq!(parts[0], token(None, Some("a")));
    let v = one("Observation", r"code-value-quantity=a\$b$1");
    let SearchValue::Composite(parts) = v else {
        panic!()
    };
    assert_eq!(parts[0], token(None, Some("a$b")));
    for (bad, words) in [
        ("a", "2 components"),
        ("a$1$2", "3 $-separated"),
        ("a$x", "not a number"),
        ("$1", "empty"),
    ] {
        let message = fail(
            "Observation",
            &format!("code-value-quantity={bad}"),
            "code-value-quantity",
        );
        assert!(
            message.contains("code-value-quantity") && message.contains(words),
            "{bad}: {message}"
        );
    }
}

// ---- chains and _has ----

fn param(resource_type: &str, code: &str, values: Vec<SearchValue>) -> Filter {
    Filter::Param {
        resource_type: resource_type.into(),
        code: code.into(),
        kind: ParamType::String,
        modifier: Modifier::None,
        values,
    }
}

#[test]
fn chains_one_to_three_links() {
    let r = ok("Observation", "subject:Patient.name=peter");
    assert_eq!(
        r.filters,
        vec![Filter::Chain {
            resource_type: "Observation".into(),
            code: "subject".into(),
            target_type: "Patient".into(),
            inner: Box::new(param("Patient", "name", vec![text("peter")])),
        }]
    );
    // One target: no type needed.
    let r = ok("Observation", "patient.name=peter");
    assert!(matches!(&r.filters[0], Filter::Chain { target_type, .. } if target_type == "Patient"));
    // Three links; modifiers on the last.
    let r = ok(
        "Observation",
        "subject:Patient.organization.partof.name:exact=Acme,Beta",
    );
    let Filter::Chain {
        target_type, inner, ..
    } = &r.filters[0]
    else {
        panic!()
    };
    assert_eq!(target_type, "Patient");
    let Filter::Chain {
        code,
        target_type,
        inner,
        ..
    } = inner.as_ref()
    else {
        panic!()
    };
    assert_eq!(
        (code.as_str(), target_type.as_str()),
        ("organization", "Organization")
    );
    let Filter::Chain { code, inner, .. } = inner.as_ref() else {
        panic!()
    };
    assert_eq!(code, "partof");
    assert_eq!(
        inner.as_ref(),
        &Filter::Param {
            resource_type: "Organization".into(),
            code: "name".into(),
            kind: ParamType::String,
            modifier: Modifier::Exact,
            values: vec![text("Acme"), text("Beta")],
        }
    );
    // Token, date and reference at the end of a chain.
    let r = ok(
        "Observation",
        "subject:Patient.birthdate=ge2000&subject:Patient.organization=Organization/1",
    );
    assert_eq!(r.filters.len(), 2);
}

#[test]
fn chain_errors_name_the_parameter() {
    for (query, param, words) in [
        ("subject.name=x", "subject.name", "subject:Group.name"),
        ("focus.name=x", "focus.name", "focus:Patient.name"),
        (
            "subject:Practitioner.name=x",
            "subject:Practitioner.name",
            "cannot refer to Practitioner",
        ),
        ("subject:Nope.name=x", "subject:Nope.name", "'Nope'"),
        ("code.name=x", "code.name", "only reference parameters"),
        ("subject:Patient.=x", "subject:Patient.", "after the '.'"),
        (
            "subject:Patient.name:zz=x",
            "subject:Patient.name:zz",
            "':zz'",
        ),
        (
            "subject:Patient.birthdate=x",
            "subject:Patient.birthdate",
            "not a valid date",
        ),
    ] {
        let message = fail("Observation", query, param);
        assert!(
            message.contains(param) && message.contains(words),
            "{query}: {message}"
        );
    }
    let message = fail("Observation", "subject.name=x", "subject.name");
    assert!(
        message.contains("Group, Device, Patient, Location"),
        "{message}"
    );
    let deep = format!("{}name=x", "partof.".repeat(MAX_NESTING + 1));
    let message = fail("Organization", &deep, &deep[..deep.len() - 2]);
    assert!(message.contains("levels"), "{message}");
}

#[test]
fn has_reverse_chains() {
    let r = ok("Patient", "_has:Observation:patient:code=1234-5");
    assert_eq!(
        r.filters,
        vec![Filter::Has {
            source_type: "Observation".into(),
            reference_param: "patient".into(),
            inner: Box::new(Filter::Param {
                resource_type: "Observation".into(),
                code: "code".into(),
                kind: ParamType::Token,
                modifier: Modifier::None,
                values: vec![token(None, Some("1234-5"))],
            }),
        }]
    );
    let r = ok(
        "Patient",
        "_has:Observation:subject:_has:AuditEvent:entity:type=rest",
    );
    let Filter::Has {
        source_type,
        reference_param,
        inner,
    } = &r.filters[0]
    else {
        panic!()
    };
    assert_eq!(
        (source_type.as_str(), reference_param.as_str()),
        ("Observation", "subject")
    );
    let Filter::Has {
        source_type,
        reference_param,
        inner,
    } = inner.as_ref()
    else {
        panic!()
    };
    assert_eq!(
        (source_type.as_str(), reference_param.as_str()),
        ("AuditEvent", "entity")
    );
    assert!(
        matches!(inner.as_ref(), Filter::Param { resource_type, code, .. } if resource_type == "AuditEvent" && code == "type")
    );
    // Modifiers and chains inside _has.
    let r = ok("Patient", "_has:Observation:patient:code:not=x&_has:Observation:patient:performer:Practitioner.name=y");
    assert!(
        matches!(&r.filters[0], Filter::Has { inner, .. } if matches!(inner.as_ref(), Filter::Param { modifier: Modifier::Not, .. }))
    );
    assert!(
        matches!(&r.filters[1], Filter::Has { inner, .. } if matches!(inner.as_ref(), Filter::Chain { .. }))
    );
    // A chain into a _has.
    let r = ok("Observation", "patient._has:Encounter:patient:_id=e1");
    assert!(
        matches!(&r.filters[0], Filter::Chain { inner, .. } if matches!(inner.as_ref(), Filter::Has { .. }))
    );
}

#[test]
fn has_errors_name_the_parameter() {
    for (query, param, words) in [
        ("_has=x", "_has", "_has:Type:reference:parameter"),
        (
            "_has:Observation:patient=x",
            "_has:Observation:patient",
            "_has:Type:reference:parameter",
        ),
        (
            "_has:Nope:patient:code=x",
            "_has:Nope:patient:code",
            "'Nope'",
        ),
        (
            "_has:Observation:code:code=x",
            "_has:Observation:code:code",
            "not a reference",
        ),
        (
            "_has:Observation:patient:=x",
            "_has:Observation:patient:",
            "parameter of Observation",
        ),
    ] {
        let message = fail("Patient", query, param);
        assert!(
            message.contains(param) && message.contains(words),
            "{query}: {message}"
        );
    }
    let message = fail(
        "Organization",
        "_has:Observation:patient:code=x",
        "_has:Observation:patient:code",
    );
    assert!(
        message.contains("cannot refer to Organization"),
        "{message}"
    );
}

// ---- result parameters ----

#[test]
fn count_offset_total_summary_elements() {
    let r = ok(
        "Patient",
        "_count=50&_offset=100&_total=accurate&_summary=data&_elements=name, birthDate",
    );
    assert_eq!(
        (r.count, r.offset, r.total, r.summary),
        (50, 100, Total::Accurate, Summary::Data)
    );
    assert_eq!(
        r.elements,
        vec!["name".to_string(), "birthDate".to_string()]
    );
    assert_eq!(ok("Patient", "_count=1").count, 1);
    assert_eq!(
        ok("Patient", &format!("_count={}", MAX_COUNT)).count,
        MAX_COUNT
    );
    assert_eq!(ok("Patient", "_count=100000").count, MAX_COUNT);
    let r = ok("Patient", "_count=0");
    assert_eq!((r.count, r.summary), (0, Summary::Count));
    assert_eq!(
        ok("Patient", &format!("_offset={MAX_OFFSET}")).offset,
        MAX_OFFSET
    );
    for (value, total) in [
        ("none", Total::None),
        ("estimate", Total::Estimate),
        ("accurate", Total::Accurate),
    ] {
        assert_eq!(ok("Patient", &format!("_total={value}")).total, total);
    }
    for (value, summary) in [
        ("true", Summary::True),
        ("false", Summary::False),
        ("count", Summary::Count),
        ("data", Summary::Data),
        ("text", Summary::Text),
    ] {
        assert_eq!(ok("Patient", &format!("_summary={value}")).summary, summary);
    }
    for (query, param, words) in [
        ("_count=-1", "_count", "whole number"),
        ("_count=ten", "_count", "whole number"),
        ("_offset=10001", "_offset", "at most 10000"),
        ("_offset=x", "_offset", "whole number"),
        ("_total=all", "_total", "none, estimate or accurate"),
        (
            "_summary=yes",
            "_summary",
            "true, false, count, data or text",
        ),
        ("_elements=name,,id", "_elements", "element names"),
        ("_elements=na me", "_elements", "element names"),
        ("_count=1&_count=2", "_count", "only once"),
        ("_sort=name&_sort=gender", "_sort", "only once"),
        ("_cursor=a&_cursor=b", "_cursor", "only once"),
        ("_count:x=1", "_count:x", "no modifiers"),
    ] {
        let message = fail("Patient", query, param);
        assert!(
            message.contains(param.split(':').next().unwrap()) && message.contains(words),
            "{query}: {message}"
        );
    }
}

#[test]
fn sort_keys() {
    let r = ok(
        "Patient",
        "_sort=-birthdate,name,_id,-_lastUpdated,organization",
    );
    let keys: Vec<(&str, ParamType, bool)> = r
        .sort
        .iter()
        .map(|s| (s.code.as_str(), s.kind, s.descending))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("birthdate", ParamType::Date, true),
            ("name", ParamType::String, false),
            ("_id", ParamType::Token, false),
            ("_lastUpdated", ParamType::Date, true),
            ("organization", ParamType::Reference, false),
        ]
    );
    for (query, words) in [
        ("_sort=foo", "unknown search parameter 'foo'"),
        ("_sort=name,", "empty key"),
        ("_sort=-", "empty key"),
        ("_sort=organization.name", "not supported"),
    ] {
        let message = fail("Patient", query, "_sort");
        assert!(
            message.contains("_sort") && message.contains(words),
            "{query}: {message}"
        );
    }
    let message = fail("Observation", "_sort=code-value-quantity", "_sort");
    assert!(message.contains("composite"), "{message}");
    let message = fail("Location", "_sort=near", "_sort");
    assert!(message.contains("special"), "{message}");
}

#[test]
fn includes_and_revincludes() {
    let r = ok(
        "Observation",
        "_include=Observation:subject&_include=Observation:performer:Practitioner&_include:iterate=Patient:general-practitioner&_revinclude=Observation:focus&_revinclude:iterate=Observation:performer:Patient",
    );
    let include = |s: &str, p: &str, t: Option<&str>, iterate| Include {
        source_type: s.into(),
        param: p.into(),
        target_type: t.map(str::to_string),
        iterate,
    };
    assert_eq!(
        r.include,
        vec![
            include("Observation", "subject", None, false),
            include("Observation", "performer", Some("Practitioner"), false),
            include("Patient", "general-practitioner", None, true),
        ]
    );
    assert_eq!(
        r.revinclude,
        vec![
            include("Observation", "focus", None, false),
            include("Observation", "performer", Some("Patient"), true)
        ]
    );
    assert_eq!(
        ok("Patient", "_include:recurse=Patient:link").include,
        vec![include("Patient", "link", None, true)]
    );
    let r = ok(
        "Patient",
        "_revinclude=Observation:subject&_revinclude=Encounter:patient",
    );
    assert_eq!(
        r.revinclude,
        vec![
            include("Observation", "subject", None, false),
            include("Encounter", "patient", None, false)
        ]
    );
    for (query, param, words) in [
        ("_include=*", "_include", "not supported"),
        ("_include=Observation:*", "_include", "not supported"),
        ("_include=Observation", "_include", "Type:parameter"),
        (
            "_include=Observation:subject:Patient:x",
            "_include",
            "Type:parameter",
        ),
        ("_include=Nope:subject", "_include", "'Nope'"),
        ("_include=Patient:organization", "_include", "not searched"),
        (
            "_include=Observation:foo",
            "_include",
            "unknown search parameter 'foo'",
        ),
        ("_include=Observation:code", "_include", "not a reference"),
        (
            "_include=Observation:subject:Practitioner",
            "_include",
            "cannot refer to Practitioner",
        ),
        ("_include=Observation:subject:Nope", "_include", "'Nope'"),
        (
            "_include:deep=Observation:subject",
            "_include:deep",
            ":iterate",
        ),
        (
            "_revinclude=Patient:organization",
            "_revinclude",
            "cannot refer to Observation",
        ),
    ] {
        let message = fail("Observation", query, param);
        assert!(
            message.contains(param) && message.contains(words),
            "{query}: {message}"
        );
    }
}

#[test]
fn system_search_and_type() {
    let r = ok_on(
        None,
        "_type=Patient,Practitioner,Patient&name=eve&_sort=-_lastUpdated",
    );
    assert_eq!(
        r.types,
        vec!["Patient".to_string(), "Practitioner".to_string()]
    );
    assert!(
        matches!(&r.filters[0], Filter::Param { resource_type, kind: ParamType::String, .. } if resource_type == "Resource")
    );
    assert_eq!(
        r.canonical_query,
        q("_type=Patient,Practitioner,Patient&name=eve&_sort=-_lastUpdated")
    );
    let r = ok_on(None, "_type=Patient&birthdate=2020");
    assert!(
        matches!(&r.filters[0], Filter::Param { resource_type, .. } if resource_type == "Patient")
    );
    let r = ok_on(None, "_lastUpdated=gt2020&_id=1");
    assert!(r.types.is_empty());
    assert_eq!(r.filters.len(), 2);
    assert!(fail_on(None, "_type=Patient,Nope", "_type").contains("'Nope'"));
    assert!(fail_on(None, "_type=Patient&_type=Group", "_type").contains("only once"));
    assert!(fail("Patient", "_type=Patient", "_type").contains("system searches"));
    assert_eq!(
        fail_on(None, "_type=Patient,Observation&name=x", "name"),
        "Unknown search parameter 'name' for Patient, Observation"
    );
    assert_eq!(
        fail_on(None, "name=x", "name"),
        "Unknown search parameter 'name' for all resource types"
    );
    let r = ok_on(
        None,
        "_type=Patient,Practitioner&_include=Patient:organization",
    );
    assert_eq!(r.include.len(), 1);
}

#[test]
fn compartments() {
    let in_compartment = || Filter::Compartment {
        compartment_type: "Patient".into(),
        id: "123".into(),
    };
    assert_eq!(
        ok("Observation", "_compartment=Patient/123").filters,
        vec![in_compartment()]
    );
    assert_eq!(
        compartment_filter(&Lookup, "Patient", "123", Some("Patient")).unwrap(),
        in_compartment()
    );
    // Without one type (system search, `*` policies) any type may be in it.
    assert_eq!(
        ok_on(None, "_compartment=Patient/123").filters,
        vec![in_compartment()]
    );
    assert!(
        ok_on(None, "_type=Encounter&_compartment=Patient/1")
            .filters
            .len()
            == 1
    );
    for (resource_type, query, words) in [
        (
            Some("Organization"),
            "_compartment=Patient/1",
            "not in the Patient compartment",
        ),
        (Some("Observation"), "_compartment=Patient", "Type/id"),
        (Some("Observation"), "_compartment=Nope/1", "'Nope'"),
        (
            Some("Observation"),
            "_compartment=Patient/a b",
            "not a valid Patient id",
        ),
    ] {
        let message = fail_on(resource_type, query, "_compartment");
        assert!(message.contains(words), "{query}: {message}");
    }
}

#[test]
fn every_error_message_names_its_parameter() {
    for (resource_type, query) in [
        ("Patient", "birthdate=2020-02-30"),
        ("Patient", "gender:above=x"),
        ("Observation", "subject.name=x"),
        ("Observation", "value-quantity=x"),
        ("Patient", "_has:Observation:code:code=x"),
        ("Patient", "_count=x"),
        ("Patient", "_include=*"),
        ("Patient", "_sort=nope"),
        ("Patient", "foo=1"),
    ] {
        let name = query.split('=').next().unwrap();
        let base = name.split([':', '.']).next().unwrap();
        let message = fail(resource_type, query, name);
        assert!(message.contains(base), "{query}: {message}");
    }
}
