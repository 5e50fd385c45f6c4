//! Hidden fields, swept: every search parameter of the types the randomized
//! isolation walk uses (Patient, Observation, Encounter; R4's and the
//! registry's own) is refused, in every form a search or a conditional
//! interaction can name it, to a member whose policy hides an element the
//! parameter reads, and answers to a member who hides an unrelated one.
//!
//! What a parameter reads is found from data, not from the server's own
//! reachability function: rich sample resources name every element the
//! parameters' expressions reach; an element is read by a parameter when
//! removing it from a sample changes the index rows
//! `fhir_model::search::extract` gives that parameter (the rows of the
//! parameters a union is stored as, and a typed view's rows of its base).
//! `_id` and `_lastUpdated` are the server's own columns, which `extract`
//! leaves out: they read `id` and `meta.lastUpdated` by definition.
//!
//! The forms, for parameter `p` of type `T` with element `e` hidden on `T`:
//! `T?p=v` (a value of `p`'s kind, with a prefix where it has one);
//! `T?_sort=p`; `T?p:missing=false`; a modifier of its kind (`:not`,
//! `:contains`, `:below`); `T?_id=x&p=v,v`; `POST T/_search` with `p=v`;
//! `Patient/{id}/T?p=v`; `?_type=T&p=v`; a chain into `T` from another
//! type (`Observation?subject:Patient.p=v`); `X?_has:T:r:p=v` through a
//! reference `r` of `T` that does not read `e`; for a reference `p`,
//! `T?p:X._id=v`, `T?p:identifier=s|v`, `X?_has:T:p:_id=v`,
//! `T?_include=T:p`, `X?_revinclude=T:p` and `_include:iterate=T:p`; and the
//! conditional interactions `PUT T?p=v`, `PATCH T?p=v`, `DELETE T?p=v` and
//! `POST T` with `If-None-Exist: p=v`.
//! Each must be a 403 OperationOutcome naming `p` and `e`; a member with the
//! same policy but nothing hidden gets 200 for every search form (a form
//! the server cannot answer at all is counted as not applicable, and the
//! plain `T?p=v` must always be applicable); refused writes change nothing.
//!
//! `FHIRGATE_SWEEP_DEBUG` prints the forms the control member's server
//! cannot answer (counted as not applicable).
//!
//! The converse: for every parameter, a member hiding an element it does
//! not read (by the data, and not named in its expression) gets 200 for
//! `T?p=v` and `T?_sort=p`; and for nested hidden elements (`name.given`),
//! every parameter reading the parent element but not that child
//! (`family`) answers too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fhir_model::search::{extract, IndexValue, ParamType, Registry, SearchParam};
use fhirgate_tests::{status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// The types of `tests/tests/isolation.rs`'s walk.
const WALK_TYPES: [&str; 3] = ["Patient", "Observation", "Encounter"];

const XHTML: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\">Sweep narrative</div>";

fn meta() -> Value {
    json!({
        "profile": ["http://example.org/StructureDefinition/sweep"],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "tag": [{"system": "http://example.org/tags", "code": "sweep"}],
        "source": "http://example.org/source"
    })
}

fn concept(system: &str, code: &str, text: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": text}],
        "text": format!("{text} (as written)")})
}

