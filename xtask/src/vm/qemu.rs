//! Booting a kernel and initramfs under QEMU with a timeout, the serial console to a file, and
//! choosing the accelerator: KVM only where a stock kernel really boots under it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::report::marker;
use crate::cmd;

/// How long a KVM boot may take before KVM counts as broken. A working KVM boots a cloud
/// kernel to `/init` in a few seconds; a broken nested one hangs right after "Probing EDD".
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if a probe boot under it works, else TCG.
    Auto,
    Kvm,
    /// Software emulation: slow but works everywhere.
    Tcg,
}

/// One boot: what to run and where the console goes.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub console: &'a Path,
    pub accel: Accel,
    pub timeout: Duration,
    /// Extra kernel command-line words.
    pub cmdline: &'a str,
    /// Echo the guest's markers and libtest lines while it runs.
    pub echo: bool,
}

/// How a boot ended.
pub struct Ran {
    pub timed_out: bool,
    pub seconds: f64,
}

impl Boot<'_> {
    pub fn command(&self) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-m", "2048", "-smp", "2"]);
        match self.accel {
            // `-cpu host` aborts QEMU 7.2 on these machines; the default model is enough.
            Accel::Kvm => qemu.args(["-accel", "kvm"]),
            Accel::Tcg | Accel::Auto => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        };
        let mut append = String::from("console=ttyS0 panic=-1 oops=panic loglevel=4");
        if !self.cmdline.is_empty() {
            append.push(' ');
            append.push_str(self.cmdline);
        }
        qemu.arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", &append])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .args(["-device", "virtio-rng-pci"]);
        qemu
    }

    /// Runs QEMU until it exits or the timeout kills it.
    pub fn run(&self) -> Result<Ran> {
        if let Some(dir) = self.console.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        File::create(self.console)
            .with_context(|| format!("cannot create {}", self.console.display()))?;
        let stderr_path = self.console.with_extension("qemu-stderr");
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        let mut qemu = self.command();
        qemu.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let start = Instant::now();
        let mut child = qemu
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(&qemu)))?;
        let mut tail = ConsoleTail::new(self.console);
        let timed_out = loop {
            if child.try_wait().context("cannot wait for qemu")?.is_some() {
                break false;
            }
            if start.elapsed() > self.timeout {
                // Our own child, by its handle.
                child.kill().context("cannot kill qemu after the timeout")?;
                child.wait().context("cannot reap qemu")?;
                break true;
            }
            if self.echo {
                tail.echo();
            }
            thread::sleep(Duration::from_millis(500));
        };
        if self.echo {
            tail.echo();
        }
        let qemu_errors = fs::read_to_string(&stderr_path).unwrap_or_default();
        if !qemu_errors.trim().is_empty() {
            eprintln!("xtask: vm: qemu said: {}", qemu_errors.trim());
        }
        Ok(Ran {
            timed_out,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Follows the console file and echoes the lines worth watching.
struct ConsoleTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl ConsoleTail {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
        }
    }

    fn echo(&mut self) {
        let Ok(mut file) = OpenOptions::new().read(true).open(&self.path) else {
            return;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end();
            let watched = (line.contains("SLUICE-VM-") && !line.contains(marker::FEATURE))
                || line.starts_with("test ")
                || line.contains("Kernel panic");
            if watched {
                eprintln!("    | {line}");
            }
        }
    }
}

/// The last `n` lines of the console, for failures.
pub fn console_tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Decides the accelerator: `auto` boots `kernel` once under KVM with `/init` stopping at
/// once, and uses KVM only if that reached `/init` in time.
pub fn choose(accel: Accel, kernel: &Path, initramfs: &Path, dir: &Path) -> Result<Accel> {
    if accel != Accel::Auto {
        return Ok(accel);
    }
    let usable = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        eprintln!("xtask: vm: no usable /dev/kvm; using TCG (software emulation, slower)");
        return Ok(Accel::Tcg);
    }
    let console = dir.join("kvm-probe.log");
    let boot = Boot {
        kernel,
        initramfs,
        console: &console,
        accel: Accel::Kvm,
        timeout: KVM_PROBE_TIMEOUT,
        cmdline: super::initramfs::PROBE_ARG,
        echo: false,
    };
    let ran = boot.run()?;
    let text = fs::read_to_string(&console).unwrap_or_default();
    if !ran.timed_out && text.contains(marker::PROBE_OK) {
        eprintln!(
            "xtask: vm: KVM works ({:.1} s probe boot); using it",
            ran.seconds
        );
        return Ok(Accel::Kvm);
    }
    eprintln!(
        "xtask: vm: note: /dev/kvm exists but a probe boot under it {} (see {}); using TCG \
         (software emulation, slower)",
        if ran.timed_out {
            format!("hung for {} s", KVM_PROBE_TIMEOUT.as_secs())
        } else {
            "did not reach /init".to_owned()
        },
        console.display()
    );
    Ok(Accel::Tcg)
}
