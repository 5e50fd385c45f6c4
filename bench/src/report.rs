//! The report: tables on stdout and the JSON document.

use serde_json::{json, Value};

use crate::stats::{ScenarioResult, Status};

/// The results at one data-set size.
pub struct SizeRun {
    pub patients: usize,
    pub resources: usize,
    pub results: Vec<ScenarioResult>,
}

fn find<'a>(results: &'a [ScenarioResult], name: &str) -> Option<&'a ScenarioResult> {
    results
        .iter()
        .find(|r| r.name == name && r.status == Status::Ok)
}

/// Each HTTP scenario with the baseline that is its floor in PostgreSQL
/// alone, compared by [`ScenarioResult::throughput`].
const BASELINES: [(&str, &str); 6] = [
    ("read", "baseline-read"),
    ("search-token", "baseline-search-token"),
    ("search-include", "baseline-search-include"),
    ("search-chain", "baseline-search-chain"),
    ("create", "baseline-insert"),
    ("transaction", "baseline-ingest"),
];

fn ratio(part: f64, whole: f64) -> f64 {
    (part / whole.max(1e-9) * 10000.0).round() / 10000.0
}

/// The scenarios, with `fraction_of_baseline` on those in [`BASELINES`]
/// when their baseline ran, and `fraction_of_unrestricted` on the rows of a
/// restricted caller (`read[compartment]` against `read`).
pub fn scenarios_json(results: &[ScenarioResult]) -> Vec<Value> {
    results
        .iter()
        .map(|r| {
            let mut v = r.to_json();
            if r.status != Status::Ok {
                return v;
            }
            let baseline = BASELINES
                .iter()
                .find(|(http, _)| *http == r.name)
                .and_then(|(_, sql)| find(results, sql));
            if let Some(b) = baseline {
                v["fraction_of_baseline"] = json!(ratio(r.throughput(), b.throughput()));
            }
            if let Some((scenario, _)) = r.name.split_once('[') {
                if let Some(u) = find(results, scenario) {
                    v["fraction_of_unrestricted"] =
                        json!(ratio(r.requests_per_second(), u.requests_per_second()));
                }
            }
            v
        })
        .collect()
}

pub fn sizes_json(sizes: &[SizeRun]) -> Vec<Value> {
    sizes
        .iter()
        .map(|s| {
            json!({
                "patients": s.patients,
                "resources": s.resources,
                "scenarios": scenarios_json(&s.results),
            })
        })
        .collect()
}

