//! Property tests of the FHIRPath engine with a seeded generator (the same
//! cases on every run): random expressions over random resources never
//! panic, and work is bounded: expressions that would take super-linear
//! time or recurse without end stop with an error instead.

use fhir_model::fhirpath::{Expression, FhirPathError, MAX_WORK};
use serde_json::{json, Map, Value};

/// SplitMix64: small, seeded, good enough to pick grammar rules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "name",
    "given",
    "family",
    "value",
    "valueQuantity",
    "valueString",
    "code",
    "coding",
    "system",
    "status",
    "extension",
    "url",
    "id",
    "birthDate",
    "_birthDate",
    "item",
    "effectiveDateTime",
    "component",
    "low",
    "high",
    "unit",
    "active",
    "contained",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 8 }) {
        0 => json!(rng.below(100) as i64 - 50),
        1 => json!(rng.below(1000) as f64 / 7.0),
        2 => json!(rng.pick(&[
            "a",
            "final",
            "2024-01-02",
            "2020-05-06T10:00:00Z",
            "",
            "http://x"
        ])),
        3 => json!(rng.below(2) == 0),
        4 => Value::Null,
        5 | 6 => {
            let mut map = Map::new();
            for _ in 0..rng.below(5) {
                map.insert(rng.pick(KEYS).to_string(), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
        _ => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
    }
}

fn random_resource(rng: &mut Rng) -> Value {
    let mut resource = match random_value(rng, 4) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let resource_type = *rng.pick(&["Patient", "Observation", "Questionnaire", "Bundle"]);
    resource.insert("resourceType".into(), json!(resource_type));
    Value::Object(resource)
}

const FUNCTIONS: &[&str] = &[
    "exists()",
    "empty()",
    "first()",
    "last()",
    "count()",
    "distinct()",
    "not()",
    "single()",
    "children()",
    "descendants()",
    "toString()",
    "toInteger()",
    "length()",
    "upper()",
    "hasValue()",
    "type().name",
    "tail()",
    "skip(1)",
    "take(2)",
    "lowBoundary()",
    "trace('x')",
];

fn random_expression(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 {
        return match rng.below(6) {
            0 => rng.pick(KEYS).to_string(),
            1 => format!("{}", rng.below(10)),
            2 => rng
                .pick(&[
                    "'a'",
                    "@2024-01-01",
                    "@T10:30",
                    "4 'mg'",
                    "7 days",
                    "1.50",
                    "{}",
                ])
                .to_string(),
            3 => rng
                .pick(&["%resource", "%context", "$this", "%current", "%ucum"])
                .to_string(),
            _ => format!(
                "{}.{}",
                rng.pick(&["Patient", "Observation", "Resource"]),
                rng.pick(KEYS)
            ),
        };
    }
    let a = random_expression(rng, depth - 1);
    match rng.below(9) {
        0 => format!("{a}.{}", rng.pick(KEYS)),
        1 => format!("{a}.{}", rng.pick(FUNCTIONS)),
        2 => {
            let b = random_expression(rng, depth - 1);
            let op = rng.pick(&[
                "=", "!=", "~", "<", ">=", "+", "-", "*", "/", "div", "mod", "&", "|", "and", "or",
                "xor", "implies", "in", "contains",
            ]);
            format!("({a} {op} {b})")
        }
        3 => format!(
            "{a}.{}({})",
            rng.pick(&["where", "select", "all", "exists", "repeat"]),
            random_expression(rng, depth - 1)
        ),
        4 => format!("{a}[{}]", rng.below(3)),
        5 => format!(
            "({a} {} {})",
            rng.pick(&["is", "as"]),
            rng.pick(&["String", "Quantity", "HumanName", "code", "Patient"])
        ),
        6 => format!(
            "iif({a}, {}, {})",
            random_expression(rng, depth - 1),
            random_expression(rng, depth - 1)
        ),
        7 => format!("{a}.aggregate($total + $this, 0)"),
        _ => format!("-{a}"),
    }
}

#[test]
fn random_expressions_over_random_resources_never_panic() {
    let mut rng = Rng(0x5eed);
    let current = json!({"resourceType": "Observation", "status": "final", "effectiveDateTime": "2024-02-01"});
    let variables = [("current", &current)];
    let mut evaluated = 0;
    for _ in 0..3000 {
        let resource = random_resource(&mut rng);
        let depth = rng.below(5);
        let source = random_expression(&mut rng, depth);
        let Ok(expression) = Expression::parse(&source) else {
            continue;
        };
        evaluated += 1;
        // Errors are fine (a collection where one item is needed, a type
        // mismatch); a panic fails the test.
        let _ = expression.evaluate_with(&resource, &variables);
        let _ = expression.reach();
    }
    assert!(
        evaluated > 1500,
        "most generated expressions parse ({evaluated})"
    );
}

#[test]
fn random_text_never_panics_the_parser() {
    let mut rng = Rng(42);
    let pieces = [
        "Patient", ".", "name", "(", ")", "[", "]", "'", "`", "@", "2024-", "T", ":", "%", "$",
        "this", "where", " ", "1", ".5", "|", "=", "!", "~", "<", ">", "/", "*", "-", "+", "&",
        "{", "}", ",", "is", "as", "\\", "u00e9", "//", "/*", "*/", "é", "\n",
    ];
    for _ in 0..5000 {
        let source: String = (0..rng.below(16)).map(|_| *rng.pick(&pieces)).collect();
        match Expression::parse(&source) {
            Err(FhirPathError::Syntax { position, .. }) => {
                assert!(position <= source.chars().count(), "{source:?}: {position}")
            }
            Err(other) => panic!("{source:?}: parsing gave {other}"),
            Ok(_) => {}
        }
    }
}

/// Questionnaire items nested `depth` levels, each level `width` wide.
fn bushy(depth: usize, width: usize) -> Value {
    if depth == 0 {
        return json!([]);
    }
    Value::Array(
        (0..width)
            .map(|i| json!({"linkId": format!("{depth}.{i}"), "item": bushy(depth - 1, width)}))
            .collect(),
    )
}

#[test]
fn repeated_navigation_stops_at_the_work_bound() {
    // 6^7 items: far more than one evaluation may produce.
    let resource = json!({"resourceType": "Questionnaire", "item": bushy(7, 6)});
    for source in [
        "descendants().descendants().count()",
        "repeat(item).count()",
        "repeat(item).linkId.distinct().count()",
        "descendants() | descendants()",
        "item.select(descendants()).select(descendants()).count()",
    ] {
        let result = Expression::parse(source).unwrap().evaluate(&resource);
        assert!(
            matches!(&result, Err(FhirPathError::Evaluation(m)) if m.contains("too much work")),
            "{source}: {result:?}"
        );
    }
    // Strings cannot double without end either.
    let questionnaire = json!({"resourceType": "Questionnaire", "item": bushy(3, 6)});
    let doubling = Expression::parse("repeat(item).linkId.aggregate($total & $total & $this, '')")
        .unwrap()
        .evaluate(&questionnaire);
    assert!(
        matches!(&doubling, Err(FhirPathError::Evaluation(m)) if m.contains("longer than")),
        "{doubling:?}"
    );
    // Within the bound the same navigation answers.
    let small = json!({"resourceType": "Questionnaire", "item": bushy(3, 3)});
    let count = Expression::parse("repeat(item).count()")
        .unwrap()
        .evaluate(&small)
        .unwrap();
    assert_eq!(count.len(), 1);
    const { assert!(MAX_WORK >= 1_000_000) };
}

#[test]
fn deep_expressions_are_syntax_errors_not_stack_overflows() {
    let chain = format!("Patient{}", ".name".repeat(1000));
    let nested = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    let sums = format!("1{}", " + 1".repeat(1000));
    let long = "a".repeat(20_000);
    for source in [chain, nested, sums, long] {
        assert!(
            matches!(
                Expression::parse(&source),
                Err(FhirPathError::Syntax { .. })
            ),
            "{}...",
            &source[..40]
        );
    }
    // Deep resources are walked without recursion (1000 levels: serde_json
    // itself drops a value recursively).
    let mut deep = json!("leaf");
    for _ in 0..1000 {
        deep = json!({"item": [deep]});
    }
    let resource = json!({"resourceType": "Questionnaire", "item": [deep]});
    let count = Expression::parse("descendants().count()")
        .unwrap()
        .evaluate(&resource)
        .unwrap();
    assert_eq!(count.len(), 1);
}
