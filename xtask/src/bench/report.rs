//! Turning the samples into the report: medians and spreads per contender, ratios, the
//! issue's targets, JSON and a markdown table (the chart is in `svg`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::contender::Contender;
use super::scenario::{Metric, SCENARIOS};

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

    fn ratio(&self, a: Contender, b: Contender) -> Option<f64> {
        Some(self.median(a)? / self.median(b)?).filter(|r| r.is_finite())
    }
}

pub struct Target {
    pub what: String,
    pub value: Option<f64>,
    pub limit: f64,
    /// `true`: value must be at least the limit; `false`: at most.
    pub at_least: bool,
    pub unit: &'static str,
    /// What the value is made of, or why it could not be computed.
    pub detail: String,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_least {
            v >= self.limit
        } else {
            v <= self.limit
        })
    }

    /// "missed by 12%" or "met", relative to the limit.
    pub fn verdict(&self) -> String {
        match (self.met(), self.value) {
            (None, _) | (_, None) => "not measured".into(),
            (Some(true), _) => "met".into(),
            (Some(false), Some(v)) => {
                let off = ((v - self.limit) / self.limit).abs() * 100.0;
                format!("missed by {off:.0}%")
            }
        }
    }
}

pub struct Report {
    pub entries: Vec<Entry>,
    pub targets: Vec<Target>,
    pub skipped: Vec<(&'static str, &'static str)>,
}

pub fn summarize(samples: &Samples) -> Report {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for s in SCENARIOS {
        if let Some(reason) = s.skip() {
            skipped.push((s.name, reason));
        }
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
    Report {
        entries,
        targets,
        skipped,
    }
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

/// The medians of one run, looked up by metric.
struct Medians<'a>(&'a [Entry]);

impl Medians<'_> {
    fn get(&self, name: &str) -> Option<&Entry> {
        self.0.iter().find(|e| e.metric.name == name)
    }

    fn of(&self, name: &str, c: Contender) -> Option<f64> {
        self.get(name)?.median(c)
    }

    fn ratio(&self, name: &str, a: Contender, b: Contender) -> Option<f64> {
        self.get(name)?.ratio(a, b)
    }

    /// What `c` adds to direct's `name` (a latency): its median minus direct's.
    fn added(&self, name: &str, c: Contender) -> Option<f64> {
        Some(self.of(name, c)? - self.of(name, Contender::Direct)?)
    }

    /// Sluice's added latency as a share of Envoy's, and what it is made of. The share is
    /// only a number when Envoy adds something: else the run's latencies are noise.
    fn added_share(&self, name: &str, pct: &str) -> (Option<f64>, String) {
        use Contender::{Envoy, SluiceEbpf as Sluice};
        match (self.added(name, Sluice), self.added(name, Envoy)) {
            (Some(s), Some(e)) if e > 0.0 => (
                Some(s / e),
                format!("{pct}: sluice-ebpf {s:+.1} µs, envoy {e:+.1} µs"),
            ),
            (Some(s), Some(e)) => (
                None,
                format!(
                    "{pct}: sluice-ebpf {s:+.1} µs, envoy {e:+.1} µs; Envoy's {pct} is not above \
                     direct's, so this run's {pct}s are noise (a busy machine)"
                ),
            ),
            _ => (None, String::new()),
        }
    }
}