fn quantity(value: f64, unit: &str) -> Value {
    json!({"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit})
}

/// Sample resources of `resource_type`: together they name every element a
/// parameter of the type reads, each choice element in each variant a
/// parameter selects.
fn samples(resource_type: &str) -> Vec<Value> {
    let narrative = json!({"status": "generated", "div": XHTML});
    let loinc = "http://loinc.org";
    let sampled = json!({"origin": {"value": 1, "unit": "mmol/L"}, "period": 10,
        "dimensions": 1, "data": "1 2 3"});
    match resource_type {
        "Patient" => vec![
            json!({"resourceType": "Patient", "meta": meta(), "text": narrative,
                "identifier": [{"system": "urn:mrn", "value": "mrn-1"}],
                "active": true,
                "name": [{"family": "Sweep", "given": ["Ada"], "prefix": ["Dr"]}],
                "telecom": [{"system": "phone", "value": "555-0100", "use": "home"},
                    {"system": "email", "value": "ada@example.org"}],
                "gender": "female",
                "birthDate": "1970-01-02",
                "deceasedDateTime": "2020-05-01",
                "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield",
                    "state": "IL", "postalCode": "62701", "country": "US"}],
                "communication": [{"language": concept("urn:ietf:bcp:47", "en", "English")}],
                "generalPractitioner": [{"reference": "Practitioner/sweep-gp"}],
                "managingOrganization": {"reference": "Organization/sweep-org"},
                "link": [{"other": {"reference": "Patient/sweep-other"}, "type": "seealso"}]}),
            json!({"resourceType": "Patient", "deceasedBoolean": true,
                "maritalStatus": concept("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
                "multipleBirthInteger": 2,
                "contact": [{"name": {"family": "Kin"}}]}),
        ],
        "Observation" => {
            let base = |extra: Value| {
                let mut o = json!({"resourceType": "Observation", "status": "final",
                    "code": concept(loinc, "2339-0", "Glucose"),
                    "subject": {"reference": "Patient/sweep-patient"}});
                for (k, v) in extra.as_object().unwrap() {
                    o[k] = v.clone();
                }
                o
            };
            vec![
                base(json!({"meta": meta(), "text": narrative,
                "identifier": [{"system": "urn:obs", "value": "obs-1"}],
                "basedOn": [{"reference": "ServiceRequest/sweep-sr"}],
                "partOf": [{"reference": "Procedure/sweep-proc"}],
                "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
                "focus": [{"reference": "Condition/sweep-cond"}],
                "encounter": {"reference": "Encounter/sweep-enc"},
                "effectiveDateTime": "2020-02-03T10:00:00Z",
                "performer": [{"reference": "Practitioner/sweep-gp"}],
                "valueQuantity": quantity(6.3, "mmol/L"),
                "interpretation": [concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H", "High")],
                "note": [{"text": "fasting"}],
                "method": concept("http://snomed.info/sct", "1234", "Method"),
                "specimen": {"reference": "Specimen/sweep-spec"},
                "device": {"reference": "Device/sweep-dev"},
                "hasMember": [{"reference": "Observation/sweep-member"}],
                "derivedFrom": [{"reference": "Observation/sweep-source"}],
                "component": [
                    {"code": concept(loinc, "8480-6", "Systolic"), "valueQuantity": quantity(120.0, "mm[Hg]")},
                    {"code": concept(loinc, "8462-4", "Diastolic"),
                     "valueCodeableConcept": concept("http://snomed.info/sct", "17621005", "Normal")},
                    {"code": concept(loinc, "9279-1", "Respiration"),
                     "dataAbsentReason": concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown", "Unknown")},
                    {"code": concept(loinc, "8867-4", "Heart rate"), "valueSampledData": sampled.clone()}
                ]})),
                base(
                    json!({"effectivePeriod": {"start": "2021-01-01", "end": "2021-01-02"},
                    "valueCodeableConcept": concept("http://snomed.info/sct", "260385009", "Negative")}),
                ),
                base(
                    json!({"effectiveInstant": "2022-03-04T05:06:07Z", "valueString": "positive"}),
                ),
                base(json!({"valueDateTime": "2023-04-05"})),
                base(json!({"valuePeriod": {"start": "2019-01-01", "end": "2019-02-01"}})),
                base(json!({"valueSampledData": sampled})),
                base(
                    json!({"dataAbsentReason": concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-unknown", "Asked but unknown")}),
                ),
            ]
        }
        "Encounter" => vec![
            json!({"resourceType": "Encounter", "meta": meta(), "text": narrative,
            "identifier": [{"system": "urn:enc", "value": "enc-1"}],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [concept("http://snomed.info/sct", "11429006", "Consultation")],
            "priority": concept("http://terminology.hl7.org/CodeSystem/v3-ActPriority", "R", "routine"),
            "subject": {"reference": "Patient/sweep-patient"},
            "episodeOfCare": [{"reference": "EpisodeOfCare/sweep-eoc"}],
            "basedOn": [{"reference": "ServiceRequest/sweep-sr"}],
            "participant": [{"type": [concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer")],
                "period": {"start": "2020-01-01T09:00:00Z"},
                "individual": {"reference": "Practitioner/sweep-gp"}}],
            "appointment": [{"reference": "Appointment/sweep-appt"}],
            "period": {"start": "2020-01-01T09:00:00Z", "end": "2020-01-01T10:00:00Z"},
            "length": quantity(60.0, "min"),
            "reasonCode": [concept("http://snomed.info/sct", "29857009", "Chest pain")],
            "diagnosis": [{"condition": {"reference": "Condition/sweep-cond"}}],
            "account": [{"reference": "Account/sweep-acct"}],
            "hospitalization": {"specialArrangement": [concept("http://terminology.hl7.org/CodeSystem/encounter-special-arrangements", "wheel", "Wheelchair")]},
            "location": [{"location": {"reference": "Location/sweep-loc"},
                "period": {"start": "2020-01-01T09:00:00Z"}}],
            "serviceProvider": {"reference": "Organization/sweep-org"},
            "partOf": {"reference": "Encounter/sweep-parent"}}),
            // R4 allows reasonCode beside reasonReference; the server takes
            // them for forms of one choice element (reason[x]), so apart.
            json!({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"},
                "reasonReference": [{"reference": "Observation/sweep-obs"}]}),
        ],
        other => panic!("no samples for {other}"),
    }
}

/// Nested elements hidden besides the top-level ones, for the converse:
/// what reads their parent but not them still answers.
fn nested(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Patient" => &["name.given", "address.city", "link.type"],
        "Observation" => &["component.code", "valueQuantity.value", "code.text"],
        _ => &["participant.individual", "location.period"],
    }
}

/// `value` without the element at `path` (a dot path, through arrays).
fn without(value: &Value, path: &str) -> Value {
    fn remove(value: &mut Value, path: &[&str]) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|item| remove(item, path)),
            Value::Object(map) => match path {
                [last] => {
                    map.remove(*last);
                }
                [first, rest @ ..] => {
                    if let Some(child) = map.get_mut(*first) {
                        remove(child, rest);
                    }
                }
                [] => {}
            },
            _ => {}
        }
    }
    let mut copy = value.clone();
    let segments: Vec<&str> = path.split('.').collect();
    remove(&mut copy, &segments);
    copy
}

fn has_path(value: &Value, path: &[&str]) -> bool {
    match (value, path) {
        (_, []) => true,
        (Value::Array(items), _) => items.iter().any(|item| has_path(item, path)),
        (Value::Object(map), [first, rest @ ..]) => {
            map.get(*first).is_some_and(|child| has_path(child, rest))
        }
        _ => false,
    }
}

/// The index rows through which a search on `param` finds a resource,
/// from all the rows `extract` gives it.
fn rows_of(all: &[IndexValue], param: &SearchParam) -> Vec<String> {
    let mut rows: Vec<String> = all
        .iter()
        .filter(|row| {
            let code = row.param();
            if param.stored_as().iter().any(|s| s == code) {
                return true;
            }
            match (param.reference_view(), row) {
                (
                    Some(view),
                    IndexValue::Reference {
                        param, target_type, ..
                    },
                ) => *param == view.base && target_type.as_deref() == Some(&view.target_type),
                _ => false,
            }
        })
        .map(|row| format!("{row:?}"))
        .collect();
    rows.sort();
    rows
}

/// What the data says each parameter of a type reads.
struct Reach {
    /// Elements that may be hidden: top-level ones, `meta`'s, nested ones.
    elements: Vec<String>,
    /// Parameter code -> the elements whose removal changes its rows.
    reads: BTreeMap<String, BTreeSet<String>>,
    /// Parameter code -> whether any sample gives it rows.
    indexed: BTreeMap<String, bool>,
}

fn reach(resource_type: &str) -> Reach {
    let registry = Registry::get();
    let params = registry.params_for(resource_type);
    let samples = samples(resource_type);
    let mut elements: BTreeSet<String> = BTreeSet::new();
    for sample in &samples {
        for (key, value) in sample.as_object().unwrap() {
            match key.as_str() {
                "resourceType" => {}
                "meta" => elements.extend(
                    value
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|k| format!("meta.{k}")),
                ),
                _ => {
                    elements.insert(key.clone());
                }
            }
        }
    }
    for path in nested(resource_type) {
        let segments: Vec<&str> = path.split('.').collect();
        assert!(
            samples.iter().any(|s| has_path(s, &segments)),
            "no {resource_type} sample has {path}"
        );
        elements.insert(path.to_string());
    }
    // The server's own columns.
    elements.insert("id".into());
    elements.insert("meta.lastUpdated".into());
    let mut reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut indexed: BTreeMap<String, bool> = BTreeMap::new();
    for param in &params {
        reads.insert(param.code.clone(), BTreeSet::new());
        indexed.insert(param.code.clone(), false);
    }
    reads.get_mut("_id").unwrap().insert("id".into());
    reads
        .get_mut("_lastUpdated")
        .unwrap()
        .insert("meta.lastUpdated".into());
    for sample in &samples {
        let full = extract(registry, sample);
        for param in &params {
            if !rows_of(&full, param).is_empty() {
                indexed.insert(param.code.clone(), true);
            }
        }
        for element in &elements {
            let segments: Vec<&str> = element.split('.').collect();
            if !has_path(sample, &segments) {
                continue;
            }
            let cut = extract(registry, &without(sample, element));
            for param in &params {
                if rows_of(&full, param) != rows_of(&cut, param) {
                    reads.get_mut(&param.code).unwrap().insert(element.clone());
                }
            }
        }
    }
    Reach {
        elements: elements.into_iter().collect(),
        reads,
        indexed,
    }
}

/// A value of `kind` for a search (with a prefix where the kind has them).
fn search_value(param: &SearchParam) -> String {
    let plain = |kind: ParamType| match kind {
        ParamType::Number | ParamType::Quantity => "5",
        ParamType::Date => "2020",
        ParamType::Uri => "http://example.org/x",
        _ => "x",
    };
    match param.kind {
        ParamType::Number | ParamType::Quantity => "gt5".into(),
        ParamType::Date => "ge2020-01-01".into(),
        ParamType::Composite => param
            .components
            .iter()
            .map(|(kind, _)| plain(*kind))
            .collect::<Vec<_>>()
            .join("$"),
        kind => plain(kind).into(),
    }
}

fn sortable(kind: ParamType) -> bool {
    !matches!(kind, ParamType::Composite | ParamType::Special)
}

/// A minimal valid resource of the type, for conditional writes.
fn minimal(resource_type: &str) -> Value {
    match resource_type {
        "Observation" => json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "sweep conditional"}}),
        "Encounter" => {
            json!({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}})
        }
        t => json!({"resourceType": t}),
    }
}

