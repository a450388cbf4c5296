//! Label and field selectors with the real server's grammar and semantics, applied to lists
//! and to watches (where an object crossing a selector's edge becomes ADDED or DELETED).

use super::resources::Resource;
use serde_json::Value;

/// Both selectors of one request; empty matches everything.
#[derive(Debug, Default)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<FieldTerm>,
}

#[derive(Debug, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug)]
struct FieldTerm {
    field: String,
    value: String,
    equal: bool,
}

impl Selector {
    /// Parses `labelSelector` and `fieldSelector`; the error is the 400 message.
    pub fn parse(
        res: &Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Selector, String> {
        Ok(Selector {
            labels: parse_labels(labels.unwrap_or(""))?,
            fields: parse_fields(res, fields.unwrap_or(""))?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|r| {
            let v = label(&r.key);
            match &r.op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| set.iter().all(|s| s != v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        });
        labels_match
            && (self.fields.iter()).all(|t| (field_value(obj, &t.field) == t.value) == t.equal)
    }
}

/// A field's value as the real server's field sets give it: strings as they are, a missing
/// field as `""` (`spec.hostNetwork` as `false`).
fn field_value(obj: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

fn parse_fields(res: &Resource, text: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(format!(
                "invalid selector: '{text}'; can't understand '{term}'"
            ));
        };
        let field = field.trim();
        if !res.supports_field(field) {
            return Err(format!("field label not supported: {field}"));
        }
        let value = value.trim().to_string();
        terms.push(FieldTerm {
            field: field.into(),
            value,
            equal,
        });
    }
    Ok(terms)
}

#[derive(Debug, PartialEq)]
enum Tok {
    Id(String),
    Not,
    Eq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

/// The tokens of a label selector, reversed so `pop` takes the next.
fn tokens(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let tok = match c {
            c if c.is_whitespace() => continue,
            '!' if chars.next_if_eq(&'=').is_some() => Tok::NotEq,
            '!' => Tok::Not,
            '=' => {
                chars.next_if_eq(&'=');
                Tok::Eq
            }
            '>' => Tok::Gt,
            '<' => Tok::Lt,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            c => {
                let mut id = String::from(c);
                while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"!=<>(),".contains(*c))
                {
                    id.push(c);
                }
                Tok::Id(id)
            }
        };
        out.push(tok);
    }
    out.push(Tok::End);
    out.reverse();
    out
}

fn parse_labels(text: &str) -> Result<Vec<Requirement>, String> {
    let mut toks = tokens(text);
    let mut reqs = Vec::new();
    if toks.last() == Some(&Tok::End) {
        return Ok(reqs);
    }
    loop {
        reqs.push(requirement(&mut toks)?);
        match toks.pop() {
            Some(Tok::Comma) => continue,
            Some(Tok::End) | None => return Ok(reqs),
            Some(t) => return Err(unexpected(&t, "',' or 'end of string'")),
        }
    }
}

fn unexpected(tok: &Tok, expected: &str) -> String {
    format!("unable to parse requirement: found '{tok:?}', expected: {expected}")
}

fn requirement(toks: &mut Vec<Tok>) -> Result<Requirement, String> {
    let (negated, key) = match toks.pop() {
        Some(Tok::Not) => match toks.pop() {
            Some(Tok::Id(key)) => (true, key),
            Some(t) => return Err(unexpected(&t, "identifier after '!'")),
            None => return Err(unexpected(&Tok::End, "identifier after '!'")),
        },
        Some(Tok::Id(key)) => (false, key),
        Some(t) => return Err(unexpected(&t, "'!' or identifier")),
        None => return Err(unexpected(&Tok::End, "'!' or identifier")),
    };
    check_key(&key)?;
    if negated {
        return Ok(Requirement {
            key,
            op: Op::NotExists,
        });
    }
    let op = match toks.pop() {
        Some(t @ (Tok::Comma | Tok::End)) => {
            toks.push(t);
            Op::Exists
        }
        Some(Tok::Eq) => Op::Eq(value(toks)?),
        Some(Tok::NotEq) => Op::NotEq(value(toks)?),
        Some(t @ (Tok::Gt | Tok::Lt)) => {
            let v = value(toks)?;
            let n = v.parse().map_err(|_| {
                format!("for 'Gt', 'Lt' operators, the value must be an integer, got {v:?}")
            })?;
            if t == Tok::Gt { Op::Gt(n) } else { Op::Lt(n) }
        }
        Some(Tok::Id(word)) if word == "in" => Op::In(set(toks)?),
        Some(Tok::Id(word)) if word == "notin" => Op::NotIn(set(toks)?),
        Some(t) => return Err(unexpected(&t, "'=', '!=', '==', 'in', 'notin', ',' or end")),
        None => Op::Exists,
    };
    Ok(Requirement { key, op })
}

/// One value after `=`: it may be empty (`tier=` matches an empty label).
fn value(toks: &mut Vec<Tok>) -> Result<String, String> {
    match toks.pop() {
        Some(Tok::Id(v)) => check_value(v),
        Some(t @ (Tok::Comma | Tok::End)) => {
            toks.push(t);
            Ok(String::new())
        }
        Some(t) => Err(unexpected(&t, "a value")),
        None => Ok(String::new()),
    }
}

fn set(toks: &mut Vec<Tok>) -> Result<Vec<String>, String> {
    match toks.pop() {
        Some(Tok::Open) => {}
        Some(t) => return Err(unexpected(&t, "'('")),
        None => return Err(unexpected(&Tok::End, "'('")),
    }
    let mut values = Vec::new();
    loop {
        match toks.pop() {
            Some(Tok::Id(v)) => values.push(check_value(v)?),
            Some(Tok::Comma) => continue,
            Some(Tok::Close) => break,
            Some(t) => return Err(unexpected(&t, "a value, ',' or ')'")),
            None => return Err(unexpected(&Tok::End, "')'")),
        }
    }
    if values.is_empty() {
        return Err("for 'in', 'notin' operators, values set can't be empty".into());
    }
    Ok(values)
}

/// A qualified name, optionally with a DNS prefix: `app`, `app.kubernetes.io/name`.
fn check_key(key: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if name.is_empty()
        || name.len() > 63
        || !ok(name)
        || !key.split('/').all(|p| !p.is_empty() && ok(p))
    {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn check_value(v: String) -> Result<String, String> {
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_api::resources::Rid;
    use serde_json::json;

    fn pod(labels: Value, node: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "shop", "labels": labels}, "spec": {"nodeName": node}})
    }

