//! Where workload certificates come from: the `identity:` section of the node config.
//!
//! Without the section, mTLS between pods is off and the agent says so at start and in
//! `/config_dump`; traffic between enrolled pods is then plain TCP, as before the tunnel.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// The trust domain and the source of every workload identity's certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentitySettings {
    /// The SPIFFE trust domain: identities are `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(flatten)]
    pub source: CertificateSource,
}

/// Exactly one of `ca` or `files`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CertificateSource {
    /// The agent issues short-lived certificates from a CA made by `mesh-agent ca init`.
    Ca(LocalCaSettings),
    /// The operator's own PKI: a CA bundle, and a certificate and key per identity.
    Files(IdentityFiles),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalCaSettings {
    /// The directory `mesh-agent ca init --out` wrote (`ca-cert.pem`, `ca-key.pem`).
    pub dir: PathBuf,
    /// Lifetime of each issued workload certificate.
    #[serde(with = "humantime_serde", default = "default_certificate_ttl")]
    pub certificate_ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFiles {
    /// PEM roots that peers' chains must lead to (more than one during a root rotation).
    pub ca_bundle: PathBuf,
    pub identities: Vec<IdentityFile>,
}

/// The certificate (PEM chain, leaf first) and key of one service account. The files are
/// read again when they change, so an external rotation needs no restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFile {
    pub namespace: String,
    pub service_account: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_certificate_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
