//! Reading a VM's console into results, and writing them out: a table on the terminal and
//! `docs/kernel-matrix.md`. The feature rows come from what the guest's `bpftool feature probe`
//! printed and from test outcomes, never from claims typed in here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Lines `/init` prints; the host trusts nothing else.
pub mod marker {
    pub const BOOT: &str = "SLUICE-VM-BOOT";
    pub const PROBE_OK: &str = "SLUICE-VM-PROBE-OK";
    pub const NOTE: &str = "SLUICE-VM-NOTE";
    pub const FEATURE: &str = "SLUICE-VM-FEATURE";
    pub const SUITE_BEGIN: &str = "SLUICE-VM-SUITE-BEGIN";
    pub const SUITE_END: &str = "SLUICE-VM-SUITE-END";
    pub const DONE: &str = "SLUICE-VM-DONE";
}

/// How a VM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `/init` printed its final marker with the worst suite status.
    Done { exit: i32 },
    /// The kernel panicked (with `oops=panic`, an oops too).
    Panic,
    /// The host's timeout killed QEMU.
    Timeout,
    /// QEMU exited without the final marker (crash, init died, ...).
    NoMarker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Ignored,
    /// Started but never finished: the VM died or hung inside it.
    Unfinished,
}

impl Outcome {
    fn cell(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "**FAIL**",
            Outcome::Ignored => "ignored",
            Outcome::Unfinished => "**unfinished**",
        }
    }
}

/// One suite (test executable) as the guest ran it.
#[derive(Clone, Debug, Default)]
pub struct Suite {
    pub exit: Option<i32>,
    pub seconds: Option<u64>,
    /// Tests in the order they ran.
    pub tests: Vec<(String, Outcome)>,
    /// `---- name stdout ----` blocks of failed tests.
    pub failures: BTreeMap<String, String>,
}

/// Everything one kernel's run produced.
pub struct KernelRun {
    pub label: String,
    pub package: String,
    pub accel: String,
    pub seconds: f64,
    pub ending: Ending,
    pub suites: BTreeMap<String, Suite>,
    /// `program_type X is available` lines and `helper <type> <helper>` entries.
    pub features: Vec<String>,
    pub notes: Vec<String>,
    pub console: PathBuf,
}

impl KernelRun {
    /// Passed only if init finished, every suite exited 0 and no test failed or hung.
    pub fn passed(&self) -> bool {
        matches!(self.ending, Ending::Done { exit: 0 })
            && self.suites.values().all(|suite| {
                suite.exit == Some(0)
                    && suite
                        .tests
                        .iter()
                        .all(|(_, outcome)| matches!(outcome, Outcome::Pass | Outcome::Ignored))
            })
    }

    pub fn verdict(&self) -> String {
        let failed: usize = self
            .suites
            .values()
            .flat_map(|suite| &suite.tests)
            .filter(|(_, outcome)| matches!(outcome, Outcome::Fail | Outcome::Unfinished))
            .count();
        let passed: usize = self
            .suites
            .values()
            .flat_map(|suite| &suite.tests)
            .filter(|(_, outcome)| *outcome == Outcome::Pass)
            .count();
        let ending = match &self.ending {
            Ending::Done { exit: 0 } if self.passed() => return format!("PASS ({passed} tests)"),
            Ending::Done { .. } => "suite failed",
            Ending::Panic => "KERNEL PANIC",
            Ending::Timeout => "TIMEOUT",
            Ending::NoMarker => "no result marker",
        };
        format!("FAIL: {ending}; {passed} passed, {failed} failed")
    }

    fn outcome(&self, test: &str) -> Option<Outcome> {
        self.suites
            .values()
            .flat_map(|suite| &suite.tests)
            .find(|(name, _)| name == test)
            .map(|(_, outcome)| *outcome)
    }
}

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

