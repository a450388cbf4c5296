//! What `/config_dump` shows of the Kubernetes source: how fresh each watched resource's
//! cache is, the objects left out and why, and the enrolled pods not yet found on the node.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::assemble::Rejected;

/// Shared by the source's tasks and the admin endpoint; cheap to clone.
#[derive(Clone, Default)]
pub struct SourceStatus(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    resources: BTreeMap<&'static str, ResourceStatus>,
    rejected: Vec<Rejected>,
    waiting: Vec<Waiting>,
}

#[derive(Clone, Default)]
struct ResourceStatus {
    listed: bool,
    last_event: Option<SystemTime>,
    /// Set by the first failure after an event, cleared by the next event.
    failing_since: Option<SystemTime>,
    last_error: Option<String>,
    errors: u64,
}

/// An enrolled pod of this node that is not captured yet, and what is missing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waiting {
    pub pod: String,
    pub reason: String,
}

/// The whole of `/config_dump`'s `source` section.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    pub source: &'static str,
    pub resources: Vec<ResourceView>,
    pub rejected: Vec<Rejected>,
    pub waiting_pods: Vec<Waiting>,
}

/// One watched resource.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub resource: &'static str,
    /// The first complete list has arrived.
    pub listed: bool,
    /// Seconds since the last list or watch event (kube-rs consumes bookmarks, so a quiet
    /// resource grows old here while its watch is fine).
    pub seconds_since_event: Option<f64>,
    /// Seconds the watch has been failing with no event since: how stale the cache may
    /// be. Absent while it works.
    pub failing_for_seconds: Option<f64>,
    pub watch_errors: u64,
    pub last_error: Option<String>,
}

impl SourceStatus {
    fn with(&self, name: &'static str, f: impl FnOnce(&mut ResourceStatus)) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(inner.resources.entry(name).or_default());
    }

    pub(super) fn register(&self, name: &'static str) {
        self.with(name, |_| {});
    }

    pub(super) fn heard(&self, name: &'static str, listed: bool) {
        self.with(name, |s| {
            s.last_event = Some(SystemTime::now());
            s.failing_since = None;
            s.listed |= listed;
        });
    }

    pub(super) fn failed(&self, name: &'static str, error: &str) {
        self.with(name, |s| {
            s.errors += 1;
            s.failing_since.get_or_insert_with(SystemTime::now);
            s.last_error = Some(error.to_owned());
        });
    }

    /// Replaces the last rebuild's report; returns the rejections that are new.
    pub(super) fn report(&self, rejected: Vec<Rejected>, waiting: Vec<Waiting>) -> Vec<Rejected> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let new = (rejected.iter())
            .filter(|r| !inner.rejected.contains(r))
            .cloned()
            .collect();
        inner.rejected = rejected;
        inner.waiting = waiting;
        new
    }

    pub fn view(&self) -> SourceView {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let resources = (inner.resources.iter())
            .map(|(name, s)| ResourceView {
                resource: name,
                listed: s.listed,
                seconds_since_event: s.last_event.map(seconds_since),
                failing_for_seconds: s.failing_since.map(seconds_since),
                watch_errors: s.errors,
                last_error: s.last_error.clone(),
            })
            .collect();
        SourceView {
            source: "kubernetes",
            resources,
            rejected: inner.rejected.clone(),
            waiting_pods: inner.waiting.clone(),
        }
    }
}

fn seconds_since(t: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
