//! A static check of the Containerfile, since no container engine runs here: its stages
//! refer to earlier stages, what it builds are the workspace's binaries, and the image ends
//! up with exactly the binaries deploy/'s containers run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd;

/// Package name to its binary targets, from `cargo metadata`.
pub type Bins = BTreeMap<String, BTreeSet<String>>;

pub fn workspace_bins(root: &Path) -> Result<Bins> {
    let out = cmd::stdout(cmd::cargo(root).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]))
    .or_else(|_| {
        cmd::stdout(cmd::cargo(root).args(["metadata", "--no-deps", "--format-version", "1"]))
    })?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("cargo metadata")?;
    let mut bins = Bins::new();
    for package in meta["packages"].as_array().context("no packages")? {
        let name = package["name"].as_str().context("package name")?;
        let entry = bins.entry(name.to_owned()).or_default();
        for target in package["targets"].as_array().into_iter().flatten() {
            if target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                entry.insert(target["name"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(bins)
}

/// The binaries deploy/'s containers run (`command: [name]`).
pub fn deployed_commands(daemonset: &str) -> BTreeSet<String> {
    daemonset
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command: ["))
        .filter_map(|rest| rest.split([',', ']']).next())
        .map(|name| name.trim().to_owned())
        .collect()
}

struct Stage {
    name: Option<String>,
    /// `(package, bin)` of each `cargo build -p P --bin B`.
    built: Vec<(String, String)>,
    /// `(from stage, file name)` of each `COPY --from=`.
    copied: Vec<(String, String)>,
}

/// Checks `text` against the workspace's `bins` and the `deployed` commands; returns
/// warnings for what cannot be checked yet.
pub fn check(text: &str, bins: &Bins, deployed: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut warnings = Vec::new();
    for line in instructions(text) {
        let mut words = line.split_whitespace();
        let Some(op) = words.next() else { continue };
        let words: Vec<&str> = words.collect();
        match op.to_ascii_uppercase().as_str() {
            "FROM" => {
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    [_] => None,
                    _ => bail!("FROM that is not `FROM image [AS name]`: {line}"),
                };
                stages.push(Stage {
                    name,
                    built: Vec::new(),
                    copied: Vec::new(),
                });
            }
            "RUN" => {
                let stage = stages.last_mut().context("RUN before FROM")?;
                stage.built.extend(cargo_builds(&words));
            }
            "COPY" => {
                let stage = stages.last_mut().context("COPY before FROM")?;
                if let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) {
                    // Every operand but the last (the destination) is a source.
                    let operands: Vec<&str> = words
                        .iter()
                        .copied()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let sources = &operands[..operands.len().saturating_sub(1)];
                    for src in sources {
                        let file = src.rsplit('/').next().unwrap_or(src);
                        stage.copied.push((from.to_owned(), file.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    ensure!(
        stages.len() >= 2,
        "a build stage and a runtime stage are expected"
    );
    for (i, stage) in stages.iter().enumerate() {
        for (from, _) in &stage.copied {
            let earlier = stages[..i]
                .iter()
                .any(|s| s.name.as_deref() == Some(from.as_str()));
            ensure!(
                earlier,
                "COPY --from={from}: no earlier stage has that name"
            );
        }
    }
    for stage in &stages {
        for (package, bin) in &stage.built {
            let Some(package_bins) = bins.get(package) else {
                bail!("builds -p {package}, which is no workspace package");
            };
            if !package_bins.contains(bin) {
                // The binary's crate may be in place before its main.rs.
                warnings.push(format!(
                    "TODO({package} binary): package {package} has no binary {bin} yet, so the \
                     image cannot build until it does"
                ));
            }
        }
    }
    let runtime = stages.last().context("no stage")?;
    let mut shipped = BTreeSet::new();
    for (from, file) in &runtime.copied {
        let source = stages
            .iter()
            .find(|s| s.name.as_deref() == Some(from.as_str()))
            .context("stage")?;
        ensure!(
            source.built.iter().any(|(_, bin)| bin == file),
            "the image copies {file} from stage {from}, which does not `cargo build` it"
        );
        shipped.insert(file.clone());
    }
    ensure!(
        &shipped == deployed,
        "the image holds {shipped:?} but deploy/ runs {deployed:?}"
    );
    Ok(warnings)
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// `(package, bin)` of every `cargo build ... -p P ... --bin B` among `words`.
fn cargo_builds(words: &[&str]) -> Vec<(String, String)> {
    let mut builds = Vec::new();
    let mut package = None;
    let mut in_build = false;
    for pair in words.windows(2) {
        match pair {
            ["cargo", "build"] => {
                in_build = true;
                package = None;
            }
            ["&&", _] => in_build = false,
            ["-p" | "--package", p] if in_build => package = Some(p.to_string()),
            ["--bin", b] if in_build => {
                if let Some(p) = &package {
                    builds.push((p.clone(), b.to_string()));
                }
            }
            _ => {}
        }
    }
    builds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_bins() -> Bins {
        workspace_bins(&cmd::workspace_root().unwrap()).unwrap()
    }

    fn shipped() -> (String, BTreeSet<String>) {
        let root = cmd::workspace_root().unwrap();
        let text = std::fs::read_to_string(root.join("Containerfile")).unwrap();
        let ds = std::fs::read_to_string(root.join("deploy/base/daemonset.yaml")).unwrap();
        (text, deployed_commands(&ds))
    }

    #[test]
    fn the_containerfile_builds_and_ships_what_deploy_runs() {
        let (text, deployed) = shipped();
        assert_eq!(
            deployed,
            BTreeSet::from(["mesh-agent".to_owned(), "sluice-cni".to_owned()])
        );
        let warnings = check(&text, &test_bins(), &deployed).unwrap();
        assert!(
            warnings.iter().all(|w| w.starts_with("TODO(")),
            "{warnings:?}"
        );
    }

    #[test]
    fn broken_containerfiles_fail() {
        let (text, deployed) = shipped();
        let bins = test_bins();
        for (what, broken) in [
            (
                "unknown stage",
                text.replace("--from=build", "--from=builder"),
            ),
            (
                "later stage",
                text.replace("AS build", "AS compile")
                    .replace("AS runtime", "AS build"),
            ),
            (
                "not built",
                text.replace("/out/sluice-cni /usr", "/out/sluice-cni /out/xtask /usr"),
            ),
            (
                "unknown package",
                text.replace("-p mesh-agent", "-p mesh-agnet"),
            ),
            (
                "not shipped",
                text.replace(" /out/sluice-cni /usr", " /usr"),
            ),
        ] {
            assert_ne!(broken, text, "{what}: nothing replaced");
            assert!(check(&broken, &bins, &deployed).is_err(), "{what} passed");
        }
    }

    #[test]
    fn cargo_builds_are_read_per_command() {
        let words: Vec<&str> =
            "cargo xtask toolchain && cargo build --release -p a --bin x && cargo build -p b --bin y"
                .split_whitespace()
                .collect();
        assert_eq!(
            cargo_builds(&words),
            [("a".into(), "x".into()), ("b".into(), "y".into())]
        );
    }
}
