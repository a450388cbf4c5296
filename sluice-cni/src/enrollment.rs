//! Which pods the mesh captures, decided from labels alone so the agent (from its watch of
//! the API server) and the plugin (from the pod and namespace it fetches when the agent is
//! away) always agree.
use std::collections::BTreeMap;

/// The label, on a namespace or a pod, that enrolls pods in the mesh.
pub const MESH_LABEL: &str = "sluice.dev/mesh";
/// The label's value that enrolls.
pub const ENABLED: &str = "enabled";
/// The label's value that opts out (on a pod: even in an enrolled namespace).
pub const DISABLED: &str = "disabled";

/// Why a pod is or is not captured; the agent shows it in `/config_dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The pod's own label says `enabled`.
    PodLabel,
    /// The namespace's label says `enabled` and the pod does not opt out.
    NamespaceLabel,
    /// Host-network pods share the node's network: capturing them would capture the node.
    HostNetwork,
    /// The pod's label says `disabled`.
    PodOptOut,
    /// Neither the pod nor its namespace is labelled `enabled`.
    NotLabelled,
}

impl Decision {
    pub fn enrolled(self) -> bool {
        matches!(self, Decision::PodLabel | Decision::NamespaceLabel)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::PodLabel => "pod label",
            Decision::NamespaceLabel => "namespace label",
            Decision::HostNetwork => "host network",
            Decision::PodOptOut => "pod opted out",
            Decision::NotLabelled => "not labelled",
        }
    }
}

/// The pod's label wins over its namespace's; any value other than `enabled` or `disabled`
/// counts as absent.
pub fn decide(
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
    host_network: bool,
) -> Decision {
    if host_network {
        return Decision::HostNetwork;
    }
    match pod_labels.get(MESH_LABEL).map(String::as_str) {
        Some(ENABLED) => Decision::PodLabel,
        Some(DISABLED) => Decision::PodOptOut,
        _ if namespace_labels.get(MESH_LABEL).map(String::as_str) == Some(ENABLED) => {
            Decision::NamespaceLabel
        }
        _ => Decision::NotLabelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> BTreeMap<String, String> {
        value
            .map(|v| BTreeMap::from([(MESH_LABEL.to_owned(), v.to_owned())]))
            .unwrap_or_default()
    }

    #[test]
    fn the_pod_label_wins_over_the_namespace() {
        let cases = [
            (None, None, false, Decision::NotLabelled),
            (None, Some("enabled"), false, Decision::NamespaceLabel),
            (Some("enabled"), None, false, Decision::PodLabel),
            (
                Some("disabled"),
                Some("enabled"),
                false,
                Decision::PodOptOut,
            ),
            (Some("enabled"), Some("disabled"), false, Decision::PodLabel),
            (
                Some("yes"),
                Some("enabled"),
                false,
                Decision::NamespaceLabel,
            ),
            (None, Some("true"), false, Decision::NotLabelled),
            (
                Some("enabled"),
                Some("enabled"),
                true,
                Decision::HostNetwork,
            ),
        ];
        for (pod, ns, host, want) in cases {
            let got = decide(&labels(pod), &labels(ns), host);
            assert_eq!(
                got, want,
                "pod {pod:?}, namespace {ns:?}, hostNetwork {host}"
            );
            assert_eq!(
                got.enrolled(),
                matches!(want, Decision::PodLabel | Decision::NamespaceLabel)
            );
        }
    }
}
