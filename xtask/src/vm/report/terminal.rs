//! The results on the terminal, printed once every kernel has run.

use super::run::{KernelRun, Outcome};

/// The terminal summary: one line per kernel and every test that did not pass.
pub fn print_summary(runs: &[KernelRun]) {
    eprintln!("\nxtask: vm: results");
    for run in runs {
        let suites: Vec<String> = run
            .suites
            .iter()
            .map(|(name, s)| {
                format!(
                    "{name} {}",
                    s.seconds.map_or("?".into(), |t| format!("{t}s"))
                )
            })
            .collect();
        eprintln!(
            "  {:<5} {:<44} {:>5.0} s ({}; {})  {}",
            run.label,
            run.package,
            run.seconds,
            run.accel,
            suites.join(", "),
            run.verdict()
        );
        for (suite, s) in &run.suites {
            for (test, outcome) in &s.tests {
                if matches!(outcome, Outcome::Fail | Outcome::Unfinished) {
                    eprintln!("        {suite}: {test}: {outcome:?}");
                }
            }
        }
        for note in &run.notes {
            eprintln!("        note: {note}");
        }
    }
}
