//! PEM files: reading chains and keys with errors that name the file, and writing them so
//! that a key is never readable by others and a reader never sees half a file.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::IdentityError;

pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Read {
        path: path.into(),
        source,
    })
}

/// Every certificate in a PEM file, in order (a chain: leaf first; or a CA bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bad = |reason: String| IdentityError::Pem {
        path: path.into(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| IdentityError::Pem {
        path: path.into(),
        reason: format!("no usable private key: {e}"),
    })
}

/// Writes a file that must not exist yet (O_EXCL: no check-then-write race).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists { path: path.into() },
            _ => IdentityError::Write {
                path: path.into(),
                source,
            },
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| IdentityError::Write {
            path: path.into(),
            source,
        })
}

/// Replaces a file atomically (a temporary file renamed over it), so an agent polling it in
/// files mode reads the old or the new contents, never a mix.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        IdentityError::Write {
            path: path.into(),
            source,
        }
    })
}

/// When a file last changed; `None` when it cannot be read (the next load says why).
pub fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// PEM text of one DER object (RFC 7468: base64 in lines of 64).
pub fn encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            b64.push(match i <= chunk.len() {
                true => ALPHABET[((n >> (18 - 6 * i)) & 63) as usize],
                false => b'=',
            });
        }
    }
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A fresh directory under the system temp dir, unique per test and process, removed with
/// everything in it when dropped.
#[cfg(test)]
pub fn tempdir(name: &str) -> TempDir {
    let root = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let path = root.clone();
    TempDir { root, path }
}

#[cfg(test)]
pub struct TempDir {
    root: PathBuf,
    path: PathBuf,
}

#[cfg(test)]
impl TempDir {
    /// A path inside (not created), removed with the directory.
    pub fn child(mut self, name: &str) -> Self {
        self.path = self.path.join(name);
        self
    }
}

#[cfg(test)]
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn encodes_what_the_reader_decodes() {
        let dir = tempdir("pem-roundtrip");
        for len in [0, 1, 2, 3, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let path = dir.join(format!("{len}.pem"));
            let pem = encode("CERTIFICATE", &der);
            assert!(pem.lines().all(|l| l.len() <= 64));
            fs::write(&path, pem).unwrap();
            if len == 0 {
                continue;
            }
            assert_eq!(read_certs(&path).unwrap(), vec![CertificateDer::from(der)]);
        }
    }

    #[test]
    fn write_new_refuses_to_overwrite_and_sets_the_mode() {
        let dir = tempdir("pem-write");
        let path = dir.join("key.pem");
        write_new(&path, b"secret", KEY_MODE).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_new(&path, b"other", KEY_MODE).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        replace(&path, b"new", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dir.join("key.pem.tmp").exists());
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempdir("pem-errors");
        let missing = dir.join("missing.pem");
        let err = read_certs(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        let err = read_certs(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = read_key(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("private key"),
            "{err}"
        );
    }
}
