//! Spans for the proxy's requests, exported to a trace collector over OTLP/HTTP with
//! protobuf bodies (`POST {endpoint}/v1/traces`).
//!
//! OTLP is what the OpenTelemetry Collector, Jaeger, Tempo and Zipkin-compatible backends
//! with an OTLP receiver all accept, and its HTTP flavour needs no gRPC transport: one
//! hyper client and the message types of the `opentelemetry-proto` crate. Exporting must
//! never slow a request down, so [`Exporter::export`] only puts the span on a bounded queue
//! and a background task batches and posts; when the collector is slow or down, spans are
//! dropped and counted rather than buffered without bound.
//!
//! Which requests get a span is decided by [`should_sample`], parent-based like Istio and
//! the OpenTelemetry SDKs, so a trace is either recorded at every hop or at none.
mod encode;
mod exporter;

use std::time::SystemTime;

pub use exporter::Exporter;

/// One finished request as the proxy saw it: its hop of the trace, exported as a span of
/// kind CLIENT (the proxy calls the upstream on the caller's behalf).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Exported as status ERROR; otherwise the status is left UNSET, as OpenTelemetry's
    /// conventions ask of instrumentation for successful calls.
    pub error: bool,
}

/// The attribute types the proxy records: strings (method, URL, peer) and integers (status
/// code, sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    Str(String),
    Int(i64),
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::Str(value)
    }
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        AttributeValue::Str(value.to_owned())
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

/// Parses a trace id (`N` = 16) or span id (`N` = 8) from the hex of a `traceparent`.
///
/// `None` for a wrong length, a non-hex digit, or the all-zero id, which W3C Trace Context
/// and OTLP both define as invalid (a collector would reject the span).
pub fn parse_hex_id<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut id = [0u8; N];
    for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    (id != [0u8; N]).then_some(id)
}

fn nibble(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

/// Whether this request's span is recorded.
///
/// A sampled flag from the caller's `traceparent` is honoured as it is, so every hop of one
/// trace agrees and a trace is never recorded with holes in it. A request that starts a
/// trace is sampled with probability `rate` (clamped to 0..=1; NaN samples nothing).
pub fn should_sample(incoming_sampled: Option<bool>, rate: f64, rng: &mut fastrand::Rng) -> bool {
    match incoming_sampled {
        Some(sampled) => sampled,
        None if rate >= 1.0 => true,
        None if rate > 0.0 => rng.f64() < rate,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_parse_in_either_case() {
        assert_eq!(
            parse_hex_id::<8>("00f067aa0ba902b7"),
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(
            parse_hex_id::<16>("4BF92F3577B34DA6A3CE929D0E0E4736").map(|id| id[0]),
            Some(0x4b)
        );
    }

    #[test]
    fn malformed_or_zero_hex_ids_are_refused() {
        assert_eq!(parse_hex_id::<8>("00f067aa0ba902b"), None, "too short");
        assert_eq!(parse_hex_id::<8>("00f067aa0ba902b7a"), None, "too long");
        assert_eq!(parse_hex_id::<8>("00f067aa0ba902bg"), None, "not hex");
        assert_eq!(parse_hex_id::<8>("+0f067aa0ba902b7"), None, "sign");
        assert_eq!(parse_hex_id::<8>("00f067aa0ba902é"), None, "multibyte");
        assert_eq!(parse_hex_id::<8>("0000000000000000"), None, "zero id");
        assert_eq!(parse_hex_id::<16>(""), None);
    }

    #[test]
    fn an_incoming_sampled_flag_wins_over_the_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        assert!(should_sample(Some(true), 0.0, &mut rng));
        assert!(!should_sample(Some(false), 1.0, &mut rng));
    }

    #[test]
    fn new_traces_are_sampled_at_the_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        assert!((0..1000).all(|_| should_sample(None, 1.0, &mut rng)));
        assert!((0..1000).all(|_| !should_sample(None, 0.0, &mut rng)));
        assert!((0..1000).all(|_| !should_sample(None, f64::NAN, &mut rng)));
        assert!((0..1000).all(|_| should_sample(None, 7.0, &mut rng)));
        let sampled = (0..10_000)
            .filter(|_| should_sample(None, 0.25, &mut rng))
            .count();
        assert!(
            (2200..2800).contains(&sampled),
            "{sampled} of 10000 at 0.25"
        );
    }
}
