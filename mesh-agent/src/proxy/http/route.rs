//! Which rule takes a request, and which of its weighted backends serves it.
use hyper::http::request::Parts;

use crate::{
    config::route::{HttpRouteMatch, PathMatchType},
    state::{Backend, Frontend, RouteRule},
};

/// Where one request goes.
pub enum Selected<'a> {
    /// The service port itself: it has no routes.
    Service,
    Rule(&'a RouteRule, &'a Backend),
    /// Routes exist and none matches: 404, as Gateway API says.
    NoRoute,
}

pub fn select<'a>(frontend: &'a Frontend, req: &Parts, rng: &mut fastrand::Rng) -> Selected<'a> {
    if frontend.rules.is_empty() {
        return Selected::Service;
    }
    let Some(rule) = frontend.rules.iter().find(|r| matches(&r.matched, req)) else {
        return Selected::NoRoute;
    };
    match weighted(&rule.backends, rng) {
        Some(backend) => Selected::Rule(rule, backend),
        None => Selected::NoRoute,
    }
}

fn matches(m: &HttpRouteMatch, req: &Parts) -> bool {
    let path = req.uri.path();
    let path_ok = m.path.as_ref().is_none_or(|p| match p.kind {
        PathMatchType::Exact => path == p.value,
        // A prefix matches whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
        _ => {
            let prefix = p.value.trim_end_matches('/');
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
        }
    });
    let method_ok = m
        .method
        .as_ref()
        .is_none_or(|method| req.method.as_str() == method);
    let headers_ok = m.headers.iter().all(|h| {
        req.headers
            .get_all(h.name.as_str())
            .iter()
            .any(|v| v.as_bytes() == h.value.as_bytes())
    });
    let query_ok = m.query_params.iter().all(|q| {
        let query = req.uri.query().unwrap_or("");
        query.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == q.name && value == q.value
        })
    });
    path_ok && method_ok && headers_ok && query_ok
}

/// A backend with probability weight / total; weight 0 takes nothing.
fn weighted<'a>(backends: &'a [Backend], rng: &mut fastrand::Rng) -> Option<&'a Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.u64(0..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if ticket < w {
            true
        } else {
            ticket -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::{HttpHeaderMatch, HttpPathMatch, ValueMatchType};

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn prefix(value: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(HttpPathMatch {
                kind: PathMatchType::PathPrefix,
                value: value.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(matches(&prefix("/api"), &req("GET", "/api", &[])));
        assert!(matches(&prefix("/api/"), &req("GET", "/api/x?y=1", &[])));
        assert!(!matches(&prefix("/api"), &req("GET", "/apix", &[])));
        assert!(matches(&prefix("/"), &req("GET", "/anything", &[])));
    }

    #[test]
    fn method_headers_and_query_must_all_match() {
        let m = HttpRouteMatch {
            method: Some("POST".into()),
            headers: vec![HttpHeaderMatch {
                kind: ValueMatchType::Exact,
                name: "x-canary".into(),
                value: "1".into(),
            }],
            ..Default::default()
        };
        assert!(matches(&m, &req("POST", "/", &[("x-canary", "1")])));
        assert!(!matches(&m, &req("GET", "/", &[("x-canary", "1")])));
        assert!(!matches(&m, &req("POST", "/", &[("x-canary", "2")])));
    }
}
