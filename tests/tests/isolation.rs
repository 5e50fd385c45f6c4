//! Isolation, proven by a randomized walk: several projects, users with
//! different policies (project admin, plain member, a criteria policy with a
//! hidden field, a patient-compartment policy) and their resources; then
//! random calls of every route as random users, each checked against a model
//! of what that user may see: nothing outside the caller's project and policy
//! is returned, counted (`_total`), included, named in an error, or modified.
//!
//! Two more projects, the twins A and B, hold the same data except the
//! values their members' policies hide (Patient.birthDate and gender,
//! Observation.valueQuantity, Encounter.period): every twin step sends the
//! identical request (ids mapped) as the same kind of member of A and of B,
//! and the two answers must have the same status and, once ids, versionIds,
//! lastUpdated, etags, Bundle links and other server-made values are
//! normalised, the same body; a difference would tell a hidden value. The
//! twin steps, mixed into the walk:
//!
//! - hidden-field bisection: searches that would narrow a hidden value
//!   (`birthdate=lt1980`, `gender:not=male`, `value-quantity=gt5`, `:missing`,
//!   composites, `_sort`, chains, `_has`, `_content`, `POST _search`, a batch
//!   entry, conditional update/patch/delete and If-None-Exist) are refused
//!   with 403, and searches that only carry hidden fields (`_elements`,
//!   `_include`, `_revinclude`, reads, history, unrelated criteria) answer
//!   200 without them; the Doctor of the main projects (birthDate hidden)
//!   makes the same date attempts and is refused too;
//! - delete-then-put: a twin member deletes a resource (REST or a
//!   transaction) and one without the create right (refused; it stays
//!   deleted) or with readonly fields (allowed; readonly and hidden fields
//!   keep the last live version's values, the rest is written) puts it back.
//!
//! No response to a user of the main projects names a twin project's ids.
//!
//! Fixed seed in CI; `FHIRGATE_ISOLATION_SEED` and `FHIRGATE_ISOLATION_STEPS`
//! run other or longer walks.

