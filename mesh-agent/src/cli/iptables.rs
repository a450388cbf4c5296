//! `mesh-agent iptables render|apply|cleanup`.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::{
    redirect::netfilter::{
        apply::{Applier, Outcome},
        backend::{self, Backend},
        istio, pod_rules,
        rules::{Family, RuleSet},
    },
    sys::{
        exec::{self, NetnsTarget},
        netns::Netns,
    },
};

#[derive(Subcommand)]
pub enum Command {
    /// Print a ruleset without applying anything.
    Render(Box<RenderArgs>),
    /// Apply Sluice's ruleset in a netns. An equivalent ruleset already there is left
    /// untouched; drift in Sluice's chains is repaired; other rules are never touched.
    Apply(PodArgs),
    /// Remove exactly Sluice's rules from a netns, from every backend and both IP families.
    Cleanup(NetnsArg),
}

#[derive(Args)]
pub struct RenderArgs {
    /// Rule layout. `sluice`: Sluice's own ruleset. `istio-sidecar`: exactly what
    /// istio-iptables applies for the same istio-iptables flags.
    #[arg(long, value_enum, default_value_t = Profile::Sluice)]
    profile: Profile,
    /// Output form: `iptables-restore` payloads (IPv4, then IPv6 when enabled), or one
    /// `nft -f` transaction.
    #[arg(long, value_enum, default_value_t = Output::Iptables)]
    backend: Output,
    #[command(flatten)]
    pod: PodRuleArgs,
    #[command(flatten)]
    istio: istio::IstioArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    Sluice,
    IstioSidecar,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Iptables,
    Nft,
}

/// What a pod's Sluice ruleset depends on.
#[derive(Args, Clone, Default, PartialEq)]
pub struct PodRuleArgs {
    /// Destination port never captured (repeatable).
    #[arg(long = "exclude-port", value_name = "PORT")]
    exclude_ports: Vec<u16>,
    /// Destination CIDR never captured (repeatable).
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    exclude_cidrs: Vec<IpNet>,
    /// The pod's own port never captured inbound, e.g. a health probe's (repeatable).
    #[arg(long = "exclude-inbound-port", value_name = "PORT")]
    exclude_inbound_ports: Vec<u16>,
    /// Capture IPv6 too (the pod has an IPv6 address).
    #[arg(long)]
    ipv6: bool,
}

#[derive(Args)]
pub struct NetnsArg {
    /// The pod's network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net); default:
    /// the current one, as in an init container.
    #[arg(long)]
    netns: Option<PathBuf>,
}

#[derive(Args)]
pub struct PodArgs {
    #[command(flatten)]
    netns: NetnsArg,
    /// `auto`: nftables when `nft` is installed, else iptables (legacy only where legacy
    /// rules already exist in the netns).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    #[command(flatten)]
    pod: PodRuleArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Nft,
    Iptables,
    IptablesLegacy,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Render(args) => {
            print!("{}", render(&args)?);
            Ok(())
        }
        Command::Apply(args) => {
            let (netns, rules, families) = open(&args)?;
            let target = target(netns.as_ref());
            let backend = choose(args.backend, target);
            let outcome = Applier::default().apply(target, backend, &rules, &families)?;
            println!(
                "{}: {}",
                backend.as_str(),
                match outcome {
                    Outcome::Unchanged => "unchanged (the equivalent ruleset is in place)",
                    Outcome::Written => "applied",
                }
            );
            Ok(())
        }
        Command::Cleanup(args) => {
            let netns = args.netns.as_deref().map(Netns::open).transpose()?;
            let removed = Applier::default().remove_everywhere(target(netns.as_ref()))?;
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for backend in removed {
                println!("{}: removed", backend.as_str());
            }
            Ok(())
        }
    }
}

fn render(args: &RenderArgs) -> anyhow::Result<String> {
    match args.profile {
        Profile::IstioSidecar => {
            anyhow::ensure!(
                args.pod == PodRuleArgs::default(),
                "--exclude-port, --exclude-cidr and --ipv6 belong to --profile sluice; \
                 istio-sidecar takes istio-iptables's own flags"
            );
            let backend = match args.backend {
                Output::Iptables => istio::IstioBackend::Iptables,
                Output::Nft => istio::IstioBackend::Nft,
            };
            Ok(istio::render(&args.istio, backend)?)
        }
        Profile::Sluice => {
            anyhow::ensure!(
                args.istio == default_istio_args(),
                "istio-iptables flags only apply to --profile istio-sidecar"
            );
            let rules = pod_rules(
                &args.pod.exclude_ports,
                &args.pod.exclude_cidrs,
                &args.pod.exclude_inbound_ports,
            );
            Ok(match args.backend {
                Output::Nft => rules.nft_transaction(),
                Output::Iptables => pod_families(&args.pod)
                    .into_iter()
                    .map(|f| rules.iptables_payload(f, true))
                    .collect(),
            })
        }
    }
}

fn default_istio_args() -> istio::IstioArgs {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        istio: istio::IstioArgs,
    }
    Defaults::parse_from(["defaults"]).istio
}

fn pod_families(pod: &PodRuleArgs) -> Vec<Family> {
    if pod.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn open(args: &PodArgs) -> anyhow::Result<(Option<Netns>, RuleSet, Vec<Family>)> {
    let netns = args.netns.netns.as_deref().map(Netns::open).transpose()?;
    let rules = pod_rules(
        &args.pod.exclude_ports,
        &args.pod.exclude_cidrs,
        &args.pod.exclude_inbound_ports,
    );
    Ok((netns, rules, pod_families(&args.pod)))
}

fn target(netns: Option<&Netns>) -> NetnsTarget<'_> {
    netns.map_or(NetnsTarget::Current, NetnsTarget::Pod)
}

fn choose(arg: BackendArg, target: NetnsTarget<'_>) -> Backend {
    match arg {
        BackendArg::Nft => Backend::Nft,
        BackendArg::IptablesLegacy => Backend::IptablesLegacy,
        BackendArg::Iptables => backend::iptables_flavour(target),
        BackendArg::Auto if exec::available("nft") => Backend::Nft,
        BackendArg::Auto => backend::iptables_flavour(target),
    }
}
