//! `GET` of one object or a collection, with the real server's list semantics: selectors,
//! `resourceVersion`/`resourceVersionMatch`, and `limit` + `continue` pages that all come
//! from one snapshot (the continue token carries its resource version and the last key),
//! expiring with 410 once that snapshot is compacted away.

use super::param;
use super::resources::Rid;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{Key, Store};
use serde_json::{Value, json};

type Query = [(String, String)];

/// `GET .../{plural}/{name}`.
pub fn get(
    store: &Store,
    rid: Rid,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let key = (
        rid,
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    );
    store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rid.res(), name))
}

/// `GET .../{plural}`: a `{Kind}List`.
pub fn list(
    store: &Store,
    rid: Rid,
    namespace: Option<&str>,
    q: &Query,
) -> Result<Value, ApiError> {
    let res = rid.res();
    let selector = Selector::parse(res, param(q, "labelSelector"), param(q, "fieldSelector"))
        .map_err(ApiError::bad_request)?;
    let limit = match param(q, "limit").filter(|l| !l.is_empty()) {
        None => 0,
        Some(l) => (l.parse::<usize>())
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let (at, after) = match param(q, "continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if param(q, "resourceVersion").is_some_and(|v| !v.is_empty()) {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, ns, name) = decode(token)?;
            (rv, Some((ns, name)))
        }
        None => (read_at(store, q)?, None),
    };
    let objects = store.snapshot(rid, at)?;
    let matching: Vec<(&Key, &Value)> = (objects.iter())
        .filter(|(k, _)| namespace.is_none_or(|ns| k.1 == ns))
        .filter(|(k, _)| {
            after
                .as_ref()
                .is_none_or(|(ns, name)| (&k.1, &k.2) > (ns, name))
        })
        .filter(|(_, obj)| selector.matches(obj))
        .collect();
    let page = if limit > 0 {
        &matching[..limit.min(matching.len())]
    } else {
        &matching[..]
    };
    let mut metadata = json!({"resourceVersion": at.to_string()});
    let rest = matching.len() - page.len();
    if let (true, Some((last, _))) = (rest > 0, page.last()) {
        metadata["continue"] = json!(encode(at, &last.1, &last.2));
        if selector.is_empty() {
            metadata["remainingItemCount"] = json!(rest);
        }
    }
    // The real server leaves apiVersion and kind out of the items of built-in lists.
    let items: Vec<Value> = (page.iter())
        .map(|(_, obj)| {
            let mut item = (*obj).clone();
            if let (false, Some(o)) = (res.custom, item.as_object_mut()) {
                o.remove("apiVersion");
                o.remove("kind");
            }
            item
        })
        .collect();
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// Which resource version a first page is read at.
fn read_at(store: &Store, q: &Query) -> Result<u64, ApiError> {
    let rv = param(q, "resourceVersion").filter(|v| !v.is_empty());
    let rv_match = param(q, "resourceVersionMatch").filter(|v| !v.is_empty());
    let Some(rv) = rv else {
        if rv_match.is_some() {
            let why = "resourceVersionMatch is forbidden unless resourceVersion is provided";
            return Err(ApiError::bad_request(why));
        }
        return Ok(store.rv());
    };
    let n: u64 = (rv.parse())
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
    if n > store.rv() {
        return Err(ApiError::too_large(n, store.rv()));
    }
    match rv_match {
        // "Not older than": the newest state is never older.
        None | Some("NotOlderThan") => Ok(store.rv()),
        Some("Exact") if n == 0 => Err(ApiError::bad_request(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
        )),
        Some("Exact") if n < store.floor() => Err(ApiError::too_old(n, store.floor())),
        Some("Exact") => Ok(n),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported resourceVersionMatch {other:?}: Exact or NotOlderThan"
        ))),
    }
}

/// The continue token: opaque to clients, a snapshot's resource version and the last key
/// returned to us.
fn encode(rv: u64, namespace: &str, name: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": namespace, "name": name});
    token
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode(token: &str) -> Result<(u64, String, String), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(invalid("not hex"));
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid("not hex"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    let text = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    match (
        text("v").as_deref(),
        v.get("rv").and_then(Value::as_u64),
        text("ns"),
        text("name"),
    ) {
        (Some("meta.k8s.io/v1"), Some(rv), Some(ns), Some(name)) => Ok((rv, ns, name)),
        _ => Err(invalid("unknown fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(list: &Value) -> Vec<String> {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    #[test]
    fn pages_come_from_one_snapshot() {
        let pods = Rid::by_kind("Pod").unwrap();
        let mut store = Store::new();
        for name in ["a", "b", "c"] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}});
            store.put(pods, pod).unwrap();
        }
        let first = list(&store, pods, Some("ns"), &q(&[("limit", "2")])).unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first["metadata"]["remainingItemCount"], 1);
        assert!(
            first["items"][0].get("kind").is_none(),
            "built-in list items carry no kind"
        );
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        store.remove(&(pods, "ns".into(), "c".into())).unwrap();
        let second = list(
            &store,
            pods,
            Some("ns"),
            &q(&[("limit", "2"), ("continue", &token)]),
        )
        .unwrap();
        assert_eq!(names(&second), ["c"], "the snapshot still holds c");
        assert_eq!(
            second["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        assert!(second["metadata"].get("continue").is_none());
        let bad = list(
            &store,
            pods,
            None,
            &q(&[("continue", &token), ("resourceVersion", "3")]),
        );
        assert_eq!(bad.err().map(|e| e.code), Some(400));
        store.compact();
        let gone = list(&store, pods, Some("ns"), &q(&[("continue", &token)]));
        assert_eq!(
            gone.err().map(|e| (e.code, e.reason)),
            Some((410, "Expired"))
        );
        assert_eq!(
            list(&store, pods, None, &q(&[("continue", "zz")]))
                .err()
                .map(|e| e.code),
            Some(400)
        );
    }

    #[test]
    fn resource_versions_are_checked() {
        let pods = Rid::by_kind("Pod").unwrap();
        let store = Store::new();
        let code =
            |pairs: &[(&str, &str)]| list(&store, pods, None, &q(pairs)).err().map(|e| e.code);
        assert_eq!(code(&[("resourceVersion", "0")]), None);
        assert_eq!(
            code(&[("resourceVersion", "1"), ("resourceVersionMatch", "Exact")]),
            None
        );
        assert_eq!(
            code(&[
                ("resourceVersion", "9"),
                ("resourceVersionMatch", "NotOlderThan")
            ]),
            Some(504)
        );
        assert_eq!(code(&[("resourceVersionMatch", "Exact")]), Some(400));
        assert_eq!(
            code(&[("resourceVersion", "0"), ("resourceVersionMatch", "Exact")]),
            Some(400)
        );
        assert_eq!(code(&[("resourceVersion", "x")]), Some(400));
        assert_eq!(code(&[("fieldSelector", "spec.foo=x")]), Some(400));
    }
}
