//! `## Summary`: each kernel's verdict, accelerator and wall time.

use std::fmt::Write as _;

use super::Columns;

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(md, "## Summary\n");
    columns.head(md, "");
    let _ = writeln!(md, "| result | {} |", columns.row(|run| run.verdict()));
    let _ = writeln!(
        md,
        "| accelerator | {} |",
        columns.row(|run| run.accel.clone())
    );
    let _ = writeln!(
        md,
        "| VM wall time | {} |",
        columns.row(|run| format!("{:.0} s", run.seconds))
    );
}
