//! `?watch=1`: a chunked stream of newline-delimited JSON events, as the real server's watch
//! cache sends them: the recorded changes after the requested resource version, then live
//! ones, bookmarks when asked for, and a single `ERROR` event (410 Expired) when the
//! requested version was compacted away. An object that stops matching the selectors is sent
//! as DELETED, one that starts matching as ADDED.

use super::resources::Rid;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{Change, Store};
use super::{Body, Shared, param};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;

/// What the real server does when `timeoutSeconds` is absent (it picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The annotation that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

#[derive(Debug)]
pub struct WatchRequest {
    rid: Rid,
    namespace: Option<String>,
    selector: Selector,
    start: Start,
    bookmarks: bool,
    timeout: Duration,
}

#[derive(Debug)]
enum Start {
    /// `resourceVersion` unset or `0`, or a streaming list: from the current state, first as
    /// synthetic ADDED events when `initial`, then a bookmark marking their end when
    /// `end_marker`. The state must be at least `not_older_than`.
    Now {
        initial: bool,
        end_marker: bool,
        not_older_than: u64,
    },
    /// Every change after this resource version.
    After(u64),
}

pub fn is_true(v: Option<&str>) -> Option<bool> {
    v.map(|v| matches!(v, "true" | "1" | "True"))
}

/// Reads and checks a watch request's parameters; the error is the HTTP answer.
pub fn parse(
    rid: Rid,
    namespace: Option<&str>,
    q: &[(String, String)],
) -> Result<WatchRequest, ApiError> {
    let selector = Selector::parse(
        rid.res(),
        param(q, "labelSelector"),
        param(q, "fieldSelector"),
    )
    .map_err(ApiError::bad_request)?;
    let bookmarks = is_true(param(q, "allowWatchBookmarks")).unwrap_or(false);
    let timeout = match param(q, "timeoutSeconds").filter(|t| !t.is_empty()) {
        None => DEFAULT_TIMEOUT,
        Some(t) => Duration::from_secs(
            (t.parse())
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
    };
    let rv = match param(q, "resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {v:?}")))?,
        ),
    };
    let rv_match = param(q, "resourceVersionMatch").filter(|v| !v.is_empty());
    let start = match is_true(param(q, "sendInitialEvents")) {
        Some(send_initial) => {
            if rv_match != Some("NotOlderThan") {
                let why = "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan";
                return Err(ApiError::bad_request(why));
            }
            if !bookmarks {
                let why = "sendInitialEvents requires setting allowWatchBookmarks to true";
                return Err(ApiError::bad_request(why));
            }
            match (send_initial, rv) {
                (true, _) | (false, None | Some(0)) => Start::Now {
                    initial: send_initial,
                    end_marker: send_initial,
                    not_older_than: rv.unwrap_or(0),
                },
                (false, Some(n)) => Start::After(n),
            }
        }
        None if rv_match.is_some() => {
            let why =
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided";
            return Err(ApiError::bad_request(why));
        }
        None => match rv {
            None | Some(0) => Start::Now {
                initial: true,
                end_marker: false,
                not_older_than: 0,
            },
            Some(n) => Start::After(n),
        },
    };
    let namespace = namespace.map(str::to_string);
    Ok(WatchRequest {
        rid,
        namespace,
        selector,
        start,
        bookmarks,
        timeout,
    })
}

/// The response body; a task on the server's runtime feeds it until the timeout, the
/// client going away, or the server stopping (which drops the task with the runtime).
pub fn stream(shared: Arc<Shared>, req: WatchRequest) -> Body {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(shared, req, tx));
    StreamBody::new(ReceiverStream::new(rx)).boxed_unsync()
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn run(shared: Arc<Shared>, req: WatchRequest, tx: Tx) {
    let deadline = Instant::now() + req.timeout;
    // Subscribed before the store is read, so no change falls between the two.
    let mut changed = shared.changed.subscribe();
    let (events, mut pos, open) = begin(&shared.store(), &req);
    if !send(&tx, events).await || !open {
        return;
    }
    let mut last_bookmark = Instant::now();
    loop {
        let next_bookmark = last_bookmark + shared.bookmark_interval();
        let bookmark_due = tokio::select! {
            _ = sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = sleep_until(next_bookmark), if req.bookmarks => true,
            woke = changed.changed() => match woke {
                Ok(()) => false,
                Err(_) => return,
            },
        };
        let (mut events, open) = drain(&shared.store(), &req, &mut pos, true);
        if bookmark_due && open {
            // Every change up to `pos` was sent (or filtered out) above.
            events.push(bookmark(&req, pos, false));
            last_bookmark = Instant::now();
        }
        if !send(&tx, events).await || !open {
            return;
        }
    }
}

