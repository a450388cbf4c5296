//! The object store: every object as JSON, one global resource version, and the history of
//! changes that watches replay and consistent list pages are rebuilt from.
//!
//! Like etcd behind a real API server, each change takes the next resource version, and the
//! history can be compacted: a watch or a continue token older than the compaction is
//! answered 410 Expired, which is what makes clients list again. Watches already open keep
//! their events through a compaction, as the real watch cache keeps feeding its watchers;
//! only the history's size cap (a watcher too slow for it) can cut them off.

use super::resources::{Installed, Rid};
use super::status::ApiError;
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// Changes kept at most; older ones are dropped as a real watch cache's ring drops them.
const MAX_HISTORY: usize = 100_000;

/// Where an object lives: resource, namespace (`""` when cluster-scoped), name. Ordered as
/// etcd orders its keys, which is the order lists come in.
pub type Key = (Rid, String, String);

/// One recorded change. `prev` is the object before it (none for a creation), `obj` after
/// (none for a deletion); a watch decides from both whether its selector saw it appear,
/// change or go.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub key: Key,
    pub prev: Option<Value>,
    pub obj: Option<Value>,
}

#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Changes after this resource version are all in `history`.
    kept: u64,
    /// The compaction: new requests cannot resume from before it (at least `kept`).
    floor: u64,
    pub installed: Installed,
    uids: u64,
}

impl Store {
    pub fn new() -> Store {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            kept: 1,
            floor: 1,
            installed: Installed::default(),
            uids: 0,
        }
    }

    /// The current (latest) resource version.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resource version a watch or a continue token can resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Creates or replaces `obj` as the resource `rid`, filling what the server owns
    /// (creationTimestamp, resourceVersion, generation, and the uid unless given). An
    /// identical object is a no-op, as a real update that changes nothing takes no resource
    /// version.
    ///
    /// Unlike the real server, a uid given on creation is kept: tests lay out kubelet-shaped
    /// cgroups named after the pod's uid before its object exists. An object given with
    /// another uid than the stored one is a new object of the same name (a recreated pod):
    /// the old one is deleted, then the new one created, as the watches would see it.
    pub fn put(&mut self, rid: Rid, mut obj: Value) -> Result<()> {
        let res = rid.res();
        let meta = (obj.get_mut("metadata").and_then(Value::as_object_mut))
            .context("the object has no metadata")?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            bail!("{}: metadata.name is required", res.kind);
        }
        let namespace = if res.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let given_uid = meta
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        let key = (rid, namespace, name);
        let stored_uid = |o: &Value| {
            o.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let (Some(given), Some(old)) = (&given_uid, self.objects.get(&key))
            && stored_uid(old).as_ref() != Some(given)
        {
            self.remove(&key)?;
        }
        let prev = self.objects.get(&key).cloned();
        let (uid, created, generation, rv) = match &prev {
            Some(old) => {
                let m = |f: &str| {
                    old.pointer(&format!("/metadata/{f}"))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                let generation = m("generation").as_u64().unwrap_or(1);
                let generation = if spec_of(old) == spec_of(&obj) {
                    generation
                } else {
                    generation + 1
                };
                (
                    m("uid"),
                    m("creationTimestamp"),
                    generation,
                    m("resourceVersion"),
                )
            }
            None => {
                self.uids += 1;
                (
                    json!(given_uid.unwrap_or_else(|| uid(self.uids))),
                    json!(timestamp(SystemTime::now())),
                    1,
                    Value::Null,
                )
            }
        };
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        let meta = meta_of(&mut obj)?;
        meta.insert("uid".into(), uid);
        meta.insert("creationTimestamp".into(), created);
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), rv);
        if prev.as_ref() == Some(&obj) {
            return Ok(());
        }
        let rv = self.bump();
        meta_of(&mut obj)?.insert("resourceVersion".into(), json!(rv.to_string()));
        self.objects.insert(key.clone(), obj.clone());
        self.record(Change {
            rv,
            key,
            prev,
            obj: Some(obj),
        });
        Ok(())
    }

    /// Deletes an object; missing is an error (the test asked for something wrong).
    pub fn remove(&mut self, key: &Key) -> Result<()> {
        let Some(prev) = self.objects.remove(key) else {
            bail!("{} {}/{} does not exist", key.0.res().kind, key.1, key.2);
        };
        let rv = self.bump();
        self.record(Change {
            rv,
            key: key.clone(),
            prev: Some(prev),
            obj: None,
        });
        Ok(())
    }

    /// Deletes every object of `rid` (what removing a CRD does to its objects).
    pub fn remove_all(&mut self, rid: Rid) {
        let keys: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.0 == rid)
            .cloned()
            .collect();
        for key in keys {
            let _ = self.remove(&key);
        }
    }

    /// Compacts the history: no new request can resume from before now.
    pub fn compact(&mut self) {
        self.floor = self.rv;
    }

    /// The changes after `rv`, oldest first; 410 when some of them are gone: compacted, for
    /// a new request, or dropped from the history, for a watch already open (`live`).
    pub fn changes_after(
        &self,
        rv: u64,
        live: bool,
    ) -> Result<impl Iterator<Item = &Change>, ApiError> {
        let oldest = if live { self.kept } else { self.floor };
        if rv < oldest {
            return Err(ApiError::too_old(rv, oldest));
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(self.history.range(start..))
    }

    /// The objects of `rid` as they were at resource version `at`, in key order: the current
    /// ones with every later change undone. 410 when `at` is older than the history.
    pub fn snapshot(&self, rid: Rid, at: u64) -> Result<BTreeMap<Key, Value>, ApiError> {
        if at < self.floor {
            return Err(ApiError::continue_expired());
        }
        let mut objects: BTreeMap<Key, Value> = (self.objects.iter())
            .filter(|(k, _)| k.0 == rid)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for change in self.history.iter().rev().take_while(|c| c.rv > at) {
            if change.key.0 != rid {
                continue;
            }
            match &change.prev {
                Some(prev) => objects.insert(change.key.clone(), prev.clone()),
                None => objects.remove(&change.key),
            };
        }
        Ok(objects)
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > MAX_HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.kept = dropped.rv;
                self.floor = self.floor.max(self.kept);
            }
        }
    }
}

