//! The plans of common searches on a database of 100,000 resources: every
//! one must reach its rows through indexes, never a sequential scan, and
//! read few pages, also in a project created after the last `ANALYZE`.
//! Run with `--nocapture` to print the plans.

use access_policy::{CompiledPolicy, MembershipPolicy, PolicyInput, Role};
use fhir_model::search::{parse_search, Registry};
use fhirgate_server::store::{
    connect::connect,
    search::{Cursor, SearchQuery},
    Store, Tenant,
};
use fhirgate_tests::{postgres_server, TestApp};
use serde_json::json;
use uuid::Uuid;

const PATIENTS: i64 = 50_000;
/// The size of the project loaded after `ANALYZE`: a small tenant.
const FRESH_PATIENTS: i64 = 5_000;

/// Patients `1..=patients` and as many Observations (each of Patient
/// `1 + g % patients`, code `1000 + g % 500`, ten minutes apart from
/// 2020-01-01) with their index rows, shaped as the server writes them,
/// straight into the tables; `project` is the project of Patient number `n`.
fn synthetic(tag: &str, patients: i64, project: impl Fn(&str) -> String) -> String {
    let patient_project = project("g");
    let observation_project = project(&format!("(1 + g % {patients})"));
    format!(
        r#"
        DROP TABLE IF EXISTS p, o;
        CREATE TEMP TABLE p AS SELECT g, md5('{tag}patient' || g)::uuid AS id, {patient_project} AS project_id
            FROM generate_series(1, {patients}) g;
        CREATE TEMP TABLE o AS SELECT g, md5('{tag}observation' || g)::uuid AS id,
            md5('{tag}patient' || (1 + g % {patients}))::uuid AS patient, {observation_project} AS project_id
            FROM generate_series(1, {patients}) g;
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
            SELECT project_id, 'Observation', id, 'subject', 'Patient', patient, 'Patient/' || patient FROM o;
        INSERT INTO resource_compartment (project_id, resource_type, resource_id, compartment_type, compartment_id)
            SELECT project_id, 'Observation', id, 'Patient', patient FROM o
            UNION ALL SELECT project_id, 'Patient', id, 'Patient', id FROM p;
        INSERT INTO idx_date (project_id, resource_type, resource_id, param, low, high)
            SELECT project_id, 'Observation', id, 'date',
                   1577836800000000 + g::bigint * 600000000, 1577836800000000 + g::bigint * 600000000 + 59999999 FROM o;
        "#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn common_searches_use_index_scans_on_100k_resources() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let project = Uuid::new_v4();
    let other = Uuid::new_v4();
    // Two projects ANALYZE sees, then a third it has not.
    let fresh = Uuid::new_v4();
    let load = synthetic("", PATIENTS, |n| {
        format!("CASE WHEN {n} % 10 = 0 THEN '{other}'::uuid ELSE '{project}'::uuid END")
    }) + "ANALYZE;"
        + &synthetic("fresh", FRESH_PATIENTS, |_| format!("'{fresh}'::uuid"));
    db.batch_execute(&load).await.expect("bulk load");
    let resources: i64 = db
        .query_one("SELECT count(*) FROM resource", &[])
        .await
        .unwrap()
        .get(0);
    assert!(resources >= 2 * (PATIENTS + FRESH_PATIENTS));

    let store = store_of(&app).await;
    let mut pages = Vec::new();
    for (project, tag) in [(project, ""), (fresh, "fresh")] {
        // Patient 4321 and its Observation (code 1320), which every policy
        // below lets the caller see, so that the `_include` search has a
        // page to include from.
        let patient = patient_4321(&db, tag).await;
        pages.push(check_plans(&store, project, patient, Scans::Forbidden).await);
    }
    // A page of twenty and what it includes, found through indexes, reads
    // as many pages in a small project as in a large one, or fewer; a walk
    // of the project per row of another walk of it reads thousands of times
    // more (35 million for the date range with a project named by value).
    for ((what, known), (_, fresh)) in pages[0].iter().zip(&pages[1]) {
        assert!(
            *fresh <= 2 * known + 100,
            "{what} reads {fresh} pages in the project ANALYZE has not seen, {known} in the large one"
        );
    }
}

/// A store of its own on `app`'s database, as the server's.
async fn store_of(app: &TestApp) -> Store {
    Store::new(
        connect(
            &format!("{}/{}", postgres_server(), app.database),
            2,
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap(),
    )
}

/// The id of [`synthetic`]'s Patient 4321 of the load tagged `tag`.
async fn patient_4321(db: &tokio_postgres::Client, tag: &str) -> Uuid {
    db.query_one(&format!("SELECT md5('{tag}patient' || 4321)::uuid"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The common searches, as (type, query, what): of Patient 4321 where a
/// search names a patient.
fn common_searches(patient: Uuid) -> Vec<(&'static str, String, &'static str)> {
    vec![
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
        (
            "Observation",
            "_sort=-_lastUpdated&_count=20".to_string(),
            "newest first",
        ),
        (
            "Patient",
            "_sort=-_id&_count=20".to_string(),
            "ids descending",
        ),
        (
            "Observation",
            "_sort=-date&_count=20".to_string(),
            "latest by date",
        ),
        (
            "Observation",
            "_sort=date&_count=20".to_string(),
            "earliest by date",
        ),
        (
            "Patient",
            "_sort=family&_count=20".to_string(),
            "by family name",
        ),
    ]
}

/// Every common search in `project`, by callers with each kind of policy,
/// with the pages the statements of each read. `Scans::Allowed` on a
/// database so small that reading a whole table is the cheaper plan.
async fn check_plans(
    store: &Store,
    project: Uuid,
    patient: Uuid,
    scans: Scans,
) -> Vec<(String, u64)> {
    let mut pages = Vec::new();
    let searches = common_searches(patient);
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
        let search = |cursor: Option<Cursor>| SearchQuery {
            request: &request,
            tenant: Tenant::Project(project),
            policy,
            cursor,
        };
        let sorted = query.contains("_sort=") && *policy_name == "no policy";
        let plan = store.explain(&search(None)).await.unwrap();
        if sorted {
            // A sorted page reads twenty entries of the key's index (and,
            // for a parameter, checks each against the resource's other
            // values: a dozen pages a row at most), and so does going back
            // to it from the next page, however many rows the project has.
            let next = store.search(&search(None)).await.unwrap().next;
            let previous = store.search(&search(next)).await.unwrap().previous;
            assert!(previous.is_some(), "{what}: no previous page");
            let back = store.explain(&search(previous)).await.unwrap();
            for plan in [&plan, &back] {
                assert!(
                    pages_read(plan) <= 250,
                    "{what} reads {} pages for a page of twenty:\n{plan}",
                    pages_read(plan)
                );
            }
        }
        let what = format!("{what} ({policy_name})");
        println!("--- {what}, project {project}: {resource_type}?{query}\n{plan}\n");
        if scans == Scans::Forbidden {
            assert!(
                !plan.contains("Seq Scan"),
                "{what} scans a whole table:\n{plan}"
            );
            assert!(plan.contains("Index"), "{what} uses no index:\n{plan}");
        }
        // What a project the statistics had not seen got: its every row
        // walked, found by its id alone (`store::statistics`).
        assert!(
            !plan.lines().any(|line| {
                let line = line.trim();
                line.starts_with("Index Cond: (project_id =") && !line.contains(" AND ")
            }),
            "{what} scans the whole project:\n{plan}"
        );
        pages.push((what.clone(), pages_read(&plan)));
        if query.contains("_include") {
            assert!(
                plan.contains("idx_reference_resource"),
                "{what} finds the included references from the page's rows:\n{plan}"
            );
        }
    }
    pages
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scans {
    Forbidden,
    Allowed,
}

/// The most pages one statement of `plan` read (shared buffers hit or read
/// by its top node, which counts its children's), planning left out.
fn pages_read(plan: &str) -> u64 {
    let mut most = 0;
    let mut planning = false;
    for line in plan.lines().map(str::trim) {
        if line.starts_with("Planning:") {
            planning = true;
            continue;
        }
        if let Some(counts) = line.strip_prefix("Buffers: shared ") {
            if !planning {
                let total: u64 = counts
                    .split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| *k == "hit" || *k == "read")
                    .filter_map(|(_, v)| v.parse::<u64>().ok())
                    .sum();
                most = most.max(total);
            }
            planning = false;
        }
    }
    most
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

/// The Patients (and as many Observations) of the super admin's test.
const SUPER_ADMIN_PATIENTS: i64 = 100_000;

/// A super admin's default-order searches cross projects through each
/// project's own indexes (`store::search::each_project_page`): on 100,000
/// Patients, no sequential scan, a page equal to the first by id of every
/// project's pages, and about as many pages read as the same search in the
/// project that holds nine tenths of the data, plus a few per project. Run
/// with `--nocapture` for the plans and their execution times.
#[tokio::test(flavor = "multi_thread")]
async fn a_super_admins_search_reads_each_projects_indexes_on_100k_patients() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let project = Uuid::new_v4();
    let other = Uuid::new_v4();
    let load = synthetic("", SUPER_ADMIN_PATIENTS, |n| {
        format!("CASE WHEN {n} % 10 = 0 THEN '{other}'::uuid ELSE '{project}'::uuid END")
    }) + "ANALYZE;";
    db.batch_execute(&load).await.expect("bulk load");
    let projects: Vec<Uuid> = db
        .query("SELECT DISTINCT project_id FROM resource", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let store = store_of(&app).await;
    let patient = patient_4321(&db, "").await;
    let policy = CompiledPolicy::unrestricted();
    // Sorted by a column every row has, a project's page reads its index in
    // order; by a parameter, it computes every match's key, as before.
    let across_projects = |query: &str| {
        !query.contains("_sort=") || query.contains("_lastUpdated") || query.contains("_id")
    };
    for (resource_type, query, what) in common_searches(patient)
        .into_iter()
        .filter(|(_, query, _)| across_projects(query))
    {
        let pairs = query_pairs(&query);
        let request = parse_search(Registry::get(), Some(resource_type), &pairs, false).unwrap();
        let search = |tenant| SearchQuery {
            request: &request,
            tenant,
            policy: &policy,
            cursor: None,
        };
        let across = store.explain(&search(Tenant::AllProjects)).await.unwrap();
        let within = store
            .explain(&search(Tenant::Project(project)))
            .await
            .unwrap();
        println!(
            "--- {what}, super admin: {resource_type}?{query} ({:.2} ms; in one project {:.2} ms)\n{across}\n",
            execution_ms(&across),
            execution_ms(&within)
        );
        assert!(
            !across.contains("Seq Scan"),
            "{what} scans a whole table:\n{across}"
        );
        assert!(
            across.contains("CTE Scan on projects each_project"),
            "{what} walks the projects:\n{across}"
        );
        assert!(!across.contains("JIT:"), "{what} is compiled:\n{across}");
        // A page from each project's indexes: a few pages per project more
        // than the project's own search (whose plan knows the project's
        // statistics), never a walk of the data.
        let (read_across, read_within) = (pages_read(&across), pages_read(&within));
        assert!(
            read_across <= 2 * read_within + 100 * projects.len() as u64,
            "{what} reads {read_across} pages across {} projects, {read_within} in one:\n{across}",
            projects.len()
        );
        // The page is the first of every project's own pages, in the order
        // the search asks for.
        let mut expected = Vec::new();
        for project in &projects {
            let page = store.search(&search(Tenant::Project(*project))).await;
            expected.extend(page.unwrap().matches);
        }
        match query.split_once("_sort=").map(|(_, sort)| sort) {
            None => expected.sort_by_key(|v| v.id),
            Some(sort) if sort.starts_with("-_id") => {
                expected.sort_by_key(|v| std::cmp::Reverse(v.id))
            }
            Some(_) => expected.sort_by_key(|v| std::cmp::Reverse((v.last_updated, v.id))),
        }
        let expected: Vec<Uuid> = expected
            .into_iter()
            .take(request.count)
            .map(|v| v.id)
            .collect();
        let ids = |page: fhirgate_server::store::search::SearchPage| {
            page.matches.into_iter().map(|v| v.id).collect::<Vec<_>>()
        };
        let found = ids(store.search(&search(Tenant::AllProjects)).await.unwrap());
        assert_eq!(found, expected, "{what}");
        assert!(!found.is_empty(), "{what} finds something");
    }
}

/// The Patients loaded through the API right before the searches, as a new
/// user would load them (the issue's case).
const BULK_PATIENTS: usize = 5_000;

/// A new project loaded through two instances with transaction Bundles,
/// after the tables were analyzed while still small (as autovacuum does on
/// a new database; here it is off): each instance creates fewer resources
/// than `FHIRGATE_ANALYZE_AFTER`, together more, so the shared count
/// (`store::statistics`) has the tables analyzed, and every common search
/// reads at most about twice the pages it reads after a manual `ANALYZE`.
/// With a count per instance no `ANALYZE` ran, and the planner, told the
/// project had no Patients, walked them all for each of them.
#[tokio::test(flavor = "multi_thread")]
async fn searches_right_after_a_bulk_load_through_two_instances_plan_from_fresh_statistics() {
    // Each instance creates BULK_PATIENTS resources (a Patient and an
    // Observation per pair, every other Bundle), so only the shared count
    // reaches the step.
    let analyze_after = BULK_PATIENTS as u64 + BULK_PATIENTS as u64 / 5;
    let first = TestApp::spawn_with(|config| config.analyze_after = analyze_after).await;
    let second = first
        .another_instance(|config| config.analyze_after = analyze_after)
        .await;
    let project = first.project("bulk load").await;
    let sessions = [
        first.session(&project.admin.credentials).await,
        second.session(&project.admin.credentials).await,
    ];
    let db = first.db().await;
    db.batch_execute("ANALYZE").await.unwrap();

    const PER_BUNDLE: usize = 50;
    for (bundle, start) in (1..=BULK_PATIENTS).step_by(PER_BUNDLE).enumerate() {
        let mut entries = Vec::new();
        for n in start..start + PER_BUNDLE {
            let patient = format!("urn:uuid:{}", Uuid::new_v4());
            // As `synthetic` shapes Patient n's Observation: code and time.
            let effective =
                chrono::DateTime::from_timestamp(1_577_836_800 + (n as i64 - 1) * 600, 0)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
            entries.push(
                json!({"fullUrl": patient, "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient",
                    "identifier": [{"system": "urn:mrn", "value": format!("MRN{n}")}],
                    "name": [{"family": format!("Family{n}")}]}}),
            );
            entries.push(json!({"request": {"method": "POST", "url": "Observation"},
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": (1000 + (n - 1) % 500).to_string()}]},
                    "subject": {"reference": patient},
                    "effectiveDateTime": effective}}));
        }
        let response = sessions[bundle % 2]
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
            )
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let project_id = Uuid::parse_str(&project.id).unwrap();
    // The step is claimed in PostgreSQL and the ANALYZE runs in the
    // background: both within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let analyzed: i64 = db
            .query_one(
                // The last table the server analyzes, once by the test before the load.
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'idx_text' \
                 AND analyze_count >= 2",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let claimed: Option<i64> = db
            .query_opt(
                "SELECT analyzed_at FROM project_growth WHERE project_id = $1",
                &[&project_id],
            )
            .await
            .unwrap()
            .map(|row| row.get(0));
        if analyzed == 1 && claimed == Some(analyze_after as i64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ANALYZE after the load (step claimed: {claimed:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let patient: Uuid = db
        .query_one(
            "SELECT resource_id FROM idx_token WHERE project_id = $1 AND code = 'MRN4321'",
            &[&project_id],
        )
        .await
        .unwrap()
        .get(0);
    // 10,000 resources: a table's few hundred pages may be read whole.
    let fresh = check_plans(&store_of(&first).await, project_id, patient, Scans::Allowed).await;
    db.batch_execute("ANALYZE").await.unwrap();
    let analyzed = check_plans(&store_of(&first).await, project_id, patient, Scans::Allowed).await;
    for ((what, fresh), (_, analyzed)) in fresh.iter().zip(&analyzed) {
        assert!(
            *fresh <= 2 * analyzed + 100,
            "{what} reads {fresh} pages right after the load, {analyzed} once analyzed"
        );
    }
}

/// The execution times of `plan`'s statements, summed, in milliseconds.
fn execution_ms(plan: &str) -> f64 {
    plan.lines()
        .filter_map(|line| line.trim().strip_prefix("Execution Time: "))
        .filter_map(|rest| rest.trim_end_matches(" ms").parse::<f64>().ok())
        .sum()
}
