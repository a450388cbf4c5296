//! `mesh-agent`: Sluice's per-node agent.
mod admin;
mod app;
mod config;
mod logging;
mod metrics;
mod proxy;
mod redirect;
mod state;
mod sys;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    logging::LogFormat,
    redirect::netfilter::istio::{self, IstioArgs, IstioBackend},
};

/// Sluice node agent: captures enrolled pods' connections with eBPF and proxies them.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,mesh_agent::proxy=debug`, ...); RUST_LOG also works.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach steering, enroll the configured pods, proxy their traffic, serve
    /// admin (:15000), metrics (:15020) and readiness (:15021). The config file is watched.
    Run {
        /// YAML configuration (node, cgroupRoot, workloads, ...).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove everything the node's agent attached and pinned (programs, links, maps).
    Cleanup {
        /// The configuration the agent ran with (for the node name and pin location).
        #[arg(long, short, required_unless_present = "node", conflicts_with = "node")]
        config: Option<PathBuf>,
        /// The node name, when the configuration file is missing or broken.
        #[arg(long)]
        node: Option<String>,
        /// Where the node's pin directory lives (with --node).
        #[arg(long, default_value = "/sys/fs/bpf/sluice", requires = "node")]
        bpffs_root: PathBuf,
    },
    /// Netfilter rules for pods where eBPF steering cannot run.
    Iptables {
        #[command(subcommand)]
        command: IptablesCommand,
    },
}

#[derive(Subcommand)]
enum IptablesCommand {
    /// Print the ruleset for the given inputs without applying anything.
    Render(Box<RenderArgs>),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Rule layout. `istio-sidecar`: exactly what istio-iptables applies for the same flags.
    #[arg(long, value_enum)]
    profile: Profile,
    /// Output form: `iptables-restore` payloads, or one `nft -f` transaction.
    #[arg(long, value_enum, default_value_t = Backend::Iptables)]
    backend: Backend,
    #[command(flatten)]
    istio: IstioArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Profile {
    IstioSidecar,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    Iptables,
    Nft,
}

/// Errors print as their chain of causes; returning them from `main` would add a backtrace
/// wherever `RUST_BACKTRACE` is set and bury the line that says what is wrong.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let logs = logging::init(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(app::run(&config, logs)),
        Command::Cleanup {
            config,
            node,
            bpffs_root,
        } => app::cleanup(match (&config, &node) {
            (Some(config), _) => app::CleanupTarget::Config(config),
            (None, Some(node)) => app::CleanupTarget::Node {
                node,
                bpffs_root: &bpffs_root,
            },
            (None, None) => anyhow::bail!("give --config or --node"),
        }),
        Command::Iptables {
            command: IptablesCommand::Render(args),
        } => {
            let Profile::IstioSidecar = args.profile;
            let backend = match args.backend {
                Backend::Iptables => IstioBackend::Iptables,
                Backend::Nft => IstioBackend::Nft,
            };
            print!("{}", istio::render(&args.istio, backend)?);
            Ok(())
        }
    }
}
