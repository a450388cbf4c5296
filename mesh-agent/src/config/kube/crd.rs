//! Sluice's own resources (group `sluice.dev`, version `v1alpha1`): their specs are the
//! config's policy and route types field for field, so the CRDs' schemas are generated from
//! the very types the agent reads them into (`mesh-agent crds` prints them).
//!
//! The agent watches them as untyped objects and converts each one by itself: one object a
//! typed watch could not decode would otherwise stop the watch of all of them.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt as _, core::ApiResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{
    policy::{PeerMtls, PolicyAction, Rule, WorkloadSelector},
    route::{HttpRouteRule, ParentReference},
};

pub const GROUP: &str = "sluice.dev";
pub const VERSION: &str = "v1alpha1";

/// Istio's `AuthorizationPolicy`, its L4 subset.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    doc = "Which peers may connect to the selected workloads (Istio's AuthorizationPolicy, L4 fields)"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: PolicyAction,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Istio's `PeerAuthentication` (workload-wide mode).
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    doc = "Whether the selected workloads take plaintext as well as mutual TLS"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: PeerMtls,
}

/// The Gateway API `HTTPRoute`'s spec, for clusters without the Gateway API CRDs.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    doc = "Routes for a Service's HTTP requests, shaped as the Gateway API HTTPRoute (GAMMA)"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// Every CRD the agent reads, for `mesh-agent crds`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
        HTTPRoute::crd(),
    ]
}

/// The resource the agent watches for each kind.
pub fn authorization_policies() -> ApiResource {
    ApiResource::erase::<AuthorizationPolicy>(&())
}

pub fn peer_authentications() -> ApiResource {
    ApiResource::erase::<PeerAuthentication>(&())
}

pub fn sluice_http_routes() -> ApiResource {
    ApiResource::erase::<HTTPRoute>(&())
}

/// The Gateway API's own `HTTPRoute`, read where its CRD is installed.
pub fn gateway_http_routes() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_are_structural_and_name_their_kinds() {
        let crds = crds();
        let names: Vec<&str> = crds
            .iter()
            .map(|c| c.metadata.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "authorizationpolicies.sluice.dev",
                "peerauthentications.sluice.dev",
                "httproutes.sluice.dev"
            ]
        );
        for crd in &crds {
            let json = serde_json::to_string(crd).expect("json");
            // A structural schema inlines everything: no references left to resolve.
            assert!(!json.contains("$ref"), "{json}");
            assert!(json.contains("openAPIV3Schema"));
        }
    }
}
