//! HTTP routes in the config, field for field the Gateway API `HTTPRoute` as the GAMMA mesh
//! profile uses it (a `Service` as parent), with the resource's `metadata` name and namespace
//! beside its `spec` fields, so the Kubernetes source can read the real resource into them.
//!
//! What the proxy cannot honour is refused when the config is read (filters, regular
//! expressions, hostnames): a route that silently ignored a match would send requests where
//! its author did not mean them to go.
use std::time::Duration;

use schemars::JsonSchema;

use super::service::Service;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

fn default_namespace() -> String {
    "default".into()
}

/// The service whose traffic the route takes; `port` narrows it to one service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<u16>,
}

/// Filters are refused (the proxy cannot apply them), so the CRDs' schema refuses them too:
/// the API server rejects such a route when it is applied instead of storing it unused.
fn no_filters(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 0,
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

fn service_kind() -> String {
    "Service".into()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    /// Any one matching selects the rule; none: every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    #[schemars(schema_with = "no_filters")]
    pub filters: Vec<serde_yaml_ng::Value>,
    /// Where matching requests go, split by weight; none: the parent service itself.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
    pub retry: Option<HttpRouteRetry>,
}

/// Every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<HttpQueryParamMatch>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "root")]
    pub value: String,
}

fn root() -> String {
    "/".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpQueryParamMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A service (in the route's namespace unless given) that takes `weight` parts of the
/// rule's requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    #[schemars(schema_with = "no_filters")]
    pub filters: Vec<serde_yaml_ng::Value>,
}

fn one() -> u32 {
    1
}

/// `request`: the client's whole request, retries included (504 past it);
/// `backendRequest`: each attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub request: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub backend_request: Option<Duration>,
}

/// Retried on these response codes and on connect failures, `attempts` more times at most,
/// `backoff` apart (growing, jittered).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    #[serde(default)]
    pub codes: Vec<u16>,
    pub attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub backoff: Option<Duration>,
}

impl HttpRoute {
    /// Refuses what the proxy would otherwise ignore.
    /// Every parent and backend is a service in `services`, with the port named.
    pub fn check_refs(&self, services: &[Service]) -> Result<(), String> {
        let parents = (self.parent_refs.iter()).map(|p| (&p.name, &p.namespace, p.port));
        let backends = (self.rules.iter())
            .flat_map(|rule| rule.backend_refs.iter())
            .map(|b| (&b.name, &b.namespace, b.port));
        for (name, namespace, port) in parents.chain(backends) {
            let namespace = namespace.as_ref().unwrap_or(&self.namespace);
            let service = (services.iter())
                .find(|s| &s.name == name && &s.namespace == namespace)
                .ok_or_else(|| format!("no service {namespace}/{name}"))?;
            if let Some(port) = port
                && !service.ports.iter().any(|p| p.port == port)
            {
                return Err(format!("service {namespace}/{name} has no port {port}"));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        let who = format!("httpRoutes: {}/{}", self.namespace, self.name);
        if self.parent_refs.is_empty() {
            return Err(format!("{who}: parentRefs must name a service"));
        }
        if let Some(p) = self
            .parent_refs
            .iter()
            .find(|p| !is_service(&p.group, &p.kind))
        {
            return Err(format!(
                "{who}: parentRefs: {} is a {:?}; only core Services are parents in the mesh",
                p.name, p.kind
            ));
        }
        if !self.hostnames.is_empty() {
            return Err(format!(
                "{who}: hostnames are not used with a Service parent; remove them"
            ));
        }
        for rule in &self.rules {
            if !rule.filters.is_empty() || rule.backend_refs.iter().any(|b| !b.filters.is_empty()) {
                return Err(format!("{who}: filters are not supported"));
            }
            if let Some(b) = rule
                .backend_refs
                .iter()
                .find(|b| !is_service(&b.group, &b.kind))
            {
                return Err(format!(
                    "{who}: backendRefs: {} is not a core Service",
                    b.name
                ));
            }
            for m in &rule.matches {
                let regex = m.path.as_ref().map(|p| p.kind)
                    == Some(PathMatchType::RegularExpression)
                    || m.headers
                        .iter()
                        .any(|h| h.kind == ValueMatchType::RegularExpression)
                    || m.query_params
                        .iter()
                        .any(|q| q.kind == ValueMatchType::RegularExpression);
                if regex {
                    return Err(format!(
                        "{who}: RegularExpression matches are not supported"
                    ));
                }
                if let Some(path) = &m.path
                    && !path.value.starts_with('/')
                {
                    return Err(format!("{who}: path {:?} must start with '/'", path.value));
                }
            }
            if let Some(attempts) = rule.retry.as_ref().and_then(|r| r.attempts)
                && attempts > 10
            {
                return Err(format!("{who}: retry: at most 10 attempts"));
            }
            if rule
                .retry
                .iter()
                .flat_map(|r| &r.codes)
                .any(|c| !(100..600).contains(c))
            {
                return Err(format!("{who}: retry: codes must be HTTP status codes"));
            }
        }
        Ok(())
    }
}

fn is_service(group: &str, kind: &str) -> bool {
    group.is_empty() && kind == "Service"
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "
name: web-canary
parentRefs: [{name: web, port: 80}]
rules:
- matches:
  - path: {type: PathPrefix, value: /api}
    method: GET
    headers: [{name: x-canary, value: '1'}]
  backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
  timeouts: {request: 2s, backendRequest: 500ms}
  retry: {attempts: 2, backoff: 25ms, codes: [503]}
";

    #[test]
    fn reads_the_gateway_api_shape() {
        let r: HttpRoute = serde_yaml_ng::from_str(CANARY).unwrap();
        r.validate().unwrap();
        let rule = &r.rules[0];
        assert_eq!(r.parent_refs[0].kind, "Service");
        assert_eq!(
            rule.matches[0].path.as_ref().unwrap().kind,
            PathMatchType::PathPrefix
        );
        assert_eq!(rule.backend_refs[1].weight, 10);
        let t = rule.timeouts.as_ref().unwrap();
        assert_eq!(t.backend_request, Some(Duration::from_millis(500)));
        assert_eq!(rule.retry.as_ref().unwrap().codes, [503]);
    }

    #[test]
    fn what_the_proxy_cannot_honour_is_refused() {
        let refused = |patch: &str| {
            let yaml = format!("name: r\nparentRefs: [{{name: web}}]\n{patch}");
            let r: HttpRoute = serde_yaml_ng::from_str(&yaml).unwrap();
            r.validate().unwrap_err()
        };
        assert!(refused("hostnames: [a.example]").contains("hostnames"));
        assert!(refused("rules: [{filters: [{type: RequestHeaderModifier}]}]").contains("filters"));
        let regex = "rules: [{matches: [{path: {type: RegularExpression, value: /a.*}}]}]";
        assert!(refused(regex).contains("RegularExpression"));
        let gateway =
            "name: r\nparentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]";
        let r: HttpRoute = serde_yaml_ng::from_str(gateway).unwrap();
        assert!(r.validate().unwrap_err().contains("Gateway"));
    }
}
