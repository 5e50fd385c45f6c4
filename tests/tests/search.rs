//! Search conformance: a fixed data set, and for every parameter type,
//! modifier and prefix the exact set of ids a search returns.

use std::collections::BTreeSet;

use fhirgate_tests::{assert_outcome, count, status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

struct Data {
    p: Vec<String>,
    obs: Vec<String>,
    org: Vec<String>,
    risk: String,
}

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

async fn id_of(session: &Session, resource: Value) -> String {
    session.create(resource).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn load(s: &Session) -> Data {
    let parent = id_of(
        s,
        json!({"resourceType": "Organization", "name": "Parent Corp"}),
    )
    .await;
    let engines = id_of(
        s,
        json!({"resourceType": "Organization", "name": "Analytical Engines Ltd", "partOf": {"reference": format!("Organization/{parent}")}}),
    )
    .await;
    let p1 = id_of(s, json!({
        "resourceType": "Patient", "active": true, "gender": "female", "birthDate": "1815-12-10",
        "name": [{"given": ["Ada"], "family": "Lovelace"}],
        "identifier": [{"system": "urn:sys", "value": "111",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "telecom": [{"system": "email", "value": "ada@example.com"}],
        "address": [{"city": "London", "line": ["12 St James's Square"]}],
        "communication": [{"language": {"text": "English"}}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ada</div>"},
        "managingOrganization": {"reference": format!("Organization/{engines}")}
    })).await;
    let p2 = id_of(
        s,
        json!({
            "resourceType": "Patient", "active": false, "gender": "male", "birthDate": "1990-03",
            "meta": {"profile": ["http://example.org/StructureDefinition/special"]},
            "name": [{"given": ["Émile"], "family": "Öst"}],
            "identifier": [{"system": "urn:sys", "value": "222"}]
        }),
    )
    .await;
    let p3 = id_of(
        s,
        json!({
            "resourceType": "Patient", "gender": "male", "birthDate": "1791-12-26",
            "name": [{"given": ["Charles"], "family": "Babbage,Jr"}],
            "identifier": [{"system": "urn:other", "value": "111"}]
        }),
    )
    .await;
    let p4 = id_of(
        s,
        json!({
            "resourceType": "Patient", "meta": {"tag": [{"system": "urn:tags", "code": "vip"}]}
        }),
    )
    .await;
    let systolic = |patient: &str, value: f64, effective: Value| {
        let mut obs = json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"},
                                 {"system": "urn:local", "code": "SYS"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
        });
        for (k, v) in effective.as_object().unwrap() {
            obs[k] = v.clone();
        }
        obs
    };
    let obs1 = id_of(
        s,
        systolic(
            &p1,
            120.0,
            json!({"effectiveDateTime": "2020-03-05T10:15:00+02:00"}),
        ),
    )
    .await;
    let obs2 = id_of(s, json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]},
        "subject": {"reference": format!("Patient/{p1}")},
        "effectivePeriod": {"start": "2021-01-01"},
        "valueQuantity": {"value": 80.5, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
    })).await;
    let mut obs3 = systolic(
        &p2,
        100.0,
        json!({"effectiveDateTime": "2020-03-05T23:30:00-05:00"}),
    );
    obs3["status"] = json!("preliminary");
    let obs3 = id_of(s, obs3).await;
    let risk = id_of(
        s,
        json!({
            "resourceType": "RiskAssessment", "status": "final",
            "subject": {"reference": format!("Patient/{p1}")},
            "prediction": [{"probabilityDecimal": 0.25}]
        }),
    )
    .await;
    Data {
        p: vec![p1, p2, p3, p4],
        obs: vec![obs1, obs2, obs3],
        org: vec![engines, parent],
        risk,
    }
}

/// The ids of the `match` entries of a search.
async fn ids(s: &Session, query: &str) -> BTreeSet<String> {
    let (status, bundle) = status_json(s.get(query).await).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    assert_eq!(bundle["type"], "searchset");
    page_ids(&bundle).into_iter().collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn check(s: &Session, query: &str, expected: &[&String]) {
    assert_eq!(ids(s, query).await, set(expected), "{query}");
}

#[tokio::test(flavor = "multi_thread")]
async fn string_token_date_quantity_number_uri_and_special_parameters() {
    let app = TestApp::spawn().await;
    let s = app.project("search").await.member;
    let d = load(&s).await;
    let (p1, p2, p3, p4) = (&d.p[0], &d.p[1], &d.p[2], &d.p[3]);
    let (o1, o2, o3) = (&d.obs[0], &d.obs[1], &d.obs[2]);

    // string: case- and accent-insensitive prefix, :exact, :contains, every part, escapes.
    check(&s, "Patient?name=ada", &[p1]).await;
    check(&s, "Patient?name=ADA", &[p1]).await;
    check(&s, "Patient?family=lovelace", &[p1]).await;
    check(&s, "Patient?name=emile", &[p2]).await;
    check(&s, "Patient?name=%C3%89MILE", &[p2]).await;
    check(&s, "Patient?family=ost", &[p2]).await;
    check(&s, "Patient?name:exact=Ada", &[p1]).await;
    check(&s, "Patient?name:exact=ada", &[]).await;
    check(&s, "Patient?name:contains=bba", &[p3]).await;
    check(&s, "Patient?address-city=lond", &[p1]).await;
    check(&s, "Patient?family=Babbage%5C,Jr", &[p3]).await;
    check(&s, "Patient?family=Babbage%5C,X", &[]).await;
    check(&s, "Patient?family=babbage,lovelace", &[p1, p3]).await;
    check(&s, "Patient?family=babbage&given=charles", &[p3]).await;
    check(&s, "Patient?family=babbage&given=ada", &[]).await;

    // token
    check(&s, "Patient?gender=male", &[p2, p3]).await;
    check(&s, "Patient?gender=male,female", &[p1, p2, p3]).await;
    check(&s, "Patient?gender:not=male", &[p1, p4]).await;
    check(&s, "Patient?identifier=urn:sys%7C111", &[p1]).await;
    check(&s, "Patient?identifier=111", &[p1, p3]).await;
    check(&s, "Patient?identifier=%7C111", &[]).await;
    check(&s, "Patient?identifier=urn:sys%7C", &[p1, p2]).await;
    check(
        &s,
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203%7CMR%7C111",
        &[p1],
    )
    .await;
    check(&s, "Patient?active=true", &[p1]).await;
    check(&s, "Patient?active=false", &[p2]).await;
    check(&s, "Patient?email=ada@example.com", &[p1]).await;
    check(&s, "Patient?birthdate:missing=true", &[p4]).await;
    check(&s, "Patient?birthdate:missing=false", &[p1, p2, p3]).await;
    check(&s, "Observation?code=http://loinc.org%7C8480-6", &[o1, o3]).await;
    check(&s, "Observation?code=8462-4", &[o2]).await;
    check(&s, "Observation?code=urn:local%7CSYS", &[o1, o3]).await;
    check(&s, "Observation?code:text=diastolic", &[o2]).await;
    check(&s, "Observation?status=preliminary", &[o3]).await;

    // date, with precision ranges and time zones
    check(&s, "Patient?birthdate=1815", &[p1]).await;
    check(&s, "Patient?birthdate=1815-12", &[p1]).await;
    check(&s, "Patient?birthdate=1815-12-10", &[p1]).await;
    check(&s, "Patient?birthdate=1990", &[p2]).await;
    check(&s, "Patient?birthdate=eq1990-03-15", &[]).await;
    check(&s, "Patient?birthdate=ge1990-03-15", &[p2]).await;
    check(&s, "Patient?birthdate=gt1800", &[p1, p2]).await;
    check(&s, "Patient?birthdate=lt1800", &[p3]).await;
    check(&s, "Patient?birthdate=ne1815", &[p2, p3]).await;
    check(&s, "Patient?birthdate=sa1815-12-09", &[p1, p2]).await;
    check(&s, "Patient?birthdate=eb1815-12-11", &[p1, p3]).await;
    check(&s, "Patient?birthdate=ge1800&birthdate=le1900", &[p1]).await;
    check(&s, "Observation?date=2020-03-05", &[o1]).await;
    check(&s, "Observation?date=2020-03-06", &[o3]).await;
    check(&s, "Observation?date=2020-03-05T10:15:00%2B02:00", &[o1]).await;
    check(&s, "Observation?date=lt2020-03-05T09:00:00Z", &[o1]).await;
    check(&s, "Observation?date=ge2021-06-01", &[o2]).await;
    check(&s, "Observation?date=2020", &[o1, o3]).await;

    // quantity and number
    check(&s, "Observation?value-quantity=120", &[o1]).await;
    check(&s, "Observation?value-quantity=100", &[o3]).await;
    check(&s, "Observation?value-quantity=80.5", &[o2]).await;
    check(&s, "Observation?value-quantity=gt100", &[o1]).await;
    check(&s, "Observation?value-quantity=le100", &[o2, o3]).await;
    check(
        &s,
        "Observation?value-quantity=120%7Chttp://unitsofmeasure.org%7Cmm[Hg]",
        &[o1],
    )
    .await;
    check(&s, "Observation?value-quantity=120%7C%7Cmm[Hg]", &[o1]).await;
    check(
        &s,
        "Observation?value-quantity=120%7Chttp://unitsofmeasure.org%7Ckg",
        &[],
    )
    .await;
    check(&s, "RiskAssessment?probability=0.25", &[&d.risk]).await;
    check(&s, "RiskAssessment?probability=gt0.3", &[]).await;

    // uri and special parameters
    check(
        &s,
        "Patient?_profile=http://example.org/StructureDefinition/special",
        &[p2],
    )
    .await;
    check(&s, "Patient?_tag=urn:tags%7Cvip", &[p4]).await;
    check(&s, &format!("Patient?_id={p1},{p2}"), &[p1, p2]).await;
    check(&s, "Patient?_lastUpdated=gt2000-01-01", &[p1, p2, p3, p4]).await;
    check(&s, "Patient?_lastUpdated=lt2000-01-01", &[]).await;

    // Deleted resources are left out.
    assert_eq!(s.delete(&format!("Patient/{p3}")).await.status(), 200);
    check(&s, "Patient?gender=male", &[p2]).await;

    // Another project sees none of it.
    let other = app.project("other").await.member;
    check(&other, "Patient?gender=male,female", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn references_chains_has_and_compartments() {
    let app = TestApp::spawn().await;
    let s = app.project("references").await.member;
    let d = load(&s).await;
    let (p1, p2) = (&d.p[0], &d.p[1]);
    let (o1, o2, o3) = (&d.obs[0], &d.obs[1], &d.obs[2]);
    let (engines, parent) = (&d.org[0], &d.org[1]);

    check(&s, &format!("Observation?subject=Patient/{p1}"), &[o1, o2]).await;
    check(&s, &format!("Observation?subject={p1}"), &[o1, o2]).await;
    check(&s, &format!("Observation?subject:Patient={p1}"), &[o1, o2]).await;
    check(&s, &format!("Observation?subject:Group={p1}"), &[]).await;
    check(&s, &format!("Observation?patient=Patient/{p2}"), &[o3]).await;
    check(
        &s,
        &format!("Observation?subject={}fhir/R4/Patient/{p1}", app.base_url),
        &[o1, o2],
    )
    .await;
    check(
        &s,
        &format!("Observation?subject=Patient/{p1},Patient/{p2}"),
        &[o1, o2, o3],
    )
    .await;
    check(&s, "Observation?subject:missing=true", &[]).await;

    // Chains, three links deep.
    check(&s, "Observation?subject:Patient.name=ada", &[o1, o2]).await;
    check(
        &s,
        "Observation?subject:Patient.organization.name=analytical",
        &[o1, o2],
    )
    .await;
    check(
        &s,
        "Observation?subject:Patient.organization.partof.name=parent",
        &[o1, o2],
    )
    .await;
    check(
        &s,
        "Observation?subject:Patient.organization.partof.name=nobody",
        &[],
    )
    .await;

    // Reverse chains, nested.
    check(&s, "Patient?_has:Observation:subject:code=8462-4", &[p1]).await;
    check(
        &s,
        "Patient?_has:Observation:subject:code=8480-6",
        &[p1, p2],
    )
    .await;
    check(
        &s,
        "Organization?_has:Patient:organization:_has:Observation:subject:code=8462-4",
        &[engines],
    )
    .await;
    check(
        &s,
        &format!("Organization?_has:Organization:partof:_id={engines}"),
        &[parent],
    )
    .await;

    // Compartments.
    check(&s, &format!("Patient/{p1}/Observation"), &[o1, o2]).await;
    check(&s, &format!("Patient/{p1}/Observation?code=8480-6"), &[o1]).await;
    check(
        &s,
        &format!("Observation?_compartment=Patient/{p1}"),
        &[o1, o2],
    )
    .await;
    check(
        &s,
        &format!("RiskAssessment?_compartment=Patient/{p1}"),
        &[&d.risk],
    )
    .await;
    assert_outcome(
        s.get(&format!("Patient/{}/Observation", uuid::Uuid::new_v4()))
            .await,
        404,
        "not found",
    )
    .await;

    // System search over several types.
    check(
        &s,
        &format!("?_type=Patient,Organization&_id={p1},{engines}"),
        &[p1, engines],
    )
    .await;
}

/// The link of `relation` of a searchset, fetched.
async fn follow(s: &Session, bundle: &Value, relation: &str) -> Option<Value> {
    let url = bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)?["url"]
        .as_str()?
        .to_string();
    let (status, page) =
        status_json(s.http.get(&url).bearer_auth(&s.token).send().await.unwrap()).await;
    assert_eq!(status, 200, "{url}: {page}");
    Some(page)
}

fn page_ids(bundle: &Value) -> Vec<String> {
    entry_ids(bundle, "match")
}

/// The ids of a Bundle's entries of one search mode, in order.
fn entry_ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every page of a search, following `next` links: the ids in order, and the pages.
async fn walk_pages(s: &Session, query: &str) -> (Vec<String>, Vec<Value>) {
    let (status, first) = status_json(s.get(query).await).await;
    assert_eq!(status, 200, "{query}: {first}");
    let mut pages = vec![first];
    while let Some(next) = follow(s, pages.last().unwrap(), "next").await {
        pages.push(next);
    }
    (pages.iter().flat_map(page_ids).collect(), pages)
}

/// Sorting by a date, string or token parameter reads the resources with a
/// value from its index and those without after them
/// (`store::search::SortDriver`): every page of the cursors, forwards and
/// back across that seam, holds what the sort says, and what `_offset`
/// (which computes each match's key) finds.
#[tokio::test(flavor = "multi_thread")]
async fn sorted_pages_agree_with_offsets_across_missing_values() {
    let app = TestApp::spawn().await;
    let s = app.project("sorted").await.member;
    // Shared values, a date that is a range (a month), names differing in
    // case, and some of each missing.
    let rows = [
        (Some("1980-05-01"), Some("Baker"), Some("male")),
        (Some("1975-01-01"), None, Some("female")),
        (Some("1980-05-01"), Some("adams"), None),
        (Some("1980-05"), Some("baker"), Some("female")),
        (None, Some("Clark"), Some("male")),
        (Some("2001-12-31"), None, None),
        (None, Some("Zeta"), Some("other")),
        (None, None, Some("female")),
        // Two names: found at the first ascending, at the second descending.
        (None, Some("Young|Aaron"), Some("male")),
    ];
    let mut patients = Vec::new();
    for (date, family, gender) in rows {
        let mut patient = json!({"resourceType": "Patient", "active": true});
        if let Some(date) = date {
            patient["birthDate"] = json!(date);
        }
        if let Some(family) = family {
            let names: Vec<Value> = family.split('|').map(|f| json!({"family": f})).collect();
            patient["name"] = json!(names);
        }
        if let Some(gender) = gender {
            patient["gender"] = json!(gender);
        }
        patients.push((date, family, gender, id_of(&s, patient).await));
    }
    // What each sorts by: a date ascending by the start of its range (a
    // month's first day), descending by its end; the first name in lower
    // case ascending, the last descending.
    type Key = fn(&(Option<&str>, Option<&str>, Option<&str>, String), bool) -> Option<String>;
    let keys: [(&str, Key); 3] = [
        ("birthdate", |p, descending| {
            p.0.map(|d| match (d.len(), descending) {
                (7, false) => format!("{d}-01"),
                (7, true) => format!("{d}-31"),
                _ => d.to_string(),
            })
        }),
        ("family", |p, descending| {
            let names = p.1?.split('|').map(str::to_lowercase);
            if descending {
                names.max()
            } else {
                names.min()
            }
        }),
        ("gender", |p, _| p.2.map(str::to_string)),
    ];
    for (param, key) in keys {
        for descending in [false, true] {
            // Equal keys in id order, descending after a descending key;
            // missing values last either way.
            let mut expected = patients.clone();
            expected.sort_by(|a, b| {
                let ids = if descending {
                    b.3.cmp(&a.3)
                } else {
                    a.3.cmp(&b.3)
                };
                match (key(a, descending), key(b, descending)) {
                    (Some(ka), Some(kb)) if descending => kb.cmp(&ka).then(ids),
                    (Some(ka), Some(kb)) => ka.cmp(&kb).then(ids),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => ids,
                }
            });
            let expected: Vec<String> = expected.into_iter().map(|p| p.3).collect();
            let sort = if descending {
                format!("-{param}")
            } else {
                param.to_string()
            };
            for filter in ["", "active=true&"] {
                let query = format!("Patient?{filter}_sort={sort}&_count=3");
                let (seen, pages) = walk_pages(&s, &query).await;
                assert_eq!(seen, expected, "{query}");
                for (n, page) in pages.iter().enumerate().skip(1) {
                    let back = follow(&s, page, "previous").await.unwrap();
                    assert_eq!(
                        page_ids(&back),
                        page_ids(&pages[n - 1]),
                        "{query}, back from page {n}"
                    );
                    let (_, offset) =
                        status_json(s.get(&format!("{query}&_offset={}", 3 * n)).await).await;
                    assert_eq!(
                        page_ids(&offset),
                        page_ids(page),
                        "{query}, page {n} by _offset"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn includes_sorting_paging_and_shaping() {
    let app = TestApp::spawn().await;
    let s = app.project("shaping").await.member;
    let d = load(&s).await;
    let (p1, p2, p3, p4) = (&d.p[0], &d.p[1], &d.p[2], &d.p[3]);
    let (o1, o2) = (&d.obs[0], &d.obs[1]);
    let engines = &d.org[0];

    // _include / _revinclude / :iterate
    let (_, bundle) = status_json(s.get(&format!("Observation?_id={o2}&_include=Observation:subject&_include:iterate=Patient:organization")).await).await;
    let modes: BTreeSet<(String, String)> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["search"]["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> =
        [(o2, "match"), (p1, "include"), (engines, "include")]
            .iter()
            .map(|(id, mode)| (id.to_string(), mode.to_string()))
            .collect();
    assert_eq!(modes, expected);
    let (_, bundle) = status_json(
        s.get(&format!("Patient?_id={p1}&_revinclude=Observation:subject"))
            .await,
    )
    .await;
    let included: BTreeSet<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(included, set(&[o1, o2]));

    // _sort, several keys, descending, missing values last.
    let order = |query: &'static str| {
        let s = s.clone();
        async move {
            let (_, bundle) = status_json(s.get(query).await).await;
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        order("Patient?_sort=birthdate").await,
        [p3.as_str(), p1, p2, p4]
    );
    assert_eq!(
        order("Patient?_sort=-birthdate").await,
        [p2.as_str(), p1, p3, p4]
    );
    assert_eq!(
        order("Patient?_sort=gender,-birthdate").await,
        [p1.as_str(), p2, p3, p4]
    );

    // Keyset paging forwards and back, with _total.
    let (seen, pages) = walk_pages(&s, "Patient?_sort=birthdate&_count=3&_total=accurate").await;
    assert!(pages.iter().all(|page| page["total"] == 4));
    assert_eq!(seen, [p3.as_str(), p1, p2, p4]);
    let first_ids = page_ids(&follow(&s, pages.last().unwrap(), "previous").await.unwrap());
    assert_eq!(first_ids, [p3.as_str(), p1, p2]);

    // Columns that every row has (`_lastUpdated`, `_id`), both ways, paged
    // forwards and back: the same order as sorting the resources here.
    let (_, all) = status_json(s.get("Patient?_count=100").await).await;
    let mut stamped: Vec<(String, String)> = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            let stamp = r["meta"]["lastUpdated"].as_str().unwrap();
            (stamp.to_string(), r["id"].as_str().unwrap().to_string())
        })
        .collect();
    stamped.sort();
    let oldest_first: Vec<String> = stamped.iter().map(|(_, id)| id.clone()).collect();
    let mut newest_first = stamped.clone();
    // Rows with equal keys follow in the key's direction.
    newest_first.sort_by(|a, b| b.cmp(a));
    let newest_first: Vec<String> = newest_first.into_iter().map(|(_, id)| id).collect();
    let mut by_id: Vec<String> = oldest_first.clone();
    by_id.sort();
    let by_id_descending: Vec<String> = by_id.iter().rev().cloned().collect();
    for (query, expected) in [
        ("Patient?_sort=_lastUpdated&_count=3", &oldest_first),
        ("Patient?_sort=-_lastUpdated&_count=3", &newest_first),
        ("Patient?_sort=-_id&_count=3", &by_id_descending),
    ] {
        let (seen, pages) = walk_pages(&s, query).await;
        assert_eq!(&seen, expected, "{query}");
        let back = follow(&s, pages.last().unwrap(), "previous").await.unwrap();
        assert_eq!(page_ids(&back), expected[..3], "{query}, previous page");
    }

    // _summary=count, _elements
    let (_, counted) = status_json(s.get("Patient?_summary=count").await).await;
    assert_eq!(counted["total"], 4);
    assert!(counted["entry"].as_array().is_none_or(Vec::is_empty));
    let (_, shaped) = status_json(
        s.get(&format!("Patient?_id={p1}&_elements=birthDate"))
            .await,
    )
    .await;
    let resource = &shaped["entry"][0]["resource"];
    assert_eq!(resource["birthDate"], "1815-12-10");
    assert!(resource.get("name").is_none());
    assert_eq!(
        resource["meta"]["tag"].as_array().unwrap().last().unwrap()["code"],
        "SUBSETTED"
    );

    let (_, summary) = status_json(s.get(&format!("Patient?_id={p1}&_summary=true")).await).await;
    let resource = &summary["entry"][0]["resource"];
    assert_eq!(resource["name"][0]["family"], "Lovelace");
    assert!(
        resource.get("communication").is_none(),
        "communication is not a summary element"
    );
    assert!(resource.get("text").is_none());
    let (_, data) = status_json(s.get(&format!("Patient?_id={p1}&_summary=data")).await).await;
    let resource = &data["entry"][0]["resource"];
    assert!(resource.get("text").is_none() && resource.get("communication").is_some());
    let (_, text) = status_json(s.get(&format!("Patient?_id={p1}&_summary=text")).await).await;
    let resource = &text["entry"][0]["resource"];
    assert!(resource.get("text").is_some() && resource.get("name").is_none());
    let (_, estimate) = status_json(s.get("Patient?_total=estimate").await).await;
    assert!(estimate["total"].as_i64().is_some(), "{estimate}");

    // POST _search gives exactly what GET gives.
    let get = ids(&s, "Patient?gender=male&_sort=birthdate").await;
    let response = s
        .fhir(Method::POST, "Patient/_search")
        .form(&[("gender", "male"), ("_sort", "birthdate")])
        .send()
        .await
        .unwrap();
    let (status, posted) = status_json(response).await;
    assert_eq!(status, 200);
    let posted: BTreeSet<String> = posted["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(posted, get);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_errors_name_the_parameter() {
    let app = TestApp::spawn().await;
    let s = app.project("errors").await.member;
    let outcome = assert_outcome(s.get("Patient?nonsense=1").await, 400, "nonsense").await;
    assert_eq!(outcome["issue"][0]["expression"][0], "nonsense");
    assert_outcome(
        s.get("Patient?birthdate=1990-13-45").await,
        400,
        "birthdate",
    )
    .await;
    assert_outcome(s.get("Patient?birthdate=xx1990").await, 400, "birthdate").await;
    assert_outcome(
        s.get("Observation?value-quantity=abc").await,
        400,
        "value-quantity",
    )
    .await;
    assert_outcome(s.get("Observation?code:above=123").await, 400, "code").await;
    assert_outcome(s.get("Patient?name:below=x").await, 400, "name").await;
    assert_outcome(s.get("Patient?_count=abc").await, 400, "_count").await;
    assert_outcome(s.get("Patient?_sort=nonsense").await, 400, "nonsense").await;

    // Lenient handling ignores unknown parameters and leaves them out of the self link.
    let response = s
        .fhir(Method::GET, "Patient?nonsense=1&gender=male")
        .header("Prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    let (status, bundle) = status_json(response).await;
    assert_eq!(status, 200, "{bundle}");
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.ends_with("fhir/R4/Patient?gender=male"),
        "{self_link}"
    );
}

/// The date prefixes on ranges as the R4 search page defines them: `gt` the
/// range above the value overlaps the target, `lt` the range below it does,
/// `ge`/`le` that or the value contains the target, `eq` it contains it, `sa`
/// and `eb` the target lies wholly after or before it; for instants, dates,
/// periods open at either end, values of a year or a month, and zones.
#[tokio::test(flavor = "multi_thread")]
async fn date_prefixes_compare_ranges_as_the_specification_says() {
    let app = TestApp::spawn().await;
    let s = app.project("date-prefixes").await.member;
    let observation = |effective: Value| {
        let mut o =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        o.as_object_mut()
            .unwrap()
            .extend(effective.as_object().unwrap().clone());
        o
    };
    // Across midnight into 2021-01-01 (UTC).
    let across = id_of(
        &s,
        observation(json!({"effectivePeriod":
        {"start": "2020-12-31T23:00:00Z", "end": "2021-01-01T01:00:00Z"}})),
    )
    .await;
    let instant = id_of(
        &s,
        observation(json!({"effectiveInstant": "2021-01-01T12:00:00Z"})),
    )
    .await;
    let day = id_of(&s, observation(json!({"effectiveDateTime": "2021-01-01"}))).await;
    let open_end = id_of(
        &s,
        observation(json!({"effectivePeriod": {"start": "2021-01-01T10:00:00Z"}})),
    )
    .await;
    let open_start = id_of(
        &s,
        observation(json!({"effectivePeriod": {"end": "2020-06-01"}})),
    )
    .await;
    let month = id_of(&s, observation(json!({"effectiveDateTime": "2021-01"}))).await;
    // 2020-12-31T22:30:00Z.
    let zoned = id_of(
        &s,
        observation(json!({"effectiveDateTime": "2021-01-01T00:30:00+02:00"})),
    )
    .await;
    let (a, i, d, oe, os, m, z) = (
        &across,
        &instant,
        &day,
        &open_end,
        &open_start,
        &month,
        &zoned,
    );

    // A day.
    check(&s, "Observation?date=ge2021-01-01", &[i, d, oe, m]).await;
    check(&s, "Observation?date=gt2021-01-01", &[oe, m]).await;
    check(&s, "Observation?date=le2021-01-01", &[a, i, d, os, z]).await;
    check(&s, "Observation?date=lt2021-01-01", &[a, os, z]).await;
    check(&s, "Observation?date=eq2021-01-01", &[i, d]).await;
    check(&s, "Observation?date=ne2021-01-01", &[a, oe, os, m, z]).await;
    check(&s, "Observation?date=sa2020-12-31", &[i, d, oe, m]).await;
    check(&s, "Observation?date=eb2021-01-01", &[os, z]).await;
    check(&s, "Observation?date=ap2021-01-01", &[a, i, d, oe, m]).await;
    // A year and a month.
    check(&s, "Observation?date=ge2021", &[i, d, oe, m]).await;
    check(&s, "Observation?date=le2020", &[os, z]).await;
    check(&s, "Observation?date=ge2021-01", &[i, d, oe, m]).await;
    check(&s, "Observation?date=le2021-01", &[a, i, d, os, m, z]).await;
    // Instants, one with a zone: a second is a range too.
    check(
        &s,
        "Observation?date=ge2021-01-01T00:30:00%2B02:00",
        &[a, i, d, oe, m, z],
    )
    .await;
    check(&s, "Observation?date=lt2021-01-01T00:30:00%2B02:00", &[os]).await;
    check(&s, "Observation?date=le2021-01-01T00:00:00Z", &[a, os, z]).await;
    check(
        &s,
        "Observation?date=gt2021-01-01T11:59:59Z",
        &[i, d, oe, m],
    )
    .await;
    check(
        &s,
        "Observation?date=ge2021-01-01T12:00:00Z",
        &[i, d, oe, m],
    )
    .await;
    check(&s, "Observation?date=gt2021-01-01T12:00:00Z", &[d, oe, m]).await;
    // A range of both: within the day, by either of its prefixes.
    check(
        &s,
        "Observation?date=ge2021-01-01&date=le2021-01-01",
        &[i, d],
    )
    .await;
    // `_lastUpdated` is an instant, within the second it names.
    let created = s.create(observation(json!({}))).await;
    let (id, updated) = (
        created["id"].as_str().unwrap(),
        created["meta"]["lastUpdated"].as_str().unwrap(),
    );
    let second = format!("{}Z", &updated[..19]);
    let id = id.to_string();
    for (prefix, expected) in [
        ("ge", vec![&id]),
        ("le", vec![&id]),
        ("gt", vec![]),
        ("lt", vec![]),
    ] {
        check(
            &s,
            &format!("Observation?_lastUpdated={prefix}{second}&_id={id}"),
            &expected,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn boundaries_identifiers_uris_meta_composites_and_offsets() {
    let app = TestApp::spawn().await;
    let s = app.project("edges").await.member;
    let d = load(&s).await;
    let (p1, p2, p3, p4) = (&d.p[0], &d.p[1], &d.p[2], &d.p[3]);
    let (o1, o3) = (&d.obs[0], &d.obs[2]);

    // A period that straddles a year boundary.
    let straddle = id_of(
        &s,
        json!({
            "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "period": {"start": "2020-12-31T22:00:00Z", "end": "2021-01-01T02:00:00Z"}
        }),
    )
    .await;
    check(&s, "Encounter?date=2021", &[]).await;
    check(&s, "Encounter?date=2020-12-31", &[]).await;
    // It neither lies within those days nor reaches beyond them.
    check(&s, "Encounter?date=ge2021-01-01", &[]).await;
    check(&s, "Encounter?date=le2020-12-31", &[]).await;
    check(&s, "Encounter?date=ge2020-12-31", &[&straddle]).await;
    check(&s, "Encounter?date=le2021-01-01", &[&straddle]).await;
    check(&s, "Encounter?date=ap2021-01-01", &[&straddle]).await;
    check(&s, "Encounter?date=sa2020-12-30", &[&straddle]).await;
    check(&s, "Encounter?date=eb2021-01-02", &[&straddle]).await;

    // Reference :identifier.
    let by_identifier = id_of(
        &s,
        json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"identifier": {"system": "urn:mrn", "value": "ext-9"}}
        }),
    )
    .await;
    check(
        &s,
        "Observation?subject:identifier=urn:mrn%7Cext-9",
        &[&by_identifier],
    )
    .await;
    check(
        &s,
        "Observation?subject:identifier=ext-9",
        &[&by_identifier],
    )
    .await;

    // uri: exact, :below, :above.
    let a = id_of(
        &s,
        json!({"resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs/a"}),
    )
    .await;
    let b = id_of(
        &s,
        json!({"resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs/b"}),
    )
    .await;
    check(&s, "ValueSet?url=http://example.org/vs/a", &[&a]).await;
    check(&s, "ValueSet?url=http://example.org/vs", &[]).await;
    check(&s, "ValueSet?url:below=http://example.org/vs", &[&a, &b]).await;
    check(
        &s,
        "ValueSet?url:above=http://example.org/vs/a/version/2",
        &[&a],
    )
    .await;

    // _security and _source.
    let labelled = id_of(&s, json!({
        "resourceType": "Patient",
        "meta": {"security": [{"system": "urn:sec", "code": "R"}], "source": "http://source.example/feed"}
    }))
    .await;
    check(&s, "Patient?_security=urn:sec%7CR", &[&labelled]).await;
    check(
        &s,
        "Patient?_source=http://source.example/feed",
        &[&labelled],
    )
    .await;

    // Composite: code and value from the same Observation.
    check(
        &s,
        "Observation?code-value-quantity=http://loinc.org%7C8480-6$gt110",
        &[o1],
    )
    .await;
    check(
        &s,
        "Observation?code-value-quantity=http://loinc.org%7C8480-6$lt110",
        &[o3],
    )
    .await;
    check(
        &s,
        "Observation?code-value-quantity=http://loinc.org%7C8462-4$gt110",
        &[],
    )
    .await;

    // Full text: _text (narrative) and _content (every string), and near.
    check(&s, "Patient?_text=ada", &[p1]).await;
    check(&s, "Patient?_content=james", &[p1]).await;
    check(&s, "Patient?_content=nowhere", &[]).await;
    let london = id_of(&s, json!({"resourceType": "Location", "position": {"latitude": 51.5074, "longitude": -0.1278}})).await;
    let paris = id_of(
        &s,
        json!({"resourceType": "Location", "position": {"latitude": 48.8566, "longitude": 2.3522}}),
    )
    .await;
    check(&s, "Location?near=51.5%7C-0.12%7C10%7Ckm", &[&london]).await;
    check(
        &s,
        "Location?near=51.5%7C-0.12%7C400%7Ckm",
        &[&london, &paris],
    )
    .await;
    check(&s, "Location?near=48.85%7C2.35%7C5000%7Cm", &[&paris]).await;
    check(&s, "Location?near:missing=false", &[&london, &paris]).await;

    // A very long string is indexed (capped) without failing the write.
    let long = "x".repeat(5000);
    s.create(json!({"resourceType": "Patient", "name": [{"family": long}]}))
        .await;
    assert_eq!(ids(&s, "Patient?family=xxxxxxxxxx").await.len(), 1);

    // _offset, after the sort.
    let (_, page) = status_json(
        s.get("Patient?_sort=birthdate&_offset=1&_count=2&_id=")
            .await,
    )
    .await;
    assert_eq!(
        page["resourceType"], "OperationOutcome",
        "an empty _id is refused: {page}"
    );
    let (_, page) = status_json(
        s.get(&format!(
            "Patient?_id={p1},{p2},{p3},{p4}&_sort=birthdate&_offset=1&_count=2"
        ))
        .await,
    )
    .await;
    let ids: Vec<&str> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [p1.as_str(), p2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_query_makes_search_fail_with_a_server_error() {
    let app = TestApp::spawn().await;
    let s = app.project("garbage").await.member;
    load(&s).await;
    let queries = [
        "Patient?birthdate=ge",
        "Patient?_sort=",
        "Patient?name:exact",
        "Patient?_has:Observation",
        "Patient?_has:Observation:subject",
        "Observation?subject:Patient.name.x.y.z.w.v=1",
        "Patient?identifier=%00",
        "Patient?_count=-1",
        "Patient?_id=not-a-uuid",
        "Observation?value-quantity=1e999",
        "Observation?date=9999-99-99",
        "Patient?_include=*",
        "Patient?_include=Patient:nope",
        "Patient?_revinclude=Observation:subject:Patient:extra",
        "Observation?code-value-quantity=a$b$c",
        "Patient?name=",
        "Patient?name=%E2%80%AE%F0%9F%98%80",
        "Patient?birthdate=lt-0001",
        "Patient?_offset=99999999999999999999",
        "Patient?_cursor=AAAA",
        "Patient?_sort=-",
        "Patient?gender:missing=maybe",
        "Observation?value-quantity=ap0",
        "Observation?subject=Patient/",
        "Observation?subject=%2F%2F",
        "Patient?_lastUpdated=ap2020",
        "Patient?name:contains=%25%5F",
        "Observation?_type=Patient",
        "?_type=Nope",
        "?_type=Patient,Observation&name=x",
        "Patient?_elements=a,,b",
        "Patient?_summary=maybe",
        "Patient?_total=all",
        "Observation?combo-code-value-quantity=1$2",
    ];
    for query in queries {
        let response = s.get(query).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status == 200 || status == 400,
            "{query} gave {status}: {body}"
        );
        assert!(body.contains("\"resourceType\""), "{query}: {body}");
    }
}

/// Searches whose page is read from one filter's index in id order (a
/// reference to one resource, a token with its system, a string prefix of
/// three or more characters): the same matches as any other search, each
/// once, in id order, across pages forwards and back, with the other
/// filters, deletes and the caller's policy applied.
#[tokio::test(flavor = "multi_thread")]
async fn searches_driven_by_one_index_page_through_every_match_once() {
    let app = TestApp::spawn().await;
    let project = app.project("driven").await;
    let s = project.member;
    let patient = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Smithers"}]}),
    )
    .await;
    let mut expected = Vec::new();
    for n in 0..7 {
        let mut observation = json!({
            "resourceType": "Observation", "status": if n == 3 { "preliminary" } else { "final" },
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": format!("2024-0{}-01", n + 1),
        });
        if n == 5 {
            // The same code twice: still one match.
            observation["code"]["coding"]
                .as_array_mut()
                .unwrap()
                .push(json!({"system": LOINC, "code": "8480-6", "display": "Systolic"}));
        }
        expected.push(id_of(&s, observation).await);
    }
    let deleted = expected.pop().unwrap();
    assert_eq!(
        s.delete(&format!("Observation/{deleted}")).await.status(),
        200
    );
    expected.sort();

    for query in [
        format!("Observation?subject=Patient/{patient}&_count=2"),
        format!("Observation?code={LOINC}|8480-6&_count=2"),
        format!("Observation?code={LOINC}|8480-6&subject=Patient/{patient}&_count=4"),
        // Tokens without their system.
        "Observation?code=8480-6&_count=2".to_string(),
        "Observation?combo-code=8480-6&_count=3".to_string(),
    ] {
        let (seen, pages) = walk_pages(&s, &query).await;
        assert_eq!(seen, expected, "{query}");
        // Back from the last page: the page before it, in the same order.
        if pages.len() > 1 {
            let back = follow(&s, pages.last().unwrap(), "previous").await.unwrap();
            assert_eq!(
                page_ids(&back),
                page_ids(&pages[pages.len() - 2]),
                "{query}"
            );
        }
    }
    // Another filter narrows what the driving one yields.
    let (seen, _) = walk_pages(
        &s,
        &format!(
            "Observation?subject=Patient/{patient}&status=preliminary&date=ge2024-01-01&_count=2"
        ),
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen,
        ids(&s, "Observation?status=preliminary")
            .await
            .into_iter()
            .collect::<Vec<_>>()
    );
    // A caller whose policy admits only preliminary Observations gets only those.
    let root = app.super_admin().await;
    let policy = root
        .create(json!({
            "resourceType": "AccessPolicy", "meta": {"project": project.id},
            "resource": [{"resourceType": "Observation", "criteria": "Observation?status=preliminary"}]
        }))
        .await;
    let restricted = app
        .client_with(
            &root,
            &project.id,
            json!({"accessPolicy": {"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())}}),
            None,
        )
        .await;
    let (seen_by_restricted, _) = walk_pages(
        &restricted,
        &format!("Observation?code={LOINC}|8480-6&_count=1"),
    )
    .await;
    assert_eq!(seen_by_restricted, seen);
    assert!(
        walk_pages(&s, "Observation?code=http://snomed.info/sct|8480-6")
            .await
            .0
            .is_empty()
    );
    let final_ones: Vec<String> = expected
        .iter()
        .filter(|id| **id != seen[0])
        .cloned()
        .collect();
    assert_eq!(
        walk_pages(&s, "Observation?status=final&_count=2").await.0,
        final_ones
    );

    // String prefixes: three or more characters through the index head, fewer
    // by its range; a Patient whose two names both match is one match.
    let twice = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Smith"}, {"family": "Smithson"}]}),
    )
    .await;
    let other = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Smyth"}]}),
    )
    .await;
    let mut smith = vec![patient.clone(), twice.clone()];
    smith.sort();
    for prefix in ["smi", "Smith", "SMITH"] {
        let (seen, _) = walk_pages(&s, &format!("Patient?family={prefix}&_count=1")).await;
        assert_eq!(seen, smith, "{prefix}");
    }
    let mut sm = vec![patient.clone(), twice.clone(), other.clone()];
    sm.sort();
    assert_eq!(walk_pages(&s, "Patient?family=sm&_count=2").await.0, sm);
    assert_eq!(
        walk_pages(&s, "Patient?family=smithers&_count=2").await.0,
        std::slice::from_ref(&patient)
    );
    assert!(walk_pages(&s, "Patient?family=smz").await.0.is_empty());
    check(&s, "Patient?family:exact=Smithson", &[&twice]).await;
    check(&s, "Patient?family:exact=smithson", &[]).await;
    check(&s, "Patient?family:exact=Sm", &[]).await;
}

/// Observation's combo-* parameters are unions of two others (`combo-code`
/// is `code | component-code`), searched through those parameters' rows: a
/// value in the Observation's own element or in a component matches, once,
/// with modifiers, composites, sorting and paging as for any parameter.
#[tokio::test(flavor = "multi_thread")]
async fn combination_parameters_match_the_observation_and_its_components() {
    let app = TestApp::spawn().await;
    let s = app.project("combo").await.member;
    let coded = |code: &str| json!({"coding": [{"system": LOINC, "code": code}]});
    let quantity =
        |value: f64| json!({"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"});
    let panel = id_of(
        &s,
        json!({
            "resourceType": "Observation", "status": "final", "code": coded("85354-9"),
            "component": [
                {"code": coded("8480-6"), "valueQuantity": quantity(120.0)},
                {"code": coded("8462-4"), "valueQuantity": quantity(80.0)}
            ]
        }),
    )
    .await;
    let systolic = id_of(
        &s,
        json!({"resourceType": "Observation", "status": "final", "code": coded("8480-6"), "valueQuantity": quantity(130.0)}),
    )
    .await;
    let glucose = id_of(
        &s,
        json!({"resourceType": "Observation", "status": "final", "code": coded("2339-0"), "valueQuantity": quantity(95.0)}),
    )
    .await;

    check(&s, "Observation?combo-code=8480-6", &[&panel, &systolic]).await;
    check(
        &s,
        &format!("Observation?combo-code={LOINC}|85354-9"),
        &[&panel],
    )
    .await;
    check(&s, "Observation?combo-code:not=8480-6", &[&glucose]).await;
    check(&s, "Observation?combo-code:missing=true", &[]).await;
    check(
        &s,
        "Observation?combo-value-quantity=gt100",
        &[&panel, &systolic],
    )
    .await;
    check(&s, "Observation?combo-value-quantity=80", &[&panel]).await;
    check(
        &s,
        "Observation?combo-value-quantity=95||mm[Hg]",
        &[&glucose],
    )
    .await;
    check(
        &s,
        "Observation?combo-code-value-quantity=8462-4$80",
        &[&panel],
    )
    .await;
    check(
        &s,
        "Observation?combo-code-value-quantity=8480-6$gt125",
        &[&systolic],
    )
    .await;
    check(
        &s,
        "Observation?combo-code-value-quantity=2339-0$95",
        &[&glucose],
    )
    .await;
    check(&s, "Observation?combo-code-value-quantity=85354-9$80", &[]).await;

    // Sorted by the smallest code of each: 2339-0, 8462-4 (a component), 8480-6.
    let (seen, _) = walk_pages(&s, "Observation?_sort=combo-code").await;
    assert_eq!(seen, [glucose.clone(), panel.clone(), systolic.clone()]);
    // A page at a time, each match once.
    let (seen, pages) = walk_pages(&s, "Observation?combo-code=8480-6&_count=1").await;
    let mut expected = vec![panel.clone(), systolic.clone()];
    expected.sort();
    assert_eq!((seen, pages.len()), (expected, 2));

    // Its values are stored once, under the parameters it unites.
    let db = app.db().await;
    let combo_rows: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM idx_token WHERE param LIKE 'combo-%')
                  + (SELECT count(*) FROM idx_quantity WHERE param LIKE 'combo-%')
                  + (SELECT count(*) FROM idx_composite WHERE param LIKE 'combo-%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(combo_rows, 0);
}

/// Whether PostgreSQL's statistics of `resource` know `project` (as one of
/// the most common values of its `project_id`).
async fn statistics_know(db: &tokio_postgres::Client, project: &str) -> bool {
    db.query_one(
        "SELECT coalesce(bool_or($1 = ANY(most_common_vals::text::text[])), false)
           FROM pg_stats WHERE tablename = 'resource' AND attname = 'project_id'",
        &[&project],
    )
    .await
    .unwrap()
    .get(0)
}

/// A project created after the last `ANALYZE` is analyzed once it has grown
/// (`store::statistics`): until then PostgreSQL estimates it at one row and
/// plans its searches as scans of the whole project.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_is_analyzed_as_it_grows() {
    let app = TestApp::spawn_with(|config| config.analyze_after = 30).await;
    let db = app.db().await;
    db.batch_execute("ANALYZE").await.unwrap();
    let project = app.project("growing").await;
    let patients = |count: usize| {
        let entry: Vec<Value> = (0..count)
            .map(|n| json!({"request": {"method": "POST", "url": "Patient"},
                            "resource": {"resourceType": "Patient", "name": [{"family": format!("Grow{n}")}]}}))
            .collect();
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
    };
    let (status, _) = status_json(project.admin.post("", &patients(20)).await).await;
    assert_eq!(status, 200);
    assert!(
        !statistics_know(&db, &project.id).await,
        "analyzed before the first step"
    );

    // The project's clients and memberships and these 10 make it more than 30.
    let (status, _) = status_json(project.admin.post("", &patients(10)).await).await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !statistics_know(&db, &project.id).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the project was not analyzed after it grew past 30 resources"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The ids of the `include` entries of a search.
async fn included_ids(s: &Session, query: &str) -> BTreeSet<String> {
    let (status, bundle) = status_json(s.get(query).await).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    entry_ids(&bundle, "include").into_iter().collect()
}

/// `Observation.patient` is `subject` of type Patient and is read from the
/// `subject` rows (it has none of its own): every way a search uses a
/// reference parameter must see only the Patient subjects through it.
#[tokio::test(flavor = "multi_thread")]
async fn typed_reference_parameters_read_their_base_rows_of_their_type() {
    let app = TestApp::spawn().await;
    let project = app.project("typed-views").await;
    let s = project.member.clone();
    let patient = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Viewfield"}],
               "identifier": [{"system": "urn:mrn", "value": "tv-1"}]}),
    )
    .await;
    let group = id_of(
        &s,
        json!({"resourceType": "Group", "type": "person", "actual": true, "name": "Viewfield"}),
    )
    .await;
    let observation = |subject: Value| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "subject": subject})
    };
    let of_patient = id_of(
        &s,
        observation(json!({"reference": format!("Patient/{patient}")})),
    )
    .await;
    let of_group = id_of(
        &s,
        observation(json!({"reference": format!("Group/{group}")})),
    )
    .await;
    let mut unattached = observation(Value::Null);
    unattached.as_object_mut().unwrap().remove("subject");
    let unattached = id_of(&s, unattached).await;
    let by_identifier = |kind: &str| {
        observation(json!({"type": kind, "identifier": {"system": "urn:mrn", "value": "tv-9"}}))
    };
    let patient_identified = id_of(&s, by_identifier("Patient")).await;
    let group_identified = id_of(&s, by_identifier("Group")).await;
    let condition = id_of(
        &s,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")},
               "code": {"text": "viewitis"}}),
    )
    .await;
    let group_condition = id_of(
        &s,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Group/{group}")},
               "code": {"text": "viewitis"}}),
    )
    .await;

    // Values, with and without the type, and `:missing`.
    check(
        &s,
        &format!("Observation?patient={patient}"),
        &[&of_patient],
    )
    .await;
    check(
        &s,
        &format!("Observation?patient=Patient/{patient}"),
        &[&of_patient],
    )
    .await;
    check(&s, &format!("Observation?patient={group}"), &[]).await;
    check(&s, &format!("Observation?subject={group}"), &[&of_group]).await;
    check(&s, "Observation?patient:missing=false", &[&of_patient]).await;
    check(
        &s,
        "Observation?patient:missing=true",
        &[
            &of_group,
            &unattached,
            &patient_identified,
            &group_identified,
        ],
    )
    .await;
    // A search driven by the typed rows, and one with another filter first.
    check(
        &s,
        &format!("Observation?patient={patient}&_count=1"),
        &[&of_patient],
    )
    .await;
    check(
        &s,
        &format!("Observation?code={LOINC}|29463-7&patient={patient}"),
        &[&of_patient],
    )
    .await;
    // Across several types: each type's own rows (a view for Observation and
    // Condition alike; AuditEvent's `patient` has rows of its own).
    check(
        &s,
        &format!("?_type=Observation,Condition&patient=Patient/{patient}"),
        &[&of_patient, &condition],
    )
    .await;
    check(
        &s,
        "?_type=Observation,Condition&patient.name=Viewfield",
        &[&of_patient, &condition],
    )
    .await;
    // AuditEvents are the project admin's to read (`*` leaves them out).
    check(
        &project.admin,
        &format!("?_type=Observation,AuditEvent&patient={patient}"),
        &[&of_patient],
    )
    .await;
    check(
        &s,
        "?_type=Observation,Condition&patient:missing=true&code:missing=false",
        &[
            &of_group,
            &unattached,
            &patient_identified,
            &group_identified,
            &group_condition,
        ],
    )
    .await;
    // `:identifier` keeps rows of its own: only the reference typed Patient.
    check(
        &s,
        "Observation?patient:identifier=urn:mrn|tv-9",
        &[&patient_identified],
    )
    .await;
    check(
        &s,
        "Observation?subject:identifier=urn:mrn|tv-9",
        &[&patient_identified, &group_identified],
    )
    .await;
    // Chains, `_has` both ways, includes and reverse includes.
    check(&s, "Observation?patient.name=Viewfield", &[&of_patient]).await;
    check(
        &s,
        "Observation?patient.identifier=urn:mrn|tv-1",
        &[&of_patient],
    )
    .await;
    check(&s, "Condition?patient.name=Viewfield", &[&condition]).await;
    check(
        &s,
        "Patient?_has:Observation:patient:code=29463-7",
        &[&patient],
    )
    .await;
    assert_outcome(
        s.get("Group?_has:Observation:patient:code=29463-7").await,
        400,
        "Observation.patient cannot refer to Group",
    )
    .await;
    check(&s, "Group?_has:Observation:subject:code=29463-7", &[&group]).await;
    assert_eq!(
        included_ids(&s, "Observation?code=29463-7&_include=Observation:patient").await,
        set(&[&patient])
    );
    assert_eq!(
        included_ids(&s, "Observation?code=29463-7&_include=Observation:subject").await,
        set(&[&patient, &group])
    );
    assert_eq!(
        included_ids(
            &s,
            &format!("Patient?_id={patient}&_revinclude=Observation:patient")
        )
        .await,
        set(&[&of_patient])
    );
    // From a Patient and a Group: only the Patient's Observation comes.
    assert_eq!(
        included_ids(
            &s,
            &format!("?_type=Patient,Group&_id={patient},{group}&_revinclude=Observation:patient")
        )
        .await,
        set(&[&of_patient])
    );
    assert_eq!(
        included_ids(
            &s,
            &format!("?_type=Patient,Group&_id={patient},{group}&_revinclude=Observation:subject")
        )
        .await,
        set(&[&of_patient, &of_group])
    );
    // Sorted by the typed parameter: the Patient's Observation first, the
    // rest (no Patient subject) after it.
    let (status, sorted) = status_json(s.get("Observation?code=29463-7&_sort=patient").await).await;
    assert_eq!(status, 200, "{sorted}");
    let order = page_ids(&sorted);
    assert_eq!((order.len(), order[0].as_str()), (5, of_patient.as_str()));
    // Compartments: Condition is in a Patient's through `patient`,
    // Observation through `subject`.
    check(&s, &format!("Patient/{patient}/Condition"), &[&condition]).await;
    check(
        &s,
        &format!("Patient/{patient}/Observation"),
        &[&of_patient],
    )
    .await;
    check(
        &s,
        &format!("Condition?_compartment=Patient/{patient}"),
        &[&condition],
    )
    .await;
    check(
        &s,
        &format!("Condition?subject=Group/{group}"),
        &[&group_condition],
    )
    .await;
}

