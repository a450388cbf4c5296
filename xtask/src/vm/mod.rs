//! `cargo xtask vm-test`: the privileged integration suite inside QEMU on Debian's 5.10, 6.1
//! and 6.12 cloud kernels, because the eBPF programs must work on the oldest kernel we claim
//! (5.10) and not only on the machine that builds them.
//!
//! Per kernel: fetch the package once (private apt, cached under `target/vm/kernels`), pack an
//! initramfs with busybox, `ip`, `bpftool`, `nft`, iptables (nf_tables and legacy), the
//! kernel's netfilter modules and the static test binaries, boot it, and read the results
//! from the serial console. Only markers printed by `/init`
//! count: a panic, a hang or a missing marker is a failure.

mod apt;
mod build;
mod cpio;
mod host;
mod initramfs;
mod kernels;
mod modules;
mod qemu;
mod report;
mod userland;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::{cmd, toolchain};
use qemu::Accel;
use report::KernelRun;

/// Options of `cargo xtask vm-test`.
#[derive(Args)]
pub struct VmTest {
    /// Kernel line(s) to boot: 5.10, 6.1, 6.12, a comma-separated list, or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Keep each kernel's initramfs (target/vm/run/<kernel>/) and print the QEMU command that
    /// boots it again, for debugging by hand. Console logs are always kept.
    #[arg(long)]
    keep: bool,
    /// Accelerator: auto tries KVM with a short probe boot and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Minutes one kernel's VM may run before it is killed and counted as hung.
    #[arg(long, default_value_t = 40)]
    timeout_mins: u64,
    /// Only these integration tests of the `tests` package (repeatable); default: all of
    /// them, so new test files run in the VM without changes here.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Where to write the Markdown matrix. Default: docs/kernel-matrix.md for a full run
    /// (all kernels, all tests), else target/vm/kernel-matrix.md.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Environment for the tests in the guest, `KEY=VALUE` (repeatable), e.g.
    /// `--env RUST_LOG=debug` for the agent's log in failure output.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Arguments for every test executable, e.g. a test name filter.
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

pub fn run(opts: &VmTest) -> Result<ExitCode> {
    let lines = kernels::select(&opts.kernel)?;
    let root = cmd::workspace_root()?;
    let vm_dir = root.join("target/vm");
    host::ensure_tools()?;
    toolchain::ensure()?;
    let mut binaries = build::build(&root, &opts.tests)?;
    // Host-only suites run in a VM only when asked for by name (`--test`).
    binaries.suites.retain(|(name, _)| {
        let host_only = kernels::HOST_ONLY.contains(&name.as_str()) && !opts.tests.contains(name);
        if host_only {
            eprintln!(
                "xtask: vm: leaving out the {name} suite: it runs on the host only (tests/README)"
            );
        }
        !host_only
    });
    let payload = payload(&vm_dir, binaries, opts)?;
    let mirror = apt::host_mirror();
    let timeout = Duration::from_secs(opts.timeout_mins * 60);
    let mut accel = opts.accel;
    let mut runs = Vec::new();
    for line in lines.iter().copied() {
        let kernel = kernels::fetch(line, &vm_dir.join("kernels"), &mirror)
            .with_context(|| format!("cannot get Debian's {} cloud kernel", line.label))?;
        let run_dir = vm_dir.join("run").join(line.label);
        fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let modules = kernel.module_set()?;
        let initramfs = run_dir.join("initramfs.cpio");
        if !line.skip.is_empty() {
            eprintln!("xtask: vm: {}: leaving out {:?}", line.label, line.skip);
        }
        initramfs::write(&initramfs, &payload, &modules, &|suite| {
            line.skip_for(suite)
        })?;
        accel = qemu::choose(accel, &kernel.vmlinuz, &initramfs, &run_dir)?;
        let run = boot(&kernel, &initramfs, &run_dir, accel, timeout, opts.keep)?;
        if !opts.keep {
            fs::remove_file(&initramfs)
                .with_context(|| format!("cannot remove {}", initramfs.display()))?;
        }
        runs.push(run);
    }
    report::print_summary(&runs);
    let full = lines.len() == kernels::LINES.len()
        && opts.tests.is_empty()
        && opts.test_args.is_empty()
        && opts.env.is_empty();
    let path = match &opts.report {
        Some(path) => path.clone(),
        None if full => root.join("docs/kernel-matrix.md"),
        None => vm_dir.join("kernel-matrix.md"),
    };
    let command = format!("cargo xtask vm-test --kernel {}", opts.kernel);
    let md = report::markdown(&runs, &command, &today());
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: vm: matrix written to {}", path.display());
    Ok(if runs.iter().all(KernelRun::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Boots one kernel and reads its results; prints the console's tail when it did not pass.
fn boot(
    kernel: &kernels::Kernel,
    initramfs: &Path,
    run_dir: &Path,
    accel: Accel,
    timeout: Duration,
    keep: bool,
) -> Result<KernelRun> {
    let console = run_dir.join("console.log");
    let boot = qemu::Boot {
        kernel: &kernel.vmlinuz,
        initramfs,
        console: &console,
        accel,
        timeout,
        cmdline: "",
        echo: true,
    };
    eprintln!(
        "xtask: vm: booting {} ({}, {accel:?}); console in {}",
        kernel.line.label,
        kernel.package,
        console.display()
    );
    if keep {
        eprintln!(
            "xtask: vm: to boot it again: {}",
            cmd::describe(&boot.command())
        );
    }
    let ran = boot.run()?;
    let text = fs::read_to_string(&console)
        .with_context(|| format!("cannot read {}", console.display()))?;
    let (ending, suites, features, notes) = report::parse_console(&text, ran.timed_out);
    let run = KernelRun {
        label: kernel.line.label.to_owned(),
        package: kernel.package.clone(),
        accel: format!("{accel:?}").to_lowercase(),
        seconds: ran.seconds,
        ending,
        suites,
        features,
        notes,
        console,
    };
    eprintln!(
        "xtask: vm: {} finished in {:.0} s: {}",
        run.label,
        run.seconds,
        run.verdict()
    );
    if !run.passed() {
        eprintln!(
            "xtask: vm: last console lines of {} ({}):\n{}",
            run.label,
            run.console.display(),
            qemu::console_tail(&text, 60)
        );
    }
    Ok(run)
}

/// Everything but the modules, gathered once for all kernels.
fn payload(vm_dir: &Path, binaries: build::Binaries, opts: &VmTest) -> Result<initramfs::Payload> {
    let stage = vm_dir.join("stage");
    let mut suites = Vec::new();
    for (name, binary) in &binaries.suites {
        suites.push((name.clone(), host::stripped(binary, &stage, name)?));
    }
    Ok(initramfs::Payload {
        busybox: host::busybox(&vm_dir.join("tools"), &apt::host_mirror())?,
        userland: userland::Userland::gather()?,
        agent: host::stripped(&binaries.agent, &stage, "mesh-agent")?,
        testapp: host::stripped(&binaries.testapp, &stage, "sluice-testapp")?,
        httpapp: host::stripped(&binaries.httpapp, &stage, "sluice-httpapp")?,
        suites,
        test_args: opts.test_args.clone(),
        env: opts.env.clone(),
    })
}

/// UTC date for the report header.
fn today() -> String {
    cmd::stdout(Command::new("date").args(["-u", "+%Y-%m-%d"]))
        .map(|date| date.trim().to_owned())
        .unwrap_or_else(|_| "an unknown date".to_owned())
}