use fhirgate_tests::walk::{env_number, Rng};
use fhirgate_tests::{status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

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
    twins: Twins,
    /// How many twin steps of each kind ran.
    twin_steps: std::collections::BTreeMap<String, usize>,
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
        let twins = Twins::build(&app, &root).await;
        let mut world = World {
            root,
            projects: Vec::new(),
            resources: Vec::new(),
            users: Vec::new(),
            checks: 0,
            app,
            twins,
            twin_steps: Default::default(),
        };
        for p in 0..2 {
            let project = world.app.project(&format!("isolation-{p}")).await;
            let admin = project.admin.clone();
            let mut patients = Vec::new();
            for n in 0..4 {
                let created = admin
                    .create(json!({"resourceType": "Patient",
                        "name": [{"family": format!("Fam{p}x{n}x{}", rng.next_u64() % 10_000)}],
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
        for id in self.twins.all_ids() {
            assert!(
                !text.contains(id),
                "{}: {what} named {id} of a twin project: {text}",
                user.label
            );
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

    /// A searchset holds exactly the expected matches, counts them, and
    /// carries nothing else the caller may not see.
    fn check_searchset(&mut self, user: &User, what: &str, body: &Value, expected: &[String]) {
        assert_eq!(matches_of(body), expected, "{}: {what}", user.label);
        assert_eq!(
            body["total"],
            expected.len(),
            "{}: {what} total",
            user.label
        );
        self.check_body(user, what, body, &[]);
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
        let op = rng.below(24);
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
                self.check_searchset(&user, &path, &body, &expected);
            }
            5 => {
                let path = "?_count=1000&_total=accurate&_type=Patient,Observation";
                let (status, body) = status_json(user.session.get(path).await).await;
                assert_eq!(status, 200, "{}: {path}", user.label);
                let expected = self.expected(&user, |x| x.resource_type() != "Encounter");
                self.check_searchset(&user, "system search", &body, &expected);
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
            9 => {
                // A chain reaches only Patients the caller sees.
                let patients: Vec<Resource> = self
                    .resources
                    .iter()
                    .filter(|x| x.resource_type() == "Patient")
                    .cloned()
                    .collect();
                let p = rng.pick(&patients).clone();
                let family = p.json["name"][0]["family"].as_str().unwrap().to_string();
                let path = format!(
                    "Observation?subject:Patient.family:exact={family}&_count=1000&_total=accurate"
                );
                let (status, body) = status_json(user.session.get(&path).await).await;
                assert_eq!(status, 200, "{}: {path}: {body}", user.label);
                let expected = self.expected(&user, |o| {
                    o.resource_type() == "Observation"
                        && o.subject() == Some(p.id())
                        && user.sees(&p)
                });
                self.check_searchset(&user, &path, &body, &expected);
            }
            10 => {
                let search_type = *rng.pick(&TYPES);
                let response = user
                    .session
                    .fhir(Method::POST, &format!("{search_type}/_search"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body("_count=1000&_total=accurate")
                    .send()
                    .await
                    .unwrap();
                let (status, body) = status_json(response).await;
                if user.may(search_type, "search") {
                    let expected = self.expected(&user, |x| x.resource_type() == search_type);
                    self.check_searchset(&user, "POST _search", &body, &expected);
                } else {
                    assert_eq!(status, 403, "{}: POST _search", user.label);
                    self.check_body(&user, "POST _search", &body, &[]);
                }
            }
            11 => self.create(rng, &user).await,
            12..=14 => self.write(rng, &user, r).await,
            15..=20 => self.bisect(rng, &user).await,
            _ => self.recreate(rng).await,
        }
    }

    /// How many resources of a type the super admin sees (every project).
    async fn count(&self, resource_type: &str) -> u64 {
        let (_, body) = status_json(
            self.root
                .get(&format!("{resource_type}?_total=accurate&_count=0"))
                .await,
        )
        .await;
        body["total"].as_u64().unwrap()
    }

    /// A create, directly or as a transaction: allowed when the caller may
    /// create the type and would see the result; refused ones create nothing.
    async fn create(&mut self, rng: &mut Rng, user: &User) {
        let t = *rng.pick(&TYPES);
        let patients: Vec<String> = self
            .resources
            .iter()
            .filter(|x| x.project == user.project && x.resource_type() == "Patient")
            .map(|x| x.id().to_string())
            .collect();
        let Some(subject) = (!patients.is_empty()).then(|| rng.pick(&patients).clone()) else {
            return;
        };
        let body = match t {
            "Patient" => json!({"resourceType": "Patient",
                "name": [{"family": format!("Created{}", rng.next_u64() % 1_000_000)}]}),
            "Observation" => json!({"resourceType": "Observation",
                "status": *rng.pick(&["final", "preliminary"]), "code": {"text": "new"},
                "subject": {"reference": format!("Patient/{subject}")}}),
            _ => json!({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"},
                "subject": {"reference": format!("Patient/{subject}")}}),
        };
        let mut would_be = body.clone();
        would_be["id"] = json!("not-yet");
        let allowed = user.may(t, "create")
            && user.sees(&Resource {
                project: user.project,
                json: would_be,
            });
        let before = self.count(t).await;
        let in_transaction = rng.below(2) == 0;
        let (status, response) = if in_transaction {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "POST", "url": t}, "resource": body}]});
            status_json(user.session.post("", &bundle).await).await
        } else {
            status_json(user.session.post(t, &body).await).await
        };
        let what = format!("create {t} (transaction: {in_transaction})");
        self.check_body(user, &what, &response, &[]);
        let after = self.count(t).await;
        if !allowed {
            assert!(
                matches!(status, 403),
                "{}: {what} should be refused: {status} {response}",
                user.label
            );
            assert_eq!(
                after, before,
                "{}: refused {what} created something",
                user.label
            );
            return;
        }
        assert_eq!(
            status,
            if in_transaction { 200 } else { 201 },
            "{}: {what}: {response}",
            user.label
        );
        assert_eq!(after, before + 1);
        let reference = if in_transaction {
            // `{base}fhir/R4/{type}/{id}/_history/{vid}`
            let location = response["entry"][0]["response"]["location"]
                .as_str()
                .unwrap();
            let path = location.split("fhir/R4/").nth(1).unwrap();
            path.split('/').take(2).collect::<Vec<_>>().join("/")
        } else {
            format!("{t}/{}", response["id"].as_str().unwrap())
        };
        let (_, stored) = status_json(self.root.get(&reference).await).await;
        assert_eq!(stored["resourceType"], t, "{reference}: {stored}");
        self.resources.push(Resource {
            project: user.project,
            json: stored,
        });
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
        let how = rng.below(5);
        let (interaction, response) = match how {
            0 => ("update", user.session.put(&r.reference(), &changed).await),
            1 => {
                let field = if t == "Patient" { "gender" } else { "status" };
                let ops =
                    json!([{"op": "add", "path": format!("/{field}"), "value": changed[field]}]);
                ("patch", user.session.patch(&r.reference(), &ops).await)
            }
            2 => ("delete", user.session.delete(&r.reference()).await),
            3 => {
                let field = if t == "Patient" { "gender" } else { "status" };
                let ops =
                    json!([{"op": "add", "path": format!("/{field}"), "value": changed[field]}]);
                let response = user
                    .session
                    .fhir(Method::PATCH, &format!("{t}?_id={}", r.id()))
                    .header("Content-Type", "application/json-patch+json")
                    .body(ops.to_string())
                    .send()
                    .await
                    .unwrap();
                ("patch", response)
            }
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
        if how == 4 {
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
    let steps = env_number("FHIRGATE_ISOLATION_STEPS", 400);
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
        "isolation: seed {seed}, {steps} steps, {} responses checked; twin steps {:?}",
        world.checks, world.twin_steps
    );
    assert!(world.checks > 0);
}

/// The elements every twin member's policy hides.
const TWIN_HIDDEN: [(&str, &str); 4] = [
    ("Patient", "birthDate"),
    ("Patient", "gender"),
    ("Observation", "valueQuantity"),
    ("Encounter", "period"),
];

/// The elements the `Readonly` twin member may not change.
const TWIN_READONLY: [(&str, &str); 4] = [
    ("Patient", "identifier"),
    ("Patient", "active"),
    ("Observation", "status"),
    ("Encounter", "status"),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum TwinKind {
    /// Every interaction; the hidden fields.
    Bisector,
    /// No create on any type; the hidden fields.
    NoCreate,
    /// Every interaction; the hidden fields and readonly ones.
    Readonly,
}

struct TwinMember {
    kind: TwinKind,
    a: Session,
    b: Session,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    A,
    B,
}

/// One resource of the twins: the same label in A and B.
struct TwinResource {
    resource_type: String,
    label: String,
    /// The last live version of each side, as stored.
    a: Value,
    b: Value,
    live: bool,
}

struct Twins {
    admin_a: Session,
    admin_b: Session,
    members: Vec<TwinMember>,
    resources: Vec<TwinResource>,
    /// Server-made ids of A and B with the label both stand for.
    ids: Vec<(String, String, String)>,
}

/// A request as both twins get it: labels (`@3@`) stand for ids.
#[derive(Clone, Debug)]
struct TwinRequest {
    method: Method,
    path: String,
    body: Option<String>,
    content_type: &'static str,
    if_none_exist: Option<String>,
}

impl TwinRequest {
    fn get(path: String) -> TwinRequest {
        TwinRequest {
            method: Method::GET,
            path,
            body: None,
            content_type: "application/fhir+json",
            if_none_exist: None,
        }
    }

    fn with_body(method: Method, path: String, body: String) -> TwinRequest {
        TwinRequest {
            method,
            path,
            body: Some(body),
            content_type: "application/fhir+json",
            if_none_exist: None,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}{}",
            self.method,
            self.path,
            self.if_none_exist
                .as_ref()
                .map(|c| format!(" (If-None-Exist: {c})"))
                .unwrap_or_default(),
            self.body
                .as_ref()
                .map(|b| format!(" {b}"))
                .unwrap_or_default()
        )
    }
}

fn pick_string(rng: &mut Rng, items: &[&str]) -> String {
    rng.pick(items).to_string()
}

/// What a twin request must answer (besides answering both twins alike).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// 403: the request reads a hidden field.
    Refused,
    /// A batch whose first entry reads a hidden field.
    EntryRefused,
    Status(u16),
    /// 200 or 201 (a PUT to a deleted id writes a new version).
    Written,
    /// Only the same answer from both twins.
    Any,
}

/// Whether `text` holds a UUID at byte `i`.
fn uuid_at(text: &[u8], i: usize) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut at = i;
    for (n, len) in GROUPS.iter().enumerate() {
        for _ in 0..*len {
            if at >= text.len() || !text[at].is_ascii_hexdigit() {
                return false;
            }
            at += 1;
        }
        if n < 4 {
            if at >= text.len() || text[at] != b'-' {
                return false;
            }
            at += 1;
        }
    }
    true
}

/// `text` with every UUID left in it (versionIds, Bundle and outcome ids)
/// written `<uuid>`.
fn mask_uuids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if uuid_at(bytes, i) {
            out.push_str("<uuid>");
            i += 36;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Drops what the server makes per request or per write: times, versions,
/// etags; a Bundle's links keep only their relations (their URLs hold cursors).
fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "lastUpdated",
                "versionId",
                "timestamp",
                "lastModified",
                "etag",
            ] {
                map.remove(key);
            }
            if map.get("resourceType") == Some(&json!("Bundle")) {
                if let Some(Value::Array(links)) = map.get_mut("link") {
                    for link in links.iter_mut() {
                        *link = json!({"relation": link["relation"].clone()});
                    }
                }
            }
            map.values_mut().for_each(scrub);
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// Every object in `body` that is a resource of `resource_type`.
fn resources_of<'a>(body: &'a Value, resource_type: &str, out: &mut Vec<&'a Value>) {
    match body {
        Value::Object(map) => {
            if map.get("resourceType").and_then(Value::as_str) == Some(resource_type) {
                out.push(body);
            }
            map.values()
                .for_each(|v| resources_of(v, resource_type, out));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| resources_of(v, resource_type, out)),
        _ => {}
    }
}

fn twin_policy(kind: TwinKind) -> Value {
    let entries: Vec<Value> = TYPES
        .iter()
        .map(|t| {
            let hidden: Vec<&str> = TWIN_HIDDEN
                .iter()
                .filter(|(rt, _)| rt == t)
                .map(|(_, f)| *f)
                .collect();
            let mut entry = json!({"resourceType": t, "hiddenFields": hidden});
            match kind {
                TwinKind::Bisector => {}
                TwinKind::NoCreate => {
                    entry["interaction"] =
                        json!(["read", "vread", "search", "history", "update", "patch", "delete"])
                }
                TwinKind::Readonly => {
                    let readonly: Vec<&str> = TWIN_READONLY
                        .iter()
                        .filter(|(rt, _)| rt == t)
                        .map(|(_, f)| *f)
                        .collect();
                    entry["readonlyFields"] = json!(readonly);
                }
            }
            entry
        })
        .collect();
    json!({"resourceType": "AccessPolicy", "name": format!("twin {kind:?}"), "resource": entries})
}

/// The n-th twin resource of each side: the same data but the hidden values.
fn twin_data(side: Side, n: usize, patients: &[String]) -> Value {
    let b = side == Side::B;
    match n {
        0..=3 => json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:twin", "value": format!("twin-{n}")}],
            "active": true,
            "name": [{"family": format!("Twin{n}"), "given": ["Same"]}],
            "gender": if n.is_multiple_of(2) != b { "female" } else { "male" },
            "birthDate": if b { format!("{}-0{}-1{}", 1990 + n * 7, 1 + n, n) }
                else { format!("{}-1{}-0{}", 1935 + n * 9, n % 3, 1 + n) }}),
        4..=9 => {
            let value = if b {
                100.0 + 37.5 * n as f64
            } else {
                0.5 * n as f64
            };
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": format!("{}", 2000 + n % 2)}],
                    "text": format!("twin code {}", n % 2)},
                "subject": {"reference": format!("Patient/{}", patients[n % patients.len()])},
                "valueQuantity": {"value": value, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
                "component": [{"code": {"text": "part"}, "valueQuantity": {"value": 7, "unit": "mg"}}]})
        }
        _ => json!({"resourceType": "Encounter", "status": "finished",
            "identifier": [{"system": "urn:twin", "value": format!("enc-{n}")}],
            "class": {"code": "AMB"},
            "subject": {"reference": format!("Patient/{}", patients[n % patients.len()])},
            "period": if b { json!({"start": format!("2021-0{}-01", n - 9)}) }
                else { json!({"start": format!("199{}-11-20", n - 9), "end": format!("199{}-11-21", n - 9)}) }}),
    }
}

