//! A private apt: its own sources list, configuration, lists and cache under `target/`, so
//! packages for other Debian releases can be downloaded (`apt-get download`) without touching
//! the host's apt state or installing anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The archive key ring Debian ships; it holds the keys of the releases around the host's.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Used when the host's sources name no Debian archive (e.g. an Ubuntu machine).
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// apt for one suite, rooted at `dir`.
pub struct Apt {
    dir: PathBuf,
    suite: String,
}

impl Apt {
    /// Writes the private configuration; nothing is fetched until [`Apt::update`].
    pub fn new(dir: &Path, mirror: &str, suite: &str) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let sources = format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n");
        write(&dir.join("sources.list"), &sources)?;
        write(&dir.join("status"), "")?;
        // APT_CONFIG replaces /etc/apt/apt.conf, and setting Dir::Etc::Parts here keeps the
        // host's apt.conf.d (proxies aside, e.g. appstream index targets) out as well.
        let d = dir.display();
        let conf = format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/parts\";\n\
             Dir::Etc::Parts \"{d}/parts\";\n\
             Dir::Etc::PreferencesParts \"{d}/prefs\";\n\
             Dir::Etc::Preferences \"{d}/prefs/none\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n"
        );
        write(&dir.join("apt.conf"), &conf)?;
        Ok(Self {
            dir: dir.to_owned(),
            suite: suite.to_owned(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.join("apt.conf"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    }

    /// Fetches the suite's package lists (a few MB, seconds).
    pub fn update(&self) -> Result<()> {
        eprintln!("xtask: vm: fetching the package lists of {}", self.suite);
        cmd::stdout(self.command("apt-get").args(["-q", "update"]))
            .map(drop)
            .with_context(|| format!("cannot fetch the package lists of suite {}", self.suite))
    }

    /// The first `Depends:` of `package`: what a metapackage such as
    /// `linux-image-cloud-amd64` currently points at.
    pub fn first_dependency(&self, package: &str) -> Result<String> {
        let out = cmd::stdout(self.command("apt-cache").args(["depends", package]))?;
        out.lines()
            .find_map(|line| line.trim().strip_prefix("Depends: "))
            .map(|dep| dep.trim().to_owned())
            .with_context(|| format!("{package} in {} has no dependency:\n{out}", self.suite))
    }

    /// Downloads `package`'s .deb into `dest` (a directory) and returns its path.
    pub fn download(&self, package: &str, dest: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        eprintln!("xtask: vm: downloading {package} from {}", self.suite);
        cmd::stdout(
            self.command("apt-get")
                .args(["-q", "download", package])
                .current_dir(dest),
        )?;
        find_deb(dest, package)?.with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dest.display()
            )
        })
    }
}

/// A cached `<package>_<version>_<arch>.deb` in `dir`.
pub fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let prefix = format!("{package}_");
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// The Debian archive the host uses (deb822 `URIs:` or one-line `deb` entries), so the
/// kernels come from the same mirror as everything else on the machine.
pub fn host_mirror() -> String {
    let mut texts = Vec::new();
    for file in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        if let Ok(text) = fs::read_to_string(file) {
            texts.push(text);
        }
    }
    texts
        .iter()
        .find_map(|text| mirror_in(text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

fn mirror_in(sources: &str) -> Option<String> {
    sources.lines().find_map(|line| {
        let line = line.trim();
        let uris = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect::<Vec<_>>()
        } else if line.starts_with("deb ") {
            // `deb [options] URI suite components`
            line.split_whitespace()
                .filter(|word| word.contains("://"))
                .collect()
        } else {
            Vec::new()
        };
        uris.into_iter()
            .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
            .map(|uri| uri.trim_end_matches('/').to_owned())
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Fails with the fix when the host has no apt (the VM kernels come from Debian's archive).
pub fn require_apt() -> Result<()> {
    if cmd::find_in_path("apt-get").is_none() || cmd::find_in_path("dpkg-deb").is_none() {
        bail!(
            "vm-test fetches Debian kernel packages with apt-get and unpacks them with dpkg-deb; \
             run it on Debian or Ubuntu (or in a Debian container)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mirror_in;

    #[test]
    fn finds_the_debian_mirror_not_the_security_one() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian-security\n\n\
                      Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "deb [arch=amd64] https://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(one_line).as_deref(),
            Some("https://m.example/debian")
        );
        assert_eq!(
            mirror_in("deb http://archive.ubuntu.com/ubuntu noble main"),
            None
        );
    }
}
