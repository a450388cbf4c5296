//! `mesh-agent ca init|issue`: the local CA behind `identity.ca`, and workload certificates
//! for `identity.files` or for other proxies (Envoy in the benchmarks).
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use humantime_serde::re::humantime;

use crate::identity::{LocalCa, SpiffeId, ca};

#[derive(Subcommand)]
pub enum Command {
    /// Make a new CA for a trust domain (ECDSA P-256, valid 10 years): writes ca-cert.pem and
    /// ca-key.pem (mode 0600) into --out. Existing files are never overwritten. Point the
    /// agent's `identity.ca.dir` at the directory; keep the key on the node.
    Init(InitArgs),
    /// Issue a workload certificate from a CA made by `ca init`: writes cert.pem (the
    /// certificate, then the CA's) and key.pem (mode 0600) into --out, for `identity.files`
    /// or for another proxy.
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// SPIFFE trust domain; recorded in the CA, and the agent refuses a CA of another one.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Directory to write into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
pub struct IssueArgs {
    /// The directory `ca init` wrote (ca-cert.pem, ca-key.pem).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// Must be the CA's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The workload's namespace.
    #[arg(long)]
    namespace: String,
    /// The workload's service account.
    #[arg(long)]
    service_account: String,
    /// Lifetime (`90m`, `24h`, `30d`); capped at the CA's own expiry.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Directory to write into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace an existing cert.pem and key.pem (each atomically, the key first), e.g. to
    /// rotate what an agent in files mode watches.
    #[arg(long)]
    force: bool,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(ttl) if ttl.is_zero() => Err("must be more than zero".into()),
        Ok(ttl) => Ok(ttl),
        Err(error) => Err(error.to_string()),
    }
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => {
            let ca = LocalCa::init(&args.trust_domain, &args.out)
                .with_context(|| format!("making a CA in {}", args.out.display()))?;
            let dir = args.out.display();
            println!(
                "wrote {dir}/{}: the CA of trust domain {}, valid until {}",
                ca::CA_CERT_FILE,
                ca.trust_domain(),
                humantime::format_rfc3339_seconds(ca.not_after()),
            );
            println!(
                "wrote {dir}/{}: its private key (mode 0600)",
                ca::CA_KEY_FILE
            );
            println!(
                "agent config:\n  identity:\n    trustDomain: {}\n    ca:\n      dir: {dir}",
                ca.trust_domain()
            );
            Ok(())
        }
        Command::Issue(args) => {
            let ca = LocalCa::load(&args.ca, &args.trust_domain)?;
            let id = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account);
            let issued = ca
                .issue(&id, args.ttl)
                .with_context(|| format!("issuing a certificate for {id}"))?;
            let [cert, key] = issued
                .write(&args.out, args.force)
                .with_context(|| format!("writing the certificate of {id}"))?;
            println!(
                "wrote {}: {id}, serial {}, valid {} to {} (then the CA certificate)",
                cert.display(),
                issued.serial,
                humantime::format_rfc3339_seconds(issued.not_before),
                humantime::format_rfc3339_seconds(issued.not_after),
            );
            println!("wrote {}: its private key (mode 0600)", key.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn ttl_takes_human_durations() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("tomorrow").is_err());
    }

    #[test]
    fn ca_subcommands_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(["mesh-agent", "ca"].iter().chain(args));
        assert!(parse(&["init", "--out", "/tmp/x"]).is_ok());
        assert!(parse(&["init"]).is_err(), "--out is required");
        let issue = [
            "issue",
            "--ca",
            "/c",
            "--namespace",
            "n",
            "--service-account",
            "s",
        ];
        assert!(parse(&[&issue[..], &["--out", "/o", "--ttl", "1h"]].concat()).is_ok());
        assert!(parse(&[&issue[..], &["--out", "/o", "--ttl", "soon"]].concat()).is_err());
        assert!(parse(&issue).is_err(), "--out is required");
    }

    #[test]
    fn init_then_issue_writes_the_files() {
        let dir = std::env::temp_dir().join(format!("sluice-cli-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca_dir, out) = (dir.join("ca"), dir.join("sleep"));
        let init = InitArgs {
            trust_domain: "cluster.local".into(),
            out: ca_dir.clone(),
        };
        run(Command::Init(init)).unwrap();
        let issue = |force| IssueArgs {
            ca: ca_dir.clone(),
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
            ttl: Duration::from_secs(3600),
            out: out.clone(),
            force,
        };
        run(Command::Issue(issue(false))).unwrap();
        let first = std::fs::read(out.join("cert.pem")).unwrap();
        let err = run(Command::Issue(issue(false))).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        run(Command::Issue(issue(true))).unwrap();
        assert_ne!(std::fs::read(out.join("cert.pem")).unwrap(), first);
        let again = InitArgs {
            trust_domain: "cluster.local".into(),
            out: ca_dir,
        };
        assert!(run(Command::Init(again)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
