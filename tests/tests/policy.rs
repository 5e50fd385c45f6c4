//! AccessPolicy end to end: criteria decided in SQL (404 outside, 403 for
//! what is never allowed), hidden and readonly fields, write constraints,
//! compartments, "policy required", IP rules, SMART scopes, admin rules.

use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use serde_json::{json, Value};

async fn policy(admin: &Session, body: Value) -> String {
    let created = admin.create(body).await;
    format!("AccessPolicy/{}", created["id"].as_str().unwrap())
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or_default(),
                e["resource"]["id"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn reference(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn criteria_fields_and_constraints() {
    let app = TestApp::spawn().await;
    let project = app.project("policy").await;
    let admin = &project.admin;
    // A bad criteria string is refused when the policy is saved, naming it.
    let outcome = assert_outcome(
        admin
            .post(
                "AccessPolicy",
                &json!({"resourceType": "AccessPolicy", "resource": [
                    {"resourceType": "Observation", "criteria": "Observation?nosuch=1"}]}),
            )
            .await,
        400,
        "Observation?nosuch=1",
    )
    .await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "AccessPolicy.resource[0].criteria"
    );
    // So is a write constraint that is not FHIRPath, saying where it goes wrong.
    let outcome = assert_outcome(
        admin
            .post(
                "AccessPolicy",
                &json!({"resourceType": "AccessPolicy", "resource": [
                    {"resourceType": "Observation", "writeConstraint": [{"language": "text/fhirpath",
                        "expression": "%after.status = 'final' and (status"}]}]}),
            )
            .await,
        400,
        "FHIRPath syntax error at character 35",
    )
    .await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "AccessPolicy.resource[0].writeConstraint[0].expression"
    );
    let doctor_policy = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "name": "doctor", "resource": [
            {"resourceType": "Observation", "criteria": "Observation?status=final",
             "writeConstraint": [{"language": "text/fhirpath",
                "expression": "%before.exists() implies %before.code.text != 'locked'"}]},
            {"resourceType": "Patient", "hiddenFields": ["birthDate", "address.line"],
             "readonlyFields": ["gender"]}
        ]}),
    )
    .await;
    let root = app.super_admin().await;
    let doctor = app
        .client_with(
            &root,
            &project.id,
            json!({"accessPolicy": {"reference": doctor_policy}}),
            None,
        )
        .await;
    let patient = admin
        .create(
            json!({"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-02",
            "address": [{"line": ["1 Secret St"], "city": "Town"}], "name": [{"family": "Doe"}]}),
        )
        .await;
    let obs = |status: &str, text: &str| {
        json!({"resourceType": "Observation", "status": status, "code": {"text": text},
            "subject": {"reference": reference(&patient)}})
    };
    let final_obs = admin.create(obs("final", "bp")).await;
    let draft = admin.create(obs("preliminary", "bp")).await;
    let locked = admin.create(obs("final", "locked")).await;

    // Reads and searches see only what the criteria admit; outside is 404.
    let (_, bundle) = status_json(doctor.get("Observation?_total=accurate&_count=100").await).await;
    let mut seen = ids(&bundle);
    seen.sort();
    let mut expected = vec![reference(&final_obs), reference(&locked)];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(bundle["total"], 2);
    assert_eq!(doctor.get(&reference(&final_obs)).await.status(), 200);
    assert_outcome(doctor.get(&reference(&draft)).await, 404, "not found").await;
    assert_outcome(
        doctor
            .get(&format!(
                "{}/_history/{}",
                reference(&draft),
                draft["meta"]["versionId"].as_str().unwrap()
            ))
            .await,
        404,
        "not found",
    )
    .await;
    assert_outcome(
        doctor.get(&format!("{}/_history", reference(&draft))).await,
        404,
        "not found",
    )
    .await;
    // Included and reverse-included resources obey the policy too.
    let (_, bundle) = status_json(
        doctor
            .get("Patient?_revinclude=Observation:subject&_count=100")
            .await,
    )
    .await;
    assert!(!ids(&bundle).contains(&reference(&draft)));
    assert!(ids(&bundle).contains(&reference(&final_obs)));
    // A type the policy never names is 403.
    assert_outcome(doctor.get("Encounter").await, 403, "Encounter").await;
    assert_outcome(
        doctor.get("ProjectMembership").await,
        403,
        "ProjectMembership",
    )
    .await;

    // Hidden fields are absent everywhere a resource is returned.
    for path in [
        reference(&patient),
        "Patient".to_string(),
        format!("{}/_history", reference(&patient)),
        "Patient/_history".to_string(),
        "_history".to_string(),
        "Observation?_include=Observation:subject".to_string(),
    ] {
        let text = doctor.get(&path).await.text().await.unwrap();
        assert!(
            text.contains("Doe") || path.starts_with('_'),
            "{path}: {text}"
        );
        assert!(
            !text.contains("birthDate") && !text.contains("Secret St"),
            "{path} shows a hidden field: {text}"
        );
    }
    // Matching on a hidden field would tell its value.
    assert_outcome(
        doctor.get("Patient?birthdate=1970-01-02").await,
        403,
        "birthDate",
    )
    .await;
    assert_outcome(
        doctor
            .get("Observation?subject:Patient.birthdate=1970")
            .await,
        403,
        "birthDate",
    )
    .await;
    // Writing back what was read keeps hidden and readonly fields.
    let (_, mut read) = status_json(doctor.get(&reference(&patient)).await).await;
    read["gender"] = json!("male");
    read["name"][0]["family"] = json!("Roe");
    assert_eq!(doctor.put(&reference(&patient), &read).await.status(), 200);
    let (_, stored) = status_json(root.get(&reference(&patient)).await).await;
    assert_eq!(stored["birthDate"], "1970-01-02");
    assert_eq!(stored["gender"], "female");
    assert_eq!(stored["address"][0]["line"][0], "1 Secret St");
    assert_eq!(stored["name"][0]["family"], "Roe");

    // Writes: before and after must be inside the criteria; 403 changes nothing.
    assert_outcome(
        doctor.post("Observation", &obs("preliminary", "x")).await,
        403,
        "outside",
    )
    .await;
    let (_, drafts) = status_json(
        root.get("Observation?status=preliminary&_total=accurate")
            .await,
    )
    .await;
    assert_eq!(drafts["total"], 1);
    assert_eq!(
        doctor
            .post("Observation", &obs("final", "x"))
            .await
            .status(),
        201
    );
    let mut moved = final_obs.clone();
    moved["status"] = json!("preliminary");
    assert_outcome(
        doctor.put(&reference(&final_obs), &moved).await,
        403,
        "outside",
    )
    .await;
    assert_outcome(
        doctor
            .patch(
                &reference(&final_obs),
                &json!([{"op": "replace", "path": "/status", "value": "amended"}]),
            )
            .await,
        403,
        "outside",
    )
    .await;
    let (_, unchanged) = status_json(root.get(&reference(&final_obs)).await).await;
    assert_eq!(
        unchanged["meta"]["versionId"],
        final_obs["meta"]["versionId"]
    );
    // A write constraint over %before.
    let mut relock = locked.clone();
    relock["valueString"] = json!("changed");
    assert_outcome(
        doctor.put(&reference(&locked), &relock).await,
        403,
        "write constraint",
    )
    .await;
    assert_outcome(doctor.delete(&reference(&draft)).await, 404, "not found").await;
    assert_eq!(doctor.delete(&reference(&final_obs)).await.status(), 200);
    // A transaction that would write outside is refused whole.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("final", "t1")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("preliminary", "t2")}
    ]});
    assert_eq!(doctor.post("", &bundle).await.status(), 403);
    let (_, t1) = status_json(root.get("Observation?code:text=t1&_total=accurate").await).await;
    assert_eq!(t1["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn patient_compartment_and_project_rules() {
    let app = TestApp::spawn().await;
    let project = app.project("patients").await;
    let admin = &project.admin;
    let root = app.super_admin().await;
    let me = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Me"}]}))
        .await;
    let other = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Other"}]}))
        .await;
    let mine = admin
        .create(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "a"},
            "subject": {"reference": reference(&me)}}),
        )
        .await;
    let theirs = admin
        .create(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "b"},
            "subject": {"reference": reference(&other)}}),
        )
        .await;
    let org = admin
        .create(json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let patient_policy = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "*", "criteria": "*?_compartment=%patient"}]}),
    )
    .await;
    let session = app
        .client_with(
            &root,
            &project.id,
            json!({"profile": {"reference": reference(&me)},
                "access": [{"policy": {"reference": patient_policy}}]}),
            None,
        )
        .await;
    let (_, everything) = status_json(session.get("?_count=100&_total=accurate").await).await;
    let mut seen = ids(&everything);
    seen.sort();
    let mut expected = vec![reference(&me), reference(&mine)];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(everything["total"], 2);
    assert_outcome(session.get(&reference(&other)).await, 404, "not found").await;
    assert_outcome(session.get(&reference(&org)).await, 404, "not found").await;
    assert_eq!(
        ids(&status_json(
            session
                .get(&format!("Observation?_compartment={}", reference(&me)))
                .await
        )
        .await
        .1),
        vec![reference(&mine)]
    );
    let (_, none) = status_json(
        session
            .get(&format!("Observation?_compartment={}", reference(&other)))
            .await,
    )
    .await;
    assert!(ids(&none).is_empty());
    assert_outcome(
        session
            .get(&format!("{}/Observation", reference(&other)))
            .await,
        404,
        "not found",
    )
    .await;
    // Chains and _has do not reach outside either.
    let (_, chained) =
        status_json(session.get("Observation?subject:Patient.name=Other").await).await;
    assert!(ids(&chained).is_empty());
    let (_, has) = status_json(
        session
            .get("Patient?_has:Observation:subject:code:text=b")
            .await,
    )
    .await;
    assert!(ids(&has).is_empty());
    // Moving my observation to someone else is a write outside: 403.
    let mut moved = mine.clone();
    moved["subject"]["reference"] = json!(reference(&other));
    assert_outcome(session.put(&reference(&mine), &moved).await, 403, "outside").await;
    let _ = theirs;

    // "Policy required": a membership without a policy gets nothing.
    let (_, mut settings) = status_json(admin.get(&format!("Project/{}", project.id)).await).await;
    settings["setting"] = json!([{"name": "policyRequired", "valueBoolean": true}]);
    // Project admins may update their project, but not the fields only the
    // server writes: that write is refused whole.
    let mut promoted = settings.clone();
    promoted["superAdmin"] = json!(true);
    assert_outcome(
        admin
            .put(&format!("Project/{}", project.id), &promoted)
            .await,
        403,
        "Project.superAdmin is managed by the server",
    )
    .await;
    assert_eq!(
        admin
            .put(&format!("Project/{}", project.id), &settings)
            .await
            .status(),
        200
    );
    let (_, stored) = status_json(root.get(&format!("Project/{}", project.id)).await).await;
    assert!(stored.get("superAdmin").is_none(), "{stored}");
    assert_eq!(stored["setting"][0]["name"], "policyRequired");
    assert_outcome(project.member.get("Patient").await, 403, "Patient").await;
    assert_eq!(session.get("Patient").await.status(), 200);
    assert_eq!(admin.get("AccessPolicy").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_rules_and_scopes() {
    let app = TestApp::spawn().await;
    let project = app.project("network").await;
    let admin = &project.admin;
    let root = app.super_admin().await;
    let blocked = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient"}],
            "ipAccessRule": [{"name": "no loopback", "value": "127.0.0.0/8", "action": "block"}]}),
    )
    .await;
    let allowed = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "*"}],
            "ipAccessRule": [{"value": "127.0.0.1/32", "action": "allow"},
                             {"value": "::1/128", "action": "allow"},
                             {"value": "*", "action": "block"}]}),
    )
    .await;
    let outside = app
        .client_with(
            &root,
            &project.id,
            json!({"accessPolicy": {"reference": blocked}}),
            None,
        )
        .await;
    assert_outcome(outside.get("Patient").await, 403, "127.0.0.1").await;
    let inside = app
        .client_with(
            &root,
            &project.id,
            json!({"accessPolicy": {"reference": allowed}}),
            None,
        )
        .await;
    assert_eq!(inside.get("Patient").await.status(), 200);
    assert_outcome(
        admin
            .post(
                "AccessPolicy",
                &json!({"resourceType": "AccessPolicy",
                "ipAccessRule": [{"value": "300.1.1.1/8", "action": "allow"}]}),
            )
            .await,
        400,
        "300.1.1.1",
    )
    .await;

    // Read-only SMART scopes remove writes; scope queries narrow the search.
    admin
        .create(json!({"resourceType": "Patient", "gender": "female"}))
        .await;
    admin
        .create(json!({"resourceType": "Patient", "gender": "male"}))
        .await;
    let reader = app
        .client_with(
            &root,
            &project.id,
            json!({}),
            Some("openid system/Patient.rs?gender=female"),
        )
        .await;
    let (_, found) = status_json(reader.get("Patient?_total=accurate").await).await;
    assert_eq!(found["total"], 1);
    assert_outcome(
        reader
            .post("Patient", &json!({"resourceType": "Patient"}))
            .await,
        403,
        "create",
    )
    .await;
    assert_outcome(reader.get("Observation").await, 403, "Observation").await;
}

