//! The report's chart, SVG written by hand (no plotting crate): one row per headline
//! metric, one bar per contender, so the comparison reads at a glance.

use std::fmt::Write as _;

use super::contender::Contender;
use super::report::{Entry, Report, fmt};

const COLORS: [(Contender, &str); 5] = [
    (Contender::Direct, "#9e9e9e"),
    (Contender::SluiceEbpf, "#00897b"),
    (Contender::SluiceNftables, "#4db6ac"),
    (Contender::SluiceIptables, "#b2dfdb"),
    (Contender::Envoy, "#ef6c00"),
];

/// The metrics the chart shows: the headline of each scenario (the table has the rest).
const CHARTED: &[&str] = &[
    "l4-throughput-1",
    "l4-throughput-8",
    "l4-rr-latency-p50",
    "l4-rr-latency-p99",
    "l4-connect-rate",
    "l4-connect-rate-proxy-cpu",
    "inbound-throughput-1",
    "inbound-rr-latency-p50",
    "inbound-connect-rate",
    "mesh-throughput-1",
    "mesh-rr-latency-p50",
    "mesh-connect-rate",
    "mtls-throughput-1",
    "mtls-rr-latency-p50",
    "mtls-connect-rate-per-core",
    "http1-max-rps",
    "http2-max-rps",
    "http1-fixed-rate-p99",
    "memory-idle",
    "memory-idle-conns",
    "memory-after-burst",
];

/// One row per charted metric, a bar per contender scaled to the row's largest value, the value
/// written at the bar's end; the row title says which way is better.
pub fn chart(report: &Report, title: &str) -> String {
    let (label_w, bar_w, bar_h, gap) = (250.0, 420.0, 13.0, 14.0);
    let rows: Vec<&Entry> = report
        .entries
        .iter()
        .filter(|e| !e.stats.is_empty() && CHARTED.contains(&e.metric.name))
        .collect();
    let row_h = |e: &Entry| e.stats.len() as f64 * (bar_h + 2.0) + gap;
    let height = 60.0 + rows.iter().map(|e| row_h(e)).sum::<f64>();
    let width = label_w + bar_w + 120.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"8\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    let mut x = 8.0;
    for (c, color) in COLORS {
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"28\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"38\">{}</text>",
            x + 16.0,
            c.name()
        );
        x += 110.0;
    }
    let mut y = 56.0;
    for e in rows {
        let max = e.stats.values().map(|s| s.0).fold(0.0, f64::max);
        let better = if e.metric.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"{}\" font-weight=\"bold\">{}</text>\
             <text x=\"8\" y=\"{}\" fill=\"#555\">{} · {better}</text>",
            y + 10.0,
            escape(e.metric.name),
            y + 23.0,
            escape(e.metric.unit)
        );
        let mut by = y;
        for (c, color) in COLORS {
            let Some((m, _, _)) = e.stats.get(&c) else {
                continue;
            };
            let w = if max > 0.0 { m / max * bar_w } else { 0.0 };
            let _ = writeln!(
                s,
                "<rect x=\"{label_w}\" y=\"{by}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                label_w + w + 4.0,
                by + bar_h - 2.0,
                fmt(*m)
            );
            by += bar_h + 2.0;
        }
        y += row_h(e);
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
