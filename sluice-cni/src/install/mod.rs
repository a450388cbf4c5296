//! `sluice-cni install` / `uninstall`: put the binary where the runtime finds plugins, and
//! our entry last in the plugin list of the config the runtime uses, the node's first by
//! name; and take both away again, leaving the chain as it was.
//!
//! Before the first change to a config file its bytes are kept beside it as
//! `<name>.sluice-cni.orig` (an extension no runtime reads). Uninstall puts those bytes back
//! when taking our entry out yields the same JSON as they hold, so a node whose primary CNI
//! did not touch its file meanwhile gets it back byte for byte; otherwise it takes only our
//! entry out of what the primary wrote since. A single-plugin `.conf` is turned into a
//! `.conflist` of the same stem (as istio-cni does), since only a list can chain.
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub mod conflist;
pub mod files;
pub mod kubeconfig;
pub mod watch;

/// Our entry's `type`: the binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "sluice-cni";
/// Appended to a config file's name for the copy of its bytes from before our change.
pub const BACKUP_SUFFIX: &str = ".sluice-cni.orig";

/// The settings our entry in the chain carries (paths as the runtime on the host sees them).
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub agent_socket: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub timeout: Option<String>,
    pub log_level: Option<String>,
}

impl Entry {
    pub fn to_json(&self) -> Value {
        let mut entry = json!({"type": PLUGIN_TYPE});
        let mut set = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                entry[key] = Value::String(v);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        set("agentSocket", path(&self.agent_socket));
        set("kubeconfig", path(&self.kubeconfig));
        set("timeout", self.timeout.clone());
        set("logLevel", self.log_level.clone());
        entry
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{} holds no CNI config (.conf, .conflist, .json) to chain after", .0.display())]
    NoConfig(PathBuf),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a CNI config sluice-cni can chain into: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("turning {} into a list would overwrite {}, which sluice-cni did not write", from.display(), to.display())]
    WouldOverwrite { from: PathBuf, to: PathBuf },
    #[error("cannot wait for signals")]
    Signals(#[source] std::io::Error),
    #[error(
        "{0} is not set: a kubeconfig from the service account needs the pod's in-cluster environment"
    )]
    NotInCluster(&'static str),
    #[error("{} holds no service account token", .0.display())]
    BadToken(PathBuf),
}

/// What [`ensure_chained`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Our entry was already last in the first config, with these settings.
    Unchanged,
    /// This `.conflist` was rewritten with our entry last.
    Updated(PathBuf),
    /// This `.conf` was replaced by that `.conflist`.
    Converted { from: PathBuf, to: PathBuf },
}

/// A kubeconfig written from a service account: where, and from which.
pub type Written = (PathBuf, kubeconfig::ServiceAccount);

/// What install keeps in place: the kubeconfig our entry names when there is one to write
/// (first, so the entry never names a missing file), then our entry in the chain.
pub fn ensure_installed(
    conf_dir: &Path,
    entry: &Value,
    kubeconfig: Option<&Written>,
) -> Result<Change, InstallError> {
    if let Some((path, account)) = kubeconfig
        && kubeconfig::ensure(path, account)?
    {
        tracing::info!("wrote {} from the service account", path.display());
    }
    ensure_chained(conf_dir, entry)
}

