//! The results on the terminal, printed once every kernel has run.

use super::run::{KernelRun, Outcome};

/// Lines of a failed test's output shown on the terminal: enough for the panic message and
/// the assertion's values, all that CI's log keeps once the VM's console is gone.
const FAILURE_LINES: usize = 40;

/// The terminal summary: one line per kernel and every test that did not pass, with the
/// end of its output.
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
                    if let Some(text) = s.failures.get(test) {
                        for line in failure_excerpt(text) {
                            eprintln!("          | {line}");
                        }
                    }
                }
            }
        }
        for note in &run.notes {
            eprintln!("        note: {note}");
        }
    }
}

/// From the panic on (the message and the assertion's values), else the end of the output;
/// the last line says how many lines were left out.
fn failure_excerpt(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .unwrap_or(lines.len().saturating_sub(FAILURE_LINES));
    let shown = &lines[from..lines.len().min(from + FAILURE_LINES)];
    let mut excerpt: Vec<String> = shown.iter().map(|l| l.to_string()).collect();
    let left = lines.len() - shown.len();
    if left > 0 {
        excerpt.push(format!("({left} more lines in the console log)"));
    }
    excerpt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_starts_at_the_panic() {
        let mut text = String::from("agent log 1\nagent log 2\n");
        text.push_str("thread 'x' panicked at tests/a.rs:1:2:\n3 of 500 failed\n");
        let excerpt = failure_excerpt(&text);
        assert_eq!(excerpt[0], "thread 'x' panicked at tests/a.rs:1:2:");
        assert_eq!(excerpt[1], "3 of 500 failed");
        assert_eq!(excerpt[2], "(2 more lines in the console log)");
    }

    #[test]
    fn without_a_panic_the_end_is_shown() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let excerpt = failure_excerpt(&text);
        assert_eq!(excerpt.len(), FAILURE_LINES + 1);
        assert_eq!(excerpt[0], "line 60");
        assert_eq!(excerpt[FAILURE_LINES - 1], "line 99");
    }
}
