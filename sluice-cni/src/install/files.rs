//! Files in the runtime's CNI directories: which configs the runtime reads and in what
//! order, and writes that a runtime reading at any moment sees whole or not at all.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{BACKUP_SUFFIX, InstallError};

/// The extensions libcni's `ConfFiles` lists, as containerd and CRI-O call it.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// The config files in `dir` in the order the runtime reads them (by name, bytewise); the
/// runtime uses the first.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let read_err = |source| InstallError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        // `metadata` follows links, as the runtime's read does.
        if CONFIG_EXTENSIONS.contains(&ext) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

pub fn is_conflist(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("conflist")
}

/// Where the bytes of `path` are kept from before our first change to it. Its extension is
/// none the runtime reads.
pub fn backup_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(BACKUP_SUFFIX);
    path.with_file_name(name)
}

pub fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    fs::read(path).map_err(|source| InstallError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `None` when the file does not exist.
pub fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The permission bits of `path`, or `fallback` when it does not exist.
pub fn mode_of(path: &Path, fallback: u32) -> u32 {
    fs::metadata(path).map_or(fallback, |m| m.permissions().mode() & 0o7777)
}

/// Writes `bytes` to a temporary file beside `path` (named with no extension the runtime
/// reads), syncs it and renames it over `path`: a runtime that reads the directory at any
/// moment sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let write_err = |source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".sluice-cni.tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // The umask may have narrowed `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    // The rename is durable once the directory is synced; a failure here loses nothing.
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Removes `path`; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InstallError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Copies the executable `src` to `dest` (atomically, mode 0755) unless `dest` already has
/// the same bytes. True when it wrote.
pub fn copy_binary(src: &Path, dest: &Path) -> Result<bool, InstallError> {
    let bytes = read(src)?;
    if read_opt(dest)?.is_some_and(|have| have == bytes) {
        return Ok(false);
    }
    write_atomic(dest, &bytes, 0o755)?;
    Ok(true)
}