/// Behind a reverse proxy listed in FHIRGATE_TRUSTED_PROXIES, the client it
/// names in X-Forwarded-For or Forwarded is the address for IP rules, the
/// sign-in rate limit and sessions; from anyone else those headers are
/// ignored.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    for trusted in [true, false] {
        let app = TestApp::spawn_with(|config| {
            config.auth_rate_limit = 12;
            if trusted {
                config.trusted_proxies =
                    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
            }
        })
        .await;
        let project = app.project("proxied").await;
        let root = app.super_admin().await;
        let blocked = policy(
            &project.admin,
            json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient"}],
                "ipAccessRule": [{"value": "203.0.113.0/24", "action": "block"}]}),
        )
        .await;
        let member = app
            .client_with(
                &root,
                &project.id,
                json!({"accessPolicy": {"reference": blocked}}),
                None,
            )
            .await;
        let from = |header: &'static str, value: &'static str| {
            member
                .fhir(reqwest::Method::GET, "Patient")
                .header(header, value)
                .send()
        };
        let via_xff = from("X-Forwarded-For", "203.0.113.9")
            .await
            .unwrap()
            .status()
            .as_u16();
        let via_forwarded = from("Forwarded", "for=203.0.113.9;proto=https")
            .await
            .unwrap()
            .status()
            .as_u16();
        let elsewhere = from("X-Forwarded-For", "198.51.100.1")
            .await
            .unwrap()
            .status()
            .as_u16();
        if trusted {
            assert_eq!((via_xff, via_forwarded, elsewhere), (403, 403, 200));
        } else {
            // A client naming any address it likes is not believed.
            assert_eq!((via_xff, via_forwarded, elsewhere), (200, 200, 200));
        }
        // The sign-in rate limit counts per client: behind the proxy, two
        // clients have a budget each; without trust, one budget for all.
        let attempt = |address: &'static str| {
            app.http
                .post(app.url("auth/login"))
                .header("X-Forwarded-For", address)
                .json(&json!({"email": "nobody@example.com", "password": "wrong password here"}))
                .send()
        };
        let mut spent = false;
        for _ in 0..30 {
            if attempt("192.0.2.1").await.unwrap().status() == 429 {
                spent = true;
                break;
            }
        }
        assert!(spent, "the limit of 12 a minute was never reached");
        let other_client = attempt("192.0.2.2").await.unwrap().status();
        assert_eq!(
            other_client,
            if trusted { 400 } else { 429 },
            "trusted: {trusted}"
        );
    }
}