/// Types preferred as a reference's target (those the walk uses first).
const PREFERRED: [&str; 5] = [
    "Patient",
    "Observation",
    "Encounter",
    "Practitioner",
    "Organization",
];

fn target_of(param: &SearchParam) -> String {
    PREFERRED
        .iter()
        .find(|t| param.targets.iter().any(|x| x == *t))
        .map(|t| t.to_string())
        .unwrap_or_else(|| param.targets[0].clone())
}

/// A reference parameter of another walk type (else the same) targeting
/// `resource_type`: `(source type, code)`.
fn chain_into(resource_type: &str) -> Option<(String, String)> {
    let registry = Registry::get();
    let mut sources: Vec<&str> = WALK_TYPES
        .iter()
        .copied()
        .filter(|t| *t != resource_type)
        .collect();
    sources.push(resource_type);
    sources.into_iter().find_map(|source| {
        registry
            .params_for(source)
            .into_iter()
            .filter(|p| p.kind == ParamType::Reference && p.reference_view().is_none())
            .find(|p| p.targets.iter().any(|t| t == resource_type))
            .map(|p| (source.to_string(), p.code.clone()))
    })
}

/// One request and what it is.
struct Probe {
    form: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    if_none_exist: Option<String>,
}

impl Probe {
    fn search(form: &'static str, path: String) -> Probe {
        Probe {
            form,
            method: Method::GET,
            path,
            body: None,
            if_none_exist: None,
        }
    }

