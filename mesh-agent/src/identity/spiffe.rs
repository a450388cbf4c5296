//! SPIFFE IDs of Kubernetes workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The ID is what a peer's certificate proves (its only URI SAN), so parsing is strict: one
//! accepted spelling per identity, lest two strings name the same workload and an exact
//! comparison be fooled. The rules are the SPIFFE spec's (lower-case trust domain of
//! `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment, no port,
//! user info, query or fragment) plus Istio's `/ns/<ns>/sa/<sa>` path shape.
use std::{fmt, str::FromStr};

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec's limits.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload identity. Built from parts with [`SpiffeId::new`] or checked with
/// [`SpiffeId::parse`]; displays as the URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with {SCHEME}")]
    Scheme(String),
    #[error("{0:?} is longer than the {MAX_ID_LEN} bytes a SPIFFE ID may have")]
    TooLong(String),
    #[error(
        "trust domain {0:?} is not valid: 1 to {MAX_TRUST_DOMAIN_LEN} characters of [a-z0-9._-]"
    )]
    TrustDomain(String),
    #[error("{0:?} is not a workload ID: the path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("{id:?}: {segment:?} is not a valid path segment ([A-Za-z0-9._-], not . or ..)")]
    Segment { id: String, segment: String },
}

impl SpiffeId {
    /// The ID of a service account. The parts are not checked here (Kubernetes names always
    /// pass); the CA checks the ID before it signs it, see `LocalCa::issue`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`, rejecting every other form.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.into()));
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(id.into()))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        validate_trust_domain(trust_domain)?;
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            if !valid_segment(segment) {
                return Err(SpiffeIdError::Segment {
                    id: id.into(),
                    segment: (*segment).into(),
                });
            }
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                Ok(Self::new(trust_domain, *namespace, *service_account))
            }
            _ => Err(SpiffeIdError::Path(id.into())),
        }
    }

    /// Istio's principal (what AuthorizationPolicy `principals` match): the ID without the
    /// scheme, `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::parse(id)
    }
}

/// A trust domain as the SPIFFE spec allows it (lower case: the spec says to normalise to it,
/// and accepting both would make two spellings of one domain).
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    let valid_char = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_');
    if trust_domain.is_empty()
        || trust_domain.len() > MAX_TRUST_DOMAIN_LEN
        || !trust_domain.chars().all(valid_char)
    {
        return Err(SpiffeIdError::TrustDomain(trust_domain.into()));
    }
    Ok(())
}

fn valid_segment(segment: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    !segment.is_empty() && segment != "." && segment != ".." && segment.chars().all(valid_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_a_workload_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "default", "sleep"));
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(
            "spiffe://td/ns/a/sa/b"
                .parse::<SpiffeId>()
                .unwrap()
                .namespace(),
            "a"
        );
    }

    #[test]
    fn rejects_every_other_spelling() {
        let scheme = [
            "",
            "https://td/ns/a/sa/b",
            "SPIFFE://td/ns/a/sa/b",
            "spiffe:/td",
        ];
        for id in scheme {
            assert_eq!(SpiffeId::parse(id), Err(SpiffeIdError::Scheme(id.into())));
        }
        let domain = [
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://td:443/ns/a/sa/b",
            "spiffe://user@td/ns/a/sa/b",
        ];
        for id in domain {
            assert!(
                matches!(SpiffeId::parse(id), Err(SpiffeIdError::TrustDomain(_))),
                "{id}"
            );
        }
        let segment = [
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b#f",
            "spiffe://td/ns/a%2f/sa/b",
            "spiffe://td",
        ];
        for id in segment {
            assert!(
                matches!(SpiffeId::parse(id), Err(SpiffeIdError::Segment { .. })),
                "{id}"
            );
        }
        let path = [
            "spiffe://td/ns/a/sa",
            "spiffe://td/sa/b/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/a",
        ];
        for id in path {
            assert_eq!(
                SpiffeId::parse(id),
                Err(SpiffeIdError::Path(id.into())),
                "{id}"
            );
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(MAX_ID_LEN));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong(_))
        ));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = SpiffeId::parse("spiffe://td/ns/a").unwrap_err().to_string();
        assert!(
            err.contains("/ns/<namespace>/sa/<service-account>"),
            "{err}"
        );
        let err = validate_trust_domain("Cluster.Local")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Cluster.Local\""), "{err}");
        assert!(validate_trust_domain(&"a".repeat(256)).is_err());
        assert!(validate_trust_domain("cluster.local").is_ok());
    }
}
