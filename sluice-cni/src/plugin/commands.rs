//! ADD, DEL and CHECK: what the plugin asks the agent, and what it does when the agent is not
//! there. The rule throughout: a pod that must be captured never starts uncaptured (ADD fails
//! closed), and tearing a pod down never waits on Sluice (DEL succeeds whatever happens).
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::Backends;
use super::config::NetConf;
use super::env::{CniCommand, Invocation};
use super::error::{CniError, code};
use crate::error_chain;
use crate::protocol::{ClientError, Command, Outcome, PodRef, Request};

/// DEL waits at most this long for the agent, whatever `timeout` says: a hung agent must not
/// hold up every pod deletion on the node.
pub const DEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `inv.command`; `Ok(Some(v))` is printed on stdout.
pub fn dispatch(
    inv: &Invocation,
    conf: &NetConf,
    b: &dyn Backends,
) -> Result<Option<Value>, CniError> {
    let need = |min: &str| {
        if conf.at_least(min) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("{:?} needs cniVersion {min} or later", inv.command),
                format!("the config's cniVersion is {}", conf.cni_version),
            ))
        }
    };
    match inv.command {
        CniCommand::Add => add(inv, conf, b).map(Some),
        CniCommand::Del => del(inv, conf, b).map(|()| None),
        CniCommand::Check => {
            need("0.4.0")?;
            check(inv, conf, b).map(|()| None)
        }
        CniCommand::Gc | CniCommand::Status => need("1.1.0").map(|()| None),
        // Answered before the config is parsed; here only for completeness.
        CniCommand::Version => Ok(None),
    }
}

fn add(inv: &Invocation, conf: &NetConf, b: &dyn Backends) -> Result<Value, CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "no prevResult: sluice-cni is a chained plugin",
            "it must come after the plugin that sets up the pod's interface, in a .conflist",
        )
    })?;
    let Some(pod) = &inv.pod else {
        tracing::info!(container = %inv.container_id, "not a Kubernetes pod: passed through");
        return Ok(prev);
    };
    let req = request(Command::Add, inv, pod, ips_of(&prev)?);
    let who = format!("pod {pod} (container {})", inv.container_id);
    match b.exchange(&conf.agent_socket, &req, conf.timeout) {
        Ok(resp) => match resp.outcome {
            Outcome::Enrolled | Outcome::NotEnrolled => {
                tracing::info!("{who}: {:?} by the agent {}", resp.outcome, resp.message);
                Ok(prev)
            }
            Outcome::Error => Err(CniError::new(
                code::OTHER,
                format!("the Sluice agent could not enroll pod {pod}"),
                resp.message,
            )),
            Outcome::Released => Err(off_protocol(Command::Add, Outcome::Released)),
        },
        Err(away) if away.agent_away() => {
            decide_without_agent(pod, conf, b, &away, "retrying the sandbox once it is up")?;
            Ok(prev)
        }
        Err(e) => Err(agent_failed(pod, &e)),
    }
}

fn del(inv: &Invocation, conf: &NetConf, b: &dyn Backends) -> Result<(), CniError> {
    let Some(pod) = &inv.pod else {
        return Ok(());
    };
    // Best effort: the addresses only help the agent find the pod faster.
    let ips = conf
        .prev_result
        .as_ref()
        .and_then(|prev| ips_of(prev).ok())
        .unwrap_or_default();
    let req = request(Command::Del, inv, pod, ips);
    let who = format!("pod {pod} (container {})", inv.container_id);
    match b.exchange(&conf.agent_socket, &req, conf.timeout.min(DEL_TIMEOUT)) {
        Ok(resp) => match resp.outcome {
            Outcome::Error => Err(CniError::new(
                code::OTHER,
                format!("the Sluice agent could not release pod {pod}"),
                resp.message,
            )),
            outcome => {
                tracing::info!("{who}: {outcome:?} by the agent {}", resp.message);
                Ok(())
            }
        },
        // An agent that is away or stuck reconciles from the API server when it is back.
        Err(e) => {
            tracing::warn!("{who}: released without the agent: {}", error_chain(&e));
            Ok(())
        }
    }
}

