//! From the reflectors' caches to the lists of one configuration: every object converted
//! by itself, bad ones reported, enrolled pods of this node placed on the node.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{api::DynamicObject, runtime::reflector::Store};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::{
    CniPods,
    assemble::{self, Discovered, Rejected},
    pods, services,
    status::Waiting,
};
use crate::{
    config::{ConfigError, Workload, WorkloadKey},
    sys::kubepods,
};

/// How long the first list of every resource may take before the agent says it waits.
const SLOW_LIST: Duration = Duration::from_secs(10);

pub struct Stores {
    pub pods_here: Store<Pod>,
    pub pods_elsewhere: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub authorization_policies: Store<DynamicObject>,
    pub peer_authentications: Store<DynamicObject>,
    pub http_routes: Store<DynamicObject>,
}

impl Stores {
    /// Waits for the first complete list of every resource, saying so while it waits.
    pub async fn ready(&self) -> Result<(), ConfigError> {
        let all = async {
            let dropped =
                |_| ConfigError::Kubernetes("a watch stopped before its first list".into());
            self.pods_here.wait_until_ready().await.map_err(dropped)?;
            self.pods_elsewhere
                .wait_until_ready()
                .await
                .map_err(dropped)?;
            self.namespaces.wait_until_ready().await.map_err(dropped)?;
            self.services.wait_until_ready().await.map_err(dropped)?;
            self.endpoint_slices
                .wait_until_ready()
                .await
                .map_err(dropped)?;
            self.authorization_policies
                .wait_until_ready()
                .await
                .map_err(dropped)?;
            self.peer_authentications
                .wait_until_ready()
                .await
                .map_err(dropped)?;
            self.http_routes.wait_until_ready().await.map_err(dropped)
        };
        let mut all = std::pin::pin!(all);
        loop {
            match tokio::time::timeout(SLOW_LIST, &mut all).await {
                Ok(result) => return result,
                Err(_) => warn!(
                    "still waiting for the API server's first lists (see the watch errors above)"
                ),
            }
        }
    }

