//! Deterministic synthetic FHIR data: Patients with Encounters, Observations
//! and Conditions. References between resources are `urn:uuid:` fullUrls, so
//! the same data can be posted as a transaction Bundle or, after rewriting the
//! references, one resource at a time.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

pub const MRN_SYSTEM: &str = "urn:fhirgate-bench:mrn";
/// Identifier system of the Patients the `mixed` scenario creates, so they
/// never answer the token searches on the loaded data.
pub const MIXED_SYSTEM: &str = "urn:fhirgate-bench:mixed";
pub const LOINC_SYSTEM: &str = "http://loinc.org";
/// The Observation code the `search-include` scenario (and its baseline)
/// searches: one of those generated, so every search finds a page.
pub const INCLUDE_CODE: &str = OBSERVATION_CODES[0].0;

pub const FAMILIES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
];

const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Nancy",
    "Lisa",
    "Betty",
    "Margaret",
    "Sandra",
    "Ashley",
];
const GIVEN_MALE: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
];
const CITIES: &[(&str, &str)] = &[
    ("Boston", "MA"),
    ("Springfield", "IL"),
    ("Portland", "OR"),
    ("Austin", "TX"),
    ("Denver", "CO"),
    ("Madison", "WI"),
    ("Raleigh", "NC"),
    ("Tucson", "AZ"),
];
const STREETS: &[&str] = &[
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Pine Rd",
];

/// LOINC code, display, UCUM code, low and high of the generated value.
pub const OBSERVATION_CODES: &[(&str, &str, &str, f64, f64)] = &[
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95.0, 180.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55.0, 110.0),
    ("8867-4", "Heart rate", "/min", 50.0, 120.0),
    ("29463-7", "Body weight", "kg", 3.0, 140.0),
    ("8310-5", "Body temperature", "Cel", 35.5, 39.5),
    ("9279-1", "Respiratory rate", "/min", 10.0, 28.0),
];

const CONDITION_CODES: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("35489007", "Depressive disorder"),
    ("13645005", "Chronic obstructive lung disease"),
    ("55822004", "Hyperlipidemia"),
];

/// One resource to create, with the `urn:uuid:` it is referenced by.
#[derive(Debug, Clone)]
pub struct Res {
    pub full_url: String,
    pub resource_type: &'static str,
    pub body: Value,
}

/// A Patient and everything that refers to it, in dependency order (the
/// Patient first, Encounters before the Observations that cite them).
#[derive(Debug, Clone)]
pub struct Group {
    pub mrn: String,
    pub family: String,
    pub resources: Vec<Res>,
}

pub fn uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// `(year, month, day, hour, minute)` between 2015 and 2024.
fn instant(rng: &mut StdRng) -> (u32, u32, u32, u32, u32) {
    (
        rng.gen_range(2015..=2024),
        rng.gen_range(1..=12),
        rng.gen_range(1..=28),
        rng.gen_range(7..=18),
        rng.gen_range(0..=59),
    )
}

fn date_time(t: (u32, u32, u32, u32, u32), plus_minutes: u32) -> String {
    let minutes = t.3 * 60 + t.4 + plus_minutes;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:00Z",
        t.0,
        t.1,
        t.2,
        (minutes / 60).min(23),
        minutes % 60
    )
}

/// A date for `date=ge…` searches, spread over the generated range.
pub fn search_date(rng: &mut StdRng) -> String {
    format!(
        "{:04}-{:02}-01",
        rng.gen_range(2015..=2024),
        rng.gen_range(1..=12)
    )
}

pub fn patient(rng: &mut StdRng, system: &str, mrn: &str, family: &str) -> Value {
    let female = rng.gen_bool(0.5);
    let given = if female {
        pick(rng, GIVEN_FEMALE)
    } else {
        pick(rng, GIVEN_MALE)
    };
    let (city, state) = *pick(rng, CITIES);
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": system, "value": mrn }],
        "active": true,
        "name": [{ "use": "official", "family": family, "given": [given] }],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!(
            "{:04}-{:02}-{:02}",
            rng.gen_range(1930..=2020),
            rng.gen_range(1..=12),
            rng.gen_range(1..=28)
        ),
        "address": [{
            "use": "home",
            "line": [format!("{} {}", rng.gen_range(1..=9999), pick(rng, STREETS))],
            "city": city,
            "state": state,
            "postalCode": format!("{:05}", rng.gen_range(1000..=99999)),
            "country": "US"
        }]
    })
}