fn targets(entries: &[Entry]) -> Vec<Target> {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let med = Medians(entries);
    let (added_p99, mut added_detail) = med.added_share("l4-rr-latency-p99", "p99");
    let (p50_share, p50) = med.added_share("l4-rr-latency-p50", "p50");
    if !p50.is_empty() {
        let share = p50_share.map(|r| format!(" = {r:.2}×")).unwrap_or_default();
        let _ = write!(added_detail, "; for reference, {p50}{share}");
    }
    let recovered = match (
        med.of("memory-after-burst", Sluice),
        med.of("memory-idle", Sluice),
    ) {
        (Some(a), Some(i)) if i > 0.0 => Some(a / i),
        _ => None,
    };
    let recovered_detail = match med.of("memory-recovery", Sluice) {
        Some(secs) => format!("after waiting {secs:.0} s"),
        None => String::new(),
    };
    let mut targets = vec![
        Target {
            what: "L4 throughput, 1 stream: sluice-ebpf / direct".into(),
            value: med.ratio("l4-throughput-1", Sluice, Direct),
            limit: 0.85,
            at_least: true,
            unit: "×",
            detail: String::new(),
        },
        Target {
            what: "L4 throughput, 1 stream: sluice-ebpf / envoy".into(),
            value: med.ratio("l4-throughput-1", Sluice, Envoy),
            limit: 1.25,
            at_least: true,
            unit: "×",
            detail: String::new(),
        },
        Target {
            what: "added p99 latency (p99 − direct p99): sluice-ebpf / envoy".into(),
            value: added_p99,
            limit: 0.5,
            at_least: false,
            unit: "×",
            detail: added_detail,
        },
        Target {
            what: "connect rate: sluice-ebpf / envoy".into(),
            value: med.ratio("l4-connect-rate", Sluice, Envoy),
            limit: 1.5,
            at_least: true,
            unit: "×",
            detail: String::new(),
        },
    ];
    // The paths through the server's inbound proxy have the outbound path's throughput
    // target against Envoy, and their latency one on p50.
    for (prefix, path) in [
        ("inbound", "inbound (server's proxy only)"),
        ("mesh", "mesh (both proxies)"),
    ] {
        let p50 = format!("{prefix}-rr-latency-p50");
        let (share, detail) = med.added_share(&p50, "p50");
        targets.push(Target {
            what: format!("{path} throughput, 1 stream: sluice-ebpf / envoy"),
            value: med.ratio(&format!("{prefix}-throughput-1"), Sluice, Envoy),
            limit: 1.25,
            at_least: true,
            unit: "×",
            detail: String::new(),
        });
        targets.push(Target {
            what: format!("{path} added p50 latency (p50 − direct p50): sluice-ebpf / envoy"),
            value: share,
            limit: 0.5,
            at_least: false,
            unit: "×",
            detail,
        });
    }
    targets.extend(mtls_targets(&med));
    targets.extend([
        Target {
            what: "idle RSS of sluice-ebpf".into(),
            value: med.of("memory-idle", Sluice),
            limit: 10.0,
            at_least: false,
            unit: "MiB",
            detail: String::new(),
        },
        Target {
            what: "sluice-ebpf RSS after the burst / idle RSS (within the wait)".into(),
            value: recovered,
            limit: 1.2,
            at_least: false,
            unit: "×",
            detail: recovered_detail,
        },
    ]);
    targets
}

