//! Inbound capture as the kernel and the agent show it, apart from traffic and metrics
//! (those are judged in `crate::capture`): the delivery routing in a pod's netns, and in
//! eBPF mode the pod's `sk_lookup` link, its pin and its `/debug/ebpf` entry.
//!
//! The proxy delivers each inbound connection to the app from a transparent socket bound to
//! the client's address and marked [`DELIVERY_MARK`]; the app's replies find their way back
//! to it through a policy route of the pod's netns: `fwmark 0x111 lookup 15006`, and in
//! table 15006 every address is local on `lo`.

use crate::agent::{Agent, AgentConfig};
use crate::netfilter::in_pod;
use crate::pod::Pod;
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::path::PathBuf;

pub use crate::netfilter::{DELIVERY_MARK, INBOUND_PORT};

/// The routing table of the delivery route.
pub const DELIVERY_TABLE: u32 = 15006;

/// The tunnel port, never captured inbound.
pub const TUNNEL_PORT: u16 = 15008;

/// Asserts that `pod`'s netns routes the app's replies back to delivery sockets: sysctl
/// `net.ipv4.tcp_fwmark_accept=1`, and for both families the rule `fwmark 0x111 lookup
/// 15006` and `local default dev lo` in table 15006 (the test pods all have IPv6).
pub fn expect_delivery_routing(pod: &Pod) -> Result<()> {
    let accept = in_pod(pod, "cat", &["/proc/sys/net/ipv4/tcp_fwmark_accept"])?;
    ensure!(
        accept.trim() == "1",
        "pod {}: tcp_fwmark_accept is {}",
        pod.name(),
        accept.trim()
    );
    let table = DELIVERY_TABLE.to_string();
    for family in ["-4", "-6"] {
        let rules = in_pod(pod, "ip", &[family, "rule", "show"])?;
        let rule = format!("fwmark {DELIVERY_MARK:#x} lookup {DELIVERY_TABLE}");
        ensure!(
            rules.lines().any(|l| l.contains(&rule)),
            "pod {}: no `{rule}` in ip {family} rule:\n{rules}",
            pod.name()
        );
        let routes = in_pod(pod, "ip", &[family, "route", "show", "table", &table])?;
        ensure!(
            routes
                .lines()
                .any(|l| l.starts_with("local default dev lo")),
            "pod {}: no `local default dev lo` in ip {family} route table {table}:\n{routes}",
            pod.name()
        );
    }
    Ok(())
}

/// Where the agent pins pod `pod`'s `sk_lookup` link: `<bpffsRoot>/<node>/inbound/<ns>_<name>`
/// (bpffs refuses dots in names; test workloads live in namespace `default` and their names
/// hold none of the characters the agent escapes).
pub fn pin_path(cfg: &AgentConfig, pod: &Pod) -> PathBuf {
    cfg.pin_dir()
        .join("inbound")
        .join(format!("default_{}", pod.name()))
}

/// `/debug/ebpf`'s `inbound` entry for `pod` (`"pod": "default/<name>"`), if any.
pub fn debug_entry(agent: &Agent, pod: &Pod) -> Result<Option<Value>> {
    let dump = agent.debug_ebpf()?;
    let entries = dump
        .get("inbound")
        .and_then(Value::as_array)
        .with_context(|| format!("no inbound array in /debug/ebpf: {dump}"))?;
    let name = format!("default/{}", pod.name());
    Ok(entries.iter().find(|e| e["pod"] == name.as_str()).cloned())
}

/// Asserts that eBPF inbound steering of `pod` is in place: exactly one link on its netns,
/// an `sk_lookup` program, pinned where [`pin_path`] says, and listed in `/debug/ebpf` with
/// its netns, pin, addresses and `excluded` ports (sorted; the tunnel port, excluded on
/// every pod, may be listed or not).
pub fn expect_ebpf_steering(agent: &Agent, pod: &Pod, excluded: &[u16]) -> Result<()> {
    let ino = crate::bpf::netns_inode(&pod.netns_path())?;
    let links = crate::bpf::netns_links(ino)?;
    ensure!(
        links.len() == 1 && links[0].attach_type == "sk_lookup",
        "pod {}: links on its netns (inode {ino}): {links:?}",
        pod.name()
    );
    let pin = pin_path(agent.config(), pod);
    ensure!(pin.exists(), "pod {}: no pin {}", pod.name(), pin.display());
    let entry = debug_entry(agent, pod)?
        .with_context(|| format!("pod {} not in /debug/ebpf inbound", pod.name()))?;
    ensure!(
        entry["netns"] == pod.netns_path().to_string_lossy().as_ref()
            && entry["pin"] == pin.to_string_lossy().as_ref(),
        "pod {}: /debug/ebpf inbound entry {entry}",
        pod.name()
    );
    let mut addresses: Vec<&str> = entry["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    addresses.sort_unstable();
    let (ip, ip6) = (pod.ip().to_string(), pod.ip6().to_string());
    let mut want = vec![ip.as_str(), ip6.as_str()];
    want.sort_unstable();
    ensure!(
        addresses == want,
        "pod {}: inbound addresses {addresses:?}, want {want:?}: {entry}",
        pod.name()
    );
    let mut ports: Vec<u64> = entry["excludedPorts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .filter(|p| *p != u64::from(TUNNEL_PORT))
        .collect();
    ports.sort_unstable();
    let want: Vec<u64> = excluded.iter().map(|p| u64::from(*p)).collect();
    ensure!(
        ports == want,
        "pod {}: excludedPorts {ports:?}, want {want:?}: {entry}",
        pod.name()
    );
    Ok(())
}

/// Asserts that nothing of eBPF inbound steering is left for `pod`: no link on its netns,
/// no pin, no `/debug/ebpf` entry.
pub fn expect_no_ebpf_steering(agent: &Agent, pod: &Pod) -> Result<()> {
    let ino = crate::bpf::netns_inode(&pod.netns_path())?;
    let links = crate::bpf::netns_links(ino)?;
    let pin = pin_path(agent.config(), pod);
    let entry = debug_entry(agent, pod)?;
    ensure!(
        links.is_empty() && !pin.exists() && entry.is_none(),
        "pod {}: links {links:?}, pin {} exists: {}, /debug/ebpf entry {entry:?}",
        pod.name(),
        pin.display(),
        pin.exists()
    );
    Ok(())
}
