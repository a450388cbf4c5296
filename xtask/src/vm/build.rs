//! Static builds of what runs inside the VM: the agent, the test app and the integration test
//! executables. Static glibc, because the initramfs carries no Rust binary's libraries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The VM's executables, all under `target/vm`.
pub struct Binaries {
    pub agent: PathBuf,
    pub testapp: PathBuf,
    pub httpapp: PathBuf,
    /// Integration test executables by target name (`harness`, `outbound`, ...).
    pub suites: Vec<(String, PathBuf)>,
}

/// A cargo build of the VM binaries. An explicit `--target` keeps RUSTFLAGS away from build
/// scripts and proc-macros (they must stay dynamic host programs), and `target/vm` keeps the
/// host build's cache valid. Everything is built with the workspace's `vm` profile: one
/// build of the dependencies serves the agent and the tests, optimised enough for TCG.
fn cargo(root: &Path, subcommand: &str) -> Command {
    let mut cargo = cmd::cargo(root);
    cargo
        .arg(subcommand)
        .args(["--profile", "vm", "--target", TARGET, "--target-dir"])
        .arg(root.join("target/vm"))
        .arg("--message-format=json-render-diagnostics")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stderr(Stdio::inherit());
    cargo
}

/// Builds everything; `only` restricts the integration tests to those target names.
pub fn build(root: &Path, only: &[String]) -> Result<Binaries> {
    eprintln!("xtask: vm: building static binaries in target/vm");
    // Optimised (the `vm` profile): a debug build's TLS and HTTP/2 under TCG emulation is
    // too slow for the 500-connection mesh scenario's timeouts.
    let agent_out =
        cmd::stdout(cargo(root, "build").args(["-p", "mesh-agent", "--bin", "mesh-agent"]))
            .context("cannot build a static mesh-agent")?;
    let agent = executables(&agent_out)
        .into_iter()
        .find(|art| art.kind == "bin" && art.name == "mesh-agent" && !art.test)
        .context("the build reported no mesh-agent executable")?
        .path;
    let tests_out = cmd::stdout(cargo(root, "test").args(["-p", "tests", "--no-run"]))
        .context("cannot build the static integration tests")?;
    let artifacts = executables(&tests_out);
    let bin = |name: &str| {
        (artifacts.iter())
            .find(|art| art.kind == "bin" && art.name == name && !art.test)
            .map(|art| art.path.clone())
            .with_context(|| format!("the build reported no {name} executable"))
    };
    let testapp = bin("sluice-testapp")?;
    let httpapp = bin("sluice-httpapp")?;
    let mut suites: Vec<(String, PathBuf)> = artifacts
        .into_iter()
        .filter(|art| art.kind == "test" && art.test)
        .filter(|art| only.is_empty() || only.contains(&art.name))
        .map(|art| (art.name, art.path))
        .collect();
    suites.sort();
    if let Some(missing) = only
        .iter()
        .find(|name| !suites.iter().any(|(suite, _)| suite == *name))
    {
        bail!("the tests package has no integration test named {missing:?}");
    }
    if suites.is_empty() {
        bail!("the tests package built no integration test executables");
    }
    Ok(Binaries {
        agent,
        testapp,
        httpapp,
        suites,
    })
}

struct Artifact {
    kind: String,
    name: String,
    test: bool,
    path: PathBuf,
}

/// Executables from cargo's JSON messages (`compiler-artifact` lines with `executable`).
fn executables(messages: &str) -> Vec<Artifact> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter_map(|msg| {
            Some(Artifact {
                kind: msg["target"]["kind"][0].as_str()?.to_owned(),
                name: msg["target"]["name"].as_str()?.to_owned(),
                test: msg["profile"]["test"].as_bool()?,
                path: PathBuf::from(msg["executable"].as_str()?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::executables;

    #[test]
    fn picks_executables_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"outbound"},"profile":{"test":true},"executable":"/t/outbound-1"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tests"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}"#;
        let found = executables(messages);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "outbound");
        assert!(found[0].test);
    }
}