    /// What identifies the request (the control's answer is kept by it).
    fn key(&self) -> String {
        format!("{} {} {:?}", self.method, self.path, self.body)
    }

    /// Searches (GET, or POST to `_search`), which change nothing.
    fn is_search(&self) -> bool {
        self.method == Method::GET || self.path.ends_with("_search")
    }

    async fn send(&self, session: &Session) -> (u16, Value) {
        let mut request = session.fhir(self.method.clone(), &self.path);
        match &self.body {
            // A form body (`POST _search`).
            Some(Value::String(form)) => {
                request = request
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.clone());
            }
            Some(body) => {
                let content_type = if self.method == Method::PATCH {
                    "application/json-patch+json"
                } else {
                    "application/fhir+json"
                };
                request = request
                    .header("Content-Type", content_type)
                    .body(body.to_string());
            }
            None => {}
        }
        if let Some(condition) = &self.if_none_exist {
            request = request.header("If-None-Exist", condition);
        }
        status_json(request.send().await.expect("request")).await
    }
}

struct Sweep {
    resource_type: String,
    reach: Reach,
    /// Reference parameters of the type, `(code, target)`, for `_has` links.
    links: Vec<(String, String)>,
    chain: Option<(String, String)>,
    /// A stored Patient whose compartment holds the type's samples (not for Patient).
    compartment_owner: Option<String>,
}