/// Makes our entry the last plugin of the runtime's config in `conf_dir`, and takes it out of
/// any other config (the primary CNI may have moved to a new file).
pub fn ensure_chained(conf_dir: &Path, entry: &Value) -> Result<Change, InstallError> {
    let found = files::config_files(conf_dir)?;
    let first = found
        .first()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.to_path_buf()))?;
    let bytes = files::read(first)?;
    let doc = parse(first, &bytes)?;
    let mode = files::mode_of(first, 0o644);
    let invalid = |reason| InstallError::Invalid {
        path: first.clone(),
        reason,
    };
    let (change, chained) = if files::is_conflist(first) {
        match conflist::chain(&doc, entry).map_err(invalid)? {
            None => (Change::Unchanged, first.clone()),
            Some(new) => {
                if conflist::strip(&doc).is_none() {
                    files::write_atomic(&files::backup_of(first), &bytes, mode)?;
                }
                files::write_atomic(first, &pretty(&new), mode)?;
                (Change::Updated(first.clone()), first.clone())
            }
        }
    } else {
        let to = first.with_extension("conflist");
        let backup = files::backup_of(first);
        if to.exists() && !backup.exists() {
            return Err(InstallError::WouldOverwrite {
                from: first.clone(),
                to,
            });
        }
        let list = conflist::as_list(&doc).map_err(invalid)?;
        let new = conflist::chain(&list, entry)
            .map_err(invalid)?
            .unwrap_or(list);
        files::write_atomic(&backup, &bytes, mode)?;
        files::write_atomic(&to, &pretty(&new), mode)?;
        files::remove(first)?;
        let change = Change::Converted {
            from: first.clone(),
            to: to.clone(),
        };
        (change, to)
    };
    for other in files::config_files(conf_dir)? {
        if other != chained {
            release(&other)?;
        }
    }
    Ok(change)
}

/// Undoes install: [`uninstall_chain`], then removes `binary` when given.
pub fn uninstall(conf_dir: &Path, binary: Option<&Path>) -> Result<Vec<PathBuf>, InstallError> {
    let changed = uninstall_chain(conf_dir)?;
    if let Some(binary) = binary {
        files::remove(binary)?;
    }
    Ok(changed)
}

/// Takes our entry out of every config in `conf_dir`, restoring each file's original bytes
/// where nothing else changed, and drops the copies kept for that and the kubeconfig written
/// from the service account. Returns the files changed.
pub fn uninstall_chain(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for file in files::config_files(conf_dir)? {
        if let Some(restored) = release(&file)? {
            changed.push(restored);
        }
    }
    let read_err = |source| InstallError::Read {
        path: conf_dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(conf_dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(BACKUP_SUFFIX)
            || name.ends_with(".sluice-cni.tmp")
            || name == kubeconfig::FILE_NAME
        {
            files::remove(&path)?;
        }
    }
    Ok(changed)
}

/// Takes our entry out of one config file; `Some(path)` of the file that now holds the
/// chain (the `.conf` again, for a list we made from one) when there was one to take out.
fn release(path: &Path) -> Result<Option<PathBuf>, InstallError> {
    if !files::is_conflist(path) {
        return Ok(None);
    }
    let bytes = files::read(path)?;
    // A file that does not parse is not ours to fix, and holds no entry of ours we can see.
    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(None);
    };
    let Some(stripped) = conflist::strip(&doc) else {
        return Ok(None);
    };
    let mode = files::mode_of(path, 0o644);
    let original = |p: &Path| -> Result<Option<(Vec<u8>, Value)>, InstallError> {
        let Some(orig) = files::read_opt(&files::backup_of(p))? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&orig).ok().map(|v| (orig, v)))
    };
    if let Some((orig, v)) = original(path)?
        && v == stripped
    {
        files::write_atomic(path, &orig, mode)?;
        files::remove(&files::backup_of(path))?;
        return Ok(Some(path.to_path_buf()));
    }
    for ext in ["conf", "json"] {
        let source = path.with_extension(ext);
        if let Some((orig, v)) = original(&source)?
            && !source.exists()
            && conflist::as_list(&v).is_ok_and(|list| list == stripped)
        {
            files::write_atomic(&source, &orig, mode)?;
            files::remove(path)?;
            files::remove(&files::backup_of(&source))?;
            return Ok(Some(source));
        }
    }
    files::write_atomic(path, &pretty(&stripped), mode)?;
    Ok(Some(path.to_path_buf()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value, InstallError> {
    serde_json::from_slice(bytes).map_err(|e| InstallError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