pub fn observation(
    rng: &mut StdRng,
    subject: &str,
    encounter: Option<&str>,
    effective: &str,
) -> Value {
    let (code, display, unit, low, high) = *pick(rng, OBSERVATION_CODES);
    let value = (rng.gen_range(low..high) * 10.0).round() / 10.0;
    let mut obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"
        }]}],
        "code": { "coding": [{ "system": LOINC_SYSTEM, "code": code, "display": display }] },
        "subject": { "reference": subject },
        "effectiveDateTime": effective,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit
        }
    });
    if let Some(encounter) = encounter {
        obs["encounter"] = json!({ "reference": encounter });
    }
    obs
}

/// Sizes of a group: Encounters, Observations per Encounter, Conditions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub encounters: usize,
    pub observations_per_encounter: usize,
    pub conditions: usize,
}

/// Other resources per Patient by default: 1-3 Encounters with 1-3
/// Observations each, 0-2 Conditions (means 2 × (1 + 2) + 1).
pub const DEFAULT_RESOURCES_PER_PATIENT: usize = 7;
/// `--resources-per-patient` range: the mean is `4 + most Observations per
/// Encounter`, which is at least 1; the top keeps a group inside a Bundle.
pub const RESOURCES_PER_PATIENT: std::ops::RangeInclusive<usize> = 5..=200;

impl Shape {
    /// A random shape whose mean number of resources besides the Patient is
    /// `others`: only the Observations per Encounter scale (uniform
    /// `1..=others - 4`), so the default draws the same numbers as always.
    pub fn random(rng: &mut StdRng, others: usize) -> Shape {
        Shape {
            encounters: rng.gen_range(1..=3),
            observations_per_encounter: rng.gen_range(1..=others.saturating_sub(4).max(1)),
            conditions: rng.gen_range(0..=2),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        1 + self.encounters * (1 + self.observations_per_encounter) + self.conditions
    }
}

pub fn group(rng: &mut StdRng, mrn: String, shape: Shape) -> Group {
    let family = pick(rng, FAMILIES).to_string();
    let patient_url = format!("urn:uuid:{}", uuid(rng));
    let mut resources = vec![Res {
        full_url: patient_url.clone(),
        resource_type: "Patient",
        body: patient(rng, MRN_SYSTEM, &mrn, &family),
    }];
    let mut observations = Vec::new();
    for _ in 0..shape.encounters {
        let start = instant(rng);
        let encounter_url = format!("urn:uuid:{}", uuid(rng));
        resources.push(Res {
            full_url: encounter_url.clone(),
            resource_type: "Encounter",
            body: json!({
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                    "display": "ambulatory"
                },
                "subject": { "reference": patient_url },
                "period": { "start": date_time(start, 0), "end": date_time(start, 45) }
            }),
        });
        for i in 0..shape.observations_per_encounter {
            let effective = date_time(start, 5 + i as u32);
            observations.push(Res {
                full_url: format!("urn:uuid:{}", uuid(rng)),
                resource_type: "Observation",
                body: observation(rng, &patient_url, Some(&encounter_url), &effective),
            });
        }
    }
    for _ in 0..shape.conditions {
        let (code, display) = *pick(rng, CONDITION_CODES);
        let onset = instant(rng);
        resources.push(Res {
            full_url: format!("urn:uuid:{}", uuid(rng)),
            resource_type: "Condition",
            body: json!({
                "resourceType": "Condition",
                "clinicalStatus": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active"
                }]},
                "verificationStatus": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed"
                }]},
                "code": { "coding": [{ "system": "http://snomed.info/sct", "code": code, "display": display }] },
                "subject": { "reference": patient_url },
                "onsetDateTime": date_time(onset, 0)
            }),
        });
    }
    resources.extend(observations);
    Group {
        mrn,
        family,
        resources,
    }
}

