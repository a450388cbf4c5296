//! A minimal writer for the `newc` cpio format the kernel unpacks as initramfs. Written here
//! rather than shelling out to `cpio`: it needs no host package, and it can add the
//! `/dev/console` node without root or mknod on the host.

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

/// Writes entries in order; parent directories are added on first use.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory and its parents (`path` without a leading `/`).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// A symbolic link at `path` pointing at `target` (multi-call binaries dispatch on the
    /// name they are called by, so their aliases must stay links, not copies).
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFCHR | 0o600, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<String> {
        let path = path.trim_start_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(path)
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is too large for cpio (4 GiB)")))?;
        let name_size =
            u32::try_from(name.len() + 1).map_err(|_| io::Error::other("cpio name too long"))?;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// newc aligns both the name and the data to 4 bytes.
    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

#[cfg(test)]
mod tests {
    use super::Writer;

    #[test]
    fn writes_aligned_newc_entries() -> std::io::Result<()> {
        let mut cpio = Writer::new(Vec::new());
        cpio.file("a/b", 0o755, b"hello")?;
        let out = cpio.finish()?;
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The parent directory comes first, then the file, then the trailer.
        let a = text.find("a\0").unwrap_or(usize::MAX);
        let b = text.find("a/b\0").unwrap_or(usize::MAX);
        let trailer = text.find("TRAILER!!!").unwrap_or(usize::MAX);
        assert!(a < b && b < trailer && trailer < out.len());
        assert!(text.starts_with("070701"));
        assert!(text.contains("hello"));
        Ok(())
    }

    #[test]
    fn symlinks_carry_their_target_as_data() -> std::io::Result<()> {
        let mut cpio = Writer::new(Vec::new());
        cpio.symlink("usr/sbin/nft-alias", "nft")?;
        let text = String::from_utf8_lossy(&cpio.finish()?).into_owned();
        // Mode 0o120777 in the second header field, then the name, then the target.
        let at = text.find("usr/sbin/nft-alias\0").unwrap_or(0);
        let header = &text[..at];
        let entry = &header[header.rfind("070701").unwrap_or(0)..];
        assert_eq!(&entry[14..22], "0000a1ff");
        assert!(text[at..].starts_with("usr/sbin/nft-alias\0"));
        // The link's data (after the padded name) is its target.
        assert!(text[at..].contains("\0nft"));
        Ok(())
    }
}