impl Sweep {
    fn new(resource_type: &str) -> Sweep {
        let registry = Registry::get();
        let links = registry
            .params_for(resource_type)
            .into_iter()
            .filter(|p| p.kind == ParamType::Reference && !p.targets.is_empty())
            .map(|p| (p.code.clone(), target_of(p)))
            .collect();
        Sweep {
            resource_type: resource_type.to_string(),
            reach: reach(resource_type),
            links,
            chain: chain_into(resource_type),
            compartment_owner: None,
        }
    }

    /// Every type a form names, which the members' policies must let them search.
    fn types(&self) -> BTreeSet<String> {
        let mut types: BTreeSet<String> = WALK_TYPES.iter().map(|t| t.to_string()).collect();
        types.extend(PREFERRED.iter().map(|t| t.to_string()));
        types.extend(self.links.iter().map(|(_, target)| target.clone()));
        types
    }

    /// The search forms naming `param`, for a member hiding `hidden` (the
    /// `_has` link is one that does not read it).
    fn search_probes(&self, param: &SearchParam, hidden: Option<&str>) -> Vec<Probe> {
        let t = &self.resource_type;
        let code = &param.code;
        let value = search_value(param);
        let mut probes = vec![Probe::search("direct", format!("{t}?{code}={value}"))];
        if sortable(param.kind) {
            probes.push(Probe::search("sort", format!("{t}?_sort={code}")));
        }
        probes.push(Probe::search(
            "missing",
            format!("{t}?{code}:missing=false"),
        ));
        let modifier = match param.kind {
            ParamType::Token => Some("not"),
            ParamType::String => Some("contains"),
            ParamType::Uri => Some("below"),
            _ => None,
        };
        if let Some(modifier) = modifier {
            probes.push(Probe::search(
                "modifier",
                format!("{t}?{code}:{modifier}={value}"),
            ));
        }
        probes.push(Probe::search(
            "or",
            format!("{t}?_id=x&{code}={value},{value}"),
        ));
        probes.push(Probe {
            form: "POST _search",
            method: Method::POST,
            path: format!("{t}/_search"),
            body: Some(Value::String(format!("{code}={value}"))),
            if_none_exist: None,
        });
        if let Some(owner) = &self.compartment_owner {
            probes.push(Probe::search(
                "compartment",
                format!("Patient/{owner}/{t}?{code}={value}"),
            ));
        }
        probes.push(Probe::search(
            "system, one type",
            format!("?_type={t}&{code}={value}"),
        ));
        if let Some((source, link)) = &self.chain {
            probes.push(Probe::search(
                "chain",
                format!("{source}?{link}:{t}.{code}={value}"),
            ));
        }
        let link = self.links.iter().find(|(link, _)| {
            link != code && hidden.is_none_or(|h| !self.reach.reads[link].contains(h))
        });
        if let Some((link, target)) = link {
            probes.push(Probe::search(
                "has",
                format!("{target}?_has:{t}:{link}:{code}={value}"),
            ));
        }
        if param.kind == ParamType::Reference && !param.targets.is_empty() {
            let target = target_of(param);
            probes.push(Probe::search(
                "chain link",
                format!("{t}?{code}:{target}._id=x"),
            ));
            probes.push(Probe::search(
                "has link",
                format!("{target}?_has:{t}:{code}:_id=x"),
            ));
            probes.push(Probe::search("include", format!("{t}?_include={t}:{code}")));
            probes.push(Probe::search(
                "revinclude",
                format!("{target}?_revinclude={t}:{code}"),
            ));
            probes.push(Probe::search(
                "include iterate",
                format!("{target}?_revinclude={t}:{code}&_include:iterate={t}:{code}"),
            ));
            probes.push(Probe::search(
                "reference identifier",
                format!("{t}?{code}:identifier=urn:x|x"),
            ));
        }
        probes
    }

