//! `## Failures`: the tail of each failed test's output, only when a test failed.

use std::fmt::Write as _;

use crate::vm::report::run::KernelRun;

pub(super) fn write(md: &mut String, runs: &[KernelRun]) {
    let failures: Vec<_> = runs
        .iter()
        .flat_map(|run| {
            run.suites.iter().flat_map(move |(suite, s)| {
                s.failures
                    .iter()
                    .map(move |(test, text)| (run, suite, test, text))
            })
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for (run, suite, test, text) in failures {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(40);
            let _ = writeln!(
                md,
                "### {} {suite}: `{test}`\n\n```text\n{}\n```\n",
                run.label,
                lines[start..].join("\n")
            );
        }
    }
}
