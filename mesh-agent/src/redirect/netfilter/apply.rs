//! Applying a [`RuleSet`] in a netns: idempotent, repairing drift, touching nothing else.
//!
//! "Equivalent" is decided by the backend itself: the ruleset is applied once in a scratch
//! netns and listed back, which gives its canonical text in whatever spelling this version
//! of `nft` or `iptables-save` uses; the live listing is compared with that. Equal means
//! no write at all.
use std::{collections::HashMap, sync::Mutex};

use super::{
    backend::{self, Backend},
    rules::{Family, INBOUND_CHAIN, NFT_TABLE, OUTPUT_CHAIN, RuleSet},
};
use crate::sys::exec::{self, ExecError, NetnsTarget};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{backend}: {error}")]
    Exec {
        backend: &'static str,
        error: ExecError,
    },
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The equivalent ruleset was already in place.
    Unchanged,
    /// Our rules were missing or had drifted, and were (re)written.
    Written,
}

/// Applies and removes rulesets, remembering canonical listings by rendered text.
#[derive(Default)]
pub struct Applier {
    canonical: Mutex<HashMap<String, String>>,
}

impl Applier {
    /// Makes `rules` the ruleset in force through `backend`, and removes our rules from the
    /// other backends (an agent in another mode may have left them; they would steer too).
    pub fn apply(
        &self,
        target: NetnsTarget<'_>,
        backend: Backend,
        rules: &RuleSet,
        families: &[Family],
    ) -> Result<Outcome, ApplyError> {
        let outcome = self.apply_one(target, backend, rules, families)?;
        if !matches!(target, NetnsTarget::Scratch) {
            for other in Backend::ALL {
                if other != backend && other.installed() {
                    self.remove(target, other)?;
                }
            }
        }
        Ok(outcome)
    }

    fn apply_one(
        &self,
        target: NetnsTarget<'_>,
        backend: Backend,
        rules: &RuleSet,
        families: &[Family],
    ) -> Result<Outcome, ApplyError> {
        let err = |error| ApplyError::Exec {
            backend: backend.as_str(),
            error,
        };
        if backend == Backend::Nft {
            let tx = rules.nft_transaction();
            let script = format!("nft -f - && nft list table inet {NFT_TABLE}");
            let want = self.canonical(&tx, &script).map_err(err)?;
            if live_nft(target) == want {
                return Ok(Outcome::Unchanged);
            }
            exec::run(target, "nft", &["-f", "-"], &tx).map_err(err)?;
            return Ok(Outcome::Written);
        }
        let mut outcome = Outcome::Unchanged;
        for &family in families {
            let (restore, save) = backend.iptables_tools(family);
            let live = exec::run(target, save, &["-t", "nat"], "").map_err(err)?;
            let script = format!("{restore} --noflush && {save} -t nat");
            let want = self
                .canonical(&rules.iptables_payload(family, true), &script)
                .map_err(err)?;
            let jumps = rules.iptables_jumps();
            let stale = stale_chains(&live, rules);
            if our_rules(&live) == our_rules(&want)
                && jumps.iter().all(|j| count(&live, j) == 1)
                && stale.is_empty()
            {
                continue;
            }
            // Our chains are rewritten whole (declaring them flushes them); jumps are added
            // when missing and deduplicated, never touching anyone else's rules. A chain of
            // ours this ruleset no longer has (inbound, once the pod is retired) goes, with
            // the jumps into it.
            let mut payload = rules.iptables_payload(family, false);
            payload.truncate(payload.len() - "COMMIT\n".len());
            payload.push_str(&removal(&live, &stale));
            for jump in &jumps {
                match count(&live, jump) {
                    0 => payload.push_str(&format!("{}\n", insert_form(jump))),
                    n => (1..n).for_each(|_| {
                        payload.push_str(&format!("{}\n", jump.replacen("-A ", "-D ", 1)))
                    }),
                }
            }
            payload.push_str("COMMIT\n");
            exec::run(target, restore, &["--noflush"], &payload).map_err(err)?;
            outcome = Outcome::Written;
        }
        Ok(outcome)
    }