    fn write_probes(&self, param: &SearchParam) -> Vec<Probe> {
        let t = &self.resource_type;
        let condition = format!("{}={}", param.code, search_value(param));
        let path = format!("{t}?{condition}");
        vec![
            Probe {
                form: "conditional update",
                method: Method::PUT,
                path: path.clone(),
                body: Some(minimal(t)),
                if_none_exist: None,
            },
            Probe {
                form: "conditional patch",
                method: Method::PATCH,
                path: path.clone(),
                body: Some(json!([{"op": "add", "path": "/language", "value": "en"}])),
                if_none_exist: None,
            },
            Probe {
                form: "conditional delete",
                method: Method::DELETE,
                path,
                body: None,
                if_none_exist: None,
            },
            Probe {
                form: "If-None-Exist",
                method: Method::POST,
                path: t.clone(),
                body: Some(minimal(t)),
                if_none_exist: Some(condition),
            },
        ]
    }
}

/// A member whose policy lets it use every type in `types`, hiding `hidden` on `resource_type`.
async fn member(
    app: &TestApp,
    root: &Session,
    admin: &Session,
    project_id: &str,
    resource_type: &str,
    types: &BTreeSet<String>,
    hidden: Option<&str>,
) -> Session {
    let entries: Vec<Value> = types
        .iter()
        .map(|t| match hidden {
            Some(field) if t == resource_type => {
                json!({"resourceType": t, "hiddenFields": [field]})
            }
            _ => json!({"resourceType": t}),
        })
        .collect();
    let policy = admin
        .create(
            json!({"resourceType": "AccessPolicy", "name": format!("sweep {hidden:?}"),
            "resource": entries}),
        )
        .await;
    let reference = format!("AccessPolicy/{}", policy["id"].as_str().unwrap());
    app.client_with(
        root,
        project_id,
        json!({"accessPolicy": {"reference": reference}}),
        None,
    )
    .await
}

