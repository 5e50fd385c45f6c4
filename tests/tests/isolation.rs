//! Isolation, proven by a randomized walk: several projects, users with
//! different policies (project admin, plain member, a criteria policy with a
//! hidden field, a patient-compartment policy) and their resources; then
//! random calls of every route as random users, each checked against a model
//! of what that user may see: nothing outside the caller's project and policy
//! is returned, counted (`_total`), included, named in an error, or modified.
//!
//! Fixed seed in CI; `FHIRGATE_ISOLATION_SEED` and `FHIRGATE_ISOLATION_STEPS`
//! run other or longer walks.

use fhirgate_tests::{status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const TYPES: [&str; 3] = ["Patient", "Observation", "Encounter"];

/// Which resources of the searched type a search expects.
type Keep = Box<dyn Fn(&Resource) -> bool>;

#[derive(Clone, Debug)]
struct Resource {
    project: usize,
    json: Value,
}

impl Resource {
    fn resource_type(&self) -> &str {
        self.json["resourceType"].as_str().unwrap()
    }
    fn id(&self) -> &str {
        self.json["id"].as_str().unwrap()
    }
    fn reference(&self) -> String {
        format!("{}/{}", self.resource_type(), self.id())
    }
    fn subject(&self) -> Option<&str> {
        self.json["subject"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Admin,
    Member,
    /// Patients (birthDate hidden) and final Observations; no Encounters;
    /// Observations may not be deleted.
    Doctor,
    /// Everything in this patient's compartment.
    Patient(String),
}

struct User {
    project: usize,
    kind: Kind,
    session: Session,
    label: String,
}

impl User {
    fn may(&self, resource_type: &str, interaction: &str) -> bool {
        match (&self.kind, resource_type) {
            (Kind::Doctor, "Encounter") => false,
            (Kind::Doctor, "Observation") => interaction != "delete",
            _ => true,
        }
    }

    fn sees(&self, r: &Resource) -> bool {
        if r.project != self.project {
            return false;
        }
        match &self.kind {
            Kind::Admin | Kind::Member => true,
            Kind::Doctor => match r.resource_type() {
                "Patient" => true,
                "Observation" => r.json["status"] == "final",
                _ => false,
            },
            Kind::Patient(me) => match r.resource_type() {
                "Patient" => r.id() == me,
                _ => r.subject() == Some(me.as_str()),
            },
        }
    }
}

struct World {
    app: TestApp,
    root: Session,
    projects: Vec<String>,
    resources: Vec<Resource>,
    users: Vec<User>,
    checks: usize,
}

/// Every resource a body carries (itself, bundle entries, nested).
fn carried(body: &Value, out: &mut Vec<Value>) {
    match body {
        Value::Object(map) => {
            if map.contains_key("resourceType")
                && map.contains_key("id")
                && map.contains_key("meta")
            {
                out.push(body.clone());
            }
            map.values().for_each(|v| carried(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| carried(v, out)),
        _ => {}
    }
}

fn matches_of(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or_default(),
                e["resource"]["id"].as_str().unwrap_or_default()
            )
        })
        .collect();
    ids.sort();
    ids
}

impl World {
    async fn build(rng: &mut Rng) -> World {
        let app = TestApp::spawn().await;
        let root = app.super_admin().await;
        let mut world = World {
            root,
            projects: Vec::new(),
            resources: Vec::new(),
            users: Vec::new(),
            checks: 0,
            app,
        };
        for p in 0..2 {
            let project = world.app.project(&format!("isolation-{p}")).await;
            let admin = project.admin.clone();
            let mut patients = Vec::new();
            for n in 0..4 {
                let created = admin
                    .create(json!({"resourceType": "Patient",
                        "name": [{"family": format!("Fam{p}x{n}x{}", rng.next() % 10_000)}],
                        "birthDate": format!("19{:02}-01-{:02}", 10 + p * 10 + n, 1 + n)}))
                    .await;
                patients.push(created["id"].as_str().unwrap().to_string());
                world.resources.push(Resource {
                    project: p,
                    json: created,
                });
            }
            for n in 0..10 {
                let subject = rng.pick(&patients).clone();
                let resource = if n < 7 {
                    json!({"resourceType": "Observation",
                        "status": *rng.pick(&["final", "preliminary"]),
                        "code": {"text": format!("code{}", rng.below(3))},
                        "subject": {"reference": format!("Patient/{subject}")}})
                } else {
                    json!({"resourceType": "Encounter", "status": "finished",
                        "class": {"code": "AMB"},
                        "subject": {"reference": format!("Patient/{subject}")}})
                };
                world.resources.push(Resource {
                    project: p,
                    json: admin.create(resource).await,
                });
            }
            let doctor_policy = admin
                .create(json!({"resourceType": "AccessPolicy", "name": "doctor", "resource": [
                    {"resourceType": "Patient", "hiddenFields": ["birthDate"]},
                    {"resourceType": "Observation", "criteria": "Observation?status=final",
                     "interaction": ["create", "read", "vread", "update", "patch", "history", "search"]}
                ]}))
                .await;
            let patient_policy = admin
                .create(
                    json!({"resourceType": "AccessPolicy", "name": "patient", "resource": [
                    {"resourceType": "*", "criteria": "*?_compartment=%patient"}]}),
                )
                .await;
            let doctor = world
                .app
                .client_with(
                    &world.root,
                    &project.id,
                    json!({"accessPolicy": {"reference": format!("AccessPolicy/{}", doctor_policy["id"].as_str().unwrap())}}),
                    None,
                )
                .await;
            let me = patients[0].clone();
            let patient = world
                .app
                .client_with(
                    &world.root,
                    &project.id,
                    json!({"profile": {"reference": format!("Patient/{me}")},
                        "access": [{"policy": {"reference": format!("AccessPolicy/{}", patient_policy["id"].as_str().unwrap())}}]}),
                    None,
                )
                .await;
            for (kind, session) in [
                (Kind::Admin, project.admin),
                (Kind::Member, project.member),
                (Kind::Doctor, doctor),
                (Kind::Patient(me), patient),
            ] {
                world.users.push(User {
                    project: p,
                    label: format!("{kind:?} of project {p}"),
                    kind,
                    session,
                });
            }
            world.projects.push(project.id);
        }
        world
    }

    /// What no response to `user` may contain: the ids of resources it does
    /// not see (except those it asked for by name) and, for doctors, the
    /// hidden field. Every resource carried must be in its project and seen.
    fn check_body(&mut self, user: &User, what: &str, body: &Value, asked: &[&str]) {
        self.checks += 1;
        let mut scrubbed = body.clone();
        // Links echo the request, which the caller wrote.
        scrubbed.as_object_mut().map(|o| o.remove("link"));
        let text = scrubbed.to_string();
        for r in &self.resources {
            if !user.sees(r) && !asked.contains(&r.id()) {
                assert!(
                    !text.contains(r.id()),
                    "{}: {what} revealed {}: {text}",
                    user.label,
                    r.reference()
                );
            }
        }
        if user.kind == Kind::Doctor {
            assert!(
                !text.contains("birthDate"),
                "{}: {what} showed a hidden field: {text}",
                user.label
            );
        }
        let mut found = Vec::new();
        carried(body, &mut found);
        for resource in found {
            if resource["resourceType"] == "OperationOutcome"
                || resource["resourceType"] == "Bundle"
            {
                continue;
            }
            let project = resource["meta"]["project"].as_str().unwrap_or_default();
            assert_eq!(
                project, self.projects[user.project],
                "{}: {what} returned a resource of another project: {resource}",
                user.label
            );
            if let Some(model) = self.resources.iter().find(|r| {
                r.json["id"] == resource["id"] && r.json["resourceType"] == resource["resourceType"]
            }) {
                assert!(
                    user.sees(model),
                    "{}: {what} returned {}",
                    user.label,
                    model.reference()
                );
            }
        }
    }

    fn expected(&self, user: &User, keep: impl Fn(&Resource) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .resources
            .iter()
            .filter(|r| user.sees(r) && keep(r))
            .map(Resource::reference)
            .collect();
        ids.sort();
        ids
    }

    async fn stored(&self, r: &Resource) -> (u16, Value) {
        status_json(self.root.get(&r.reference()).await).await
    }

    async fn step(&mut self, rng: &mut Rng, user_index: usize) {
        let user = &self.users[user_index];
        let user = User {
            project: user.project,
            kind: user.kind.clone(),
            session: user.session.clone(),
            label: user.label.clone(),
        };
        let r = rng.pick(&self.resources).clone();
        let t = r.resource_type().to_string();
        let op = rng.below(12);
        let expect_one = |interaction: &str| {
            if !user.may(&t, interaction) {
                403
            } else if user.sees(&r) {
                200
            } else {
                404
            }
        };
        match op {
            0 | 1 => {
                let (status, body) = status_json(user.session.get(&r.reference()).await).await;
                assert_eq!(
                    status,
                    expect_one("read"),
                    "{}: read {}: {body}",
                    user.label,
                    r.reference()
                );
                self.check_body(&user, "read", &body, &[r.id()]);
            }
            2 => {
                let path = format!(
                    "{}/_history/{}",
                    r.reference(),
                    r.json["meta"]["versionId"].as_str().unwrap()
                );
                let (status, body) = status_json(user.session.get(&path).await).await;
                assert_eq!(
                    status,
                    expect_one("vread"),
                    "{}: vread {path}: {body}",
                    user.label
                );
                self.check_body(&user, "vread", &body, &[r.id()]);
            }
            3 | 4 => {
                let search_type = *rng.pick(&TYPES);
                let (extra, keep): (&str, Keep) = match (search_type, rng.below(3)) {
                    ("Observation", 0) => (
                        "&status=final",
                        Box::new(|r: &Resource| r.json["status"] == "final"),
                    ),
                    ("Observation", 1) => ("&_include=Observation:subject", Box::new(|_| true)),
                    ("Patient", 0) => (
                        "&_revinclude=Observation:subject&_revinclude=Encounter:subject",
                        Box::new(|_| true),
                    ),
                    ("Patient", 1) => {
                        ("&_has:Observation:subject:status=final", Box::new(|_| true))
                    }
                    _ => ("", Box::new(|_| true)),
                };
                let path = format!("{search_type}?_count=1000&_total=accurate{extra}");
                let (status, body) = status_json(user.session.get(&path).await).await;
                if !user.may(search_type, "search") {
                    assert_eq!(status, 403, "{}: {path}", user.label);
                    self.check_body(&user, "search", &body, &[]);
                    return;
                }
                assert_eq!(status, 200, "{}: {path}: {body}", user.label);
                let mut expected =
                    self.expected(&user, |x| x.resource_type() == search_type && keep(x));
                if extra.starts_with("&_has") {
                    expected = self.expected(&user, |p| {
                        p.resource_type() == "Patient"
                            && self.resources.iter().any(|o| {
                                o.resource_type() == "Observation"
                                    && user.sees(o)
                                    && o.json["status"] == "final"
                                    && o.subject() == Some(p.id())
                            })
                    });
                }
                assert_eq!(matches_of(&body), expected, "{}: {path}", user.label);
                assert_eq!(
                    body["total"],
                    expected.len(),
                    "{}: {path} total",
                    user.label
                );
                self.check_body(&user, &path, &body, &[]);
            }
            5 => {
                let path = "?_count=1000&_total=accurate&_type=Patient,Observation";
                let (status, body) = status_json(user.session.get(path).await).await;
                assert_eq!(status, 200, "{}: {path}", user.label);
                let expected = self.expected(&user, |x| x.resource_type() != "Encounter");
                assert_eq!(matches_of(&body), expected, "{}: system search", user.label);
                assert_eq!(body["total"], expected.len());
                self.check_body(&user, "system search", &body, &[]);
            }
            6 => {
                let paths = [
                    format!("{}/_history", r.reference()),
                    format!("{t}/_history?_count=1000"),
                    "_history?_count=1000".to_string(),
                ];
                let path = rng.pick(&paths).as_str();
                let (status, body) = status_json(user.session.get(path).await).await;
                if path.starts_with('_') {
                    assert_eq!(status, 200);
                } else if !user.may(&t, "history") {
                    assert_eq!(status, 403, "{}: {path}", user.label);
                } else if path.contains("_count") {
                    assert_eq!(status, 200);
                } else {
                    assert_eq!(
                        status,
                        expect_one("history"),
                        "{}: {path}: {body}",
                        user.label
                    );
                }
                self.check_body(&user, path, &body, &[r.id()]);
            }
            7 => {
                let path = format!(
                    "Patient/{}/Observation?_count=1000",
                    r.subject().unwrap_or(r.id())
                );
                let pid = r.subject().unwrap_or(r.id()).to_string();
                let (status, body) = status_json(user.session.get(&path).await).await;
                let patient = self.resources.iter().find(|x| x.id() == pid).cloned();
                let visible = patient.as_ref().is_some_and(|p| user.sees(p));
                if !user.may("Observation", "search") {
                    assert_eq!(status, 403);
                } else if visible {
                    assert_eq!(status, 200, "{}: {path}: {body}", user.label);
                    let expected = self.expected(&user, |o| {
                        o.resource_type() == "Observation" && o.subject() == Some(pid.as_str())
                    });
                    assert_eq!(matches_of(&body), expected, "{}: {path}", user.label);
                } else {
                    assert_eq!(status, 404, "{}: {path}: {body}", user.label);
                }
                self.check_body(&user, &path, &body, &[&pid]);
            }
            8 => {
                // A batch of reads: each entry answers as the route would.
                let picks: Vec<Resource> =
                    (0..3).map(|_| rng.pick(&self.resources).clone()).collect();
                let entries: Vec<Value> = picks
                    .iter()
                    .map(|p| json!({"request": {"method": "GET", "url": p.reference()}}))
                    .collect();
                let (status, body) = status_json(
                    user.session
                        .post(
                            "",
                            &json!({"resourceType": "Bundle", "type": "batch", "entry": entries}),
                        )
                        .await,
                )
                .await;
                assert_eq!(status, 200, "{}: batch: {body}", user.label);
                for (n, p) in picks.iter().enumerate() {
                    let got = body["entry"][n]["response"]["status"]
                        .as_str()
                        .unwrap_or_default();
                    let want = if !user.may(p.resource_type(), "read") {
                        "403"
                    } else if user.sees(p) {
                        "200"
                    } else {
                        "404"
                    };
                    assert!(
                        got.starts_with(want),
                        "{}: batch GET {} gave {got}",
                        user.label,
                        p.reference()
                    );
                }
                let asked: Vec<&str> = picks.iter().map(Resource::id).collect();
                self.check_body(&user, "batch", &body, &asked);
            }
            _ => self.write(rng, &user, r).await,
        }
    }

    /// A random write to `r`; refused writes change nothing, allowed ones
    /// are mirrored in the model.
    async fn write(&mut self, rng: &mut Rng, user: &User, r: Resource) {
        let t = r.resource_type().to_string();
        let mut changed = r.json.clone();
        let mut stays_visible = true;
        match t.as_str() {
            "Observation" => {
                let status = if changed["status"] == "final" {
                    "preliminary"
                } else {
                    "final"
                };
                changed["status"] = json!(status);
                stays_visible = user.kind != Kind::Doctor || status == "final";
            }
            // Always a different value, so an allowed write writes a version.
            "Patient" => {
                changed["gender"] = json!(if changed["gender"] == "male" {
                    "female"
                } else {
                    "male"
                })
            }
            _ => {
                changed["status"] = json!(if changed["status"] == "finished" {
                    "in-progress"
                } else {
                    "finished"
                })
            }
        }
        let how = rng.below(4);
        let (interaction, response) = match how {
            0 => ("update", user.session.put(&r.reference(), &changed).await),
            1 => {
                let field = if t == "Patient" { "gender" } else { "status" };
                let ops =
                    json!([{"op": "add", "path": format!("/{field}"), "value": changed[field]}]);
                ("patch", user.session.patch(&r.reference(), &ops).await)
            }
            2 => ("delete", user.session.delete(&r.reference()).await),
            _ => (
                "delete",
                user.session
                    .fhir(Method::DELETE, &format!("{t}?_id={}", r.id()))
                    .send()
                    .await
                    .unwrap(),
            ),
        };
        let (status, body) = status_json(response).await;
        let what = format!("{interaction} {} ({how})", r.reference());
        self.check_body(user, &what, &body, &[r.id()]);
        let (stored_status, stored) = self.stored(&r).await;
        let before = &r.json["meta"]["versionId"];
        let wrote = stored_status != 200 || &stored["meta"]["versionId"] != before;
        let allowed = user.may(&t, interaction)
            && user.sees(&r)
            && (interaction == "delete" || stays_visible);
        if how == 3 {
            // A conditional delete matches only what the caller can see.
            assert_eq!(
                status,
                if user.may(&t, "delete") { 200 } else { 403 },
                "{}: {what}: {body}",
                user.label
            );
        } else if allowed {
            assert_eq!(status, 200, "{}: {what}: {body}", user.label);
        } else {
            assert!(
                matches!(status, 403..=405),
                "{}: {what} should be refused: {status} {body}",
                user.label
            );
        }
        assert_eq!(
            wrote, allowed,
            "{}: {what}: stored changed = {wrote}",
            user.label
        );
        if wrote {
            let index = self
                .resources
                .iter()
                .position(|x| x.id() == r.id())
                .unwrap();
            if stored_status == 200 {
                self.resources[index].json = stored;
            } else {
                self.resources.remove(index);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn randomized_isolation() {
    let seed = env_number("FHIRGATE_ISOLATION_SEED", 20261201);
    let steps = env_number("FHIRGATE_ISOLATION_STEPS", 150);
    let mut rng = Rng(seed);
    let mut world = World::build(&mut rng).await;
    for step in 0..steps {
        let user = rng.below(world.users.len());
        world.step(&mut rng, user).await;
        if world.resources.len() < 12 {
            eprintln!("isolation: stopped after {step} steps, most resources deleted");
            break;
        }
    }
    eprintln!(
        "isolation: seed {seed}, {steps} steps, {} responses checked",
        world.checks
    );
    assert!(world.checks > 0);
}
