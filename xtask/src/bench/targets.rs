//! The targets, computed from a run's medians: reported with how far each is met or
//! missed, never asserted.

use std::fmt::Write as _;

use super::contender::Contender;
use super::report::{Entry, fmt};

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

    /// "sluice-ebpf 3.2 s, envoy 4.1 s": both medians of `name`, if either was measured.
    fn both(&self, name: &str, unit: &str) -> Option<String> {
        use Contender::{Envoy, SluiceEbpf as Sluice};
        match (self.of(name, Sluice), self.of(name, Envoy)) {
            (None, None) => None,
            (s, e) => {
                let v = |x: Option<f64>| x.map(fmt).unwrap_or("–".into());
                Some(format!("sluice-ebpf {}{unit}, envoy {}{unit}", v(s), v(e)))
            }
        }
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

pub fn targets(entries: &[Entry]) -> Vec<Target> {
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
    targets.extend(http_targets(&med));
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

/// The HTTP path's targets: the most requests per second against Envoy's, at a smaller
/// share of its proxy CPU per 1000 requests (HTTP/1.1 and HTTP/2), and the added p99 at a
/// fixed rate (the added p50 beside it).
fn http_targets(med: &Medians) -> Vec<Target> {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let mut targets = Vec::new();
    for (name, version) in [("http1-max-rps", "HTTP/1.1"), ("http2-max-rps", "HTTP/2")] {
        let cpu = format!("{name}-proxy-cpu");
        let rps_detail: Vec<String> = [
            med.both(name, " req/s"),
            med.of(name, Direct)
                .map(|d| format!("direct {} req/s", fmt(d))),
            med.both(&cpu, " ms")
                .map(|b| format!("proxy CPU per 1000 requests: {b}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        targets.push(Target {
            what: format!("{version} max requests per second: sluice-ebpf / envoy"),
            value: med.ratio(name, Sluice, Envoy),
            limit: 1.3,
            at_least: true,
            unit: "×",
            detail: rps_detail.join("; "),
        });
        targets.push(Target {
            what: format!("{version} proxy CPU per 1000 requests at max rps: sluice-ebpf / envoy"),
            value: med.ratio(&cpu, Sluice, Envoy),
            limit: 0.75,
            at_least: false,
            unit: "×",
            detail: String::new(),
        });
    }
    let (p99, mut detail) = med.added_share("http1-fixed-rate-p99", "p99");
    let (p50_share, p50) = med.added_share("http1-fixed-rate-p50", "p50");
    if !p50.is_empty() {
        let share = p50_share.map(|r| format!(" = {r:.2}×")).unwrap_or_default();
        let _ = write!(detail, "; for reference, {p50}{share}");
    }
    targets.push(Target {
        what: "HTTP/1.1 added p99 latency at a fixed rate (p99 − direct p99): sluice-ebpf / \
               envoy"
            .into(),
        value: p99,
        limit: 0.5,
        at_least: false,
        unit: "×",
        detail,
    });
    targets
}

/// The mTLS path's targets: new connections per second per proxy core, the added p50 (the
/// added p99 beside it) and throughput against Envoy's sidecar pair.
fn mtls_targets(med: &Medians) -> Vec<Target> {
    use Contender::{Direct, Envoy, SluiceEbpf as Sluice};
    let both = |name: &str, unit: &str| med.both(name, unit);
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

#[cfg(test)]
mod tests {
    use super::super::report::{Samples, summarize, to_markdown};
    use super::*;

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
    fn http_targets_rps_cpu_and_added_p99() {
        use Contender::{Direct, Envoy, SluiceEbpf};
        let mut samples = Samples::new();
        let mut put = |metric: &'static str, values: &[(Contender, f64)]| {
            let by = samples.entry(metric).or_default();
            for (c, v) in values {
                by.insert(*c, vec![*v]);
            }
        };
        put(
            "http1-max-rps",
            &[(Direct, 40000.0), (SluiceEbpf, 14000.0), (Envoy, 10000.0)],
        );
        put(
            "http1-max-rps-proxy-cpu",
            &[(SluiceEbpf, 30.0), (Envoy, 50.0)],
        );
        put("http2-max-rps", &[(SluiceEbpf, 20000.0), (Envoy, 16000.0)]);
        put(
            "http1-fixed-rate-p50",
            &[(Direct, 100.0), (SluiceEbpf, 150.0), (Envoy, 200.0)],
        );
        put(
            "http1-fixed-rate-p99",
            &[(Direct, 200.0), (SluiceEbpf, 240.0), (Envoy, 400.0)],
        );
        let report = summarize(&samples);
        let find = |what: &str| report.targets.iter().find(|t| t.what.starts_with(what));
        let h1 = find("HTTP/1.1 max requests per second").unwrap();
        assert_eq!(h1.value, Some(1.4));
        assert_eq!(h1.met(), Some(true));
        assert_eq!(
            h1.detail,
            "sluice-ebpf 14000 req/s, envoy 10000 req/s; direct 40000 req/s; proxy CPU per \
             1000 requests: sluice-ebpf 30.0 ms, envoy 50.0 ms"
        );
        let cpu = find("HTTP/1.1 proxy CPU per 1000 requests").unwrap();
        assert_eq!(cpu.value, Some(0.6));
        assert_eq!(cpu.met(), Some(true));
        let h2 = find("HTTP/2 max requests per second").unwrap();
        assert_eq!(h2.value, Some(1.25));
        assert_eq!(h2.verdict(), "missed by 4%");
        assert_eq!(find("HTTP/2 proxy CPU").unwrap().verdict(), "not measured");
        let p99 = find("HTTP/1.1 added p99 latency at a fixed rate").unwrap();
        assert_eq!(p99.value, Some(0.2));
        assert_eq!(
            p99.detail,
            "p99: sluice-ebpf +40.0 µs, envoy +200.0 µs; for reference, p50: sluice-ebpf \
             +50.0 µs, envoy +100.0 µs = 0.50×"
        );
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
}