/// The first events and the resource version they bring the client to; `false` when the
/// stream ends after them.
fn begin(store: &Store, req: &WatchRequest) -> (Vec<Value>, u64, bool) {
    if !store.installed.contains(req.rid) {
        return (Vec::new(), store.rv(), false);
    }
    match req.start {
        Start::Now { not_older_than, .. } | Start::After(not_older_than)
            if not_older_than > store.rv() =>
        {
            let error = ApiError::too_large(not_older_than, store.rv());
            (vec![error_event(&error)], store.rv(), false)
        }
        Start::Now {
            initial,
            end_marker,
            ..
        } => {
            let mut events = Vec::new();
            if initial {
                let objects = store.snapshot(req.rid, store.rv()).unwrap_or_default();
                let wanted = (objects.iter())
                    .filter(|(k, obj)| in_scope(req, &k.1) && req.selector.matches(obj));
                events.extend(wanted.map(|(_, obj)| json!({"type": "ADDED", "object": obj})));
            }
            if end_marker {
                events.push(bookmark(req, store.rv(), true));
            }
            (events, store.rv(), true)
        }
        Start::After(rv) => {
            let mut pos = rv;
            let (events, open) = drain(store, req, &mut pos, false);
            (events, pos, open)
        }
    }
}

/// The events of every change after `pos`, moving `pos` to the current resource version;
/// `false` when the stream must end (the history no longer reaches back to `pos`, or the CRD
/// was removed). `live`: the watch is already open (see [`Store::changes_after`]).
fn drain(store: &Store, req: &WatchRequest, pos: &mut u64, live: bool) -> (Vec<Value>, bool) {
    match store.changes_after(*pos, live) {
        Err(e) => (vec![error_event(&e)], false),
        Ok(changes) => {
            let events = changes.filter_map(|c| event(req, c)).collect();
            *pos = store.rv();
            // A removed CRD's objects are seen going, then its watches end.
            (events, store.installed.contains(req.rid))
        }
    }
}

fn in_scope(req: &WatchRequest, namespace: &str) -> bool {
    req.namespace.as_deref().is_none_or(|ns| ns == namespace)
}

/// What one change looks like through this watch's selectors (the watch cache's rule).
fn event(req: &WatchRequest, change: &Change) -> Option<Value> {
    if change.key.0 != req.rid || !in_scope(req, &change.key.1) {
        return None;
    }
    let now = change.obj.as_ref().filter(|o| req.selector.matches(o));
    let before = change.prev.as_ref().filter(|o| req.selector.matches(o));
    let (kind, object) = match (now, before) {
        (Some(obj), None) => ("ADDED", obj.clone()),
        (Some(obj), Some(_)) => ("MODIFIED", obj.clone()),
        (None, Some(prev)) => {
            // The last state it matched in, at the version of the change that ended it.
            let mut gone = prev.clone();
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            ("DELETED", gone)
        }
        (None, None) => return None,
    };
    Some(json!({"type": kind, "object": object}))
}

fn bookmark(req: &WatchRequest, rv: u64, initial_events_end: bool) -> Value {
    let res = req.rid.res();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let object = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": metadata});
    json!({"type": "BOOKMARK", "object": object})
}

fn error_event(error: &ApiError) -> Value {
    json!({"type": "ERROR", "object": error.status()})
}

/// Sends events, one line each; `false` once the client is gone.
async fn send(tx: &Tx, events: Vec<Value>) -> bool {
    for event in events {
        let line = Bytes::from(format!("{event}\n"));
        if tx.send(Ok(Frame::data(line))).await.is_err() {
            return false;
        }
    }
    true
}