/// A program of the agent: its kernel program type and the helpers it calls (the
/// `counters` helper's map lookup included). Checked against mesh-ebpf's source by a test.
struct Program {
    name: &'static str,
    prog_type: &'static str,
    helpers: &'static [&'static str],
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "connect4, connect6",
        prog_type: "cgroup_sock_addr",
        helpers: &[
            "bpf_get_current_cgroup_id",
            "bpf_get_current_ancestor_cgroup_id",
            "bpf_get_socket_cookie",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
        ],
    },
    Program {
        name: "getpeername4, getpeername6",
        prog_type: "cgroup_sock_addr",
        helpers: &["bpf_get_socket_cookie", "bpf_map_lookup_elem"],
    },
    Program {
        name: "track_connections",
        prog_type: "sock_ops",
        helpers: &[
            "bpf_get_socket_cookie",
            "bpf_sock_ops_cb_flags_set",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
            "bpf_map_delete_elem",
        ],
    },
    Program {
        name: "getsockopt",
        prog_type: "cgroup_sockopt",
        helpers: &["bpf_map_lookup_elem"],
    },
];

/// The program types the agent loads, for the guest's probe to report helpers of.
pub fn prog_types() -> Vec<&'static str> {
    let mut types: Vec<&str> = PROGRAMS.iter().map(|p| p.prog_type).collect();
    types.sort_unstable();
    types.dedup();
    types
}

const MAP_TYPES: &[&str] = &["hash", "percpu_array"];

/// Behaviours only a real run shows, each with the test whose outcome is its evidence
/// (`mode::test` names one redirect mode's run of an outbound scenario).
const BEHAVIOURS: &[(&str, &str)] = &[
    (
        "IPv4: connect4 rewrite, sock_ops bookkeeping, getsockopt SO_ORIGINAL_DST, getpeername4",
        "ebpf::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "IPv6: connect6 rewrite, getsockopt IP6T_SO_ORIGINAL_DST, getpeername6",
        "ebpf::enrolled_pod_ipv6_is_captured",
    ),
    (
        "capture from a child cgroup (ancestor cgroup id)",
        "ebpf::container_cgroup_of_enrolled_pod_is_captured",
    ),
    (
        "bpf_link multi-attach, pinned links, detach on cleanup",
        "ebpf_cleanup_leaves_no_pins_or_programs",
    ),
    (
        "the agent's own upstream connects are not recaptured",
        "ebpf::agent_upstream_is_not_recaptured",
    ),
    (
        "nftables: `table inet sluice` nat redirect, conntrack SO_ORIGINAL_DST (v4)",
        "nftables::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "nftables: the same over IPv6",
        "nftables::enrolled_pod_ipv6_is_captured",
    ),
    (
        "iptables-nft: SLUICE_OUTPUT REDIRECT (v4)",
        "iptables::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "iptables-nft: the same over IPv6",
        "iptables::enrolled_pod_ipv6_is_captured",
    ),
    (
        "iptables-legacy: rules steer traffic",
        "iptables_legacy::traffic_follows_the_rules",
    ),
    (
        "the precheck's choice matches the kernel, and auto runs it",
        "auto_mode_runs_what_check_chose_and_captures",
    ),
];

/// Modes as `mesh-agent check` in the guest printed them (`mode <name> available`).
const MODES: &[&str] = &["ebpf", "nftables", "iptables"];

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