    /// This moment's lists, the objects left out, and the enrolled pods still waiting.
    pub fn discover(
        &self,
        node: &str,
        placements: &mut Placements,
        cni: &CniPods,
    ) -> (Discovered, Vec<Rejected>, Vec<Waiting>) {
        let mut rejected = Vec::new();
        let mut waiting = Vec::new();
        let namespace_labels: HashMap<String, BTreeMap<String, String>> =
            (self.namespaces.state().iter())
                .filter_map(|ns| {
                    Some((
                        ns.metadata.name.clone()?,
                        ns.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect();
        let no_labels = BTreeMap::new();
        let mut workloads = Vec::new();
        let mut seen = HashSet::new();
        let mut verdicts = HashMap::new();
        for pod in self.pods_here.state() {
            verdicts.insert(key_of(&pod), verdict(&pod, &namespace_labels));
        }
        cni.set_verdicts(verdicts);
        let pods = self
            .pods_here
            .state()
            .into_iter()
            .chain(self.pods_elsewhere.state());
        for pod in pods {
            let key = key_of(&pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let from_cni = cni.handed(&key, &uid);
            let ns_labels = namespace_labels.get(&key.namespace).unwrap_or(&no_labels);
            let extra_ips = from_cni
                .as_ref()
                .map(|p| p.ips.as_slice())
                .unwrap_or_default();
            match pods::workload_of(&pod, ns_labels, node, extra_ips) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    seen.insert(found.uid.clone());
                    let mut workload = found.workload;
                    if workload.captured_here() {
                        let netns = from_cni.map(|p| p.netns);
                        if let Err(reason) = placements.place(&found.uid, netns, &mut workload) {
                            workload.enrolled = false;
                            waiting.push(Waiting {
                                pod: key.to_string(),
                                reason,
                            });
                        }
                    }
                    workloads.push(workload);
                }
                Err(reason) => rejected.push(Rejected {
                    resource: "pods",
                    name: key.to_string(),
                    reason,
                }),
            }
        }
        placements.forget_all_but(&seen);
        let slices = self.endpoint_slices.state();
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        let mut found_services = Vec::new();
        for svc in self.services.state() {
            let name = full_name(
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
            );
            match services::service_of(&svc, &slices) {
                Ok(Some(service)) => found_services.push(service),
                Ok(None) => {}
                Err(reason) => rejected.push(Rejected {
                    resource: "services",
                    name,
                    reason,
                }),
            }
        }
        let authorization_policies = custom(
            &self.authorization_policies,
            "authorizationpolicies",
            &mut rejected,
            |fields| assemble::deny_all_in_place_of(fields).ok(),
        );
        let peer_authentications = custom(
            &self.peer_authentications,
            "peerauthentications",
            &mut rejected,
            |_| None,
        );
        let http_routes = custom(&self.http_routes, "httproutes", &mut rejected, |_| None);
        let discovered = Discovered {
            workloads,
            services: found_services,
            http_routes,
            authorization_policies,
            peer_authentications,
        };
        (discovered, rejected, waiting)
    }
}

/// Each custom resource as the config type `T`; one that does not read is reported and
/// replaced by what `instead` makes of it, or left out.
fn custom<T: DeserializeOwned>(
    store: &Store<DynamicObject>,
    resource: &'static str,
    rejected: &mut Vec<Rejected>,
    instead: impl Fn(&Map<String, Value>) -> Option<T>,
) -> Vec<T> {
    let mut items = Vec::new();
    for object in store.state() {
        let (Some(name), Some(namespace)) = (&object.metadata.name, &object.metadata.namespace)
        else {
            continue;
        };
        let fields = match assemble::named_spec(name, namespace, object.data.get("spec")) {
            Ok(fields) => fields,
            Err(reason) => {
                rejected.push(Rejected {
                    resource,
                    name: format!("{namespace}/{name}"),
                    reason,
                });
                continue;
            }
        };
        match serde_path_to_error::deserialize::<_, T>(Value::Object(fields.clone())) {
            Ok(item) => items.push(item),
            Err(err) => {
                let path = err.path().to_string();
                let reason = format!("{path}: {}", err.into_inner());
                let replaced = instead(&fields);
                let reason = match replaced {
                    Some(_) => format!(
                        "{reason} (it denies every connection to what it selects until fixed)"
                    ),
                    None => reason,
                };
                rejected.push(Rejected {
                    resource,
                    name: format!("{namespace}/{name}"),
                    reason,
                });
                items.extend(replaced);
            }
        }
    }
    items
}

fn key_of(pod: &Pod) -> WorkloadKey {
    WorkloadKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// The label rule's verdict on a pod of this node.
fn verdict(pod: &Pod, namespace_labels: &HashMap<String, BTreeMap<String, String>>) -> bool {
    let no_labels = BTreeMap::new();
    let ns = pod
        .metadata
        .namespace
        .as_ref()
        .and_then(|ns| namespace_labels.get(ns));
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
    sluice_cni::enrollment::decide(labels, ns.unwrap_or(&no_labels), host_network).enrolled()
}

fn full_name(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{}/{}",
        namespace.unwrap_or_default(),
        name.unwrap_or_default()
    )
}

/// Where each enrolled pod of this node lives on the node, found once and kept while the
/// pod exists, so the published workload stays the same from one rebuild to the next.
pub struct Placements {
    cgroup_root: PathBuf,
    found: HashMap<String, (PathBuf, PathBuf)>,
}

impl Placements {
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self {
            cgroup_root,
            found: HashMap::new(),
        }
    }

    /// Fills in `workload`'s cgroup and netns, or says what is missing. The CNI plugin's
    /// netns, when there is one, is used over a process's.
    fn place(
        &mut self,
        uid: &str,
        cni_netns: Option<PathBuf>,
        workload: &mut Workload,
    ) -> Result<(), String> {
        // A netns found through a process is gone with it (a container restarted): look again.
        if let Some((_, netns)) = self.found.get(uid)
            && !netns.exists()
        {
            self.found.remove(uid);
        }
        if !self.found.contains_key(uid) {
            let cgroup = kubepods::pod_cgroup(&self.cgroup_root, uid).map_err(|e| e.to_string())?;
            let netns = match cni_netns {
                Some(netns) => netns,
                None => kubepods::netns_of(&cgroup).map_err(|e| e.to_string())?,
            };
            info!(pod = %workload.key(), cgroup = %cgroup.display(), netns = %netns.display(), "found the pod on this node");
            self.found.insert(uid.to_owned(), (cgroup, netns));
        }
        let (cgroup, netns) = &self.found[uid];
        workload.cgroup = Some(cgroup.clone());
        workload.netns = Some(netns.clone());
        Ok(())
    }

    fn forget_all_but(&mut self, present: &HashSet<String>) {
        self.found.retain(|uid, _| present.contains(uid));
    }
}
