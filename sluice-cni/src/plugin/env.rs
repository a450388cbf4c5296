//! The runtime's `CNI_*` environment variables.
use std::ffi::OsString;
use std::path::PathBuf;

use super::error::{CniError, code};
use crate::protocol::PodRef;

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    /// CNI 1.1: drop resources of attachments the runtime no longer has. The plugin holds
    /// none (the agent reconciles against the API server), so it succeeds.
    Gc,
    /// CNI 1.1: can the plugin serve ADD? It always can answer (from the agent, or from the
    /// API server when the agent is away), so it succeeds.
    Status,
    Version,
}

impl CniCommand {
    pub fn parse(s: &str) -> Option<CniCommand> {
        Some(match s {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            "CHECK" => CniCommand::Check,
            "GC" => CniCommand::Gc,
            "STATUS" => CniCommand::Status,
            "VERSION" => CniCommand::Version,
            _ => return None,
        })
    }
}

/// One invocation's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: CniCommand,
    pub container_id: String,
    /// Absent only for DEL, GC, STATUS and VERSION.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// The Kubernetes pod from `CNI_ARGS`; `None` for a sandbox that is not a pod's.
    pub pod: Option<PodRef>,
}

impl Invocation {
    /// Reads the variables through `var`, which is `std::env::var_os` outside tests. Every
    /// missing required variable is named in one error, as the spec asks.
    pub fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<Invocation, CniError> {
        let text = |name: &str| -> Result<Option<String>, CniError> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|_| {
                    CniError::new(code::INVALID_ENV, format!("{name} is not UTF-8"), "")
                }),
            }
        };
        let raw = text("CNI_COMMAND")?
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", ""))?;
        let command = CniCommand::parse(&raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {raw:?} is not a CNI command"),
                "expected ADD, DEL, CHECK, GC, STATUS or VERSION",
            )
        })?;
        let required: &[&str] = match command {
            CniCommand::Add | CniCommand::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            CniCommand::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            CniCommand::Gc | CniCommand::Status | CniCommand::Version => &[],
        };
        let mut missing = Vec::new();
        for name in required {
            if text(name)?.is_none() {
                missing.push(*name);
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
                format!("CNI_COMMAND={raw}"),
            ));
        }
        Ok(Invocation {
            command,
            container_id: text("CNI_CONTAINERID")?.unwrap_or_default(),
            netns: var("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ifname: text("CNI_IFNAME")?.unwrap_or_default(),
            pod: pod_from_args(text("CNI_ARGS")?.as_deref().unwrap_or("")),
        })
    }
}

/// The pod named by `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`):
/// only when both namespace and name are there. Pairs without `=` are skipped: they cannot
/// name a pod, and other plugins in the chain judge the variable's form.
pub fn pod_from_args(args: &str) -> Option<PodRef> {
    let get = |key: &str| {
        args.split(';')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Some(PodRef {
        namespace: get("K8S_POD_NAMESPACE")?,
        name: get("K8S_POD_NAME")?,
        uid: get("K8S_POD_UID"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]))
            .unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("CNI_CONTAINERID, CNI_NETNS"), "{err}");

        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1",
            ),
        ]))
        .unwrap();
        assert_eq!(inv.command, CniCommand::Add);
        assert_eq!(
            inv.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/cni-1"))
        );
        let pod = inv.pod.unwrap();
        assert_eq!(
            (pod.to_string(), pod.uid.as_deref()),
            ("shop/web-0".into(), Some("u-1"))
        );
    }

    #[test]
    fn del_needs_no_netns_and_version_nothing() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!((inv.netns, inv.pod), (None, None));
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "RESET")])).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
    }

    #[test]
    fn a_pod_needs_both_namespace_and_name() {
        assert_eq!(pod_from_args(""), None);
        assert_eq!(pod_from_args("K8S_POD_NAMESPACE=a"), None);
        assert_eq!(pod_from_args("K8S_POD_NAMESPACE=a;K8S_POD_NAME="), None);
        let pod = pod_from_args("junk;K8S_POD_NAME=b;K8S_POD_NAMESPACE=a").unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid),
            ("a", "b", None)
        );
    }
}