fn meta_of(obj: &mut Value) -> Result<&mut Map<String, Value>> {
    (obj.get_mut("metadata").and_then(Value::as_object_mut)).context("the object has no metadata")
}

/// What `metadata.generation` follows: everything but metadata and status.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// A UUID-shaped uid, distinct per object and per run.
fn uid(n: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = (u64::from(std::process::id()) << 32) ^ (nanos as u64);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (seed >> 32) as u32,
        (seed >> 16) as u16,
        (seed & 0xfff) as u16,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// RFC 3339 in UTC at second precision, as the real server writes timestamps.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(name: &str, image: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [{"image": image}]}})
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59Z"
        );
    }

    #[test]
    fn changes_take_versions_and_snapshots_undo_them() {
        let pods = Rid::by_kind("Pod").unwrap();
        let mut store = Store::new();
        store.put(pods, pod("a", "v1")).unwrap();
        let key = (pods, "default".to_string(), "a".to_string());
        let first = store.get(&key).cloned().unwrap();
        assert_eq!(first["metadata"]["resourceVersion"], "2");
        assert_eq!(first["metadata"]["generation"], 1);
        store.put(pods, pod("a", "v1")).unwrap();
        assert_eq!(store.rv(), 2, "an unchanged object takes no version");
        let mut labelled = pod("a", "v1");
        labelled["metadata"]["labels"] = json!({"x": "y"});
        store.put(pods, labelled).unwrap();
        assert_eq!(
            store.get(&key).unwrap()["metadata"]["generation"],
            1,
            "metadata only"
        );
        store.put(pods, pod("a", "v2")).unwrap();
        let now = store.get(&key).cloned().unwrap();
        assert_eq!(now["metadata"]["generation"], 2);
        assert_eq!(now["metadata"]["uid"], first["metadata"]["uid"]);
        store.put(pods, pod("b", "v1")).unwrap();
        store.remove(&key).unwrap();
        assert_eq!(store.rv(), 6);
        assert_eq!(store.snapshot(pods, 2).unwrap().get(&key), Some(&first));
        assert_eq!(store.snapshot(pods, 6).unwrap().len(), 1);
        let after = |store: &Store, rv, live| {
            store
                .changes_after(rv, live)
                .map(|c| c.map(|c| c.rv).collect::<Vec<_>>())
        };
        assert_eq!(after(&store, 4, false), Ok(vec![5, 6]));
        store.compact();
        assert_eq!(after(&store, 5, false).err().map(|e| e.code), Some(410));
        assert_eq!(
            after(&store, 5, true),
            Ok(vec![6]),
            "open watches keep their events"
        );
        assert_eq!(store.snapshot(pods, 5).err().map(|e| e.code), Some(410));
        assert_eq!(after(&store, 6, false), Ok(vec![]));
        let mut recreated = pod("b", "v1");
        recreated["metadata"]["uid"] = json!("given");
        store.put(pods, recreated).unwrap();
        let b = (pods, "default".to_string(), "b".to_string());
        assert_eq!(store.get(&b).unwrap()["metadata"]["uid"], "given");
        let kinds: Vec<bool> = store
            .changes_after(6, false)
            .unwrap()
            .map(|c| c.obj.is_some())
            .collect();
        assert_eq!(kinds, [false, true], "another uid: deleted, then created");
    }
}
