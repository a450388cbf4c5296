//! What one kernel's run produced, and whether it passed.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

    pub(super) fn outcome(&self, test: &str) -> Option<Outcome> {
        self.suites
            .values()
            .flat_map(|suite| &suite.tests)
            .find(|(name, _)| name == test)
            .map(|(_, outcome)| *outcome)
    }
}
