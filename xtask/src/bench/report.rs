//! Turning the samples into the report: medians and spreads per contender, ratios, the
//! issue's targets, JSON and a markdown table (the chart is in `svg`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::contender::Contender;
use super::scenario::{Metric, SCENARIOS};
use super::targets::{Target, targets};

/// Every value measured: metric name → contender → one value per round.
pub type Samples = BTreeMap<&'static str, BTreeMap<Contender, Vec<f64>>>;

/// One metric's summary.
pub struct Entry {
    pub metric: &'static Metric,
    /// Contender → (median, min, max).
    pub stats: BTreeMap<Contender, (f64, f64, f64)>,
    /// Contender → the value of each round, in order.
    pub samples: BTreeMap<Contender, Vec<f64>>,
}

impl Entry {
    pub fn median(&self, c: Contender) -> Option<f64> {
        self.stats.get(&c).map(|s| s.0)
    }

    pub fn ratio(&self, a: Contender, b: Contender) -> Option<f64> {
        Some(self.median(a)? / self.median(b)?).filter(|r| r.is_finite())
    }
}

pub struct Report {
    pub entries: Vec<Entry>,
    pub targets: Vec<Target>,
}

pub fn summarize(samples: &Samples) -> Report {
    let mut entries = Vec::new();
    for s in SCENARIOS {
        for metric in s.metrics {
            let Some(by) = samples.get(metric.name) else {
                continue;
            };
            let stats = by
                .iter()
                .filter_map(|(c, v)| Some((*c, stats(v)?)))
                .collect();
            entries.push(Entry {
                metric,
                stats,
                samples: by.clone(),
            });
        }
    }
    let targets = targets(&entries);
    Report { entries, targets }
}

/// Median, min and max of the finite values.
fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// The samples of an earlier report: each entry's `samples`, or for reports without them
/// its min, median and max (which are all the samples of a three-round run).
pub fn samples_from_json(report: &Value) -> Result<Samples> {
    let mut samples = Samples::new();
    let entries = report["scenarios"]
        .as_array()
        .context("no \"scenarios\" array in the report")?;
    for e in entries {
        let Some(metric) = SCENARIOS
            .iter()
            .flat_map(|s| s.metrics)
            .find(|m| Some(m.name) == e["name"].as_str())
        else {
            continue;
        };
        for c in Contender::ALL {
            let values: Vec<f64> = match e["samples"][c.name()].as_array() {
                Some(v) => v.iter().filter_map(Value::as_f64).collect(),
                None => [
                    &e["spread"][c.name()][0],
                    &e["results"][c.name()],
                    &e["spread"][c.name()][1],
                ]
                .iter()
                .filter_map(|v| v.as_f64())
                .collect(),
            };
            if !values.is_empty() {
                samples.entry(metric.name).or_default().insert(c, values);
            }
        }
    }
    Ok(samples)
}

fn round(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    let digits = if x.abs() >= 100.0 { 1.0 } else { 1000.0 };
    json!((x * digits).round() / digits)
}

/// The JSON report: one entry per metric (the issue's shape) plus targets and `meta`
/// (date, load, settings).
pub fn to_json(report: &Report, meta: Value) -> Value {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let scenarios: Vec<Value> = report
        .entries
        .iter()
        .map(|e| {
            let results: serde_json::Map<String, Value> = e
                .stats
                .iter()
                .map(|(c, s)| (c.name().to_string(), round(s.0)))
                .collect();
            let spread: serde_json::Map<String, Value> = e
                .stats
                .iter()
                .map(|(c, s)| (c.name().to_string(), json!([round(s.1), round(s.2)])))
                .collect();
            let samples: serde_json::Map<String, Value> = e
                .samples
                .iter()
                .map(|(c, v)| (c.name().to_string(), v.iter().map(|x| round(*x)).collect()))
                .collect();
            let mut ratios = serde_json::Map::new();
            for (key, a, b) in [
                ("sluice-ebpf/direct", Sluice, Direct),
                ("sluice-ebpf/envoy", Sluice, Envoy),
            ] {
                if let Some(r) = e.ratio(a, b) {
                    ratios.insert(key.into(), round(r));
                }
            }
            json!({
                "name": e.metric.name,
                "unit": e.metric.unit,
                "higher_is_better": e.metric.higher_is_better,
                "results": results,
                "spread": spread,
                "ratios": ratios,
                "samples": samples,
            })
        })
        .collect();
    let targets: Vec<Value> = report
        .targets
        .iter()
        .map(|t| {
            json!({
                "target": t.what,
                "value": t.value.map(round),
                "limit": t.limit,
                "at_least": t.at_least,
                "met": t.met(),
                "verdict": t.verdict(),
                "detail": t.detail,
            })
        })
        .collect();
    json!({"meta": meta, "scenarios": scenarios, "targets": targets})
}

