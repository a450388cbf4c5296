//! `cargo xtask bench`: Sluice against direct connections and Envoy on the same path, in
//! one run, interleaved so that a comparison holds while the machine's speed drifts.
//!
//! Modules: `topo` builds the node (netns, bridge, cgroups) and spawns pinned processes,
//! `contender` starts and stops each contender, `agent` is the agent's configuration,
//! `envoy` Envoy's sidecar configuration and `envoy_http` its HTTP listeners, `pki` the mTLS
//! path's CA and certificates, `scenario` measures one run (`memory` the memory scenario,
//! `http` the HTTP ones against `nginx`), `tool` is the load generator run inside the pods
//! (`fixed_rate` its HTTP client), `report` turns samples into JSON and markdown, `targets`
//! computes the targets, `svg` draws the chart, `docs` writes docs/benchmarks.md.

mod agent;
mod contender;
mod docs;
mod envoy;
mod envoy_http;
mod fixed_rate;
mod http;
mod install;
mod memory;
mod nginx;
mod pki;
mod procstat;
mod report;
mod scenario;
mod svg;
mod targets;
mod tool;
mod topo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::{cmd, system, toolchain};
use contender::{Bins, Contender, Running};
use scenario::{Ctx, Durations, SCENARIOS, Scenario};

/// Options of `cargo xtask bench`; its help text is the `Bench` task's doc in main.rs.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Bench {
    /// Short runs and two rounds: for development (numbers are rough).
    #[arg(long)]
    quick: bool,
    /// Run only this scenario (repeatable): l4-throughput-1, l4-throughput-8, l4-rr-latency,
    /// l4-connect-rate (client pod in the mesh: its outbound proxy), inbound-throughput-1,
    /// inbound-rr-latency, inbound-connect-rate (server pod only: its inbound proxy),
    /// mesh-throughput-1, mesh-rr-latency, mesh-connect-rate (both pods: both proxies),
    /// mtls-throughput-1, mtls-rr-latency, mtls-connect-rate (both proxies, in mutual TLS),
    /// http1-fixed-rate, http1-max-rps, http2-max-rps (client pod in the mesh, calling a
    /// service its proxy serves as HTTP), memory.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Run only this contender (repeatable): direct, sluice-ebpf, sluice-nftables,
    /// sluice-iptables, envoy.
    #[arg(long = "contender", value_name = "NAME")]
    contenders: Vec<String>,
    /// Rounds; the report gives each contender's median and min–max over them.
    /// [default: 3, or 2 with --quick]
    #[arg(long)]
    rounds: Option<usize>,
    /// Where to write the JSON report; the markdown table and the SVG chart go beside it.
    #[arg(long, value_name = "FILE", default_value = "target/bench/report.json")]
    json: PathBuf,
    /// Also rewrite docs/benchmarks.md and docs/benchmarks.svg from this run.
    #[arg(long)]
    write_docs: bool,
    /// CPUs for client (load generator), server and proxy (the agent, or every Envoy
    /// sidecar on the path), comma separated. [default: 0,1,0; all 0 on a one-CPU machine]
    #[arg(long, value_name = "C,S,P")]
    cpus: Option<String>,
    /// Measure nothing: re-render the report (and docs/, with --write-docs) from an earlier
    /// run's JSON, e.g. after editing the analysis in docs/benchmarks.md.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["quick", "scenarios", "contenders", "rounds", "cpus", "agent"])]
    render: Option<PathBuf>,
    /// Use this mesh-agent binary instead of building one (e.g. to compare two builds).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    #[command(subcommand)]
    tool: Option<tool::Tool>,
}