/// `Patient.phonetic` has `Patient.name`'s expression and `CodeSystem.url`
/// `CodeSystem.system`'s: each pair is searched through one set of rows.
#[tokio::test(flavor = "multi_thread")]
async fn parameters_with_one_expression_share_their_rows() {
    let app = TestApp::spawn().await;
    let s = app.project("identical-params").await.member;
    let patient = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Soundalike", "given": ["Ann"]}]}),
    )
    .await;
    let other = id_of(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Other"}]}),
    )
    .await;
    check(&s, "Patient?phonetic=soundal", &[&patient]).await;
    check(&s, "Patient?phonetic:exact=Soundalike", &[&patient]).await;
    check(&s, "Patient?name=soundal", &[&patient]).await;
    let (status, sorted) = status_json(s.get("Patient?_sort=phonetic").await).await;
    assert_eq!(status, 200, "{sorted}");
    // By the smallest of each one's name values: "ann" before "other".
    assert_eq!(page_ids(&sorted), [patient.clone(), other.clone()]);
    let code_system = id_of(
        &s,
        json!({"resourceType": "CodeSystem", "status": "active", "content": "complete",
               "url": "http://example.org/cs/identical"}),
    )
    .await;
    check(
        &s,
        "CodeSystem?url=http://example.org/cs/identical",
        &[&code_system],
    )
    .await;
    check(
        &s,
        "CodeSystem?system=http://example.org/cs/identical",
        &[&code_system],
    )
    .await;
    // Written once, under the code first in byte order: the Patient's
    // family and given name as `name` rows, none as `phonetic`.
    let db = app.db().await;
    let rows = |table: &str, id: &str, param: &str| {
        let sql =
            format!("SELECT count(*) FROM {table} WHERE resource_id::text = $1 AND param = $2");
        let (db, id, param) = (&db, id.to_string(), param.to_string());
        async move { count(db, &sql, &[&id, &param]).await }
    };
    assert_eq!(rows("idx_string", &patient, "phonetic").await, 0);
    assert_eq!(rows("idx_string", &patient, "name").await, 2);
    assert_eq!(rows("idx_uri", &code_system, "url").await, 0);
    assert_eq!(rows("idx_uri", &code_system, "system").await, 1);
}

