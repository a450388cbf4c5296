//! The mTLS path's certificates: one CA per bench run (`mesh-agent ca init`, in the run's
//! work directory), which Sluice's agent issues its workload certificates from, and from
//! which `mesh-agent ca issue` makes each Envoy sidecar's certificate. Both contenders so
//! present ECDSA P-256 certificates of the same CA with the same SPIFFE IDs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::envoy;
use crate::cmd;

pub const TRUST_DOMAIN: &str = "cluster.local";
/// Every bench pod's namespace; each pod's service account is its role (`client`, `server`).
pub const NAMESPACE: &str = "bench";

pub fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

/// The run's CA directory (`identity.ca.dir` of the agent), made on first use.
pub fn ca(workdir: &Path, agent: &Path) -> Result<PathBuf> {
    let dir = workdir.join("ca");
    if !dir.join("ca-cert.pem").exists() {
        cmd::stdout(
            Command::new(agent)
                .args(["ca", "init", "--trust-domain", TRUST_DOMAIN])
                .arg("--out")
                .arg(&dir),
        )
        .context("making the bench's CA with mesh-agent ca init")?;
    }
    Ok(dir)
}

/// The certificate of the sidecar in `pod` (issued on first use) and what it accepts of
/// its peers, in files Envoy's uid may read.
pub fn sidecar(workdir: &Path, agent: &Path, pod: &str) -> Result<envoy::Tls> {
    let ca = ca(workdir, agent)?;
    let dir = workdir.join("certs").join(pod);
    let tls = envoy::Tls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca-cert.pem"),
        trust_domain: TRUST_DOMAIN.into(),
        server_id: spiffe_id("server"),
    };
    if tls.ca.exists() {
        return Ok(tls);
    }
    // `ca issue` would make missing parents private to root, and Envoy must pass through.
    let parent = workdir.join("certs");
    std::fs::create_dir_all(&parent).with_context(|| format!("mkdir {}", parent.display()))?;
    cmd::stdout(
        Command::new(agent)
            .args(["ca", "issue", "--ca"])
            .arg(&ca)
            .args(["--trust-domain", TRUST_DOMAIN, "--namespace", NAMESPACE])
            .args(["--service-account", pod, "--force"])
            .arg("--out")
            .arg(&dir),
    )
    .with_context(|| format!("issuing the {pod} sidecar's certificate with mesh-agent ca issue"))?;
    // The CA's directory holds its key and stays root's: Envoy gets a copy of the root.
    std::fs::copy(ca.join("ca-cert.pem"), &tls.ca)
        .with_context(|| format!("copying the CA certificate to {}", dir.display()))?;
    for path in [&dir, &tls.cert, &tls.key, &tls.ca] {
        std::os::unix::fs::chown(path, Some(envoy::UID), Some(envoy::UID))
            .with_context(|| format!("chown {} to Envoy's uid", path.display()))?;
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_pods_service_accounts() {
        assert_eq!(
            spiffe_id("client"),
            "spiffe://cluster.local/ns/bench/sa/client"
        );
    }
}
