//! A workload certificate as issued: what rustls takes, and the PEM files other consumers
//! (files mode, Envoy in benchmarks) read.
use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use humantime_serde::re::humantime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{IdentityError, pemfile};

/// A workload certificate and its key, as rustls takes them.
pub struct IssuedCert {
    /// Leaf first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Lower-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedCert {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The chain as PEM (`cert.pem` for files mode, Envoy and others).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pemfile::encode("CERTIFICATE", c))
            .collect()
    }

    /// The PKCS#8 key as PEM.
    pub fn key_pem(&self) -> String {
        pemfile::encode("PRIVATE KEY", self.key.secret_der())
    }

    /// Writes `cert.pem` (the chain) and `key.pem` (0600) into `dir` and returns their paths.
    /// With `replace`, existing files are replaced, each atomically and the key first (an
    /// agent watching them then loads the pair once both are in); without, they must not
    /// exist.
    pub fn write(&self, dir: &Path, replace: bool) -> Result<[PathBuf; 2], IdentityError> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !replace && let Some(path) = [&cert, &key].into_iter().find(|p| p.exists()) {
            return Err(IdentityError::Exists { path: path.clone() });
        }
        create_private_dir(dir)?;
        let write = if replace {
            pemfile::replace
        } else {
            pemfile::write_new
        };
        write(&key, self.key_pem().as_bytes(), pemfile::KEY_MODE)?;
        write(&cert, self.chain_pem().as_bytes(), pemfile::CERT_MODE)?;
        Ok([cert, key])
    }
}

/// Creates `dir` (and its parents) readable by the owner only, when missing.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::Write {
            path: dir.into(),
            source,
        })
}

/// Certificate dates as the dump and the logs show them: RFC 3339, UTC, whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