const TWIN_RESOURCES: usize = 13;

impl Twins {
    async fn build(app: &TestApp, root: &Session) -> Twins {
        let mut ids = Vec::new();
        let a = app.project("twin").await;
        let b = app.project("twin").await;
        let pair = |x: &str, y: &str, ids: &mut Vec<(String, String, String)>| {
            let label = format!("@{}@", ids.len());
            ids.push((x.to_string(), y.to_string(), label.clone()));
            label
        };
        pair(&a.id, &b.id, &mut ids);
        for (x, y) in [(&a.admin, &b.admin), (&a.member, &b.member)] {
            pair(&x.credentials.client_id, &y.credentials.client_id, &mut ids);
        }
        let mut members = Vec::new();
        for kind in [TwinKind::Bisector, TwinKind::NoCreate, TwinKind::Readonly] {
            let mut sessions = Vec::new();
            let mut policies = Vec::new();
            for project in [&a, &b] {
                let policy = project.admin.create(twin_policy(kind)).await;
                let id = policy["id"].as_str().unwrap().to_string();
                let session = app
                    .client_with(
                        root,
                        &project.id,
                        json!({"accessPolicy": {"reference": format!("AccessPolicy/{id}")}}),
                        None,
                    )
                    .await;
                policies.push(id);
                sessions.push(session);
            }
            pair(&policies[0], &policies[1], &mut ids);
            pair(
                &sessions[0].credentials.client_id,
                &sessions[1].credentials.client_id,
                &mut ids,
            );
            let b_session = sessions.pop().unwrap();
            let a_session = sessions.pop().unwrap();
            members.push(TwinMember {
                kind,
                a: a_session,
                b: b_session,
            });
        }
        // Created alternately, so both sides' ids sort alike.
        let mut resources = Vec::new();
        let (mut patients_a, mut patients_b) = (Vec::new(), Vec::new());
        for n in 0..TWIN_RESOURCES {
            let x = a.admin.create(twin_data(Side::A, n, &patients_a)).await;
            let y = b.admin.create(twin_data(Side::B, n, &patients_b)).await;
            let (xid, yid) = (
                x["id"].as_str().unwrap().to_string(),
                y["id"].as_str().unwrap().to_string(),
            );
            if x["resourceType"] == "Patient" {
                patients_a.push(xid.clone());
                patients_b.push(yid.clone());
            }
            let label = pair(&xid, &yid, &mut ids);
            resources.push(TwinResource {
                resource_type: x["resourceType"].as_str().unwrap().to_string(),
                label,
                a: x,
                b: y,
                live: true,
            });
        }
        Twins {
            admin_a: a.admin,
            admin_b: b.admin,
            members,
            resources,
            ids,
        }
    }