/// `yes`/`NO` from the guest's probe, or `?` when the probe printed nothing about it.
fn probed(run: &KernelRun, kind: &str, name: &str) -> &'static str {
    let wanted = format!("eBPF {kind} {name} is ");
    match run.features.iter().find(|line| line.starts_with(&wanted)) {
        Some(line) if line.ends_with("is available") => "yes",
        Some(_) => "**NO**",
        None => "?",
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

/// The Markdown matrix for `docs/kernel-matrix.md`.
pub fn markdown(runs: &[KernelRun], command: &str, date: &str) -> String {
    let mut md = String::new();
    let header: Vec<String> = runs
        .iter()
        .map(|run| format!("{} (`{}`)", run.label, run.package))
        .collect();
    let cols = |md: &mut String, first: &str| {
        let _ = writeln!(md, "| {first} | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(runs.len()));
    };
    let _ = writeln!(md, "# Kernel matrix\n");
    let _ = writeln!(
        md,
        "Generated by `{command}` on {date}; do not edit by hand. Each kernel is Debian's \
         cloud kernel booted under QEMU with the static test binaries in an initramfs (see \
         `xtask/src/vm/`). Feature rows come from `bpftool feature probe kernel` run inside \
         the guest; behaviour rows from the outcome of the named test on that kernel.\n"
    );
    let _ = writeln!(md, "## Summary\n");
    cols(&mut md, "");
    let row = |f: &dyn Fn(&KernelRun) -> String| runs.iter().map(f).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(md, "| result | {} |", row(&|run| run.verdict()));
    let _ = writeln!(md, "| accelerator | {} |", row(&|run| run.accel.clone()));
    let _ = writeln!(
        md,
        "| VM wall time | {} |",
        row(&|run| format!("{:.0} s", run.seconds))
    );
    let _ = writeln!(md, "\n## Program and map types\n");
    cols(&mut md, "type (used by)");
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
            row(&|run| probed(run, "program_type", program.prog_type).to_owned())
        );
    }
    for map in MAP_TYPES {
        let _ = writeln!(
            md,
            "| map type `{map}` | {} |",
            row(&|run| probed(run, "map_type", map).to_owned())
        );
    }
    let _ = writeln!(
        md,
        "\n## Redirect modes (`mesh-agent check` in the guest)\n"
    );
    cols(&mut md, "mode");
    for mode in MODES {
        let _ = writeln!(
            md,
            "| {mode} | {} |",
            row(&|run| mode_probed(run, mode).to_owned())
        );
    }
    let _ = writeln!(md, "| chosen by `auto` | {} |", row(&mode_chosen));
    let _ = writeln!(md, "| failed checks | {} |", row(&failed_checks));
    let _ = writeln!(md, "\n## Helpers, per program type\n");
    cols(&mut md, "helper in program type (used by)");
    for program in PROGRAMS {
        for helper in program.helpers {
            let _ = writeln!(
                md,
                "| `{helper}` in `{}` ({}) | {} |",
                program.prog_type,
                program.name,
                row(&|run| helper_probed(run, program.prog_type, helper).to_owned())
            );
        }
    }
    let _ = writeln!(md, "\n## Behaviour, from test outcomes\n");
    cols(&mut md, "behaviour (test)");
    for (behaviour, test) in BEHAVIOURS {
        let _ = writeln!(
            md,
            "| {behaviour} (`{test}`) | {} |",
            row(&|run| run
                .outcome(test)
                .map_or("not run", Outcome::cell)
                .to_owned())
        );
    }
    let _ = writeln!(md, "\n## Tests\n");
    cols(&mut md, "suite: test");
    let mut tests: Vec<(String, String)> = Vec::new();
    for run in runs {
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
            row(&|run| {
                run.suites
                    .get(suite)
                    .and_then(|s| s.tests.iter().find(|(name, _)| name == test))
                    .map_or("not run", |(_, outcome)| outcome.cell())
                    .to_owned()
            })
        );
    }
    let _ = writeln!(
        md,
        "| suite time | {} |",
        row(&|run| {
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
    md
}

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

    /// Every helper mesh-ebpf calls appears in [`PROGRAMS`], so the matrix asks the guest
    /// about all of them.
    #[test]
    fn programs_table_covers_mesh_ebpf_helpers() -> std::io::Result<()> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-ebpf/src");
        let known: Vec<&str> = PROGRAMS
            .iter()
            .flat_map(|p| p.helpers.iter().copied())
            .collect();
        for entry in std::fs::read_dir(src)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for (at, _) in text.match_indices("helpers::") {
                let rest = &text[at + "helpers::".len()..];
                let names = rest.split(['}', ';']).next().unwrap_or_default();
                for name in names.split([',', '{', ' ', '\n']).map(str::trim) {
                    if name.starts_with("bpf_") {
                        assert!(known.contains(&name), "{name} missing from PROGRAMS");
                    }
                }
            }
        }
        Ok(())
    }
}
