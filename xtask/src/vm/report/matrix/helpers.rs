//! `## Helpers, per program type`: whether each kernel offers every helper the agent calls,
//! in the program type that calls it.

use std::fmt::Write as _;

use super::Columns;
use crate::vm::report::programs::PROGRAMS;
use crate::vm::report::run::KernelRun;

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(md, "\n## Helpers, per program type\n");
    columns.head(md, "helper in program type (used by)");
    for program in PROGRAMS {
        for helper in program.helpers {
            let _ = writeln!(
                md,
                "| `{helper}` in `{}` ({}) | {} |",
                program.prog_type,
                program.name,
                columns.row(|run| helper_probed(run, program.prog_type, helper).to_owned())
            );
        }
    }
}

fn helper_probed(run: &KernelRun, prog_type: &str, helper: &str) -> &'static str {
    let has_section = run
        .features
        .iter()
        .any(|line| line.starts_with(&format!("helper {prog_type} ")));
    if !has_section {
        return "?";
    }
    if run
        .features
        .iter()
        .any(|line| *line == format!("helper {prog_type} {helper}"))
    {
        "yes"
    } else {
        "**NO**"
    }
}