/// Per scenario of the first size: req/s and p99 at each size, and the
/// throughput at the largest size over that at the smallest.
pub fn growth_json(sizes: &[SizeRun]) -> Vec<Value> {
    let (Some(first), Some(last)) = (sizes.first(), sizes.last()) else {
        return Vec::new();
    };
    first
        .results
        .iter()
        .map(|r| {
            let at: Vec<Value> = sizes
                .iter()
                .map(|s| {
                    let row = find(&s.results, &r.name);
                    json!({
                        "patients": s.patients,
                        "requests_per_second": row.map(|x| (x.requests_per_second() * 1000.0).round() / 1000.0),
                        "p99_ms": row.and_then(|x| x.p99_ms),
                    })
                })
                .collect();
            let throughput_ratio = match (find(&first.results, &r.name), find(&last.results, &r.name)) {
                (Some(a), Some(b)) => json!(ratio(b.requests_per_second(), a.requests_per_second())),
                _ => Value::Null,
            };
            json!({"name": r.name, "sizes": at, "throughput_ratio": throughput_ratio})
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

pub fn print_table(results: &[ScenarioResult]) {
    println!(
        "{:<28} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}  note",
        "scenario", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
    for r in results {
        let mut note = match r.status {
            Status::Ok => String::new(),
            s => format!(
                "{}: {}",
                s.as_str().to_uppercase(),
                r.reason.clone().unwrap_or_default()
            ),
        };
        if let Some(rps) = r.resources_per_second {
            note = format!("{rps:.0} resources/s {note}");
        }
        let note: String = note.chars().take(160).collect();
        println!(
            "{:<28} {:>9} {:>10.1} {:>9} {:>9} {:>9} {:>7}  {}",
            r.name,
            r.requests,
            r.requests_per_second(),
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.errors,
            note.trim_end()
        );
    }
    for (http, sql) in BASELINES {
        if let (Some(h), Some(b)) = (find(results, http), find(results, sql)) {
            let unit = if h.resources_per_second.is_some() {
                "resources/s"
            } else {
                "req/s"
            };
            println!(
                "{http} over HTTP: {:.0} {unit} = {:.1}% of {sql} ({:.0} {unit})",
                h.throughput(),
                ratio(h.throughput(), b.throughput()) * 100.0,
                b.throughput()
            );
        }
    }
}

/// req/s and p99 of every scenario at every size, then largest / smallest.
pub fn print_growth(sizes: &[SizeRun]) {
    println!("\ngrowth: req/s (p99 ms) by patients");
    let mut header = format!("{:<28}", "scenario");
    for s in sizes {
        header.push_str(&format!(" {:>22}", s.patients));
    }
    println!("{header} {:>8}", "ratio");
    for row in growth_json(sizes) {
        let mut line = format!("{:<28}", row["name"].as_str().unwrap_or_default());
        for at in row["sizes"].as_array().into_iter().flatten() {
            let cell = match at["requests_per_second"].as_f64() {
                Some(rps) => format!("{rps:.1} ({})", ms(at["p99_ms"].as_f64())),
                None => "-".to_string(),
            };
            line.push_str(&format!(" {cell:>22}"));
        }
        let ratio = row["throughput_ratio"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
        println!("{line} {ratio:>8}");
    }
}

/// Each scenario both servers ran, with their throughput (resources/s
/// for `transaction`, else req/s), p99 and the ratio of the first's
/// throughput to the second's.
pub fn comparison(first: &[ScenarioResult], second: &[ScenarioResult]) -> Vec<Value> {
    first
        .iter()
        .filter(|a| a.status == Status::Ok)
        .filter_map(|a| {
            let b = find(second, &a.name)?;
            let unit = if a.resources_per_second.is_some() {
                "resources/s"
            } else {
                "req/s"
            };
            Some(json!({
                "name": a.name,
                "unit": unit,
                "first": a.throughput(),
                "first_p99_ms": a.p99_ms,
                "second": b.throughput(),
                "second_p99_ms": b.p99_ms,
                "ratio": ratio(a.throughput(), b.throughput()),
            }))
        })
        .collect()
}

pub fn print_comparison(first: &str, second: &str, rows: &[Value]) {
    println!("\ncomparison: 1 = {first}, 2 = {second}");
    println!(
        "{:<28} {:>12} {:>9} {:>12} {:>9} {:>8}  unit",
        "scenario", "1", "1 p99 ms", "2", "2 p99 ms", "1 / 2"
    );
    for row in rows {
        println!(
            "{:<28} {:>12.1} {:>9} {:>12.1} {:>9} {:>8.2}  {}",
            row["name"].as_str().unwrap_or_default(),
            row["first"].as_f64().unwrap_or(0.0),
            ms(row["first_p99_ms"].as_f64()),
            row["second"].as_f64().unwrap_or(0.0),
            ms(row["second_p99_ms"].as_f64()),
            row["ratio"].as_f64().unwrap_or(0.0),
            row["unit"].as_str().unwrap_or_default(),
        );
    }
}

pub fn print_server(server: &Value) {
    if server["cpu_seconds"].is_null() {
        return;
    }
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    println!(
        "server pid {}: peak RSS {:.1} MiB (VmHWM, process lifetime; {:.1} MiB sampled during the scenarios), \
         CPU {:.2} s during the scenarios, {:.2} s during the load",
        server["pid"],
        mib(&server["peak_rss_bytes"]),
        mib(&server["sampled_peak_rss_bytes"]),
        server["cpu_seconds"].as_f64().unwrap_or(0.0),
        server["load_cpu_seconds"].as_f64().unwrap_or(0.0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    fn result(name: &str, requests: u64, seconds: f64) -> ScenarioResult {
        let mut rec = Recorder::default();
        for _ in 0..requests {
            rec.ok(Duration::from_millis(2));
        }
        ScenarioResult::from_recorder(name, rec, seconds, false)
    }

    #[test]
    fn growth_compares_largest_with_smallest() {
        let sizes = [
            SizeRun {
                patients: 10,
                resources: 80,
                results: vec![result("read", 400, 1.0)],
            },
            SizeRun {
                patients: 100,
                resources: 800,
                results: vec![result("read", 300, 1.0)],
            },
        ];
        let growth = growth_json(&sizes);
        assert_eq!(growth[0]["name"], "read");
        assert_eq!(growth[0]["sizes"][1]["patients"], 100);
        assert_eq!(growth[0]["sizes"][1]["requests_per_second"], 300.0);
        assert_eq!(growth[0]["throughput_ratio"], 0.75);
    }

    #[test]
    fn comparison_pairs_the_scenarios_both_ran() {
        let rows = comparison(
            &[result("read", 400, 1.0), result("create", 50, 1.0)],
            &[result("read", 100, 1.0)],
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["name"], "read");
        assert_eq!(rows[0]["ratio"], 4.0);
        assert_eq!(rows[0]["unit"], "req/s");
    }

    #[test]
    fn restricted_rows_compare_with_the_unrestricted_one() {
        let rows = scenarios_json(&[
            result("read", 400, 1.0),
            result("read[compartment]", 100, 1.0),
        ]);
        assert!(rows[0].get("fraction_of_unrestricted").is_none());
        assert_eq!(rows[1]["fraction_of_unrestricted"], 0.25);
    }
}
