//! `## Redirect modes`: what `mesh-agent check` in the guest found available, what `auto`
//! chose, and the checks that failed.

use std::fmt::Write as _;

use super::Columns;
use crate::vm::report::run::KernelRun;

/// Modes as `mesh-agent check` in the guest printed them (`mode <name> available`).
const MODES: &[&str] = &["ebpf", "nftables", "iptables"];

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(
        md,
        "\n## Redirect modes (`mesh-agent check` in the guest)\n"
    );
    columns.head(md, "mode");
    for mode in MODES {
        let _ = writeln!(
            md,
            "| {mode} | {} |",
            columns.row(|run| mode_probed(run, mode).to_owned())
        );
    }
    let _ = writeln!(md, "| chosen by `auto` | {} |", columns.row(mode_chosen));
    let _ = writeln!(md, "| failed checks | {} |", columns.row(failed_checks));
}

fn mode_probed(run: &KernelRun, mode: &str) -> &'static str {
    let prefix = format!("mode {mode} ");
    match run.features.iter().find(|line| line.starts_with(&prefix)) {
        Some(line) if line.ends_with(" available") => "available",
        Some(_) => "**unavailable**",
        None => "?",
    }
}

fn mode_chosen(run: &KernelRun) -> String {
    run.features
        .iter()
        .find_map(|line| line.strip_prefix("mode chosen "))
        .map_or("?".to_owned(), |mode| format!("`{mode}`"))
}

/// Failed checks (`check FAIL ...`), for the reader of a mode that is unavailable.
fn failed_checks(run: &KernelRun) -> String {
    let failed: Vec<String> = run
        .features
        .iter()
        .filter_map(|line| line.strip_prefix("check "))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if failed.is_empty() {
        "none".to_owned()
    } else {
        failed.join("; ").replace('|', "/")
    }
}