    fn render(&self, template: &str, side: Side) -> String {
        let mut text = template.to_string();
        for (a, b, label) in &self.ids {
            text = text.replace(label, if side == Side::A { a } else { b });
        }
        text
    }

    /// `value` of `side` with its ids written as labels.
    fn labelled(&self, value: &Value, side: Side) -> String {
        let mut text = value.to_string();
        for (a, b, label) in &self.ids {
            text = text.replace(if side == Side::A { a } else { b }, label);
        }
        text
    }

    fn normalise(&self, body: &Value, side: Side) -> Value {
        let text = mask_uuids(&self.labelled(body, side));
        let mut value: Value = serde_json::from_str(&text).unwrap();
        scrub(&mut value);
        value
    }

    fn all_ids(&self) -> impl Iterator<Item = &str> {
        self.ids
            .iter()
            .flat_map(|(a, b, _)| [a.as_str(), b.as_str()])
    }

    async fn send(&self, session: &Session, request: &TwinRequest, side: Side) -> (u16, Value) {
        let mut builder = session.fhir(request.method.clone(), &self.render(&request.path, side));
        if let Some(body) = &request.body {
            builder = builder
                .header("Content-Type", request.content_type)
                .body(self.render(body, side));
        }
        if let Some(condition) = &request.if_none_exist {
            builder = builder.header("If-None-Exist", self.render(condition, side));
        }
        status_json(builder.send().await.expect("twin request")).await
    }