/// A super admin's search crosses projects, each project's page found
/// through its own indexes (`store::search::each_project_page`): the pages,
/// forwards and back, hold every project's matches once, in the search's
/// order, whether a filter's index drives them, their ids come first, or a
/// sort orders them.
#[tokio::test(flavor = "multi_thread")]
async fn a_super_admin_pages_through_every_projects_matches_in_order() {
    let app = TestApp::spawn().await;
    let (a, b) = (
        app.project("across-a").await.member,
        app.project("across-b").await.member,
    );
    // Created in turn, so in order of family name and of last update.
    let mut created = Vec::new();
    for (n, s) in [&a, &b, &a, &b, &b].into_iter().enumerate() {
        let patient = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:across", "value": "shared"}],
            "name": [{"family": format!("Across{n}")}]});
        created.push(id_of(s, patient).await);
    }
    id_of(&a, json!({"resourceType": "Patient", "identifier": [{"system": "urn:across", "value": "other"}]})).await;
    let mut by_id = created.clone();
    by_id.sort();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let root = app.super_admin().await;
    for (query, expected) in [
        ("Patient?identifier=urn:across%7Cshared&_count=2", &by_id),
        ("Patient?family=across&_count=2", &by_id),
        ("Patient?name:missing=false&_count=2", &by_id),
        ("Patient?name:missing=false&_sort=family&_count=2", &created),
        (
            "Patient?identifier=urn:across%7Cshared&_sort=-family&_count=2",
            &newest_first,
        ),
        (
            "Patient?name:missing=false&_sort=-_lastUpdated&_count=2",
            &newest_first,
        ),
    ] {
        let (found, pages) = walk_pages(&root, query).await;
        assert_eq!(&found, expected, "{query}");
        let mut back = Vec::new();
        let mut page = pages.last().unwrap().clone();
        while let Some(previous) = follow(&root, &page, "previous").await {
            back.splice(0..0, page_ids(&previous));
            page = previous;
        }
        assert_eq!(back, expected[..4], "{query}, back from the last page");
    }
    // Each member still sees its own project only.
    let (mine, _) = walk_pages(&a, "Patient?identifier=urn:across%7Cshared").await;
    assert_eq!(mine.len(), 2);
}

