//! What can go wrong with identities. Every message names the file or the identity, because
//! the operator reading it has to know which of several to fix.
use std::{io, path::PathBuf};

use super::spiffe::{SpiffeId, SpiffeIdError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid identity: {0}")]
    InvalidId(#[from] SpiffeIdError),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} already exists: refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: not a usable CA certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("{path} is the CA of trust domain {found:?}, not of {expected:?}")]
    CaTrustDomainMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the CA expired on {0}: make a new one (`mesh-agent ca init`) and trust its root")]
    CaExpired(String),
    #[error("{id} is not in trust domain {trust_domain:?}")]
    ForeignIdentity { id: SpiffeId, trust_domain: String },
    #[error("generating the key or certificate for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("{path}: the certificate is for {found}, but it is configured for {expected}")]
    IdentityMismatch {
        path: PathBuf,
        expected: SpiffeId,
        found: String,
    },
    #[error("{key} does not match the certificate in {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{0} is configured twice under identity.files.identities")]
    DuplicateIdentity(SpiffeId),
    #[error("no certificate is configured for {0} (add it under identity.files.identities)")]
    NoIdentityFile(SpiffeId),
    #[error("building the TLS config for {what}: {source}")]
    Tls { what: String, source: rustls::Error },
}