    async fn stored(&self, index: usize, side: Side) -> (u16, Value) {
        let r = &self.resources[index];
        let path = self.render(&format!("{}/{}", r.resource_type, r.label), side);
        let admin = if side == Side::A {
            &self.admin_a
        } else {
            &self.admin_b
        };
        status_json(admin.get(&path).await).await
    }
}

impl World {
    /// Sends `request` as `member` to both twins: the same status and, once
    /// normalised, the same body; no hidden field and nothing of another
    /// project in either. Returns A's status and normalised body.
    async fn twin_call(
        &mut self,
        member: usize,
        request: &TwinRequest,
        expect: Expect,
        step: &str,
    ) -> (u16, Value) {
        let twins = &self.twins;
        let m = &twins.members[member];
        let what = format!("twin {:?}: {}", m.kind, request.describe());
        let (status_a, body_a) = twins.send(&m.a, request, Side::A).await;
        let (status_b, body_b) = twins.send(&m.b, request, Side::B).await;
        self.checks += 2;
        let (norm_a, norm_b) = (
            twins.normalise(&body_a, Side::A),
            twins.normalise(&body_b, Side::B),
        );
        assert_eq!(
            (status_a, &norm_a),
            (status_b, &norm_b),
            "{what}: the twins answered differently (A: {body_a}; B: {body_b})"
        );
        for (side, body) in [(Side::A, &body_a), (Side::B, &body_b)] {
            let text = body.to_string();
            for (a, b, _) in &twins.ids {
                let other = if side == Side::A { b } else { a };
                assert!(
                    !text.contains(other.as_str()),
                    "{what}: {side:?} named its twin's {other}: {text}"
                );
            }
            for r in &self.resources {
                assert!(
                    !text.contains(r.id()),
                    "{what}: {side:?} revealed {}: {text}",
                    r.reference()
                );
            }
            for (resource_type, field) in TWIN_HIDDEN {
                let mut found = Vec::new();
                resources_of(body, resource_type, &mut found);
                for resource in found {
                    assert!(
                        resource.get(field).is_none(),
                        "{what}: {side:?} showed hidden {resource_type}.{field}: {text}"
                    );
                }
            }
        }
        *self.twin_steps.entry(step.to_string()).or_default() += 1;
        match expect {
            Expect::Refused => {
                let text = body_a["issue"][0]["diagnostics"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    status_a == 403 && text.contains("which your access policy hides"),
                    "{what}: should be refused for reading a hidden field: {status_a} {body_a}"
                );
            }
            Expect::EntryRefused => {
                assert_eq!(status_a, 200, "{what}: {body_a}");
                let entry = body_a["entry"][0]["response"]["status"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    entry.starts_with("403"),
                    "{what}: entry should be refused: {body_a}"
                );
            }
            Expect::Status(status) => {
                assert_eq!(status_a, status, "{what}: {body_a}");
            }
            Expect::Any => {}
            Expect::Written => {
                assert!(
                    status_a == 200 || status_a == 201,
                    "{what}: {status_a} {body_a}"
                );
            }
        }
        (status_a, norm_a)
    }