/// The `xmin` of each index row of `id`, by table and values: a row an
/// update kept has the xmin of the write that made it.
async fn index_rows(
    db: &tokio_postgres::Client,
    id: &str,
) -> std::collections::BTreeMap<String, String> {
    let id: uuid::Uuid = id.parse().unwrap();
    let mut rows = std::collections::BTreeMap::new();
    let tables = db
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND (table_name LIKE 'idx\\_%' OR table_name = 'resource_compartment')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tables.len(), 10);
    for table in tables.iter().map(|row| row.get::<_, String>(0)) {
        let sql = format!("SELECT t::text, xmin::text FROM {table} t WHERE resource_id = $1");
        for row in db.query(&sql, &[&id]).await.unwrap() {
            let key = format!("{table} {}", row.get::<_, String>(0));
            assert!(rows.insert(key, row.get(1)).is_none(), "a repeated row");
        }
    }
    rows
}

/// An update writes only the index rows whose values changed (the others
/// stay as they were: same row, same `xmin`), and afterwards the resource
/// is found by its new values only, its rows are exactly what extraction
/// gives (`fhirgate check`), and a delete leaves none.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_rewrites_only_the_index_rows_that_changed() {
    let app = TestApp::spawn().await;
    let s = app.project("update-rows").await.admin;
    let before = json!({
        "resourceType": "Patient", "gender": "female", "birthDate": "1815-12-10",
        "name": [{"given": ["Ada"], "family": "Quince"}],
        "identifier": [{"system": "urn:sys", "value": "mrn-1"}],
        "telecom": [{"system": "phone", "value": "555-0001"}],
        "address": [{"city": "Leeds"}],
        "generalPractitioner": [{"reference": "Practitioner/0190a0e8-0000-7000-8000-000000000001"}]
    });
    let created = s.create(before).await;
    let p = created["id"].as_str().unwrap().to_string();
    let db = app.db().await;
    let first = index_rows(&db, &p).await;

    let mut after = created.clone();
    after["name"][0]["family"] = json!("Rowan");
    after["telecom"] = json!([{"system": "phone", "value": "555-0002"}]);
    after.as_object_mut().unwrap().remove("address");
    after.as_object_mut().unwrap().remove("generalPractitioner");
    let (status, updated) = status_json(s.put(&format!("Patient/{p}"), &after).await).await;
    assert_eq!(status, 200, "{updated}");
    let second = index_rows(&db, &p).await;

    let kept: Vec<&String> = second
        .iter()
        .filter(|(row, xmin)| first.get(*row) == Some(xmin))
        .map(|(row, _)| row)
        .collect();
    let written: Vec<&String> = second
        .keys()
        .filter(|row| !first.contains_key(*row))
        .collect();
    for unchanged in ["identifier", "given", "gender", "birthdate"] {
        assert!(
            kept.iter()
                .any(|row| row.contains(&format!(",{unchanged},"))),
            "the {unchanged} row was rewritten: {second:?}"
        );
    }
    for changed in ["Rowan", "555-0002"] {
        assert!(
            written.iter().any(|row| row.contains(changed)),
            "no new row holds {changed}: {second:?}"
        );
    }
    assert_eq!(written.len() + kept.len(), second.len(), "{second:?}");
    assert!(
        second.keys().all(|row| !row.contains("Quince")
            && !row.contains("555-0001")
            && !row.contains("leeds")
            && !row.contains("idx_reference")),
        "an old row stayed: {second:?}"
    );

    for (query, expected) in [
        ("Patient?family=Quince", vec![]),
        ("Patient?family=Rowan", vec![&p]),
        ("Patient?phone=555-0001", vec![]),
        ("Patient?phone=555-0002", vec![&p]),
        ("Patient?address-city=Leeds", vec![]),
        ("Patient?given=Ada", vec![&p]),
        ("Patient?identifier=urn:sys%7Cmrn-1", vec![&p]),
        ("Patient?general-practitioner:missing=true", vec![&p]),
    ] {
        check(&s, query, &expected).await;
    }
    // A resource with more rows in a table than an update compares has
    // them all replaced, with the same outcome.
    let many: Vec<Value> = (0..300)
        .map(|n| json!({"system": "urn:many", "value": format!("v{n}")}))
        .collect();
    let big = s
        .create(json!({"resourceType": "Patient", "identifier": many}))
        .await;
    let b = big["id"].as_str().unwrap().to_string();
    let mut fewer = big.clone();
    fewer["identifier"] = json!(many[150..]);
    let (status, updated) = status_json(s.put(&format!("Patient/{b}"), &fewer).await).await;
    assert_eq!(status, 200, "{updated}");
    check(&s, "Patient?identifier=urn:many%7Cv10", &[]).await;
    check(&s, "Patient?identifier=urn:many%7Cv299", &[&b]).await;

    let store = fhirgate_server::cli::store(&fhirgate_server::Config::for_database(&format!(
        "{}/{}",
        fhirgate_tests::postgres_server(),
        app.database
    )))
    .await
    .unwrap();
    let everything = fhirgate_server::store::maintenance::Scope {
        project_id: None,
        resource_type: None,
    };
    let checked = fhirgate_server::cli::walk(&store, &everything, true)
        .await
        .unwrap();
    assert!(checked.differences.is_empty(), "{:?}", checked.differences);

    assert_eq!(s.delete(&format!("Patient/{p}")).await.status(), 200);
    assert!(index_rows(&db, &p).await.is_empty());
}
