//! Which `PeerAuthentication` mode holds for a destination workload.
//!
//! Istio's precedence within the workload's namespace: a policy whose selector selects the
//! workload, else the namespace-wide one (no selector), else `PERMISSIVE`. Istio breaks ties
//! within a rank by creation time (oldest wins); the config carries no timestamps, so here
//! the first by name wins, which is as deterministic and does not depend on list order.
//! A selector with no `matchLabels` is namespace-wide, as in Istio.
use std::collections::{BTreeMap, HashMap};

use crate::config::{
    Workload,
    policy::{MtlsMode, PeerAuthentication},
};

/// The compiled policies of one namespace.
#[derive(Clone, Debug, Default)]
struct NamespacePeerAuth {
    /// The first namespace-wide policy by name.
    namespace_wide: Option<MtlsMode>,
    /// Workload-selector policies in name order: the first that selects a workload wins.
    selected: Vec<(BTreeMap<String, String>, MtlsMode)>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct PeerAuthIndex {
    by_namespace: HashMap<String, NamespacePeerAuth>,
}

impl PeerAuthIndex {
    pub(super) fn new(policies: &[PeerAuthentication]) -> Self {
        let mut sorted: Vec<&PeerAuthentication> = policies.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_namespace: HashMap<String, NamespacePeerAuth> = HashMap::new();
        for p in sorted {
            let ns = by_namespace.entry(p.namespace.clone()).or_default();
            match super::selector_labels(p.selector.as_ref()) {
                Some(labels) => ns.selected.push((labels.clone(), p.mtls.mode)),
                None => {
                    ns.namespace_wide.get_or_insert(p.mtls.mode);
                }
            }
        }
        Self { by_namespace }
    }

    pub(super) fn mode(&self, workload: &Workload) -> MtlsMode {
        let Some(ns) = self.by_namespace.get(&workload.namespace) else {
            return MtlsMode::Permissive;
        };
        ns.selected
            .iter()
            .find(|(labels, _)| super::labels_match(labels, workload))
            .map(|(_, mode)| *mode)
            .or(ns.namespace_wide)
            .unwrap_or_default()
    }
}
