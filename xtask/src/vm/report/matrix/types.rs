//! `## Program and map types`: whether each kernel's probe has the types the agent uses.

use std::fmt::Write as _;

use super::Columns;
use crate::vm::report::programs::{MAP_TYPES, PROGRAMS};
use crate::vm::report::run::KernelRun;

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(md, "\n## Program and map types\n");
    columns.head(md, "type (used by)");
    let mut seen = Vec::new();
    for program in PROGRAMS {
        if seen.contains(&program.prog_type) {
            continue;
        }
        seen.push(program.prog_type);
        let users: Vec<&str> = PROGRAMS
            .iter()
            .filter(|p| p.prog_type == program.prog_type)
            .map(|p| p.name)
            .collect();
        let _ = writeln!(
            md,
            "| program type `{}` ({}) | {} |",
            program.prog_type,
            users.join(", "),
            columns.row(|run| probed(run, "program_type", program.prog_type).to_owned())
        );
    }
    for map in MAP_TYPES {
        let _ = writeln!(
            md,
            "| map type `{map}` | {} |",
            columns.row(|run| probed(run, "map_type", map).to_owned())
        );
    }
}

/// `yes`/`NO` from the guest's probe, or `?` when the probe printed nothing about it.
fn probed(run: &KernelRun, kind: &str, name: &str) -> &'static str {
    let wanted = format!("eBPF {kind} {name} is ");
    match run.features.iter().find(|line| line.starts_with(&wanted)) {
        Some(line) if line.ends_with("is available") => "yes",
        Some(_) => "**NO**",
        None => "?",
    }
}