/// `(id, versionId)` of every stored resource of a type.
async fn snapshot(admin: &Session, resource_type: &str) -> Vec<(String, String)> {
    let (status, body) = status_json(
        admin
            .get(&format!("{resource_type}?_count=1000&_total=accurate"))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut rows: Vec<(String, String)> = body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[derive(Default)]
struct Counts {
    params: usize,
    pairs: usize,
    refused: BTreeMap<&'static str, usize>,
    not_applicable: BTreeMap<&'static str, usize>,
    converse: usize,
}

async fn sweep(resource_type: &str) {
    let mut sweep = Sweep::new(resource_type);
    let registry = Registry::get();
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let project = app.project(&format!("sweep-{resource_type}")).await;
    let admin = &project.admin;
    if resource_type != "Patient" {
        let owner = admin
            .create(json!({"resourceType": "Patient", "id": "sweep-patient"}))
            .await;
        sweep.compartment_owner = Some(owner["id"].as_str().unwrap().to_string());
    }
    for sample in samples(resource_type) {
        let text = sample.to_string();
        let text = match &sweep.compartment_owner {
            Some(owner) => text.replace("Patient/sweep-patient", &format!("Patient/{owner}")),
            None => text,
        };
        admin.create(serde_json::from_str(&text).unwrap()).await;
    }
    let before = snapshot(admin, resource_type).await;
    let types = sweep.types();
    let control = member(&app, &root, admin, &project.id, resource_type, &types, None).await;
    let mut members: HashMap<String, Session> = HashMap::new();
    for element in &sweep.reach.elements {
        let session = member(
            &app,
            &root,
            admin,
            &project.id,
            resource_type,
            &types,
            Some(element),
        )
        .await;
        members.insert(element.clone(), session);
    }

    // The control member (nothing hidden) answers each search form, once per path.
    let mut answered: HashMap<String, bool> = HashMap::new();
    let mut counts = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    for param in registry.params_for(resource_type) {
        let elements = &sweep.reach.reads[&param.code];
        if elements.is_empty() {
            continue;
        }
        counts.params += 1;
        for element in elements {
            counts.pairs += 1;
            let session = &members[element];
            let mut probes = sweep.search_probes(param, Some(element));
            probes.extend(sweep.write_probes(param));
            for probe in probes {
                if probe.is_search() {
                    let ok = match answered.get(&probe.key()) {
                        Some(ok) => *ok,
                        None => {
                            let (status, body) = probe.send(&control).await;
                            let ok = status == 200;
                            if !ok && std::env::var("FHIRGATE_SWEEP_DEBUG").is_ok() {
                                eprintln!(
                                    "NA {} {} {status} {}",
                                    probe.form, probe.path, body["issue"][0]["diagnostics"]
                                );
                            }
                            if !ok && probe.form == "direct" {
                                failures.push(format!(
                                    "control member: {} answered {status}: {body}",
                                    probe.path
                                ));
                            }
                            answered.insert(probe.key(), ok);
                            ok
                        }
                    };
                    if !ok {
                        *counts.not_applicable.entry(probe.form).or_default() += 1;
                        continue;
                    }
                }
                let (status, body) = probe.send(session).await;
                let needle = format!(
                    "Search parameter '{}' reads {element}, which your access policy hides",
                    param.code
                );
                let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
                if status != 403
                    || body["resourceType"] != "OperationOutcome"
                    || !text.contains(&needle)
                {
                    failures.push(format!(
                        "{resource_type}.{} with {element} hidden, {}: {} {} answered {status}: {body}",
                        param.code, probe.form, probe.method, probe.path
                    ));
                } else {
                    *counts.refused.entry(probe.form).or_default() += 1;
                }
            }
        }
    }

    // The converse: an element the parameter does not read, hidden.
    let mut rotation = 0usize;
    for param in registry.params_for(resource_type) {
        if param.code == "_content" || param.code == "_query" {
            continue;
        }
        let reads = &sweep.reach.reads[&param.code];
        let mut text = param.expression.clone();
        for (_, component) in &param.components {
            text.push_str(component);
        }
        let unrelated: Vec<&String> = sweep
            .reach
            .elements
            .iter()
            .filter(|e| {
                let top = e.split('.').next().unwrap();
                let named = text.contains(top) || (param.code == "_text" && top == "text");
                !reads.contains(*e) && !named
            })
            .collect();
        let mut checks: Vec<&String> = Vec::new();
        if !unrelated.is_empty() {
            checks.push(unrelated[rotation % unrelated.len()]);
            rotation += 1;
        }
        // Nested siblings: hides a child of an element the parameter reads, not one it reads.
        for path in nested(resource_type) {
            let parent = path.split('.').next().unwrap();
            if reads.contains(parent) && !reads.iter().any(|r| r == path) {
                checks.push(sweep.reach.elements.iter().find(|e| e == path).unwrap());
            }
        }
        for element in checks {
            for probe in sweep.search_probes(param, None).into_iter().take(2) {
                if answered.get(&probe.key()) == Some(&false) {
                    continue;
                }
                let (status, body) = probe.send(&members[element]).await;
                counts.converse += 1;
                if status != 200 {
                    failures.push(format!(
                        "converse: {resource_type}.{} (reads {reads:?}) with {element} hidden, {}: {} answered {status}: {body}",
                        param.code, probe.form, probe.path
                    ));
                }
            }
        }
    }

    let after = snapshot(admin, resource_type).await;
    if before != after {
        failures.push(format!(
            "refused conditional writes changed the stored {resource_type}s: {before:?} became {after:?}"
        ));
    }
    let refused: usize = counts.refused.values().sum();
    eprintln!(
        "hidden sweep {resource_type}: {} parameters x {} elements = {} (parameter, hidden element) pairs; \
         {refused} refusals checked {:?}; not applicable {:?}; {} converse answers",
        counts.params,
        sweep.reach.elements.len(),
        counts.pairs,
        counts.refused,
        counts.not_applicable,
        counts.converse
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The data-driven reachability is only as good as the samples: every
/// parameter with values must get rows from some sample and read something.
#[test]
fn samples_exercise_every_parameter() {
    for resource_type in WALK_TYPES {
        let reach = reach(resource_type);
        for param in Registry::get().params_for(resource_type) {
            match param.code.as_str() {
                // Server columns (reads given by definition), no expression.
                "_id" | "_lastUpdated" | "_query" => continue,
                _ => {}
            }
            assert!(
                reach.indexed[&param.code],
                "no {resource_type} sample gives {} rows",
                param.code
            );
            assert!(
                !reach.reads[&param.code].is_empty(),
                "{resource_type}.{} reads nothing removable",
                param.code
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn patient_parameters_refused_on_hidden_elements() {
    sweep("Patient").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn observation_parameters_refused_on_hidden_elements() {
    sweep("Observation").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn encounter_parameters_refused_on_hidden_elements() {
    sweep("Encounter").await;
}
