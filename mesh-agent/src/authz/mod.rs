//! Inbound authorization: Istio's L4 `AuthorizationPolicy` and `PeerAuthentication`
//! semantics, evaluated per connection.
//!
//! [`Policies`] is compiled once per config version (indexed by namespace, ports and patterns
//! parsed) so that [`Policies::check`] on the connection path only compares. [`live`] keeps
//! the connections that are open, so that a policy change closes those it no longer allows.
//!
//! Semantics, as Istio's: policies in namespace N apply to the workloads of N, all of them
//! without a selector, else those whose labels include every `matchLabels` pair. A matching
//! `DENY` denies; else, if `ALLOW` policies apply and none matches, the connection is denied;
//! else it is allowed. Policies are kept in name order, so which `DENY` a denial names does
//! not depend on the order of the config's list.
pub mod live;
mod peer;
mod rule;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::config::{
    Config, Workload,
    policy::{AuthorizationPolicy, MtlsMode, PolicyAction, WorkloadSelector},
};

use self::{
    peer::PeerAuthIndex,
    rule::{CompiledRule, Facts},
};

/// The facts of one inbound connection that L4 policy can see.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    pub destination: &'a Workload,
    pub destination_port: u16,
    pub source_ip: IpAddr,
    /// The peer's verified identity, `<trust domain>/ns/<ns>/sa/<sa>` (a leading `spiffe://`
    /// is accepted and ignored); `None` for plaintext.
    pub source_principal: Option<&'a str>,
    /// The peer's namespace from its verified identity; `None` for plaintext.
    pub source_namespace: Option<&'a str>,
}

/// The outcome of [`Policies::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        reason: DenyReason,
        /// `<namespace>/<name>` of the `DENY` that matched, or, for
        /// [`DenyReason::NoAllowMatch`], the `ALLOW` policies that applied, comma-separated.
        policy: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why a connection was denied; [`DenyReason::as_str`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// A `DENY` policy matched.
    DenyPolicy,
    /// `ALLOW` policies applied and none matched.
    NoAllowMatch,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::DenyPolicy => "deny_policy",
            DenyReason::NoAllowMatch => "no_allow_match",
        }
    }
}

/// One `AuthorizationPolicy`, compiled.
#[derive(Clone, Debug)]
struct CompiledPolicy {
    /// `<namespace>/<name>`, as denials report it.
    id: String,
    /// `None`: every workload of the namespace.
    selector: Option<BTreeMap<String, String>>,
    /// Empty: the policy matches nothing (for either action).
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    fn new(p: &AuthorizationPolicy) -> Self {
        Self {
            id: format!("{}/{}", p.namespace, p.name),
            selector: selector_labels(p.selector.as_ref()).cloned(),
            rules: p
                .rules
                .iter()
                .map(|r| CompiledRule::new(r, p.action))
                .collect(),
        }
    }

    fn applies_to(&self, workload: &Workload) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|labels| labels_match(labels, workload))
    }

    fn matches(&self, facts: &Facts) -> bool {
        self.rules.iter().any(|r| r.matches(facts))
    }
}

/// The authorization policies of one namespace, split by action, each in name order.
#[derive(Clone, Debug, Default)]
struct NamespacePolicies {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
}

/// The inbound policy of one config version, ready to be queried per connection.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    authz: HashMap<String, NamespacePolicies>,
    peer: PeerAuthIndex,
}

impl Policies {
    pub fn new(config: &Config) -> Self {
        let mut sorted: Vec<&AuthorizationPolicy> = config.authorization_policies.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut authz: HashMap<String, NamespacePolicies> = HashMap::new();
        for p in sorted {
            let ns = authz.entry(p.namespace.clone()).or_default();
            let list = match p.action {
                PolicyAction::Deny => &mut ns.deny,
                PolicyAction::Allow => &mut ns.allow,
            };
            list.push(CompiledPolicy::new(p));
        }
        Self {
            authz,
            peer: PeerAuthIndex::new(&config.peer_authentications),
        }
    }

    /// Whether the destination's authorization policies admit this connection. mTLS mode is
    /// a separate question: see [`Policies::mtls_mode`].
    pub fn check(&self, conn: &Connection) -> Decision {
        let Some(ns) = self.authz.get(&conn.destination.namespace) else {
            return Decision::Allow;
        };
        let facts = Facts {
            principal: conn
                .source_principal
                .map(|p| p.strip_prefix("spiffe://").unwrap_or(p)),
            namespace: conn.source_namespace,
            // A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`; IPv4 blocks must
            // still contain them.
            ip: conn.source_ip.to_canonical(),
            port: conn.destination_port,
        };
        let applies = |p: &&CompiledPolicy| p.applies_to(conn.destination);
        if let Some(deny) = ns.deny.iter().filter(applies).find(|p| p.matches(&facts)) {
            return Decision::Deny {
                reason: DenyReason::DenyPolicy,
                policy: deny.id.clone(),
            };
        }
        let mut allows = ns.allow.iter().filter(applies).peekable();
        if allows.peek().is_none() {
            return Decision::Allow;
        }
        let mut applied = Vec::new();
        for p in allows {
            if p.matches(&facts) {
                return Decision::Allow;
            }
            applied.push(p.id.as_str());
        }
        Decision::Deny {
            reason: DenyReason::NoAllowMatch,
            policy: applied.join(","),
        }
    }

    /// The `PeerAuthentication` mode in force for `destination` (see [`peer`] for precedence).
    pub fn mtls_mode(&self, destination: &Workload) -> MtlsMode {
        self.peer.mode(destination)
    }
}

/// A selector's labels; `None` for no selector or an empty one, which select the whole
/// namespace.
fn selector_labels(selector: Option<&WorkloadSelector>) -> Option<&BTreeMap<String, String>> {
    selector
        .map(|s| &s.match_labels)
        .filter(|labels| !labels.is_empty())
}

/// The workload's labels include every pair.
fn labels_match(labels: &BTreeMap<String, String>, workload: &Workload) -> bool {
    labels
        .iter()
        .all(|(k, v)| workload.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
