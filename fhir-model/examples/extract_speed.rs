//! Times search-index extraction (every search parameter of each resource's
//! type) over a fixed set of sample resources. Run in release, alternating
//! builds, to compare the FHIRPath engine before and after a change:
//!
//! `cargo run --release -p fhir-model --example extract_speed [rounds]`
//!
//! `extract_speed dump` prints the rows instead, to compare two builds' output.
//!
//! On a busy machine, count instructions instead of time (deterministic):
//! `valgrind --tool=callgrind target/release/examples/extract_speed 20`

use std::hint::black_box;
use std::time::Instant;

use fhir_model::search::{extract, Registry};
use serde_json::{json, Value};

const SUITE_INPUTS: &[&str] = &[
    include_str!("../tests/fhirpath-r4/inputs-json/patient-example.json"),
    include_str!("../tests/fhirpath-r4/inputs-json/observation-example.json"),
    include_str!("../tests/fhirpath-r4/inputs-json/questionnaire-example.json"),
    include_str!("../tests/fhirpath-r4/inputs-json/valueset-example-expansion.json"),
    include_str!("../tests/fhirpath-r4/inputs-json/codesystem-example.json"),
    include_str!("../tests/fhirpath-r4/inputs-json/appointment-examplereq.json"),
];

/// Resources shaped like fhirgate-bench's synthetic data.
fn synthetic(i: usize) -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": format!("MRN{i}")}],
               "name": [{"family": "Smith", "given": ["Ann", "Marie"]}], "gender": "female",
               "birthDate": "1970-01-01", "telecom": [{"system": "phone", "value": "555-1234"}],
               "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "country": "US"}]}),
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": format!("Patient/{i}")},
               "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T11:00:00Z"}}),
        json!({"resourceType": "Observation", "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
               "subject": {"reference": format!("Patient/{i}")}, "encounter": {"reference": "Encounter/1"},
               "effectiveDateTime": "2024-01-01T10:30:00Z",
               "valueQuantity": {"value": 72, "unit": "beats/min", "system": "http://unitsofmeasure.org", "code": "/min"}}),
        json!({"resourceType": "Condition", "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]},
               "subject": {"reference": format!("Patient/{i}")}, "onsetDateTime": "2010-05-01"}),
    ]
}

fn main() {
    let registry = Registry::get();
    let mut resources: Vec<Value> = SUITE_INPUTS
        .iter()
        .map(|text| serde_json::from_str(text).expect("sample resource"))
        .collect();
    for i in 0..10 {
        resources.extend(synthetic(i));
    }
    if std::env::args().nth(1).as_deref() == Some("dump") {
        for resource in &resources {
            for row in extract(registry, resource) {
                println!("{row:?}");
            }
        }
        return;
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let mut rows = 0;
    // Warm up.
    for resource in &resources {
        rows += extract(registry, resource).len();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for resource in &resources {
                black_box(extract(registry, black_box(resource)));
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (rounds * resources.len()) as f64;
        best = best.min(per);
    }
    println!(
        "{} resources ({rows} index rows), best of 5 x {rounds} rounds: {:.2} µs per resource",
        resources.len(),
        best / 1000.0
    );
}
