//! Builds one configuration from the node's file and what the API server says, through the
//! same validation as a file: the file's settings with the discovered lists put in.
//!
//! Each discovered object is checked by itself first, so one bad object is reported and
//! left out (or, for an authorization policy, made to deny) instead of holding back every
//! other change.
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{
    Config, Workload,
    policy::{AuthorizationPolicy, PeerAuthentication},
    route::HttpRoute,
    service::Service,
};

/// The keys a file may not set when the lists come from Kubernetes.
pub const DISCOVERED_KEYS: [&str; 5] = [
    "workloads",
    "services",
    "httpRoutes",
    "authorizationPolicies",
    "peerAuthentications",
];

/// What the API server says, already converted object by object.
#[derive(Default)]
pub struct Discovered {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    /// Each route as read, with its name for reports; checked against `services` here.
    pub http_routes: Vec<HttpRoute>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
}

/// An object left out, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejected {
    pub resource: &'static str,
    pub name: String,
    pub reason: String,
}

/// The file's settings (already checked to hold none of [`DISCOVERED_KEYS`]) with the
/// discovered lists. Routes whose services do not exist (yet) are left out and reported.
pub fn assemble(
    base: &Map<String, Value>,
    discovered: Discovered,
    rejected: &mut Vec<Rejected>,
) -> Result<Config, String> {
    let services = discovered.services;
    let http_routes: Vec<HttpRoute> = (discovered.http_routes.into_iter())
        .filter(|r| match r.check_refs(&services) {
            Ok(()) => true,
            Err(reason) => {
                rejected.push(Rejected {
                    resource: "httproutes",
                    name: format!("{}/{}", r.namespace, r.name),
                    reason,
                });
                false
            }
        })
        .collect();
    let mut config = base.clone();
    put(&mut config, "workloads", &discovered.workloads)?;
    put(&mut config, "services", &services)?;
    put(&mut config, "httpRoutes", &http_routes)?;
    put(
        &mut config,
        "authorizationPolicies",
        &discovered.authorization_policies,
    )?;
    put(
        &mut config,
        "peerAuthentications",
        &discovered.peer_authentications,
    )?;
    serde_path_to_error::deserialize(Value::Object(config)).map_err(|err| {
        let field = err.path().to_string();
        format!("{field}: {}", err.into_inner())
    })
}

fn put<T: Serialize>(
    config: &mut Map<String, Value>,
    key: &str,
    items: &[T],
) -> Result<(), String> {
    let value = serde_json::to_value(items).map_err(|e| format!("{key}: {e}"))?;
    config.insert(key.into(), value);
    Ok(())
}

/// A custom resource's spec with its metadata name and namespace beside it: the shape of
/// the config's policy and route types.
pub fn named_spec(
    name: &str,
    namespace: &str,
    spec: Option<&Value>,
) -> Result<Map<String, Value>, String> {
    let mut fields = match spec {
        Some(Value::Object(spec)) => spec.clone(),
        Some(_) => return Err("spec is not an object".into()),
        None => Map::new(),
    };
    fields.insert("name".into(), Value::String(name.into()));
    fields.insert("namespace".into(), Value::String(namespace.into()));
    Ok(fields)
}

/// An authorization policy that could not be read denies every connection to the
/// workloads it selects (or, if even its selector is unreadable, to its whole namespace):
/// a policy whose meaning is unknown must not let through what it may have denied.
pub fn deny_all_in_place_of(fields: &Map<String, Value>) -> Result<AuthorizationPolicy, String> {
    let mut deny = Map::new();
    for key in ["name", "namespace"] {
        deny.insert(key.into(), fields.get(key).cloned().unwrap_or_default());
    }
    deny.insert("action".into(), Value::String("DENY".into()));
    deny.insert("rules".into(), serde_json::json!([{}]));
    if let Some(selector) = fields.get("selector") {
        let mut with_selector = deny.clone();
        with_selector.insert("selector".into(), selector.clone());
        if let Ok(policy) = serde_json::from_value(Value::Object(with_selector)) {
            return Ok(policy);
        }
    }
    serde_json::from_value(Value::Object(deny)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::PolicyAction;

    #[test]
    fn an_unreadable_policy_denies_what_it_selects() {
        let fields = named_spec(
            "p",
            "shop",
            Some(&serde_json::json!({
                "selector": {"matchLabels": {"app": "db"}},
                "action": "ALLOW",
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]
            })),
        )
        .expect("object");
        assert!(
            serde_json::from_value::<AuthorizationPolicy>(Value::Object(fields.clone())).is_err()
        );
        let deny = deny_all_in_place_of(&fields).expect("deny policy");
        assert_eq!(deny.action, PolicyAction::Deny);
        assert_eq!(deny.rules.len(), 1);
        assert_eq!(
            deny.selector.expect("selector kept").match_labels["app"],
            "db"
        );
        let mut broken = fields.clone();
        broken.insert("selector".into(), serde_json::json!("everything"));
        let deny = deny_all_in_place_of(&broken).expect("namespace-wide deny");
        assert!(deny.selector.is_none());
    }
}