/// The mTLS path's targets: new connections per second per proxy core, the added p50 (the
/// added p99 beside it) and throughput against Envoy's sidecar pair.
fn mtls_targets(med: &Medians) -> Vec<Target> {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let both = |name: &str, unit: &str| match (med.of(name, Sluice), med.of(name, Envoy)) {
        (None, None) => None,
        (s, e) => {
            let v = |x: Option<f64>| x.map(fmt).unwrap_or("–".into());
            Some(format!("sluice-ebpf {}{unit}, envoy {}{unit}", v(s), v(e)))
        }
    };
    let per_core_detail: Vec<String> = [
        both("mtls-connect-rate-per-core", "").map(|b| format!("per proxy CPU s: {b}")),
        both("mtls-connect-rate", " conn/s").map(|b| format!("on the one proxy CPU: {b}")),
        both("mtls-connect-rate-handshakes", "")
            .map(|b| format!("client TLS handshakes per 1000 connections: {b}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (p50, mut latency_detail) = med.added_share("mtls-rr-latency-p50", "p50");
    let (p99_share, p99) = med.added_share("mtls-rr-latency-p99", "p99");
    if !p99.is_empty() {
        let share = p99_share.map(|r| format!(" = {r:.2}×")).unwrap_or_default();
        let _ = write!(latency_detail, "; for reference, {p99}{share}");
    }
    let throughput_detail: Vec<String> = [
        med.ratio("mtls-throughput-1", Sluice, Direct)
            .map(|r| format!("sluice-ebpf / direct {r:.2}×")),
        both("mtls-throughput-1-proxy-cpu", " s").map(|b| format!("proxy CPU per GB: {b}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    vec![
        Target {
            what: "mTLS new connections per second per proxy core (connections / proxy CPU s): \
                   sluice-ebpf"
                .into(),
            value: med.of("mtls-connect-rate-per-core", Sluice),
            limit: 1200.0,
            at_least: true,
            unit: " conn/s",
            detail: per_core_detail.join("; "),
        },
        Target {
            what: "mTLS (both proxies) added p50 latency (p50 − direct p50): sluice-ebpf / envoy"
                .into(),
            value: p50,
            limit: 0.5,
            at_least: false,
            unit: "×",
            detail: latency_detail,
        },
        Target {
            what: "mTLS (both proxies) throughput, 1 stream: sluice-ebpf / envoy".into(),
            value: med.ratio("mtls-throughput-1", Sluice, Envoy),
            limit: 1.25,
            at_least: true,
            unit: "×",
            detail: throughput_detail.join("; "),
        },
    ]
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

/// The JSON report: one entry per metric (the issue's shape) plus skipped scenarios,
/// targets and `meta` (date, load, settings).
pub fn to_json(report: &Report, meta: Value) -> Value {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let mut scenarios: Vec<Value> = report
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
    for (name, reason) in &report.skipped {
        scenarios.push(json!({"name": name, "skipped": reason, "results": {}, "spread": {}}));
    }
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

/// Markdown: results (median, min–max), ratios, targets, skipped scenarios.
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
    if !report.skipped.is_empty() {
        md.push_str("\nSkipped: ");
        let names: Vec<String> = report
            .skipped
            .iter()
            .map(|(n, r)| format!("`{n}` ({r})"))
            .collect();
        md.push_str(&names.join(", "));
        md.push('\n');
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
    fn targets_say_how_far_they_are_missed() {
        let t = Target {
            what: "x".into(),
            value: Some(0.68),
            limit: 0.85,
            at_least: true,
            unit: "×",
            detail: String::new(),
        };
        assert_eq!(t.verdict(), "missed by 20%");
        let t = Target {
            value: Some(12.0),
            limit: 10.0,
            at_least: false,
            ..t
        };
        assert_eq!(t.verdict(), "missed by 20%");
    }

    #[test]
    fn inbound_targets_compare_with_envoy() {
        let mut samples = Samples::new();
        let by = samples.entry("inbound-throughput-1").or_default();
        by.insert(Contender::SluiceEbpf, vec![15.0]);
        by.insert(Contender::Envoy, vec![10.0]);
        let by = samples.entry("inbound-rr-latency-p50").or_default();
        by.insert(Contender::Direct, vec![50.0]);
        by.insert(Contender::SluiceEbpf, vec![60.0]);
        by.insert(Contender::Envoy, vec![90.0]);
        let report = summarize(&samples);
        let find = |what: &str| report.targets.iter().find(|t| t.what.starts_with(what));
        let throughput = find("inbound (server's proxy only) throughput").unwrap();
        assert_eq!(throughput.value, Some(1.5));
        assert_eq!(throughput.met(), Some(true));
        let p50 = find("inbound (server's proxy only) added p50").unwrap();
        assert_eq!(p50.value, Some(0.25));
        assert_eq!(p50.detail, "p50: sluice-ebpf +10.0 µs, envoy +40.0 µs");
        assert_eq!(find("mesh (both proxies) throughput").unwrap().value, None);
    }

    #[test]
    fn mtls_targets_per_core_latency_and_throughput() {
        use Contender::{Direct, Envoy, SluiceEbpf};
        let mut samples = Samples::new();
        let mut put = |metric: &'static str, values: &[(Contender, f64)]| {
            let by = samples.entry(metric).or_default();
            for (c, v) in values {
                by.insert(*c, vec![*v]);
            }
        };
        put(
            "mtls-connect-rate",
            &[(Direct, 9000.0), (SluiceEbpf, 2000.0), (Envoy, 1000.0)],
        );
        put(
            "mtls-connect-rate-per-core",
            &[(SluiceEbpf, 2500.0), (Envoy, 1100.0)],
        );
        put(
            "mtls-connect-rate-handshakes",
            &[(SluiceEbpf, 0.5), (Envoy, 1000.0)],
        );
        put(
            "mtls-rr-latency-p50",
            &[(Direct, 100.0), (SluiceEbpf, 150.0), (Envoy, 300.0)],
        );
        put(
            "mtls-rr-latency-p99",
            &[(Direct, 200.0), (SluiceEbpf, 300.0), (Envoy, 400.0)],
        );
        put(
            "mtls-throughput-1",
            &[(Direct, 10.0), (SluiceEbpf, 4.0), (Envoy, 4.0)],
        );
        let report = summarize(&samples);
        let find = |what: &str| report.targets.iter().find(|t| t.what.starts_with(what));
        let per_core = find("mTLS new connections per second per proxy core").unwrap();
        assert_eq!(per_core.value, Some(2500.0));
        assert_eq!(per_core.met(), Some(true));
        assert_eq!(
            per_core.detail,
            "per proxy CPU s: sluice-ebpf 2500, envoy 1100; on the one proxy CPU: sluice-ebpf \
             2000 conn/s, envoy 1000 conn/s; client TLS handshakes per 1000 connections: \
             sluice-ebpf 0.50, envoy 1000"
        );
        let p50 = find("mTLS (both proxies) added p50").unwrap();
        assert_eq!(p50.value, Some(0.25));
        assert_eq!(
            p50.detail,
            "p50: sluice-ebpf +50.0 µs, envoy +200.0 µs; for reference, p99: sluice-ebpf \
             +100.0 µs, envoy +200.0 µs = 0.50×"
        );
        let throughput = find("mTLS (both proxies) throughput").unwrap();
        assert_eq!(throughput.value, Some(1.0));
        assert_eq!(throughput.verdict(), "missed by 20%");
        assert_eq!(throughput.detail, "sluice-ebpf / direct 0.40×");
        let md = to_markdown(&report);
        assert!(md.contains("| ≥ 1200 conn/s | 2500 conn/s | met |"), "{md}");
        assert!(!md.contains("`mtls-handshakes`"));
    }

    #[test]
    fn mtls_targets_unmeasured_without_mtls_samples() {
        let report = summarize(&Samples::new());
        let mtls: Vec<&Target> = report
            .targets
            .iter()
            .filter(|t| t.what.starts_with("mTLS"))
            .collect();
        assert_eq!(mtls.len(), 3);
        for t in mtls {
            assert_eq!(t.verdict(), "not measured");
            assert_eq!(t.detail, "");
        }
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
