//! The node precheck (`mesh-agent check`) decides the redirect mode. Its verdict is judged
//! against facts gathered without the agent (kernel release, `bpftool feature probe`,
//! netfilter tools run by hand), so a wrong verdict fails on whichever kernel runs this
//! (the host, or each VM kernel of `cargo xtask vm-test`); and an agent left on `auto`
//! must run the chosen mode and capture with it.

use tests::netfilter::expect_rules;
use tests::precheck::{
    EBPF_FLOOR, ebpf_gaps, kernel_release, netfilter_redirect_works, report, run_check, version,
};
use tests::scenario::{addr, assert_transparent, client_and_server};
use tests::{Agent, AgentConfig, Mode, Node, Snapshot};

/// The report's kernel is this kernel; `ebpf` is available exactly when the kernel is at
/// least 5.10 and offers every program type, helper and map the programs use; then `auto`
/// chooses it and every eBPF check (each program loaded and attached) passed.
#[test]
fn check_ebpf_verdict_matches_the_kernel() {
    let report = report().unwrap();
    let release = kernel_release().unwrap();
    assert_eq!(report["kernel"], release.as_str(), "{report:#}");
    let gaps = ebpf_gaps().unwrap();
    let new_enough = version(&release).is_some_and(|v| v >= EBPF_FLOOR);
    let can = new_enough && gaps.is_empty();
    eprintln!("kernel {release}: eBPF gaps per bpftool: {gaps:?}");
    assert_eq!(
        report["available"]["ebpf"], can,
        "kernel {release}, bpftool gaps {gaps:?}: {report:#}"
    );
    let ebpf_checks: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["needed_by"] == "ebpf")
        .collect();
    let failed: Vec<_> = ebpf_checks.iter().filter(|c| c["ok"] != true).collect();
    if can {
        assert_eq!(report["chosen"], "ebpf", "{report:#}");
        assert!(
            ebpf_checks
                .iter()
                .any(|c| c["name"].as_str().is_some_and(|n| n.starts_with("attach "))),
            "no program was attached by the probe: {report:#}"
        );
        assert!(failed.is_empty(), "eBPF checks failed: {failed:#?}");
    } else {
        assert_ne!(report["chosen"], "ebpf", "{report:#}");
        assert!(
            !failed.is_empty(),
            "unavailable, but no check failed: {report:#}"
        );
    }
}

/// `nftables` and `iptables` are available exactly when a nat `redirect` rule goes in with
/// the plain tools in a fresh netns; forcing an available mode chooses it.
#[test]
fn check_netfilter_verdicts_match_the_tools() {
    let report = report().unwrap();
    let node = Node::new().unwrap();
    for mode in [Mode::Nftables, Mode::Iptables] {
        let pod = node.add_pod(&format!("probe-{mode}")).unwrap();
        let works = netfilter_redirect_works(&pod, mode);
        assert_eq!(
            report["available"][mode.as_str()],
            works,
            "{mode}: by hand {works}: {report:#}"
        );
        let (ok, stdout) = run_check(&["--mode", mode.as_str(), "--json"]).unwrap();
        assert_eq!(ok, works, "check --mode {mode}: {stdout}");
        let forced: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let want = if works {
            mode.as_str().into()
        } else {
            serde_json::Value::Null
        };
        assert_eq!(forced["chosen"], want, "{forced:#}");
    }
    let (ok, stdout) = run_check(&["--mode", "nftables"]).unwrap();
    assert!(ok && stdout.contains("mode: nftables"), "{stdout}");
}

/// An agent on `auto` runs the mode `check` chose (`sluice_redirect_mode`,
/// `/debug/redirect`), holds that mode's rules, and captures an enrolled pod with it.
#[test]
fn auto_mode_runs_what_check_chose_and_captures() {
    let chosen = report().unwrap()["chosen"].as_str().map(str::to_owned);
    let chosen = Mode::ALL
        .into_iter()
        .find(|m| Some(m.as_str()) == chosen.as_deref())
        .unwrap_or_else(|| panic!("check chose no mode ({chosen:?})"));
    let node = Node::new().unwrap();
    let (a, b, _server, forced) = client_and_server(&node, chosen);
    let auto = AgentConfig {
        redirect: None,
        ..forced.clone()
    };
    let agent = Agent::start(&node, auto).unwrap();

    let before = Snapshot::take(&agent).unwrap();
    assert_eq!(before.mode, chosen, "sluice_redirect_mode");
    let redirect = agent.debug_redirect().unwrap();
    assert_eq!(redirect["nodeMode"], chosen.as_str(), "{redirect}");
    expect_rules(&node, &forced).unwrap();
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 4096).unwrap(), a.ip().into(), target);
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();
}