/// The data set, generated in order: the first `n` groups from a seed are
/// the same however they are taken, so a larger data set only adds to a
/// smaller one.
pub struct Generator {
    rng: StdRng,
    seed: u64,
    others: usize,
    next: usize,
}

impl Generator {
    pub fn new(seed: u64, resources_per_patient: usize) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            seed,
            others: resources_per_patient,
            next: 0,
        }
    }

    /// The next `patients` groups.
    pub fn take(&mut self, patients: usize) -> Vec<Group> {
        (0..patients)
            .map(|_| {
                let shape = Shape::random(&mut self.rng, self.others);
                let mrn = format!("{}-{:07}", self.seed, self.next);
                self.next += 1;
                group(&mut self.rng, mrn, shape)
            })
            .collect()
    }

    /// The mean number of other resources per Patient.
    pub fn resources_per_patient(&self) -> usize {
        self.others
    }

    /// Groups generated so far.
    pub fn generated(&self) -> usize {
        self.next
    }
}

/// A transaction Bundle of the given resources, each a POST with its fullUrl.
pub fn transaction_bundle<'a>(resources: impl IntoIterator<Item = &'a Res>) -> Value {
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            json!({
                "fullUrl": r.full_url,
                "resource": r.body,
                "request": { "method": "POST", "url": r.resource_type }
            })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entry })
}

/// Replaces every `reference` found in `map` (`urn:uuid:…` → `Type/id`).
pub fn rewrite_references(value: &mut Value, map: &mut dyn FnMut(&str) -> Option<String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object.iter_mut() {
                if key == "reference" {
                    if let Some(new) = v.as_str().and_then(&mut *map) {
                        *v = Value::String(new);
                    }
                } else {
                    rewrite_references(v, map);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_references(v, &mut *map)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(groups: &[Group]) -> Vec<Value> {
        groups
            .iter()
            .flat_map(|g| g.resources.iter().map(|r| r.body.clone()))
            .collect()
    }

    #[test]
    fn same_seed_same_data() {
        let a = Generator::new(7, DEFAULT_RESOURCES_PER_PATIENT).take(5);
        let b = Generator::new(7, DEFAULT_RESOURCES_PER_PATIENT).take(5);
        assert_eq!(bodies(&a), bodies(&b));
    }

    #[test]
    fn a_larger_data_set_extends_a_smaller_one() {
        let whole = Generator::new(3, 20).take(9);
        let mut parts = Generator::new(3, 20);
        let mut pieces = parts.take(4);
        pieces.extend(parts.take(5));
        assert_eq!(parts.generated(), 9);
        assert_eq!(bodies(&whole), bodies(&pieces));
        assert_eq!(pieces[8].mrn, "3-0000008");
    }

    #[test]
    fn resources_per_patient_is_the_mean() {
        for others in [DEFAULT_RESOURCES_PER_PATIENT, 20] {
            let groups = Generator::new(1, others).take(1000);
            let total: usize = groups.iter().map(|g| g.resources.len() - 1).sum();
            let mean = total as f64 / groups.len() as f64;
            assert!(
                (mean - others as f64).abs() < 0.05 * others as f64,
                "{others}: {mean}"
            );
        }
    }

    #[test]
    fn shape_counts_resources() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let shape = Shape::random(&mut rng, 12);
            assert_eq!(
                group(&mut rng, "x".into(), shape).resources.len(),
                shape.len()
            );
        }
    }

    #[test]
    fn rewrites_nested_references() {
        let mut v =
            json!({"subject": {"reference": "urn:uuid:a"}, "x": [{"reference": "Patient/1"}]});
        rewrite_references(&mut v, &mut |r| {
            (r == "urn:uuid:a").then(|| "Patient/9".to_string())
        });
        assert_eq!(v["subject"]["reference"], "Patient/9");
        assert_eq!(v["x"][0]["reference"], "Patient/1");
    }
}
