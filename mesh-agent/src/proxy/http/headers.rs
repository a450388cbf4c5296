//! Headers the proxy owns: hop-by-hop ones (RFC 9110 §7.6.1) are dropped between hops, and
//! every request leaves with an `x-request-id` and a W3C `traceparent` whose span is this
//! proxy's hop.
use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, those `Connection` names included; keeps `te: trailers`,
/// which gRPC needs end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    let trailers_only = (headers.get_all(header::TE).iter()).all(|v| v.as_bytes() == b"trailers");
    if !trailers_only {
        headers.remove(header::TE);
    }
}

/// The trace this request belongs to and the proxy's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    /// The caller's span, when the request came with a `traceparent`.
    pub parent_id: Option<String>,
    pub sampled: bool,
}

/// Sets `x-request-id` (kept when present) and `traceparent` (a child span of the caller's,
/// or a new trace, recorded with probability `sampling` when a collector is configured),
/// and returns both.
pub fn tag(
    headers: &mut HeaderMap,
    rng: &mut fastrand::Rng,
    sampling: Option<f64>,
) -> (String, TraceContext) {
    let request_id = match headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => {
            let id = uuid(rng);
            headers.insert(REQUEST_ID, header_value(&id));
            id
        }
    };
    let incoming = (headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok())).and_then(parse);
    let trace = match incoming {
        Some((trace_id, parent_id, sampled)) => TraceContext {
            trace_id,
            span_id: hex(rng.u64(1..)),
            parent_id: Some(parent_id),
            sampled,
        },
        None => TraceContext {
            trace_id: format!("{}{}", hex(rng.u64(1..)), hex(rng.u64(..))),
            span_id: hex(rng.u64(1..)),
            parent_id: None,
            // Without a collector the proxy records nothing and leaves the choice to the apps.
            sampled: sampling.is_none_or(|rate| crate::otlp::should_sample(None, rate, rng)),
        },
    };
    let flags = if trace.sampled { "01" } else { "00" };
    let value = format!("00-{}-{}-{flags}", trace.trace_id, trace.span_id);
    headers.insert(TRACEPARENT, header_value(&value));
    (request_id, trace)
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, neither id all zeros; other versions are read the same
/// way, as the spec asks, when their first four fields have this shape.
fn parse(value: &str) -> Option<(String, String, bool)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = lower_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    valid.then(|| (trace.to_owned(), parent.to_owned(), sampled))
}

fn hex(n: u64) -> String {
    format!("{n:016x}")
}

/// A random (version 4) UUID.
fn uuid(rng: &mut fastrand::Rng) -> String {
    let (a, b) = (rng.u64(..), rng.u64(..));
    let a = (a & !0xf000) | 0x4000;
    let b = (b & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn header_value(s: &str) -> HeaderValue {
    // Only hex digits and dashes, or a value that came in as a valid header.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_continued_with_a_new_span() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, HeaderValue::from_static(parent));
        let (_, trace) = tag(&mut h, &mut rng, None);
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        let sent = h[&TRACEPARENT].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
        assert!(sent.ends_with("-01"));
    }

    #[test]
    fn a_missing_or_broken_traceparent_starts_a_trace() {
        let mut rng = fastrand::Rng::with_seed(2);
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("junk"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(bad) = bad {
                h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            }
            let (id, trace) = tag(&mut h, &mut rng, None);
            assert_eq!(trace.parent_id, None);
            assert_eq!(trace.trace_id.len(), 32);
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(h[&REQUEST_ID].to_str().unwrap(), id);
            assert!(parse(h[&TRACEPARENT].to_str().unwrap()).is_some());
        }
    }

    #[test]
    fn a_request_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(tag(&mut h, &mut fastrand::Rng::with_seed(3), None).0, "abc");
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
    }
}
