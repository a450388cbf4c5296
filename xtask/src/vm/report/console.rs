//! Parsing the serial console into results: `/init`'s markers, libtest's per-test lines and
//! the failure blocks of failed tests.

use std::collections::BTreeMap;

use super::marker;
use super::run::{Ending, Outcome, Suite};

/// Parses the console: markers, libtest's `test NAME ... ok` lines and failure blocks. Test
/// output may interleave with kernel messages and the children's stderr, so a result may
/// come on a later line than its `test NAME ...` prefix.
pub fn parse_console(
    console: &str,
    timed_out: bool,
) -> (Ending, BTreeMap<String, Suite>, Vec<String>, Vec<String>) {
    let mut suites: BTreeMap<String, Suite> = BTreeMap::new();
    let mut features = Vec::new();
    let mut notes = Vec::new();
    let mut ending = None;
    let mut current: Option<String> = None;
    let mut pending: Option<String> = None;
    let mut failure: Option<(String, String)> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(rest) = after(line, marker::FEATURE) {
            let rest = rest.trim();
            if rest != "begin" && rest != "end" {
                features.push(rest.to_owned());
            }
            continue;
        }
        if let Some(rest) = after(line, marker::NOTE) {
            notes.push(rest.trim().to_owned());
            continue;
        }
        if let Some(rest) = after(line, marker::SUITE_BEGIN) {
            let name = rest.trim().to_owned();
            suites.entry(name.clone()).or_default();
            current = Some(name);
            pending = None;
            continue;
        }
        if let Some(rest) = after(line, marker::SUITE_END) {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let suite = suites.entry(name).or_default();
            for word in words {
                if let Some(exit) = word.strip_prefix("exit=") {
                    suite.exit = exit.parse().ok();
                } else if let Some(seconds) = word.strip_prefix("seconds=") {
                    suite.seconds = seconds.parse().ok();
                }
            }
            if let Some((name, text)) = failure.take() {
                suite.failures.insert(name, text);
            }
            current = None;
            pending = None;
            continue;
        }
        if let Some(rest) = after(line, marker::DONE) {
            let exit = rest
                .split_whitespace()
                .find_map(|word| word.strip_prefix("exit="))
                .and_then(|exit| exit.parse().ok())
                .unwrap_or(-1);
            ending = Some(Ending::Done { exit });
            continue;
        }
        if ending.is_none() && (line.contains("Kernel panic") || line.contains("end Kernel panic"))
        {
            ending = Some(Ending::Panic);
        }
        let Some(suite_name) = current.clone() else {
            continue;
        };
        let suite = suites.entry(suite_name).or_default();
        // Failure blocks: `---- name stdout ----` up to the next block or `failures:`.
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            if let Some((prev, text)) = failure.take() {
                suite.failures.insert(prev, text);
            }
            failure = Some((name.to_owned(), String::new()));
            continue;
        }
        if line == "failures:" || line.starts_with("test result:") {
            if let Some((prev, text)) = failure.take() {
                suite.failures.insert(prev, text);
            }
            continue;
        }
        if let Some((_, text)) = failure.as_mut() {
            text.push_str(line);
            text.push('\n');
            continue;
        }
        if let Some(start) = line.find("test ")
            && let Some((name, rest)) = line[start + 5..].split_once(" ...")
            && !name.contains(' ')
        {
            match result_word(rest) {
                Some(outcome) => suite.tests.push((name.to_owned(), outcome)),
                None => pending = Some(name.to_owned()),
            }
            continue;
        }
        if let Some(name) = pending.as_ref()
            && let Some(outcome) = result_word(line)
        {
            suite.tests.push((name.clone(), outcome));
            pending = None;
        }
    }
    // A test that started and never reported, in a suite that never ended, hung or crashed.
    if let (Some(suite), Some(name)) = (current, pending) {
        suites
            .entry(suite)
            .or_default()
            .tests
            .push((name, Outcome::Unfinished));
    }
    let ending = match ending {
        Some(ending) => ending,
        None if timed_out => Ending::Timeout,
        None => Ending::NoMarker,
    };
    (ending, suites, features, notes)
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

fn result_word(text: &str) -> Option<Outcome> {
    match text.split_whitespace().next()? {
        "ok" => Some(Outcome::Pass),
        "FAILED" => Some(Outcome::Fail),
        "ignored" | "ignored," => Some(Outcome::Ignored),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    1.0] Run /init as init process
SLUICE-VM-BOOT 5.10.0-32-cloud-amd64
SLUICE-VM-FEATURE begin
SLUICE-VM-FEATURE eBPF program_type sock_ops is available
SLUICE-VM-FEATURE helper sock_ops bpf_get_socket_cookie
SLUICE-VM-FEATURE end
SLUICE-VM-SUITE-BEGIN outbound

running 3 tests
test a_passes ... ok
test b_fails ... [    9.1] br0: port 1(vp1) entered blocking state
FAILED
test c_ignored ... ignored

failures:

---- b_fails stdout ----
verifier said no

failures:
    b_fails

test result: FAILED. 1 passed; 1 failed; 1 ignored
SLUICE-VM-SUITE-END outbound exit=101 seconds=42
SLUICE-VM-SUITE-BEGIN harness
test d_hangs ... ";

    #[test]
    fn parses_results_failures_and_a_hang() {
        let (ending, suites, features, _) = parse_console(CONSOLE, true);
        assert_eq!(ending, Ending::Timeout);
        let outbound = &suites["outbound"];
        assert_eq!(outbound.exit, Some(101));
        assert_eq!(outbound.seconds, Some(42));
        assert_eq!(
            outbound.tests,
            [
                ("a_passes".to_owned(), Outcome::Pass),
                ("b_fails".to_owned(), Outcome::Fail),
                ("c_ignored".to_owned(), Outcome::Ignored)
            ]
        );
        assert_eq!(outbound.failures["b_fails"], "verifier said no\n\n");
        assert_eq!(
            suites["harness"].tests,
            [("d_hangs".to_owned(), Outcome::Unfinished)]
        );
        assert_eq!(features.len(), 2);
    }

    #[test]
    fn a_panic_or_missing_marker_is_never_a_pass() {
        let (ending, ..) = parse_console(
            "SLUICE-VM-BOOT x\nKernel panic - not syncing: Oops\n",
            false,
        );
        assert_eq!(ending, Ending::Panic);
        let (ending, ..) = parse_console("SLUICE-VM-BOOT x\n", false);
        assert_eq!(ending, Ending::NoMarker);
    }
}