    /// A hidden-field bisection attempt (or, for `user`, the main
    /// projects' Doctor, a birthDate one), or a search that only carries
    /// hidden fields, which answers without them.
    async fn bisect(&mut self, rng: &mut Rng, user: &User) {
        let prefix = *rng.pick(&["eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"]);
        let year = 1925 + rng.below(90);
        let date = format!("{year}-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28));
        let when = if rng.below(2) == 0 {
            year.to_string()
        } else {
            date
        };
        let amount = rng.below(500);
        if user.kind == Kind::Doctor {
            let path = match rng.below(5) {
                0 => format!("Patient?birthdate={prefix}{when}"),
                1 => format!(
                    "Patient?_sort={}birthdate",
                    if rng.below(2) == 0 { "-" } else { "" }
                ),
                2 => {
                    format!("Observation?subject:Patient.birthdate={prefix}{when}&_total=accurate")
                }
                3 => format!("Patient?birthdate:missing={}", rng.below(2) == 0),
                _ => format!("Patient?_revinclude=Observation:subject&birthdate={prefix}{when}"),
            };
            let (status, body) = status_json(user.session.get(&path).await).await;
            let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
            assert!(
                status == 403 && text.contains("reads birthDate, which your access policy hides"),
                "{}: {path} should be refused: {status} {body}",
                user.label
            );
            // The refusal names the field (not its value); the rest is checked as ever.
            let mut rest = body.clone();
            rest["issue"][0]["diagnostics"] = json!("");
            rest["issue"][0]["details"] = json!({});
            self.check_body(user, &path, &rest, &[]);
            *self.twin_steps.entry("doctor refused".into()).or_default() += 1;
            return;
        }
        let member = rng.below(self.twins.members.len());
        let gender = *rng.pick(&["male", "female", "other", "unknown"]);
        let index = rng.below(self.twins.resources.len());
        let r = &self.twins.resources[index];
        let (label, rt, live) = (r.label.clone(), r.resource_type.clone(), r.live);
        let family = format!("Twin{}", rng.below(4));
        let refused = |path: String| (TwinRequest::get(path), Expect::Refused);
        let answered = |path: String| (TwinRequest::get(path), Expect::Status(200));
        let (request, expect) = match rng.below(28) {
            0 => refused(format!("Patient?birthdate={prefix}{when}")),
            1 => refused(format!("Patient?gender{}={gender}", *rng.pick(&["", ":not"]))),
            2 => refused(format!(
                "Patient?{}:missing={}",
                *rng.pick(&["birthdate", "gender"]),
                rng.below(2) == 0
            )),
            3 => refused(format!(
                "Observation?value-quantity={prefix}{amount}{}",
                *rng.pick(&["", "|http://unitsofmeasure.org|mg", "||mg"])
            )),
            4 => refused(pick_string(
                rng,
                &[
                    &format!("Observation?combo-value-quantity={prefix}{amount}"),
                    &format!("Observation?code-value-quantity=http://loinc.org|2000${amount}"),
                    &format!("Observation?value-quantity:missing={}", amount.is_multiple_of(2)),
                ],
            )),
            5 => refused(pick_string(rng, &[
                    "Patient?_sort=birthdate",
                    "Patient?_sort=-birthdate",
                    "Patient?_sort=gender,name",
                    "Patient?_sort=name,-gender",
                    "Observation?_sort=value-quantity",
                    "Observation?_sort=-combo-value-quantity",
                    "Encounter?_sort=date",
                    "Patient?_revinclude=Observation:subject&_sort=-birthdate",
                ])),
            6 => refused(format!("Encounter?date={prefix}{when}")),
            7 => refused(pick_string(rng, &[
                    format!("Observation?subject:Patient.birthdate={prefix}{when}").as_str(),
                    format!("Observation?patient.gender={gender}").as_str(),
                    format!("Encounter?subject:Patient.birthdate={prefix}{when}").as_str(),
                    format!("Encounter?patient.gender:not={gender}&_total=accurate").as_str(),
                    format!("Observation?_include=Observation:subject&subject:Patient.gender={gender}").as_str(),
                ])),
            8 => refused(pick_string(rng, &[
                    format!("Patient?_has:Observation:subject:value-quantity={prefix}{amount}").as_str(),
                    format!("Patient?_has:Encounter:subject:date={prefix}{when}").as_str(),
                    format!("Patient?name={family}&_has:Observation:patient:combo-value-quantity={prefix}{amount}").as_str(),
                ])),
            9 => refused(format!(
                "Patient?name={family}&birthdate={prefix}{when}&_total=accurate"
            )),
            10 => refused(format!("{}?_content={year}", *rng.pick(&TYPES))),
            11 => {
                let mut request = TwinRequest::with_body(
                    Method::POST,
                    format!("{}/_search", *rng.pick(&["Patient", "Observation"])),
                    format!("birthdate={prefix}{when}&value-quantity={prefix}{amount}"),
                );
                // Only the searched type's parameter applies: keep it.
                if request.path.starts_with("Patient") {
                    request.body = Some(format!("birthdate={prefix}{when}"));
                } else {
                    request.body = Some(format!("value-quantity={prefix}{amount}"));
                }
                request.content_type = "application/x-www-form-urlencoded";
                (request, Expect::Refused)
            }
            12 => {
                let url = rng
                    .pick(&[
                        format!("Patient?birthdate={prefix}{when}"),
                        format!("Observation?value-quantity={prefix}{amount}"),
                        "Patient?_sort=gender".to_string(),
                    ])
                    .clone();
                let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": url}},
                    {"request": {"method": "GET", "url": format!("Patient?name={family}")}}]});
                (
                    TwinRequest::with_body(Method::POST, String::new(), bundle.to_string()),
                    Expect::EntryRefused,
                )
            }
            13 => {
                let (method, path, body) = match rng.below(3) {
                    0 => (Method::DELETE, format!("Patient?birthdate={prefix}{when}"), None),
                    1 => (
                        Method::PUT,
                        format!("Patient?gender={gender}"),
                        Some(json!({"resourceType": "Patient", "name": [{"family": "Conditional"}]}).to_string()),
                    ),
                    _ => (
                        Method::DELETE,
                        format!("Encounter?date={prefix}{when}"),
                        None,
                    ),
                };
                let request = TwinRequest {
                    method,
                    path,
                    body,
                    content_type: "application/fhir+json",
                    if_none_exist: None,
                };
                (request, Expect::Refused)
            }
            14 => {
                let mut request = TwinRequest::with_body(
                    Method::PATCH,
                    format!("Observation?value-quantity={prefix}{amount}"),
                    json!([{"op": "replace", "path": "/status", "value": "amended"}]).to_string(),
                );
                request.content_type = "application/json-patch+json";
                (request, Expect::Refused)
            }
            15 => {
                let mut request = TwinRequest::with_body(
                    Method::POST,
                    "Patient".into(),
                    json!({"resourceType": "Patient", "name": [{"family": "IfNoneExist"}]}).to_string(),
                );
                request.if_none_exist = Some(format!("birthdate={prefix}{when}"));
                (request, Expect::Refused)
            }
            // What only carries hidden fields answers, without them.
            16 => answered("Patient?_count=1000&_total=accurate".into()),
            17 => answered(format!(
                "Patient?_elements={}",
                *rng.pick(&["birthDate", "gender,name", "birthDate,gender,identifier"])
            )),
            18 => answered("Observation?_include=Observation:subject&_total=accurate".into()),
            19 => answered(
                "Patient?_revinclude=Observation:subject&_revinclude=Encounter:subject".into(),
            ),
            20 => answered(format!(
                "Observation?component-value-quantity={prefix}{amount}&_total=accurate"
            )),
            21 => (
                TwinRequest::get(format!("{rt}/{label}")),
                Expect::Status(if live { 200 } else { 410 }),
            ),
            22 => answered(format!("{rt}/{label}/_history")),
            23 => answered(pick_string(rng, &[
                    format!("Observation?subject:Patient.name={family}&_summary=true").as_str(),
                    "Encounter?_elements=period,status&_include=Encounter:subject",
                    "Patient?_sort=-_lastUpdated&_summary=data",
                    "Observation?code=2001&_sort=_id",
                ])),
            24 => answered("_history?_count=1000".into()),
            // JSON Patch ops that would read a hidden value: `test` against
            // side A's value, `copy`/`move` into a visible field. Whatever
            // the answer, it must be the twins' same.
            26 | 27 => {
                let last = &self.twins.resources[index].a;
                let (hidden, visible) = match rt.as_str() {
                    "Patient" => ("/birthDate", "/name/0/text"),
                    "Observation" => ("/valueQuantity/value", "/code/text"),
                    _ => ("/period/start", "/class/display"),
                };
                let pointer_value = last.pointer(hidden).cloned().unwrap_or(Value::Null);
                let ops = if rng.below(2) == 0 {
                    json!([{"op": "test", "path": hidden, "value": pointer_value}])
                } else {
                    json!([{"op": *rng.pick(&["copy", "move"]), "from": hidden, "path": visible}])
                };
                let mut request =
                    TwinRequest::with_body(Method::PATCH, format!("{rt}/{label}"), ops.to_string());
                request.content_type = "application/json-patch+json";
                (request, Expect::Any)
            }
            _ => answered(format!(
                "Patient?name={family}&_has:Observation:subject:status=final&_revinclude=Observation:subject"
            )),
        };
        let step = match expect {
            Expect::Refused | Expect::EntryRefused => "bisection refused",
            Expect::Any => "patch on a hidden path",
            _ => "hidden fields carried",
        };
        // A member without the create right may be refused that first:
        // a 403 either way, and the same for both twins.
        let creates = request.if_none_exist.is_some() || request.method == Method::PUT;
        let expect = if creates && self.twins.members[member].kind == TwinKind::NoCreate {
            Expect::Status(403)
        } else {
            expect
        };
        self.twin_call(member, &request, expect, step).await;
        if expect == Expect::Any {
            // A patch that applied: the model follows the stored versions.
            for side in [Side::A, Side::B] {
                let (status, stored) = self.twins.stored(index, side).await;
                if status == 200 {
                    let r = &mut self.twins.resources[index];
                    if side == Side::A {
                        r.a = stored;
                    } else {
                        r.b = stored;
                    }
                }
            }
        }
    }

    /// A twin member deletes a resource (if live), then a twin member puts
    /// it back: refused without the create right, else written with the
    /// hidden and the member's readonly fields of the last live version.
    async fn recreate(&mut self, rng: &mut Rng) {
        let index = rng.below(self.twins.resources.len());
        let (label, t) = {
            let r = &self.twins.resources[index];
            (r.label.clone(), r.resource_type.clone())
        };
        let in_transaction = |rng: &mut Rng, request: TwinRequest| {
            if rng.below(2) == 0 {
                return (request, false);
            }
            let mut entry =
                json!({"request": {"method": request.method.as_str(), "url": request.path}});
            if let Some(body) = &request.body {
                entry["resource"] = serde_json::from_str(body).unwrap();
            }
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
            (
                TwinRequest::with_body(Method::POST, String::new(), bundle.to_string()),
                true,
            )
        };
        if self.twins.resources[index].live {
            let deleter = rng.below(self.twins.members.len());
            let (request, bundled) = in_transaction(
                rng,
                TwinRequest {
                    method: Method::DELETE,
                    path: format!("{t}/{label}"),
                    body: None,
                    content_type: "application/fhir+json",
                    if_none_exist: None,
                },
            );
            let (status, body) = self
                .twin_call(deleter, &request, Expect::Status(200), "deleted")
                .await;
            if bundled {
                let entry = body["entry"][0]["response"]["status"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    entry.starts_with("20"),
                    "twin delete in a transaction: {status} {body}"
                );
            }
            for side in [Side::A, Side::B] {
                let (status, body) = self.twins.stored(index, side).await;
                assert_eq!(
                    status, 410,
                    "twin {label} ({side:?}) should be deleted: {body}"
                );
            }
            self.twins.resources[index].live = false;
        }
        // What the member read, with every field it may not set changed.
        let putter = rng.below(self.twins.members.len());
        let kind = self.twins.members[putter].kind;
        let last_a = self.twins.resources[index].a.clone();
        let mut body: Value = serde_json::from_str(&self.twins.labelled(&last_a, Side::A)).unwrap();
        body.as_object_mut().unwrap().remove("meta");
        let mark = format!("recreated {}", rng.next_u64() % 1_000_000);
        match t.as_str() {
            "Patient" => {
                body["name"][0]["family"] = json!(mark);
                body["birthDate"] = json!("2000-02-02");
                body["gender"] = json!("other");
                body["identifier"] = json!([{"system": "urn:twin", "value": "forged"}]);
                body["active"] = json!(false);
            }
            "Observation" => {
                body["code"]["text"] = json!(mark);
                body["valueQuantity"] = json!({"value": 12345, "unit": "mg"});
                body["status"] = json!("amended");
            }
            _ => {
                body["serviceType"] = json!({"text": mark});
                body["period"] = json!({"start": "1999-09-09"});
                body["status"] = json!("cancelled");
            }
        }
        let (request, bundled) = in_transaction(
            rng,
            TwinRequest::with_body(Method::PUT, format!("{t}/{label}"), body.to_string()),
        );
        let allowed = kind != TwinKind::NoCreate;
        let expect = match (allowed, bundled) {
            (false, _) => Expect::Status(403),
            (true, true) => Expect::Status(200),
            (true, false) => Expect::Written,
        };
        let step = match (allowed, kind) {
            (false, _) => "put back without create (refused)",
            (true, TwinKind::Readonly) => "put back with readonly fields",
            (true, _) => "put back",
        };
        let (status, response) = self.twin_call(putter, &request, expect, step).await;
        let what = format!(
            "twin {kind:?} put back {t}/{label} (transaction: {bundled}): {status} {response}"
        );
        if !allowed {
            for side in [Side::A, Side::B] {
                let (status, body) = self.twins.stored(index, side).await;
                assert_eq!(status, 410, "{what}: stored {side:?}: {body}");
            }
            return;
        }
        for side in [Side::A, Side::B] {
            let (status, stored) = self.twins.stored(index, side).await;
            assert_eq!(status, 200, "{what}: stored {side:?}: {stored}");
            let r = &self.twins.resources[index];
            let last = if side == Side::A { &r.a } else { &r.b };
            let mut kept: Vec<&str> = TWIN_HIDDEN
                .iter()
                .filter(|(rt, _)| *rt == t)
                .map(|(_, f)| *f)
                .collect();
            if kind == TwinKind::Readonly {
                kept.extend(
                    TWIN_READONLY
                        .iter()
                        .filter(|(rt, _)| *rt == t)
                        .map(|(_, f)| *f),
                );
            }
            for (_, field) in TWIN_HIDDEN
                .iter()
                .chain(&TWIN_READONLY)
                .filter(|(rt, _)| *rt == t)
            {
                let expected = if kept.contains(field) {
                    last[*field].clone()
                } else {
                    body[*field].clone()
                };
                assert_eq!(
                    stored[*field],
                    expected,
                    "{what}: {side:?} {field} should be {}",
                    if kept.contains(field) {
                        "the last live version's"
                    } else {
                        "written"
                    }
                );
            }
            let written = match t.as_str() {
                "Patient" => &stored["name"][0]["family"],
                "Observation" => &stored["code"]["text"],
                _ => &stored["serviceType"]["text"],
            };
            assert_eq!(written, &json!(mark), "{what}: {side:?} {stored}");
            let r = &mut self.twins.resources[index];
            if side == Side::A {
                r.a = stored;
            } else {
                r.b = stored;
            }
        }
        self.twins.resources[index].live = true;
    }
}