pub fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Markdown: results (median, min–max), ratios, targets, what each scenario does.
pub fn to_markdown(report: &Report) -> String {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let mut md = String::from("| metric | unit |");
    for c in Contender::ALL {
        let _ = write!(md, " {} |", c.name());
    }
    md.push_str(" sluice-ebpf/direct | sluice-ebpf/envoy |\n|---|---|");
    md.push_str(&"---|".repeat(Contender::ALL.len() + 2));
    md.push('\n');
    for e in &report.entries {
        let cell = |c| match e.stats.get(&c) {
            Some((m, lo, hi)) => format!("{} ({}–{})", fmt(*m), fmt(*lo), fmt(*hi)),
            None => "–".into(),
        };
        let ratio = |a, b| {
            e.ratio(a, b)
                .map(|r| format!("{r:.2}×"))
                .unwrap_or("–".into())
        };
        let better = if e.metric.higher_is_better {
            "↑"
        } else {
            "↓"
        };
        let _ = write!(md, "| {} | {} {better} |", e.metric.name, e.metric.unit);
        for c in Contender::ALL {
            let _ = write!(md, " {} |", cell(c));
        }
        let _ = writeln!(
            md,
            " {} | {} |",
            ratio(Sluice, Direct),
            ratio(Sluice, Envoy)
        );
    }
    md.push_str("\n| target | limit | measured | verdict | detail |\n|---|---|---|---|---|\n");
    for t in &report.targets {
        let limit = format!(
            "{} {}{}",
            if t.at_least { "≥" } else { "≤" },
            t.limit,
            t.unit
        );
        let value = t
            .value
            .map(|v| format!("{}{}", fmt(v), t.unit))
            .unwrap_or("–".into());
        let _ = writeln!(
            md,
            "| {} | {limit} | {value} | {} | {} |",
            t.what,
            t.verdict(),
            t.detail
        );
    }
    md.push_str("\n| scenario | what |\n|---|---|\n");
    for s in SCENARIOS {
        let _ = writeln!(md, "| `{}` | {} |", s.name, s.what);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[f64::NAN]), None);
    }

    #[test]
    fn report_has_the_issue_shape() {
        let mut samples = Samples::new();
        let by = samples.entry("l4-throughput-1").or_default();
        by.insert(Contender::Direct, vec![20.0, 22.0, 21.0]);
        by.insert(Contender::SluiceEbpf, vec![18.0]);
        by.insert(Contender::Envoy, vec![10.0]);
        let report = summarize(&samples);
        let v = to_json(&report, json!({}));
        let first = &v["scenarios"][0];
        assert_eq!(first["name"], "l4-throughput-1");
        assert_eq!(first["results"]["direct"], 21.0);
        assert_eq!(first["spread"]["direct"], json!([20.0, 22.0]));
        assert_eq!(first["ratios"]["sluice-ebpf/envoy"], 1.8);
        assert!(super::super::svg::chart(&report, "t").contains("<svg"));
        assert!(to_markdown(&report).contains("| l4-throughput-1 |"));
        let again = samples_from_json(&v).unwrap();
        assert_eq!(
            again["l4-throughput-1"][&Contender::Direct],
            vec![20.0, 22.0, 21.0]
        );
    }
}
