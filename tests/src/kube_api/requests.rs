//! The request log: what clients did, so tests can check e.g. that a client listed again
//! after a 410.

/// One request as the server saw it, so tests can check what a client did (e.g. that it
/// listed again after a 410).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// `watch=1` or `watch=true`.
    pub watch: bool,
    /// The HTTP status answered (a watch is 200 even when its one event is an ERROR).
    pub status: u16,
}

impl RequestRecord {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.query, name)
    }

    /// A list (a `GET` of a collection, not a watch) of `plural`, e.g. `pods`, in any
    /// namespace or all of them.
    pub fn is_list_of(&self, plural: &str) -> bool {
        self.method == "GET" && !self.watch && self.collection() == Some(plural)
    }

    /// A watch of `plural`, e.g. `pods`, in any namespace or all of them.
    pub fn is_watch_of(&self, plural: &str) -> bool {
        self.method == "GET" && self.watch && self.collection() == Some(plural)
    }

    /// The plural a collection path ends with: `/api/v1/pods`, `/api/v1/namespaces/shop/pods`,
    /// `/apis/{group}/{version}/[namespaces/{ns}/]{plural}`.
    fn collection(&self) -> Option<&str> {
        let segs: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => match rest {
                [plural] | ["namespaces", _, plural] => Some(*plural),
                _ => None,
            },
            _ => None,
        }
    }
}

pub(super) fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
