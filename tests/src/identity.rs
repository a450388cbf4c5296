//! Workload identities for the mesh tunnel: the agent config's `identity:` section, SPIFFE
//! names, and a throw-away CA per test made by the agent itself (`mesh-agent ca init`).
//!
//! Policies name callers without the scheme (`cluster.local/ns/<ns>/sa/<sa>`, as Istio's
//! `principals`), metrics with it (`spiffe://cluster.local/ns/<ns>/sa/<sa>`): both are
//! derived here from a workload's namespace and service account, so a test cannot spell one
//! of them differently from the other.

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The trust domain every test node uses.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `<trust domain>/ns/<ns>/sa/<sa>`: how authorization policies name a caller.
pub fn principal(namespace: &str, service_account: &str) -> String {
    format!("{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`: the certificate's URI SAN, and the metrics'
/// `source_principal` / `destination_principal`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{}", principal(namespace, service_account))
}

/// The config's `identity:` section: exactly one of `ca` or `files` (both or neither is the
/// agent's to refuse).
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub trust_domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<LocalCa>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<IdentityFiles>,
}

/// The agent issues workload certificates itself from a CA made by `mesh-agent ca init`.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LocalCa {
    pub dir: PathBuf,
    /// A duration as the agent reads it (`24h`, `90s`); `None`: the agent's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_ttl: Option<String>,
}

/// The operator's own PKI: roots, and a certificate and key per service account.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IdentityFiles {
    pub ca_bundle: PathBuf,
    pub identities: Vec<IdentityFile>,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IdentityFile {
    pub namespace: String,
    pub service_account: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// `ca` mode with the CA in `dir`, trust domain [`TRUST_DOMAIN`].
    pub fn ca(dir: &Path) -> Identity {
        Identity {
            trust_domain: TRUST_DOMAIN.into(),
            ca: Some(LocalCa {
                dir: dir.to_path_buf(),
                certificate_ttl: None,
            }),
            files: None,
        }
    }

    /// Sets `ca.certificateTtl` (no effect in `files` mode).
    pub fn certificate_ttl(mut self, ttl: &str) -> Identity {
        if let Some(ca) = &mut self.ca {
            ca.certificate_ttl = Some(ttl.into());
        }
        self
    }
}

/// A CA directory made by `<agent> ca init` for one test; removed on drop. It lives in the
/// temp dir under the run's prefix (`sluice-test-sl-<pid>-<n>-ca`), so the stale sweep
/// removes it if the test process dies.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// `mesh-agent ca init --trust-domain cluster.local --out <dir>`; fails with the
    /// command's output, or if it left no `ca-cert.pem` and `ca-key.pem`.
    pub fn new() -> Result<TestCa> {
        let bin = crate::agent_bin()?;
        let ca = TestCa {
            dir: std::env::temp_dir().join(format!("sluice-test-{}-ca", crate::unique_prefix())),
        };
        let out = Command::new(&bin)
            .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--out"])
            .arg(&ca.dir)
            .output()
            .with_context(|| format!("running {} ca init", bin.display()))?;
        ensure!(
            out.status.success(),
            "{} ca init failed ({}): {}{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for file in ["ca-cert.pem", "ca-key.pem"] {
            let path = ca.dir.join(file);
            ensure!(
                path.is_file(),
                "ca init left no {} (it printed: {})",
                path.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(ca)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config's `identity:` section issuing from this CA.
    pub fn identity(&self) -> Identity {
        Identity::ca(&self.dir)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
