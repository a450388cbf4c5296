//! Inbound policy in the config, shaped like Istio's `AuthorizationPolicy` (its L4 subset) and
//! `PeerAuthentication`, so the Kubernetes source can read those resources into these types.
//!
//! Fields the L4 proxy cannot evaluate (methods, paths, request principals, port-level mTLS)
//! are refused when the config is read: a `DENY` that silently ignored them would allow
//! what its author meant to deny.
use std::collections::BTreeMap;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which workloads a policy applies to: all of `namespace`, or those of its workloads whose
/// labels include every `matchLabels` pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: PolicyAction,
    /// No rules: an `ALLOW` policy allows nothing, a `DENY` policy denies nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
}

/// Matches when some `from` entry and some `to` entry match (an absent list matches all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

/// Every listed field must match; within a field, any value. `principals` are SPIFFE IDs
/// without the scheme (`<trust domain>/ns/<ns>/sa/<sa>`), `*` as a prefix or suffix
/// wildcard, as in Istio.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    /// CIDRs or single addresses, as Istio takes them.
    #[serde(default, deserialize_with = "ip_blocks")]
    #[schemars(with = "Option<Vec<String>>")]
    pub ip_blocks: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "ip_blocks")]
    #[schemars(with = "Option<Vec<String>>")]
    pub not_ip_blocks: Option<Vec<IpNet>>,
}

/// `10.0.0.0/8` or `10.0.0.1` (a host: `/32`, `/128`).
fn ip_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let Some(blocks) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    blocks
        .iter()
        .map(|b| {
            b.parse::<IpNet>()
                .or_else(|_| b.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{b:?} is not a CIDR or an IP")))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks_take_cidrs_and_bare_addresses() {
        let s: Source =
            serde_yaml_ng::from_str("ipBlocks: [10.0.0.0/8, 10.1.2.3, 'fd00::1']").unwrap();
        let blocks: Vec<String> = s.ip_blocks.unwrap().iter().map(|b| b.to_string()).collect();
        assert_eq!(blocks, ["10.0.0.0/8", "10.1.2.3/32", "fd00::1/128"]);
        assert!(serde_yaml_ng::from_str::<Source>("ipBlocks: [nope]").is_err());
    }

    #[test]
    fn fields_the_l4_proxy_cannot_see_are_refused() {
        let l7 =
            "name: p\nnamespace: n\naction: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]";
        let err = serde_yaml_ng::from_str::<AuthorizationPolicy>(l7).unwrap_err();
        assert!(err.to_string().contains("methods"), "{err}");
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

/// Destination ports, as strings as in Istio.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub selector: Option<WorkloadSelector>,
    pub mtls: PeerMtls,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    pub mode: MtlsMode,
}

/// `STRICT` refuses plaintext inbound; `PERMISSIVE` (the default) takes both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
}
