//! Rules compiled once per config version, so that checking a connection is string
//! comparisons and integer tests, with no parsing on the connection path.
//!
//! Two choices follow Istio rather than the letter of the types:
//! - an empty list (`principals: []`) counts as absent, as in Istio's protobuf, where a
//!   repeated field has no presence. Reading it as "matches nothing" would make a `DENY`
//!   written that way deny nothing.
//! - `*` alone requires a value (Istio's presence match): `principals: ["*"]` means "any
//!   mTLS peer", so it never matches a plaintext connection.
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::policy::{Operation, PolicyAction, Rule, Source};

/// What a rule can see of a connection, normalised once per check.
#[derive(Clone, Copy, Debug)]
pub(super) struct Facts<'a> {
    /// Istio form (`<trust domain>/ns/<ns>/sa/<sa>`); `None` for plaintext.
    pub principal: Option<&'a str>,
    /// `None` for plaintext.
    pub namespace: Option<&'a str>,
    pub ip: IpAddr,
    pub port: u16,
}

/// A principal or namespace pattern, read as Istio reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pattern {
    /// `*`: any non-empty value.
    Present,
    /// `prefix*`.
    Prefix(String),
    /// `*suffix`.
    Suffix(String),
    Exact(String),
}

impl Pattern {
    /// The same precedence as Istio's `StringMatcherWithPrefix`: `*`, then a leading `*`,
    /// then a trailing one; any other `*` is literal.
    pub(super) fn parse(text: &str) -> Self {
        if text == "*" {
            Pattern::Present
        } else if let Some(suffix) = text.strip_prefix('*') {
            Pattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = text.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else {
            Pattern::Exact(text.to_owned())
        }
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Present => !value.is_empty(),
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Pattern::Exact(exact) => value == exact,
        }
    }
}

/// True when there is a value and some pattern matches it: a plaintext peer has neither
/// principal nor namespace, so a positive field never matches it and a negative one always
/// does.
fn any_matches(patterns: &[Pattern], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

/// A present, non-empty list (see the module doc for why empty means absent).
fn present<T>(list: &Option<Vec<T>>) -> Option<&[T]> {
    list.as_deref().filter(|l| !l.is_empty())
}

fn patterns(list: &Option<Vec<String>>) -> Option<Vec<Pattern>> {
    present(list).map(|l| l.iter().map(|p| Pattern::parse(p)).collect())
}

#[derive(Clone, Debug)]
struct CompiledSource {
    principals: Option<Vec<Pattern>>,
    not_principals: Option<Vec<Pattern>>,
    namespaces: Option<Vec<Pattern>>,
    not_namespaces: Option<Vec<Pattern>>,
    ip_blocks: Option<Vec<IpNet>>,
    not_ip_blocks: Option<Vec<IpNet>>,
}

impl CompiledSource {
    fn new(source: &Source) -> Self {
        Self {
            principals: patterns(&source.principals),
            not_principals: patterns(&source.not_principals),
            namespaces: patterns(&source.namespaces),
            not_namespaces: patterns(&source.not_namespaces),
            ip_blocks: present(&source.ip_blocks).map(<[_]>::to_vec),
            not_ip_blocks: present(&source.not_ip_blocks).map(<[_]>::to_vec),
        }
    }

    /// Every present field must match.
    fn matches(&self, facts: &Facts) -> bool {
        let in_blocks = |blocks: &[IpNet]| blocks.iter().any(|b| b.contains(&facts.ip));
        self.principals
            .as_deref()
            .is_none_or(|p| any_matches(p, facts.principal))
            && self
                .not_principals
                .as_deref()
                .is_none_or(|p| !any_matches(p, facts.principal))
            && self
                .namespaces
                .as_deref()
                .is_none_or(|p| any_matches(p, facts.namespace))
            && self
                .not_namespaces
                .as_deref()
                .is_none_or(|p| !any_matches(p, facts.namespace))
            && self.ip_blocks.as_deref().is_none_or(in_blocks)
            && self.not_ip_blocks.as_deref().is_none_or(|b| !in_blocks(b))
    }
}

/// A port list. `all` is set when the list held a value that is not a port and the policy's
/// action says the unreadable value must widen what is denied (see [`CompiledOperation::new`]).
#[derive(Clone, Debug)]
struct Ports {
    ports: Vec<u16>,
    all: bool,
}

impl Ports {
    /// The config refuses such values when it is read; a `Config` built another way must
    /// still not turn a `DENY` into an allow (LESSONS: istio/istio#61126), so an unreadable
    /// port resolves toward denial: `widen` says whether it then matches every port.
    fn new(list: &Option<Vec<String>>, widen: bool) -> Option<Self> {
        let list = present(list)?;
        let mut ports = Vec::with_capacity(list.len());
        let mut all = false;
        for text in list {
            match text.parse::<u16>() {
                Ok(port) if port != 0 => ports.push(port),
                _ => {
                    tracing::warn!(port = %text, "authorization policy port is not a port number");
                    all |= widen;
                }
            }
        }
        Some(Self { ports, all })
    }

    fn contains(&self, port: u16) -> bool {
        self.all || self.ports.contains(&port)
    }
}

#[derive(Clone, Debug)]
struct CompiledOperation {
    ports: Option<Ports>,
    not_ports: Option<Ports>,
}

impl CompiledOperation {
    /// An unreadable value in `ports` matches every port in a `DENY` (it denies more) and none
    /// in an `ALLOW` (it allows less); in `notPorts` the other way round.
    fn new(op: &Operation, action: PolicyAction) -> Self {
        let deny = action == PolicyAction::Deny;
        Self {
            ports: Ports::new(&op.ports, deny),
            not_ports: Ports::new(&op.not_ports, !deny),
        }
    }

    fn matches(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(port))
            && self.not_ports.as_ref().is_none_or(|p| !p.contains(port))
    }
}

