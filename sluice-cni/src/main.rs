//! `sluice-cni`: run by the container runtime as a chained CNI plugin (it sets
//! `CNI_COMMAND`), or by the DaemonSet to install itself on the node (a command line).
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_cni::install::kubeconfig::{self, ServiceAccount};
use sluice_cni::install::{self, Entry, PLUGIN_TYPE, files, watch::Watch};
use sluice_cni::plugin::{self, Live};
use sluice_cni::protocol::DEFAULT_SOCKET;

/// The most the runtime may send on stdin: a network config with a previous result is a few
/// KiB, so more is a runtime gone wrong, not a config to parse.
const MAX_STDIN: u64 = 4 << 20;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return run_plugin();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-cni: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One CNI operation: the result or the error JSON on stdout, exit code 1 on failure.
fn run_plugin() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    let reply = match read {
        Ok(n) if n as u64 > MAX_STDIN => plugin::Reply {
            stdout: Some(too_big()),
            success: false,
        },
        Ok(_) => plugin::run(|k| std::env::var_os(k), &stdin, &Live),
        Err(e) => plugin::Reply {
            stdout: Some(
                plugin::error::CniError::new(
                    plugin::error::code::IO,
                    "cannot read the network config from stdin",
                    e.to_string(),
                )
                .to_json(plugin::config::CURRENT_VERSION),
            ),
            success: false,
        },
    };
    if let Some(out) = &reply.stdout {
        let mut stdout = std::io::stdout().lock();
        let written = serde_json::to_writer(&mut stdout, out)
            .map_err(std::io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        if let Err(e) = written {
            eprintln!("sluice-cni: cannot write the result: {e}");
            return ExitCode::FAILURE;
        }
    }
    if reply.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn too_big() -> serde_json::Value {
    plugin::error::CniError::new(
        plugin::error::code::IO,
        "the network config on stdin is too large",
        format!("more than {MAX_STDIN} bytes"),
    )
    .to_json(plugin::config::CURRENT_VERSION)
}

/// Sluice's chained CNI plugin.
///
/// The container runtime runs this binary for every new pod, after the pod's primary CNI
/// plugin (it sets CNI_COMMAND and passes the network config on stdin). On ADD it hands the
/// pod to the Sluice agent on this node over the agent's Unix socket and answers only once the
/// pod is enrolled, so the pod's app never runs uncaptured. When the agent is not running it
/// asks the API server whether the pod must be captured, and fails the sandbox (the kubelet
/// retries) if so. See docs/cni.md.
///
/// Run by hand or by the DaemonSet, without CNI_COMMAND, it installs or uninstalls itself.
#[derive(Parser)]
#[command(name = "sluice-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy this binary into the CNI bin dir and chain sluice-cni after the primary CNI.
    ///
    /// sluice-cni becomes the last plugin of the runtime's CNI config: the first file of the
    /// conf dir by name (a .conf is turned into a .conflist of the same name, since only a
    /// list can chain). Idempotent; every write is atomic; the original bytes of each changed
    /// file are kept beside it as <name>.sluice-cni.orig for uninstall.
    Install(InstallArgs),
    /// Take out what install added, leaving the chain as it was.
    ///
    /// Our entry goes (each config file gets its original bytes back where nothing else
    /// changed in it), and so do the kept originals and the binary.
    Uninstall(UninstallArgs),
}

#[derive(Args)]
struct Dirs {
    /// Where the runtime looks for CNI plugin binaries (the host's /opt/cni/bin, mounted).
    #[arg(long, value_name = "DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the runtime reads its CNI configs (the host's /etc/cni/net.d, mounted).
    #[arg(long, value_name = "DIR", default_value = "/host/etc/cni/net.d")]
    conf_dir: PathBuf,
}

#[derive(Args)]
struct InstallArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// The agent's socket, as the runtime on the host sees it (our entry's agentSocket).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    agent_socket: PathBuf,
    /// A kubeconfig on the host that can get pods and namespaces (our entry's kubeconfig):
    /// used only when the agent is not running, to decide by the pod's labels. Without it
    /// (or --service-account-kubeconfig) a pod created while the agent is down fails until
    /// the agent is up.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "service_account_kubeconfig"
    )]
    kubeconfig: Option<PathBuf>,
    /// Write that kubeconfig from this pod's service account (its token and CA, and
    /// KUBERNETES_SERVICE_HOST/PORT) as sluice-kubeconfig in the conf dir, and keep it
    /// current as kubelet rotates the token (with --watch). The account needs `get` on pods
    /// and namespaces.
    #[arg(long)]
    service_account_kubeconfig: bool,
    /// Where the runtime on the host finds --conf-dir: the written kubeconfig's path in our
    /// entry.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    host_conf_dir: PathBuf,
    /// How long ADD waits for the agent (our entry's timeout; the plugin's default is 30s).
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    timeout: Option<String>,
    /// The plugin's log level: error, warn, info (default) or debug.
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug"])]
    log_level: Option<String>,
    /// Keep running: put our entry back whenever the primary CNI rewrites its config, and
    /// uninstall on SIGTERM or SIGINT.
    #[arg(long)]
    watch: bool,
    /// With --watch: how often the conf dir is checked.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// With --watch: leave the binary in the bin dir on exit.
    #[arg(long)]
    keep_binary: bool,
}

#[derive(Args)]
struct UninstallArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// Leave the binary in the bin dir.
    #[arg(long)]
    keep_binary: bool,
}

fn duration_text(s: &str) -> Result<String, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(s.to_owned()),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Command {
    fn run(self) -> Result<()> {
        match self {
            Command::Install(args) => install(args),
            Command::Uninstall(args) => {
                let binary = args.dirs.bin_dir.join(PLUGIN_TYPE);
                let changed = install::uninstall(
                    &args.dirs.conf_dir,
                    (!args.keep_binary).then_some(binary.as_path()),
                )?;
                tracing::info!("took sluice-cni out of {changed:?}");
                Ok(())
            }
        }
    }
}

fn install(args: InstallArgs) -> Result<()> {
    let source = std::env::current_exe().context("cannot find this executable")?;
    let binary = args.dirs.bin_dir.join(PLUGIN_TYPE);
    let written = (args.service_account_kubeconfig)
        .then(|| ServiceAccount::in_cluster(PathBuf::from(kubeconfig::SERVICE_ACCOUNT_DIR)))
        .transpose()?
        .map(|account| (args.dirs.conf_dir.join(kubeconfig::FILE_NAME), account));
    let entry = Entry {
        agent_socket: Some(args.agent_socket),
        kubeconfig: match &written {
            Some(_) => Some(args.host_conf_dir.join(kubeconfig::FILE_NAME)),
            None => args.kubeconfig,
        },
        timeout: args.timeout,
        log_level: args.log_level,
    }
    .to_json();
    if files::copy_binary(&source, &binary)? {
        tracing::info!("copied the plugin to {}", binary.display());
    }
    if args.watch {
        return Watch {
            source: &source,
            binary,
            conf_dir: &args.dirs.conf_dir,
            entry: &entry,
            kubeconfig: written,
            interval: args.interval,
            keep_binary: args.keep_binary,
        }
        .run()
        .map_err(Into::into);
    }
    let change = install::ensure_installed(&args.dirs.conf_dir, &entry, written.as_ref())?;
    tracing::info!("chained into the runtime's config: {change:?}");
    Ok(())
}
