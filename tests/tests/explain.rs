//! The plans of common searches on a database of 100,000 resources: every
//! one must reach its rows through indexes, never a sequential scan.
//! Run with `--nocapture` to print the plans.

use access_policy::{CompiledPolicy, MembershipPolicy, PolicyInput, Role};
use fhir_model::search::{parse_search, Registry};
use fhirgate_server::store::{connect::connect, search::SearchQuery, Store, Tenant};
use fhirgate_tests::{postgres_server, TestApp};
use serde_json::json;
use uuid::Uuid;

const PATIENTS: i64 = 50_000;
const OBSERVATIONS: i64 = 50_000;

#[tokio::test(flavor = "multi_thread")]
async fn common_searches_use_index_scans_on_100k_resources() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let project = Uuid::new_v4();
    let other = Uuid::new_v4();
    // Synthetic rows straight into the tables: resources and their index
    // values, shaped as the server writes them, in two projects.
    let load = format!(
        r#"
        CREATE TEMP TABLE p AS SELECT g, md5('patient' || g)::uuid AS id,
            CASE WHEN g % 10 = 0 THEN '{other}'::uuid ELSE '{project}'::uuid END AS project_id
            FROM generate_series(1, {PATIENTS}) g;
        CREATE TEMP TABLE o AS SELECT g, md5('observation' || g)::uuid AS id,
            md5('patient' || (1 + g % {PATIENTS}))::uuid AS patient,
            CASE WHEN (1 + g % {PATIENTS}) % 10 = 0 THEN '{other}'::uuid ELSE '{project}'::uuid END AS project_id
            FROM generate_series(1, {OBSERVATIONS}) g;
        INSERT INTO resource (project_id, resource_type, id, version_id, last_updated, content)
            SELECT project_id, 'Patient', id, gen_random_uuid(), now(), '{{"resourceType":"Patient"}}' FROM p;
        INSERT INTO resource (project_id, resource_type, id, version_id, last_updated, content)
            SELECT project_id, 'Observation', id, gen_random_uuid(), now(), '{{"resourceType":"Observation"}}' FROM o;
        INSERT INTO idx_string (project_id, resource_type, resource_id, param, normalized, exact)
            SELECT project_id, 'Patient', id, 'family', 'family' || g, 'Family' || g FROM p;
        INSERT INTO idx_string (project_id, resource_type, resource_id, param, normalized, exact)
            SELECT project_id, 'Patient', id, 'name', 'family' || g, 'Family' || g FROM p;
        INSERT INTO idx_token (project_id, resource_type, resource_id, param, system, code)
            SELECT project_id, 'Patient', id, 'identifier', 'urn:mrn', 'MRN' || g FROM p;
        INSERT INTO idx_token (project_id, resource_type, resource_id, param, system, code)
            SELECT project_id, 'Observation', id, 'code', 'http://loinc.org', (1000 + g % 500)::text FROM o;
        INSERT INTO idx_reference (project_id, resource_type, resource_id, param, target_type, target_id, url)
            SELECT project_id, 'Observation', id, p, 'Patient', patient, 'Patient/' || patient
            FROM o, unnest(ARRAY['subject', 'patient']) p;
        INSERT INTO resource_compartment (project_id, resource_type, resource_id, compartment_type, compartment_id)
            SELECT project_id, 'Observation', id, 'Patient', patient FROM o
            UNION ALL SELECT project_id, 'Patient', id, 'Patient', id FROM p;
        INSERT INTO idx_date (project_id, resource_type, resource_id, param, low, high)
            SELECT project_id, 'Observation', id, 'date',
                   1577836800000000 + g::bigint * 600000000, 1577836800000000 + g::bigint * 600000000 + 59999999 FROM o;
        ANALYZE;
        "#
    );
    db.batch_execute(&load).await.expect("bulk load");
    let resources: i64 = db
        .query_one("SELECT count(*) FROM resource", &[])
        .await
        .unwrap()
        .get(0);
    assert!(resources >= PATIENTS + OBSERVATIONS);

    let store = Store::new(
        connect(
            &format!("{}/{}", postgres_server(), app.database),
            2,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap(),
    );
    // Patient 4321 and its Observation (code 1320), which every policy below
    // lets the caller see, so that the `_include` search has a page to include from.
    let patient = Uuid::parse_str(
        &db.query_one("SELECT md5('patient' || 4321)::uuid::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    let searches = [
        ("Patient", "identifier=urn:mrn|MRN4321".to_string(), "token"),
        ("Patient", "family=family432".to_string(), "string prefix"),
        (
            "Observation",
            format!("subject=Patient/{patient}"),
            "reference",
        ),
        (
            "Observation",
            "date=ge2020-01-05T00:00:00Z&date=lt2020-01-05T02:00:00Z".to_string(),
            "date range",
        ),
        (
            "Observation",
            "subject:Patient.identifier=urn:mrn|MRN4321".to_string(),
            "chain of one link",
        ),
        (
            "Patient",
            "_has:Observation:subject:code=1320&identifier=urn:mrn|MRN4321".to_string(),
            "_has",
        ),
        (
            "Observation",
            "code=1320&_include=Observation:subject".to_string(),
            "_include",
        ),
    ];
    // The same searches by callers whose policy is a patient's compartment
    // or a criteria: the row filter must be index-driven too.
    let profile = format!("Patient/{patient}");
    let policy_of = |policy: serde_json::Value| {
        CompiledPolicy::compile(&PolicyInput {
            role: Role::Member,
            profile: &profile,
            policies: vec![MembershipPolicy {
                policy,
                parameters: Vec::new(),
            }],
            policy_required: false,
            scopes: &[],
        })
    };
    let policies = [
        ("no policy", CompiledPolicy::unrestricted()),
        (
            "compartment policy",
            policy_of(
                json!({"resource": [{"resourceType": "*", "criteria": "*?_compartment=%patient"}]}),
            ),
        ),
        (
            "criteria policy",
            policy_of(json!({"resource": [
                {"resourceType": "Observation", "criteria": "Observation?code=http://loinc.org|1320"},
                {"resourceType": "Patient", "criteria": "Patient?identifier=urn:mrn|MRN4321"}]})),
        ),
    ];
    for ((resource_type, query, what), (policy_name, policy)) in searches
        .iter()
        .flat_map(|search| policies.iter().map(move |p| (search, p)))
    {
        let pairs = query_pairs(query);
        let request = parse_search(Registry::get(), Some(resource_type), &pairs, false).unwrap();
        let plan = store
            .explain(&SearchQuery {
                request: &request,
                tenant: Tenant::Project(project),
                policy,
                cursor: None,
            })
            .await
            .unwrap();
        let what = format!("{what} ({policy_name})");
        println!("--- {what}: {resource_type}?{query}\n{plan}\n");
        assert!(
            !plan.contains("Seq Scan"),
            "{what} scans a whole table:\n{plan}"
        );
        assert!(plan.contains("Index"), "{what} uses no index:\n{plan}");
        // What a project the statistics had not seen got: its every row
        // walked, found by its id alone (`store::statistics`).
        assert!(
            !plan
                .lines()
                .any(|line| line.trim().starts_with("Index Cond: (project_id =")
                    && line.ends_with("::uuid)")),
            "{what} scans the whole project:\n{plan}"
        );
        if query.contains("_include") {
            assert!(
                plan.contains("idx_reference_resource"),
                "{what} finds the included references from the page's rows:\n{plan}"
            );
        }
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A prepared identifier search must keep one generic plan: PostgreSQL
/// compares the generic plan's estimate with plans made for the values, and
/// an estimate of several matches for a unique identifier makes it plan the
/// statement again on every execution (migration 0012). The data has the
/// shape of the benchmark's: one identifier per Patient among many more
/// rows of a few common codes, where ANALYZE's sample sees few identifiers.
#[tokio::test(flavor = "multi_thread")]
async fn generic_plan_of_an_identifier_search_expects_one_match() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let project = Uuid::new_v4();
    db.batch_execute(&format!(
        r#"
        INSERT INTO idx_token (project_id, resource_type, resource_id, param, system, code)
            SELECT '{project}', 'Patient', gen_random_uuid(), 'identifier', 'urn:mrn', 'MRN' || g
            FROM generate_series(1, 10000) g;
        INSERT INTO idx_token (project_id, resource_type, resource_id, param, system, code)
            SELECT '{project}', 'Observation', gen_random_uuid(), p, 'http://loinc.org', (1000 + g % 50)::text
            FROM generate_series(1, 100000) g, unnest(ARRAY['code', 'status', 'category', 'combo-code']) p;
        ANALYZE idx_token;
        PREPARE identifier_search (uuid, text, text, text, text) AS
            SELECT DISTINCT resource_id FROM idx_token WHERE project_id = $1 AND resource_type = $2
            AND param = $3 AND system = $4 AND code = $5 ORDER BY resource_id;
        SET plan_cache_mode = force_generic_plan;
        "#
    ))
    .await
    .expect("load");
    let plan: Vec<String> = db
        .query(
            &format!("EXPLAIN EXECUTE identifier_search('{project}', 'Patient', 'identifier', 'urn:mrn', 'MRN4321')"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let scan = plan
        .iter()
        .find(|line| line.contains("idx_token_value"))
        .unwrap_or_else(|| panic!("the search uses the token index:\n{}", plan.join("\n")));
    let rows: u64 = scan
        .split("rows=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("an estimate");
    // Without 0012: 28 (ANALYZE estimated 743 distinct codes of 10,050).
    assert!(
        rows <= 2,
        "generic plan expects {rows} matches:\n{}",
        plan.join("\n")
    );
}