    fn sel(labels: &str, fields: &str) -> Result<Selector, String> {
        let pods = Rid::by_kind("Pod").map_err(|e| e.to_string())?.res();
        Selector::parse(pods, Some(labels), Some(fields))
    }

    #[test]
    fn label_operators_match_like_the_real_server() {
        let web = pod(
            json!({"app": "web", "tier": "front", "rank": "7"}),
            "node-a",
        );
        let bare = pod(json!({}), "node-a");
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app in (web, api)", true, false),
            ("app notin (api)", true, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,tier=front", true, false),
            ("app=web, !tier", false, false),
            ("rank>5,rank<8", true, false),
            ("tier=", false, false),
            ("", true, true),
        ];
        for (text, on_web, on_bare) in cases {
            let s = sel(text, "").unwrap();
            assert_eq!(
                (s.matches(&web), s.matches(&bare)),
                (on_web, on_bare),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for bad in [
            "app in ()",
            "app in web",
            "=web",
            "app=web)",
            "a b",
            "!",
            "app=we b",
            "app=(x)",
        ] {
            assert!(sel(bad, "").is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn field_selectors_support_what_the_resource_supports() {
        let p = pod(json!({}), "node-a");
        assert!(sel("", "spec.nodeName=node-a").unwrap().matches(&p));
        assert!(!sel("", "spec.nodeName!=node-a").unwrap().matches(&p));
        assert!(
            sel("", "metadata.name==p,metadata.namespace=shop")
                .unwrap()
                .matches(&p)
        );
        assert!(sel("", "spec.hostNetwork=false").unwrap().matches(&p));
        assert!(sel("", "status.podIP=").unwrap().matches(&p));
        let err = sel("", "spec.containers=x").unwrap_err();
        assert_eq!(err, "field label not supported: spec.containers");
        assert!(sel("", "spec.nodeName").is_err());
        let ns = Rid::by_kind("Namespace").unwrap().res();
        assert!(Selector::parse(ns, None, Some("spec.nodeName=x")).is_err());
    }
}
