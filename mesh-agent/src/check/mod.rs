//! `mesh-agent check`: what this node can do, and which redirect mode it would use.
//!
//! Every verdict comes from trying the real thing where it is cheap: the agent's own eBPF
//! programs are loaded and attached to a throwaway cgroup, and the agent's own netfilter
//! ruleset is applied in a throwaway network namespace.
mod probes;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{ModeSetting, RedirectMode};

/// One probe's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub area: &'static str,
    pub name: String,
    pub ok: bool,
    /// Which mode cannot work without it (`None`: informational).
    pub needed_by: Option<RedirectMode>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub kernel: String,
    pub checks: Vec<Check>,
    pub available: BTreeMap<RedirectMode, bool>,
    /// The mode `auto` (or the forced mode, if it can work) resolves to.
    pub chosen: Option<RedirectMode>,
    pub reason: String,
}

/// Order of preference for `auto`.
const PREFERENCE: [RedirectMode; 3] = [
    RedirectMode::Ebpf,
    RedirectMode::Nftables,
    RedirectMode::Iptables,
];

/// Runs every probe and resolves `setting` against the results.
pub fn run(setting: ModeSetting) -> Report {
    let kernel = probes::kernel_release();
    let mut checks = Vec::new();
    checks.extend(probes::kernel(&kernel));
    checks.extend(probes::ebpf());
    checks.extend(probes::netfilter());
    let available: BTreeMap<RedirectMode, bool> = PREFERENCE
        .iter()
        .map(|mode| {
            let ok = checks
                .iter()
                .filter(|c| c.needed_by == Some(*mode))
                .all(|c| c.ok);
            (*mode, ok)
        })
        .collect();
    let (chosen, reason) = resolve(setting, &available, &checks);
    Report {
        kernel,
        checks,
        available,
        chosen,
        reason,
    }
}

fn resolve(
    setting: ModeSetting,
    available: &BTreeMap<RedirectMode, bool>,
    checks: &[Check],
) -> (Option<RedirectMode>, String) {
    let failures = |mode: RedirectMode| {
        checks
            .iter()
            .filter(|c| c.needed_by == Some(mode) && !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(mode) = setting.forced() {
        return if available[&mode] {
            (Some(mode), format!("{mode} was asked for and works here"))
        } else {
            (
                None,
                format!(
                    "{mode} was asked for but cannot work here: {}",
                    failures(mode)
                ),
            )
        };
    }
    let mut passed_over = Vec::new();
    for mode in PREFERENCE {
        if available[&mode] {
            let why = if passed_over.is_empty() {
                format!("auto: {mode} is the preferred mode and works here")
            } else {
                format!("auto: {mode}, because {}", passed_over.join(", and "))
            };
            return (Some(mode), why);
        }
        passed_over.push(format!("{mode} cannot work: {}", failures(mode)));
    }
    (
        None,
        format!("no redirect mode works here: {}", passed_over.join("; ")),
    )
}

impl Report {
    /// A table a person reads, then the verdict.
    pub fn render_table(&self) -> String {
        let mut out = format!("Sluice node check (kernel {})\n\n", self.kernel);
        let name_width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let needed = c.needed_by.map_or("info".to_owned(), |m| m.to_string());
            out.push_str(&format!(
                "{:<4}  {:<9}  {:<10}  {:<name_width$}  {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.area,
                needed,
                c.name,
                c.detail
            ));
        }
        out.push('\n');
        for (mode, ok) in &self.available {
            out.push_str(&format!(
                "{mode:<9} {}\n",
                if *ok { "available" } else { "unavailable" }
            ));
        }
        out.push_str(&format!(
            "\nmode: {}\n{}\n",
            self.chosen.map_or("none".to_owned(), |m| m.to_string()),
            self.reason
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool, needed_by: RedirectMode) -> Check {
        Check {
            area: "test",
            name: name.into(),
            ok,
            needed_by: Some(needed_by),
            detail: if ok { "fine".into() } else { "broken".into() },
        }
    }

    fn availability(checks: &[Check]) -> BTreeMap<RedirectMode, bool> {
        PREFERENCE
            .iter()
            .map(|m| {
                (
                    *m,
                    checks
                        .iter()
                        .filter(|c| c.needed_by == Some(*m))
                        .all(|c| c.ok),
                )
            })
            .collect()
    }

    #[test]
    fn auto_prefers_ebpf_then_nftables_then_iptables() {
        let checks = vec![
            check("sock_ops", false, RedirectMode::Ebpf),
            check("nft", true, RedirectMode::Nftables),
            check("iptables", true, RedirectMode::Iptables),
        ];
        let (mode, why) = resolve(ModeSetting::Auto, &availability(&checks), &checks);
        assert_eq!(mode, Some(RedirectMode::Nftables));
        assert!(why.contains("ebpf cannot work: sock_ops (broken)"), "{why}");
    }

    #[test]
    fn forcing_a_mode_that_cannot_work_is_not_downgraded() {
        let checks = vec![
            check("sock_ops", false, RedirectMode::Ebpf),
            check("nft", true, RedirectMode::Nftables),
        ];
        let (mode, why) = resolve(ModeSetting::Ebpf, &availability(&checks), &checks);
        assert_eq!(mode, None);
        assert!(
            why.contains("ebpf was asked for but cannot work here"),
            "{why}"
        );
    }

    #[test]
    fn nothing_works_says_why() {
        let checks = vec![
            check("sock_ops", false, RedirectMode::Ebpf),
            check("nft", false, RedirectMode::Nftables),
            check("iptables", false, RedirectMode::Iptables),
        ];
        let (mode, why) = resolve(ModeSetting::Auto, &availability(&checks), &checks);
        assert_eq!(mode, None);
        assert!(why.starts_with("no redirect mode works here"), "{why}");
    }
}
