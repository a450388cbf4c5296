//! `## Tests`: every test any kernel ran, with its outcome per kernel, and each suite's time.

use std::fmt::Write as _;

use super::{Columns, cell};

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(md, "\n## Tests\n");
    columns.head(md, "suite: test");
    let mut tests: Vec<(String, String)> = Vec::new();
    for run in columns.runs {
        for (suite, result) in &run.suites {
            for (test, _) in &result.tests {
                let key = (suite.clone(), test.clone());
                if !tests.contains(&key) {
                    tests.push(key);
                }
            }
        }
    }
    for (suite, test) in &tests {
        let _ = writeln!(
            md,
            "| {suite}: `{test}` | {} |",
            columns.row(|run| {
                run.suites
                    .get(suite)
                    .and_then(|s| s.tests.iter().find(|(name, _)| name == test))
                    .map_or("not run", |(_, outcome)| cell(*outcome))
                    .to_owned()
            })
        );
    }
    let _ = writeln!(
        md,
        "| suite time | {} |",
        columns.row(|run| {
            run.suites
                .iter()
                .map(|(name, s)| {
                    format!(
                        "{name} {}",
                        s.seconds.map_or("?".into(), |t| format!("{t} s"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
    );
}
