//! The Grafana dashboard: what Grafana would import without complaint, queries that
//! parse, and only metrics the agent's source registers (tests/tests/deploy.rs also checks
//! them against a running agent).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The sample names the agent can export, from its source: every `"istio_*"` or
/// `"sluice_*"` literal (a registered family: itself, `_total`, `_bucket`, `_sum`,
/// `_count`), the eBPF counters (`sluice_ebpf_<name>_total`, names from mesh-common) and
/// the netfilter ones (`sluice_<nftables|iptables>_rules_*_total`).
pub fn exported_names(root: &Path) -> Result<BTreeSet<String>> {
    let mut sources = Vec::new();
    collect_rs(&root.join("mesh-agent/src"), &mut sources)?;
    // Every `"word"` literal that starts as a metric (or a netfilter counter) does.
    let mut literals = BTreeSet::new();
    for text in &sources {
        for (i, _) in text.match_indices('"') {
            let rest = &text[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            let metric_like = ["istio_", "sluice_", "rules_"]
                .iter()
                .any(|p| word.starts_with(p));
            if metric_like && rest[end..].starts_with('"') {
                literals.insert(word.to_owned());
            }
        }
    }
    let mut names = BTreeSet::new();
    for family in literals
        .iter()
        .filter(|l| l.starts_with("istio_") || l.starts_with("sluice_"))
    {
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            names.insert(format!("{family}{suffix}"));
        }
    }
    for rules in literals.iter().filter(|l| l.starts_with("rules_")) {
        for mode in ["nftables", "iptables"] {
            names.insert(format!("sluice_{mode}_{rules}_total"));
        }
    }
    let common = fs::read_to_string(root.join("mesh-common/src/lib.rs"))?;
    for line in common.lines() {
        let Some((arm, name)) = line.trim().split_once(" => \"") else {
            continue;
        };
        if arm.starts_with("Counter::") {
            names.insert(format!(
                "sluice_ebpf_{}_total",
                name.trim_end_matches("\",")
            ));
        }
    }
    ensure!(
        names.contains("sluice_ebpf_captured_total"),
        "no eBPF counter names found"
    );
    Ok(names)
}

fn collect_rs(dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// Checks the dashboard JSON against the `exported` sample names; returns the `istio_*`
/// and `sluice_*` names its queries use.
pub fn check(text: &str, exported: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let dash: Value = serde_json::from_str(text).context("not JSON")?;
    for key in ["uid", "title"] {
        ensure!(
            dash[key].as_str().is_some_and(|s| !s.is_empty()),
            "no {key}"
        );
    }
    let variables: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let panels = dash["panels"].as_array().context("no panels")?;
    ensure!(!panels.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"]
            .as_u64()
            .with_context(|| format!("panel {title}: no id"))?;
        ensure!(ids.insert(id), "panel id {id} twice");
        ensure!(panel["gridPos"].is_object(), "panel {title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "panel {title}: its datasource is not the ${{datasource}} variable"
        );
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.with_context(|| format!("panel {title}: no query"))?;
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            ensure!(!expr.trim().is_empty(), "panel {title}: an empty query");
            let reference = target["refId"].as_str().unwrap_or_default();
            ensure!(
                refs.insert(reference),
                "panel {title}: refId {reference:?} twice"
            );
            let used = scan(expr).with_context(|| format!("panel {title}: {expr}"))?;
            for var in used.variables {
                ensure!(
                    var.starts_with("__") || variables.contains(var.as_str()),
                    "panel {title}: ${var} is not a dashboard variable"
                );
            }
            ensure!(
                !used.metrics.is_empty(),
                "panel {title}: no Sluice metric in {expr}"
            );
            if let Some(unknown) = used.metrics.iter().find(|m| !exported.contains(*m)) {
                bail!("panel {title}: the agent exports no {unknown}");
            }
            metrics.extend(used.metrics);
        }
    }
    Ok(metrics)
}

#[derive(Default)]
struct Used {
    metrics: BTreeSet<String>,
    variables: BTreeSet<String>,
}

/// The metric names (outside strings) and `$variables` (anywhere) of one PromQL query;
/// fails on unbalanced brackets or an unclosed string.
fn scan(expr: &str) -> Result<Used> {
    let mut used = Used::default();
    let mut open = Vec::new();
    let mut quoted = false;
    let mut chars = expr.char_indices().peekable();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '$' => {
                let rest = &expr[i + 1..];
                let end = rest.find(|c: char| !word_char(c)).unwrap_or(rest.len());
                used.variables.insert(rest[..end].to_owned());
            }
            '(' | '{' | '[' if !quoted => open.push(c),
            ')' | '}' | ']' if !quoted => {
                let want = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open.pop() != Some(want) {
                    bail!("unbalanced {c}");
                }
            }
            c if !quoted && word_char(c) => {
                let end = expr[i..]
                    .find(|c: char| !word_char(c))
                    .map_or(expr.len(), |n| i + n);
                let word = &expr[i..end];
                if word.starts_with("istio_") || word.starts_with("sluice_") {
                    used.metrics.insert(word.to_owned());
                }
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    ensure!(!quoted, "an unclosed string");
    ensure!(open.is_empty(), "unclosed {open:?}");
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        let root = crate::cmd::workspace_root().unwrap();
        std::fs::read_to_string(root.join("deploy/grafana/sluice.json")).unwrap()
    }

    fn exported() -> BTreeSet<String> {
        exported_names(&crate::cmd::workspace_root().unwrap()).unwrap()
    }

    #[test]
    fn the_dashboard_queries_what_the_brief_names() {
        let metrics = check(&shipped(), &exported()).unwrap();
        for m in [
            "istio_requests_total",
            "istio_request_duration_milliseconds_bucket",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "sluice_redirect_mode",
            "sluice_enrolled_pods",
        ] {
            assert!(metrics.contains(m), "{m} not in {metrics:?}");
        }
    }

    #[test]
    fn broken_dashboards_fail() {
        let text = shipped();
        for (what, broken) in [
            (
                "bracket",
                text.replacen("[$__rate_interval]))", "[$__rate_interval])", 1),
            ),
            ("variable", text.replacen("$instance", "$node", 1)),
            (
                "datasource",
                text.replace("\"uid\": \"${datasource}\"", "\"uid\": \"prom\""),
            ),
            ("id", text.replacen("\"id\": 3,", "\"id\": 2,", 1)),
            ("json", text.replacen('{', "", 1)),
            (
                "metric",
                text.replacen("(istio_requests_total{", "(istio_request_total{", 1),
            ),
            (
                "ebpf counter",
                text.replacen(
                    "(sluice_ebpf_captured_total{",
                    "(sluice_ebpf_capture_total{",
                    1,
                ),
            ),
        ] {
            assert_ne!(broken, text, "{what}: nothing replaced");
            assert!(check(&broken, &exported()).is_err(), "{what} passed");
        }
    }

    #[test]
    fn scan_skips_strings_and_labels() {
        let used =
            scan(r#"sum by (le) (rate(sluice_x_total{a="sluice_y", b=~"$v"}[$__rate_interval]))"#)
                .unwrap();
        assert_eq!(used.metrics, BTreeSet::from(["sluice_x_total".to_owned()]));
        assert_eq!(
            used.variables,
            BTreeSet::from(["v".to_owned(), "__rate_interval".to_owned()])
        );
    }
}
