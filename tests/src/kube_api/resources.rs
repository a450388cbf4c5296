//! The resources the fake API server knows, and the discovery documents it serves for them.
//!
//! The table is fixed: it holds what the agent's Kubernetes source reads, nothing more, so a
//! client asking for anything else gets the 404 a real cluster without that API would give.
//! The optional groups (Gateway API and Sluice's own CRDs) start uninstalled, as on a fresh
//! cluster, and are installed and removed as applying and deleting their CRDs would.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// One resource type: the path segments a client uses and the kind it reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group (paths under `/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    /// The path segment, e.g. `pods`.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Served from a CRD: can be uninstalled, and its list items keep `apiVersion`/`kind`
    /// (the real server strips them from items of built-in lists, and only of those).
    pub custom: bool,
    /// Field selectors the real server accepts beyond `metadata.name`/`metadata.namespace`.
    pub fields: &'static [&'static str],
}

/// Index of a [`Resource`] in [`RESOURCES`]; the store keys objects by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rid(usize);

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const fn builtin(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    fields: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        custom: false,
        fields,
    }
}

const fn crd(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced: true,
        custom: true,
        fields: &[],
    }
}

/// Everything served. Two kinds are called `HTTPRoute` (Gateway API's and Sluice's own), as
/// on a real cluster; their `apiVersion` tells them apart.
pub const RESOURCES: &[Resource] = &[
    builtin("", "v1", "pods", "Pod", true, POD_FIELDS),
    builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        &["status.phase"],
    ),
    builtin(
        "",
        "v1",
        "services",
        "Service",
        true,
        &["spec.clusterIP", "spec.type"],
    ),
    builtin(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        &["addressType"],
    ),
    crd("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    crd(
        "sluice.dev",
        "v1alpha1",
        "authorizationpolicies",
        "AuthorizationPolicy",
    ),
    crd(
        "sluice.dev",
        "v1alpha1",
        "peerauthentications",
        "PeerAuthentication",
    ),
    crd("sluice.dev", "v1alpha1", "httproutes", "HTTPRoute"),
];

impl Rid {
    pub fn res(self) -> &'static Resource {
        &RESOURCES[self.0]
    }

    fn all() -> impl Iterator<Item = Rid> {
        (0..RESOURCES.len()).map(Rid)
    }

    /// The resource a request path names (installed or not).
    pub fn by_path(group: &str, version: &str, plural: &str) -> Option<Rid> {
        Rid::all().find(|r| {
            let res = r.res();
            (res.group, res.version, res.plural) == (group, version, plural)
        })
    }

    /// The resource an object's `apiVersion` and `kind` name.
    pub fn by_type(api_version: &str, kind: &str) -> Option<Rid> {
        Rid::all().find(|r| r.res().api_version() == api_version && r.res().kind == kind)
    }

    /// `Pod`, or `HTTPRoute.sluice.dev` (kubectl's `kind.group`) where a kind alone is
    /// ambiguous.
    pub fn by_kind(kind: &str) -> Result<Rid> {
        let found: Vec<Rid> = Rid::all()
            .filter(|r| {
                let res = r.res();
                res.kind == kind || format!("{}.{}", res.kind, res.group) == kind
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => bail!("the fake API server serves no kind {kind:?}"),
            many => {
                let names: Vec<String> = (many.iter())
                    .map(|r| format!("{}.{}", r.res().kind, r.res().group))
                    .collect();
                bail!("kind {kind:?} is ambiguous: say one of {names:?}")
            }
        }
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `field` may appear in a field selector for this resource.
    pub fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.fields.contains(&field)
    }
}

/// Which optional group versions are currently served; core and discovery always are.
#[derive(Debug)]
pub struct Installed {
    removed: BTreeSet<(&'static str, &'static str)>,
}

impl Default for Installed {
    /// As on a fresh cluster, no CRD is installed.
    fn default() -> Installed {
        let crds = RESOURCES.iter().filter(|r| r.custom);
        Installed {
            removed: crds.map(|r| (r.group, r.version)).collect(),
        }
    }
}

