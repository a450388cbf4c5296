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

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

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
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = logging::init(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(app::run(&config, logs)),
        Command::Cleanup { config } => app::cleanup(&config),
    }
}
