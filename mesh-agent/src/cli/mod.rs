//! The command line: one subcommand per job, each a thin layer over the library modules.
mod ca;
mod iptables;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::{app, check, config::ModeSetting, logging, logging::LogFormat};

/// Sluice node agent: steers enrolled pods' connections into one proxy per node (eBPF, or
/// nftables/iptables where eBPF cannot run) and proxies them.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
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
        /// YAML configuration (node, cgroupRoot, redirect.mode, workloads, ...). With a
        /// `kubernetes:` section, workloads, services, policies and routes come from the
        /// Kubernetes API instead, and the file holds only this node's settings.
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name, when the file does not give it (a DaemonSet sets NODE_NAME from
        /// `spec.nodeName`). Only used with a `kubernetes:` section.
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
    },
    /// Print the CustomResourceDefinitions of Sluice's resources (AuthorizationPolicy,
    /// PeerAuthentication, HTTPRoute in sluice.dev/v1alpha1) as YAML, for `kubectl apply -f -`.
    Crds,
    /// Probe what this node can do (kernel, eBPF program types and attach, cgroup v2, bpffs,
    /// BTF, netfilter backends) and say which redirect mode the agent would use.
    ///
    /// Exits 0 when that mode works here, 1 when it cannot (or no mode can).
    Check {
        /// The mode to resolve, as `redirect.mode` in the configuration.
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
    /// Netfilter rules for a pod where eBPF steering cannot run: render, apply, remove
    /// (usable as an init container).
    Iptables {
        #[command(subcommand)]
        command: iptables::Command,
    },
    /// The local CA of the mesh's workload identities: make it, issue certificates from it
    /// (for `identity.files` or for other proxies).
    Ca {
        #[command(subcommand)]
        command: ca::Command,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Ebpf,
    Nftables,
    Iptables,
}

impl From<ModeArg> for ModeSetting {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => ModeSetting::Auto,
            ModeArg::Ebpf => ModeSetting::Ebpf,
            ModeArg::Nftables => ModeSetting::Nftables,
            ModeArg::Iptables => ModeSetting::Iptables,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let logs = logging::init(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Run { config, node } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(app::run(&config, node, logs)),
        Command::Crds => {
            for crd in crate::config::kube::crd::crds() {
                print!("---\n{}", serde_yaml_ng::to_string(&crd)?);
            }
            Ok(())
        }
        Command::Check { mode, json } => {
            let report = check::run(mode.into());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_table());
            }
            anyhow::ensure!(report.chosen.is_some(), "{}", report.reason);
            Ok(())
        }
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
        Command::Iptables { command } => iptables::run(command),
        Command::Ca { command } => ca::run(command),
    }
}