/// One rule: some `from` entry and some `to` entry must match; an empty list matches all.
#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
}

impl CompiledRule {
    pub(super) fn new(rule: &Rule, action: PolicyAction) -> Self {
        Self {
            from: rule
                .from
                .iter()
                .map(|f| CompiledSource::new(&f.source))
                .collect(),
            to: rule
                .to
                .iter()
                .map(|t| CompiledOperation::new(&t.operation, action))
                .collect(),
        }
    }

    pub(super) fn matches(&self, facts: &Facts) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(facts)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(facts.port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parse_follows_istio_precedence() {
        assert_eq!(Pattern::parse("*"), Pattern::Present);
        assert_eq!(Pattern::parse("*.local"), Pattern::Suffix(".local".into()));
        assert_eq!(Pattern::parse("td/ns/*"), Pattern::Prefix("td/ns/".into()));
        assert_eq!(Pattern::parse("a*b"), Pattern::Exact("a*b".into()));
        // A leading `*` wins; the trailing one is then literal, as in Istio.
        assert_eq!(Pattern::parse("*x*"), Pattern::Suffix("x*".into()));
    }

    #[test]
    fn pattern_matching() {
        assert!(Pattern::parse("*").matches("anything"));
        assert!(!Pattern::parse("*").matches(""));
        assert!(Pattern::parse("td/ns/a/*").matches("td/ns/a/sa/x"));
        assert!(!Pattern::parse("td/ns/a/*").matches("td/ns/b/sa/x"));
        assert!(Pattern::parse("*/sa/x").matches("td/ns/a/sa/x"));
        assert!(!Pattern::parse("*/sa/x").matches("td/ns/a/sa/y"));
        assert!(Pattern::parse("exact").matches("exact"));
        assert!(!Pattern::parse("exact").matches("exactly"));
    }

    #[test]
    fn absent_value_never_matches_a_pattern() {
        assert!(!any_matches(&[Pattern::Present], None));
        assert!(any_matches(&[Pattern::Present], Some("x")));
    }

    #[test]
    fn unreadable_ports_resolve_toward_denial() {
        let op = |ports: Option<&str>, not_ports: Option<&str>| Operation {
            ports: ports.map(|p| vec![p.to_owned()]),
            not_ports: not_ports.map(|p| vec![p.to_owned()]),
        };
        let deny = |o| CompiledOperation::new(&o, PolicyAction::Deny);
        let allow = |o| CompiledOperation::new(&o, PolicyAction::Allow);
        // `ports: [bad]`: a DENY matches every port, an ALLOW none.
        assert!(deny(op(Some("http"), None)).matches(80));
        assert!(!allow(op(Some("http"), None)).matches(80));
        // `notPorts: [bad]`: a DENY still matches, an ALLOW never does.
        assert!(deny(op(None, Some("0"))).matches(80));
        assert!(!allow(op(None, Some("0"))).matches(80));
        // Readable values are unaffected.
        assert!(allow(op(Some("80"), None)).matches(80));
        assert!(!deny(op(Some("80"), None)).matches(81));
    }
}