/// `AccessPolicy.basedOn`: a policy's entries are merged with those of the
/// policies it is based on, recursively, each with the parameters of the
/// membership that names it; a cycle or a base outside the project is
/// refused when saved, by every kind of write; a changed base takes effect
/// at once; and no admin changes a base of its own policy.
#[tokio::test(flavor = "multi_thread")]
async fn based_on_policies_merge_their_entries_and_cycles_are_refused() {
    let app = TestApp::spawn().await;
    let project = app.project("based-on").await;
    let admin = &project.admin;
    let root = app.super_admin().await;
    let mine = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Mine"}]}))
        .await;
    let theirs = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Theirs"}]}))
        .await;
    let observation = |subject: &Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": reference(subject)}})
    };
    let my_observation = admin.create(observation(&mine)).await;
    let their_observation = admin.create(observation(&theirs)).await;
    let org = admin
        .create(json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let encounter = admin
        .create(
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}),
        )
        .await;

    // base <- middle <- top: Observations of a parameter, Organizations to
    // read, Patients.
    let base_body = json!({"resourceType": "AccessPolicy", "name": "base", "resource": [
        {"resourceType": "Observation", "criteria": "Observation?subject=%subject"}]});
    let base = policy(admin, base_body.clone()).await;
    let middle = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "name": "middle",
        "resource": [{"resourceType": "Organization", "readonly": true}],
        "basedOn": [{"reference": base}]}),
    )
    .await;
    let top = policy(
        admin,
        json!({"resourceType": "AccessPolicy", "name": "top",
        "resource": [{"resourceType": "Patient"}],
        "basedOn": [{"reference": middle}]}),
    )
    .await;
    let member_for = |subject: &Value| {
        json!({"access": [{"policy": {"reference": top},
            "parameter": [{"name": "subject", "valueReference": {"reference": reference(subject)}}]}]})
    };
    let me = app
        .client_with(&root, &project.id, member_for(&mine), None)
        .await;
    let them = app
        .client_with(&root, &project.id, member_for(&theirs), None)
        .await;
    let (_, seen) = status_json(me.get("Observation").await).await;
    assert_eq!(
        ids(&seen),
        vec![reference(&my_observation)],
        "the base's entry, with my parameter"
    );
    let (_, seen) = status_json(them.get("Observation").await).await;
    assert_eq!(
        ids(&seen),
        vec![reference(&their_observation)],
        "the same base, with theirs"
    );
    assert_eq!(
        me.get(&reference(&org)).await.status(),
        200,
        "the middle policy's entry"
    );
    assert_outcome(me.put(&reference(&org), &org).await, 403, "Organization").await;
    assert_eq!(
        me.get(&reference(&theirs)).await.status(),
        200,
        "the top policy's own entry"
    );
    assert_outcome(me.get(&reference(&encounter)).await, 403, "Encounter").await;

    // A cycle is refused by create, update, patch and transaction, naming it;
    // the policy stays as it was.
    let base_id = base.trim_start_matches("AccessPolicy/");
    let mut cyclic = base_body.clone();
    cyclic["id"] = json!(base_id);
    cyclic["basedOn"] = json!([{"reference": top}]);
    let outcome = assert_outcome(admin.put(&base, &cyclic).await, 400, "cycle").await;
    let text = outcome.to_string();
    for named in [&base, &top, &middle] {
        assert!(
            text.contains(named.as_str()),
            "the cycle names {named}: {text}"
        );
    }
    assert_eq!(outcome["issue"][0]["expression"][0], "AccessPolicy.basedOn");
    let patch = json!([{"op": "add", "path": "/basedOn", "value": [{"reference": middle}]}]);
    assert_outcome(admin.patch(&base, &patch).await, 400, "cycle").await;
    let mut itself = base_body.clone();
    itself["id"] = json!(base_id);
    itself["basedOn"] = json!([{"reference": base}]);
    assert_outcome(admin.put(&base, &itself).await, 400, "cycle").await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": cyclic, "request": {"method": "PUT", "url": base}}]});
    assert_outcome(admin.post("", &transaction).await, 400, "cycle").await;
    let (_, stored) = status_json(admin.get(&base).await).await;
    assert!(stored.get("basedOn").is_none(), "nothing written: {stored}");
    let (_, patients) = status_json(admin.get("Patient").await).await;
    assert_eq!(ids(&patients).len(), 2, "the transaction wrote nothing");
    // A base that is not one of the project's policies.
    let other = app.project("based-on-elsewhere").await;
    let elsewhere = policy(
        &other.admin,
        json!({"resourceType": "AccessPolicy", "resource": [
        {"resourceType": "Encounter"}]}),
    )
    .await;
    let outcome = assert_outcome(
        admin
            .post(
                "AccessPolicy",
                &json!({"resourceType": "AccessPolicy",
            "basedOn": [{"reference": base}, {"reference": elsewhere}]}),
            )
            .await,
        400,
        "not an AccessPolicy of this project",
    )
    .await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "AccessPolicy.basedOn[1]"
    );
    assert_outcome(
        admin
            .post(
                "AccessPolicy",
                &json!({"resourceType": "AccessPolicy",
            "basedOn": [{"reference": reference(&mine)}]}),
            )
            .await,
        400,
        "AccessPolicy/<id>",
    )
    .await;

    // A project admin bound by the top policy may change none of the chain;
    // another admin may, and the change to the base holds at once.
    let bound = app
        .client_with(
            &root,
            &project.id,
            json!({"admin": true, "accessPolicy": {"reference": top}}),
            None,
        )
        .await;
    let mut wider = base_body.clone();
    wider["id"] = json!(base_id);
    wider["resource"] = json!([{"resourceType": "Observation"}, {"resourceType": "Encounter"}]);
    for chained in [&base, &middle] {
        assert_outcome(bound.delete(chained).await, 403, "your own membership").await;
    }
    assert_outcome(bound.put(&base, &wider).await, 403, "your own membership").await;
    assert_eq!(admin.put(&base, &wider).await.status(), 200);
    assert_eq!(
        me.get(&reference(&encounter)).await.status(),
        200,
        "the wider base holds"
    );
    let (_, seen) = status_json(them.get("Observation").await).await;
    assert_eq!(seen["entry"].as_array().map_or(0, Vec::len), 2, "{seen}");
    // A deleted link of the chain still binds: bringing it back with a PUT
    // is a change like any other.
    let (_, middle_body) = status_json(admin.get(&middle).await).await;
    assert_eq!(admin.delete(&middle).await.status(), 200);
    assert_outcome(me.get(&reference(&org)).await, 403, "Organization").await;
    assert_outcome(
        bound.put(&middle, &middle_body).await,
        403,
        "your own membership",
    )
    .await;
    assert_eq!(admin.put(&middle, &middle_body).await.status(), 200);
    assert_eq!(
        me.get(&reference(&org)).await.status(),
        200,
        "back in the chain"
    );
}
