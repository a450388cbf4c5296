//! One reflector per watched resource: a local cache the API server's list and watch keep
//! current, and a note of how fresh each cache is for `/config_dump`.
//!
//! kube-rs's watcher relists after a `410 Gone`, resumes from bookmarks, and backs off
//! while the API server is away; its store swaps in a relist's result only once the list
//! is complete. So a lost API server leaves every cache as it was: the configuration in
//! force stays, and the status says how long ago each cache last heard from the server.
use std::{fmt::Debug, hash::Hash, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::status::SourceStatus;

/// Starts reflectors that share one client, change notification and status.
pub struct Watching {
    client: Client,
    changed: Arc<Notify>,
    status: SourceStatus,
}

impl Watching {
    pub fn new(client: &Client, changed: &Arc<Notify>, status: &SourceStatus) -> Self {
        Self {
            client: client.clone(),
            changed: changed.clone(),
            status: status.clone(),
        }
    }

    /// A cluster-wide reflector of a built-in type.
    pub fn typed<K>(&self, name: &'static str, config: watcher::Config) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    {
        let api = Api::<K>::all(self.client.clone());
        reflect(
            name,
            api,
            config,
            (),
            self.changed.clone(),
            self.status.clone(),
        )
    }

    /// A cluster-wide reflector of a custom resource, kept untyped.
    pub fn dynamic(&self, name: &'static str, resource: ApiResource) -> Store<DynamicObject> {
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
        let config = watcher::Config::default();
        reflect(
            name,
            api,
            config,
            resource,
            self.changed.clone(),
            self.status.clone(),
        )
    }
}

/// Starts a reflector for `api` narrowed by `config`; `changed` is notified after every
/// event that can change the cache.
fn reflect<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    changed: Arc<Notify>,
    status: SourceStatus,
) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    status.register(name);
    tokio::spawn(async move {
        // managedFields are most of an object's size and nothing the agent reads.
        let events = watcher(api, config).modify(|o| o.meta_mut().managed_fields = None);
        let mut events = std::pin::pin!(reflector::reflector(writer, events).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let done = matches!(event, watcher::Event::InitDone);
                    status.heard(name, done);
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        changed.notify_one();
                    }
                    if done {
                        info!(resource = name, "listed");
                    }
                }
                Err(error) => {
                    warn!(resource = name, %error, "watch failed; retrying with backoff, keeping what is cached");
                    status.failed(name, &error.to_string());
                }
            }
        }
    });
    store
}