impl Installed {
    pub fn contains(&self, rid: Rid) -> bool {
        let res = rid.res();
        !self.removed.contains(&(res.group, res.version))
    }

    /// Marks a CRD group version (un)installed; built-in groups cannot be removed.
    pub fn set(&mut self, group: &str, version: &str, installed: bool) -> Result<()> {
        let Some(res) = RESOURCES
            .iter()
            .find(|r| (r.group, r.version) == (group, version))
        else {
            bail!("the fake API server serves no {group}/{version}");
        };
        if !res.custom {
            bail!("{group}/{version} is built in: it cannot be (un)installed");
        }
        if installed {
            self.removed.remove(&(res.group, res.version));
        } else {
            self.removed.insert((res.group, res.version));
        }
        Ok(())
    }

    fn served(&self) -> impl Iterator<Item = Rid> + '_ {
        Rid::all().filter(|r| self.contains(*r))
    }

    /// `GET /api`.
    pub fn core_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })
    }

    /// `GET /apis`: every installed group with its one version.
    pub fn groups(&self) -> Value {
        let mut seen = BTreeSet::new();
        let groups: Vec<Value> = (self.served())
            .map(Rid::res)
            .filter(|r| !r.group.is_empty() && seen.insert((r.group, r.version)))
            .map(|r| group_doc(r.group, r.version))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}`, when installed.
    pub fn group(&self, group: &str) -> Option<Value> {
        let res = self
            .served()
            .map(Rid::res)
            .find(|r| !group.is_empty() && r.group == group)?;
        let mut doc = group_doc(res.group, res.version);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `GET /api/v1` or `/apis/{group}/{version}`: an `APIResourceList`, when installed.
    /// The verbs are the ones this server answers (it is read-only).
    pub fn resources(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = (self.served())
            .map(Rid::res)
            .filter(|r| (r.group, r.version) == (group, version))
            .map(|r| {
                json!({
                    "name": r.plural,
                    "singularName": r.kind.to_lowercase(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "list", "watch"],
                })
            })
            .collect();
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /version`: what kube-rs's `apiserver_version` reads.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-sluice-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_and_ambiguity_is_reported() {
        let pod = Rid::by_kind("Pod").unwrap();
        assert_eq!(pod.res().plural, "pods");
        assert!(Rid::by_kind("HTTPRoute").is_err());
        let route = Rid::by_kind("HTTPRoute.sluice.dev").unwrap();
        assert_eq!(route.res().api_version(), "sluice.dev/v1alpha1");
        assert_eq!(
            Rid::by_type("gateway.networking.k8s.io/v1", "HTTPRoute").map(|r| r.res().custom),
            Some(true)
        );
        assert_eq!(
            Rid::by_path("", "v1", "namespaces").map(|r| r.res().namespaced),
            Some(false)
        );
    }

    #[test]
    fn uninstalled_groups_leave_discovery() {
        let mut installed = Installed::default();
        assert!(
            installed.resources("sluice.dev", "v1alpha1").is_none(),
            "no CRDs at first"
        );
        assert!(installed.resources("discovery.k8s.io", "v1").is_some());
        installed.set("sluice.dev", "v1alpha1", true).unwrap();
        assert!(installed.resources("sluice.dev", "v1alpha1").is_some());
        installed.set("sluice.dev", "v1alpha1", false).unwrap();
        assert!(installed.resources("sluice.dev", "v1alpha1").is_none());
        assert!(installed.group("sluice.dev").is_none());
        let groups = installed.groups().to_string();
        assert!(
            !groups.contains("sluice.dev") && groups.contains("discovery.k8s.io"),
            "{groups}"
        );
        assert!(installed.set("", "v1", false).is_err());
        installed.set("sluice.dev", "v1alpha1", true).unwrap();
        assert!(installed.group("sluice.dev").is_some());
    }
}