fn check(inv: &Invocation, conf: &NetConf, b: &dyn Backends) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "no prevResult: the runtime must pass ADD's result to CHECK",
            "",
        )
    })?;
    let Some(pod) = &inv.pod else {
        return Ok(());
    };
    let req = request(Command::Check, inv, pod, ips_of(prev)?);
    match b.exchange(&conf.agent_socket, &req, conf.timeout) {
        Ok(resp) => match resp.outcome {
            Outcome::Enrolled | Outcome::NotEnrolled => Ok(()),
            Outcome::Error => Err(CniError::new(
                code::OTHER,
                format!("pod {pod} must be enrolled in the mesh and is not"),
                resp.message,
            )),
            Outcome::Released => Err(off_protocol(Command::Check, Outcome::Released)),
        },
        Err(away) if away.agent_away() => decide_without_agent(
            pod,
            conf,
            b,
            &away,
            "it is not captured until the agent is up",
        ),
        Err(e) => Err(agent_failed(pod, &e)),
    }
}

/// The agent is away: the label rule, from the API server, says whether the pod may go on
/// without it. Every doubt fails closed with "try again later", so the kubelet retries.
fn decide_without_agent(
    pod: &PodRef,
    conf: &NetConf,
    b: &dyn Backends,
    away: &ClientError,
    then: &str,
) -> Result<(), CniError> {
    let agent = error_chain(away);
    let Some(kubeconfig) = &conf.kubeconfig else {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the Sluice agent on this node is not running, and without a kubeconfig \
                 sluice-cni cannot tell whether pod {pod} must be captured; failing closed"
            ),
            agent,
        ));
    };
    match b.decide(pod, kubeconfig, conf.timeout) {
        Ok(decision) if decision.enrolled() => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the Sluice agent on this node is not running, and pod {pod} must be captured; {then}"
            ),
            format!("captured by {}; {agent}", decision.as_str()),
        )),
        Ok(decision) => {
            tracing::info!(
                "pod {pod}: the agent is away; not captured ({}): passed through",
                decision.as_str()
            );
            Ok(())
        }
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the Sluice agent on this node is not running, and the API server cannot say \
                 whether pod {pod} must be captured; failing closed"
            ),
            format!("{agent}; API server: {}", error_chain(&e)),
        )),
    }
}

fn agent_failed(pod: &PodRef, e: &ClientError) -> CniError {
    let code = match e {
        ClientError::Timeout { .. } => code::TRY_AGAIN_LATER,
        _ => code::OTHER,
    };
    CniError::new(
        code,
        format!("the Sluice agent did not answer for pod {pod}"),
        error_chain(e),
    )
}

fn off_protocol(asked: Command, got: Outcome) -> CniError {
    CniError::new(
        code::OTHER,
        "the Sluice agent answered outside the protocol",
        format!("{got:?} is no answer to {asked:?}"),
    )
}

fn request(command: Command, inv: &Invocation, pod: &PodRef, ips: Vec<IpAddr>) -> Request {
    Request {
        command,
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone(),
        ifname: inv.ifname.clone(),
        pod: pod.clone(),
        ips,
    }
}

/// The addresses in a result's `ips[].address` (CIDR notation), prefix stripped, each once.
pub fn ips_of(result: &Value) -> Result<Vec<IpAddr>, CniError> {
    let mut ips = Vec::new();
    let entries = result.get("ips").and_then(Value::as_array);
    for (i, entry) in entries.into_iter().flatten().enumerate() {
        let text = entry.get("address").and_then(Value::as_str).unwrap_or("");
        let addr = text.split_once('/').map_or(text, |(a, _)| a);
        let ip: IpAddr = addr.parse().map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid prevResult",
                format!("prevResult.ips[{i}].address is {text:?}, not an address in CIDR notation"),
            )
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