pub fn run(opts: &Bench) -> Result<ExitCode> {
    if let Some(t) = &opts.tool {
        tool::run(t)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(from) = &opts.render {
        let text =
            std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
        let earlier: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", from.display()))?;
        let samples = report::samples_from_json(&earlier)?;
        return publish(opts, &samples, earlier["meta"].clone());
    }
    let scenarios = selected_scenarios(opts)?;
    let contenders = selected_contenders(opts)?;
    let cpus = parse_cpus(opts.cpus.as_deref())?;
    let rounds = opts.rounds.unwrap_or(if opts.quick { 2 } else { 3 }).max(1);

    system::require_root("cargo xtask bench")?;
    toolchain::ensure()?;
    system::ensure()?;
    let root = cmd::workspace_root()?;
    let envoy = install::ensure(&root)?;
    let mut build = cmd::cargo(&root);
    build.args(["build", "--release", "-p", "xtask"]);
    if opts.agent.is_none() {
        build.args(["-p", "mesh-agent"]);
    }
    cmd::run(&mut build)?;
    let agent = match &opts.agent {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--agent {}", path.display()))?,
        None => root.join("target/release/mesh-agent"),
    };
    let bins = Bins {
        agent,
        tool: root.join("target/release/xtask"),
        envoy,
    };
    let load_before = docs::loadavg();

    let durations = Durations::new(opts.quick);
    let plan = Plan {
        scenarios: &scenarios,
        contenders: &contenders,
        rounds,
        cpus,
        durations,
    };
    let Measured {
        samples,
        threads,
        failures,
    } = measure(&plan, &bins)?;

    let meta = json!({
        "date": docs::date(),
        "quick": opts.quick,
        "rounds": rounds,
        "loadavg_before": load_before,
        "loadavg_after": docs::loadavg(),
        "cpus": {"client": cpus.client, "server": cpus.server, "proxy": cpus.proxy},
        "proxy_threads": threads,
        "kernel": docs::kernel(),
        "agent": bins.agent.display().to_string(),
        "agent_source": if opts.agent.is_some() {
            "given with --agent".to_string()
        } else {
            docs::source_state(&root)
        },
        "durations": format!("{durations:?}"),
        "failures": failures,
        "idle_conns": memory::idle_conns(
            durations.idle_conns,
            procstat::nofile_hard().unwrap_or(1024).min(1 << 20),
        ),
    });
    publish(opts, &samples, meta)
}

/// Writes the JSON report with the markdown table and the chart beside it, prints the table,
/// and rewrites docs/ if asked.
fn publish(opts: &Bench, samples: &report::Samples, meta: serde_json::Value) -> Result<ExitCode> {
    let root = cmd::workspace_root()?;
    let report = report::summarize(samples);
    let json = report::to_json(&report, meta.clone());
    let mut markdown = report::to_markdown(&report);
    if let Some(failures) = meta["failures"].as_array().filter(|f| !f.is_empty()) {
        markdown.push_str("\nFailed runs (their values are missing above):\n\n");
        for f in failures {
            let first = f
                .as_str()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default();
            markdown.push_str(&format!("- {first}\n"));
        }
    }
    let title = format!(
        "Sluice L4 benchmark, {}",
        meta["date"].as_str().unwrap_or_default()
    );
    let svg = svg::chart(&report, &title);
    let out = if opts.json.is_absolute() {
        opts.json.clone()
    } else {
        root.join(&opts.json)
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.with_extension("md"), &markdown)?;
    std::fs::write(out.with_extension("svg"), &svg)?;
    println!("{markdown}");
    eprintln!("bench: wrote {} (and .md, .svg beside it)", out.display());
    if opts.write_docs {
        docs::write(&root, &markdown, &svg, &meta)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a run measured.
struct Measured {
    samples: report::Samples,
    /// Threads of each proxy, as seen during its runs.
    threads: serde_json::Map<String, serde_json::Value>,
    /// Runs that failed, with their error: their values are missing from `samples`.
    failures: Vec<String>,
}

/// What to run.
struct Plan<'a> {
    scenarios: &'a [&'static Scenario],
    contenders: &'a [Contender],
    rounds: usize,
    cpus: topo::Cpus,
    durations: Durations,
}

/// Builds the node, runs every scenario under every contender, round after round, and
/// removes the node again (also on error). A run that fails is recorded, not fatal.
fn measure(plan: &Plan, bins: &Bins) -> Result<Measured> {
    topo::sweep_stale();
    let topo = topo::Topology::create(plan.cpus)?;
    let _servers = scenario::start_servers(&topo, bins)?;
    let ctx = Ctx {
        topo: &topo,
        bins,
        durations: plan.durations,
        ticks: procstat::ticks_per_sec(),
    };
    let rounds = plan.rounds;
    let mut samples = report::Samples::new();
    let mut threads = serde_json::Map::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        for s in plan.scenarios {
            // Rotate the order each round so no contender always runs first or last.
            let mut order = plan.contenders.to_vec();
            let n = order.len();
            order.rotate_left(round % n);
            for c in order {
                if s.proxy_only && c == Contender::Direct {
                    continue;
                }
                eprintln!(
                    "bench: round {}/{rounds}: {} under {}",
                    round + 1,
                    s.name,
                    c.name()
                );
                match run_once(&ctx, s, c, &mut threads) {
                    Ok(values) => {
                        for (metric, v) in s.metrics.iter().zip(values) {
                            samples
                                .entry(metric.name)
                                .or_default()
                                .entry(c)
                                .or_default()
                                .push(v);
                        }
                    }
                    // One bad run must not throw away the others: it is reported instead.
                    Err(e) => {
                        let failure =
                            format!("round {}: {} under {}: {e:#}", round + 1, s.name, c.name());
                        eprintln!("bench: FAILED {failure}");
                        failures.push(failure);
                    }
                }
            }
        }
    }
    Ok(Measured {
        samples,
        threads,
        failures,
    })
}

/// Starts contender `c` on the scenario's path, runs scenario `s` once, checks every proxy
/// on the path carried the traffic, and stops it again.
fn run_once(
    ctx: &Ctx,
    s: &Scenario,
    c: Contender,
    threads: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<f64>> {
    let running = Running::start(c, s.path, ctx.topo, ctx.bins)
        .with_context(|| format!("starting {}", c.name()))?;
    // Sidecars are set up alike, so the first proxy's threads stand for each of them.
    if let Some(n) = running
        .proxy_pids()
        .first()
        .copied()
        .and_then(procstat::threads)
    {
        threads.insert(c.name().into(), json!(n));
    }
    let values = scenario::run(ctx, s, &running).map_err(|e| {
        let tail = running.log_tail();
        if tail.is_empty() { e } else { e.context(tail) }
    })?;
    running.check_carried()?;
    running.stop()?;
    Ok(values)
}

fn selected_scenarios(opts: &Bench) -> Result<Vec<&'static Scenario>> {
    if opts.scenarios.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    opts.scenarios.iter().map(|n| scenario::find(n)).collect()
}

fn selected_contenders(opts: &Bench) -> Result<Vec<Contender>> {
    if opts.contenders.is_empty() {
        return Ok(Contender::ALL.to_vec());
    }
    opts.contenders
        .iter()
        .map(|n| Contender::parse(n))
        .collect()
}

fn parse_cpus(spec: Option<&str>) -> Result<topo::Cpus> {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(spec) = spec else {
        let other = usize::from(online > 1);
        return Ok(topo::Cpus {
            client: 0,
            server: other,
            proxy: 0,
        });
    };
    let v: Vec<usize> = spec
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .with_context(|| format!("--cpus {spec}: {c:?} is not a CPU number"))
        })
        .collect::<Result<_>>()?;
    let [client, server, proxy] = v[..] else {
        bail!("--cpus takes three CPUs: client,server,proxy");
    };
    Ok(topo::Cpus {
        client,
        server,
        proxy,
    })
}
