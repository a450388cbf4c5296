//! The HTTP side: checking the bearer token, routing the paths kube-rs uses to discovery,
//! get, list and watch, and logging every request (`crate::serve` accepts the connections).

use super::resources::{self, Rid};
use super::status::ApiError;
use super::{Body, RequestRecord, Shared, list, param, watch};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;

/// One request: answered, and logged.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let query: Vec<(String, String)> = (req.uri().query())
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let watch = watch::is_true(param(&query, "watch")).unwrap_or(false);
    let response = match answer(&req, &query, watch, &shared) {
        Ok(response) => response,
        Err(e) => json(e.code, &e.status()),
    };
    shared.log(RequestRecord {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query,
        watch,
        status: response.status().as_u16(),
    });
    Ok(response)
}

/// The paths served.
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Collection(Rid, Option<String>),
    Object(Rid, Option<String>, String),
}

fn answer(
    req: &Request<Incoming>,
    q: &[(String, String)],
    watch: bool,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, ApiError> {
    if !authorized(req, &shared.token) {
        return Err(ApiError::unauthorized());
    }
    let route = route(req.uri().path()).ok_or_else(ApiError::no_such_path)?;
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let store = shared.store();
    let installed = |rid: Rid| {
        store
            .installed
            .contains(rid)
            .then_some(rid)
            .ok_or_else(ApiError::no_such_path)
    };
    let doc = match route {
        Route::Version => resources::version(),
        Route::CoreVersions => store.installed.core_versions(&shared.addr.to_string()),
        Route::Groups => store.installed.groups(),
        Route::Group(g) => store
            .installed
            .group(&g)
            .ok_or_else(ApiError::no_such_path)?,
        Route::Resources(g, v) => store
            .installed
            .resources(&g, &v)
            .ok_or_else(ApiError::no_such_path)?,
        Route::Collection(rid, ns) if watch => {
            let request = watch::parse(installed(rid)?, ns.as_deref(), q)?;
            drop(store);
            let mut response = Response::new(watch::stream(shared.clone(), request));
            let json = header::HeaderValue::from_static("application/json");
            response.headers_mut().insert(header::CONTENT_TYPE, json);
            return Ok(response);
        }
        Route::Collection(rid, ns) => list::list(&store, installed(rid)?, ns.as_deref(), q)?,
        Route::Object(rid, ns, name) => list::get(&store, installed(rid)?, ns.as_deref(), &name)?,
    };
    Ok(json(200, &doc))
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    value.and_then(|v| v.strip_prefix("Bearer ")) == Some(token)
}

/// `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods/{name}`, `/apis/{g}/{v}/...`, discovery.
fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["api", v] => return Some(Route::Resources(String::new(), v.to_string())),
        ["apis", g, v] => return Some(Route::Resources(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let rid = |plural: &str, namespaced: bool| {
        Rid::by_path(group, version, plural).filter(|r| r.res().namespaced == namespaced)
    };
    let named = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(match rest {
        [plural] => {
            let rid = Rid::by_path(group, version, plural)?;
            Route::Collection(rid, None)
        }
        [plural, name] => Route::Object(rid(plural, false)?, None, named(name)?),
        ["namespaces", ns, plural] => Route::Collection(rid(plural, true)?, Some(named(ns)?)),
        ["namespaces", ns, plural, name] => {
            Route::Object(rid(plural, true)?, Some(named(ns)?), named(name)?)
        }
        _ => return None,
    })
}

fn json(code: u16, doc: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(doc.to_string())).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_like_the_real_server() {
        let object = |p: &str| match route(p) {
            Some(Route::Object(rid, ns, name)) => Some((rid.res().plural, ns, name)),
            _ => None,
        };
        let collection = |p: &str| match route(p) {
            Some(Route::Collection(rid, ns)) => Some((rid.res().plural, ns)),
            _ => None,
        };
        assert_eq!(collection("/api/v1/pods"), Some(("pods", None)));
        assert_eq!(
            collection("/api/v1/namespaces/shop/pods"),
            Some(("pods", Some("shop".into())))
        );
        assert_eq!(
            object("/api/v1/namespaces/shop"),
            Some(("namespaces", None, "shop".into()))
        );
        assert_eq!(
            object("/api/v1/namespaces/shop/services/api"),
            Some(("services", Some("shop".into()), "api".into()))
        );
        assert_eq!(
            collection("/apis/sluice.dev/v1alpha1/namespaces/a/httproutes").map(|c| c.0),
            Some("httproutes")
        );
        assert!(route("/api/v1/pods/web").is_none(), "pods are namespaced");
        assert!(
            route("/api/v1/namespaces/shop/namespaces").is_none(),
            "namespaces are not"
        );
        assert!(route("/api/v1/namespaces/a/pods/b/status").is_none());
        assert!(route("/api/v1/widgets").is_none());
        assert!(route("/healthz").is_none());
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1"),
            Some(Route::Resources(..))
        ));
    }
}