    /// Removes our rules from every installed backend; returns the backends that had some.
    pub fn remove_everywhere(&self, target: NetnsTarget<'_>) -> Result<Vec<Backend>, ApplyError> {
        let mut had = Vec::new();
        for backend in Backend::ALL {
            if backend.installed() && self.remove(target, backend)? {
                had.push(backend);
            }
        }
        Ok(had)
    }

    /// Removes exactly our table, or our jumps and chains in both families (whatever the
    /// pod has now, an earlier ruleset may have covered IPv6); returns whether anything
    /// was there.
    fn remove(&self, target: NetnsTarget<'_>, backend: Backend) -> Result<bool, ApplyError> {
        let err = |error| ApplyError::Exec {
            backend: backend.as_str(),
            error,
        };
        if backend == Backend::Nft {
            if live_nft(target).is_empty() {
                return Ok(false);
            }
            exec::run(target, "nft", &["delete", "table", "inet", NFT_TABLE], "").map_err(err)?;
            return Ok(true);
        }
        let mut removed = false;
        for family in [Family::V4, Family::V6] {
            if backend == Backend::IptablesLegacy && !backend::legacy_tables_exist(target, family) {
                continue;
            }
            let (restore, save) = backend.iptables_tools(family);
            let live = match exec::run(target, save, &["-t", "nat"], "") {
                Ok(live) => live,
                // A kernel without IPv6 has no IPv6 rules of ours either.
                Err(_) if family == Family::V6 => continue,
                Err(error) => return Err(err(error)),
            };
            let ours = removal(&live, &[OUTPUT_CHAIN, INBOUND_CHAIN]);
            if ours.is_empty() {
                continue;
            }
            let payload = format!("*nat\n{ours}COMMIT\n");
            exec::run(target, restore, &["--noflush"], &payload).map_err(err)?;
            removed = true;
        }
        Ok(removed)
    }

    /// The listing `script` prints after loading `input` in a scratch netns, cached by input.
    fn canonical(&self, input: &str, script: &str) -> Result<String, ExecError> {
        if let Some(hit) = self
            .canonical
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(input)
        {
            return Ok(hit.clone());
        }
        let listed = exec::run(NetnsTarget::Scratch, "sh", &["-c", script], input)?;
        self.canonical
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(input.to_owned(), listed.clone());
        Ok(listed)
    }
}

/// Our table as `nft` lists it; empty when it does not exist.
fn live_nft(target: NetnsTarget<'_>) -> String {
    exec::run(target, "nft", &["list", "table", "inet", NFT_TABLE], "").unwrap_or_default()
}

/// The rules inside our chains, in order.
/// Chains of ours declared in `save` that `rules` does not have.
fn stale_chains(save: &str, rules: &RuleSet) -> Vec<&'static str> {
    let wanted = rules.iptables_chains();
    [OUTPUT_CHAIN, INBOUND_CHAIN]
        .into_iter()
        .filter(|chain| !wanted.contains(chain) && declares(save, chain))
        .collect()
}

/// `iptables-restore` lines that delete every jump into `chains` and then the chains
/// themselves, as far as `save` has them.
fn removal(save: &str, chains: &[&str]) -> String {
    let mut out = String::new();
    for line in save.lines() {
        let jumps_to_ours = chains.iter().any(|c| line.ends_with(&format!("-j {c}")));
        if line.starts_with("-A ") && jumps_to_ours {
            out.push_str(&format!("{}\n", line.replacen("-A ", "-D ", 1)));
        }
    }
    for chain in chains {
        if declares(save, chain) {
            out.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
    }
    out
}

fn declares(save: &str, chain: &str) -> bool {
    save.lines().any(|l| l.starts_with(&format!(":{chain} ")))
}

fn our_rules(save: &str) -> Vec<&str> {
    let prefixes = [
        format!("-A {OUTPUT_CHAIN} "),
        format!("-A {INBOUND_CHAIN} "),
    ];
    save.lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p.as_str())))
        .collect()
}

fn count(save: &str, line: &str) -> usize {
    save.lines().filter(|l| *l == line).count()
}

/// `-A CHAIN spec` as an insert at the top, so our jump runs before rules added later.
fn insert_form(jump: &str) -> String {
    match jump
        .strip_prefix("-A ")
        .and_then(|rest| rest.split_once(' '))
    {
        Some((chain, spec)) => format!("-I {chain} 1 {spec}"),
        None => jump.to_owned(),
    }
}
