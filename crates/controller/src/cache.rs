//! The shared informer cache: one watch per kind feeding a reflector store, the in-memory indexes
//! that replace controller-runtime's field indexers (pods by sandbox-name-hash, sandboxes by
//! warm-pool label, pools by template, claims by pool), and the change hooks that turn watch
//! events into reconcile triggers.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;

/// An index from `(namespace, value)` to object names, maintained from watch events.
#[derive(Debug, Default)]
pub struct Index {
    inner: RwLock<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    by_value: HashMap<(String, String), BTreeSet<String>>,
    by_obj: HashMap<(String, String), String>,
}

impl Index {
    /// Sets (or clears, with `None`) the indexed value of `namespace/name`.
    pub fn set(&self, namespace: &str, name: &str, value: Option<&str>) {
        let mut g = self.inner.write();
        let obj = (namespace.to_string(), name.to_string());
        if let Some(old) = g.by_obj.remove(&obj) {
            let k = (namespace.to_string(), old);
            if let Some(set) = g.by_value.get_mut(&k) {
                set.remove(name);
                if set.is_empty() {
                    g.by_value.remove(&k);
                }
            }
        }
        if let Some(v) = value {
            g.by_value
                .entry((namespace.to_string(), v.to_string()))
                .or_default()
                .insert(name.to_string());
            g.by_obj.insert(obj, v.to_string());
        }
    }

    /// Names of the objects in `namespace` indexed under `value`.
    pub fn get(&self, namespace: &str, value: &str) -> Vec<String> {
        self.inner
            .read()
            .by_value
            .get(&(namespace.to_string(), value.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Empties the index.
    pub fn clear(&self) {
        let mut g = self.inner.write();
        g.by_value.clear();
        g.by_obj.clear();
    }
}

/// A change seen by an informer, after the store was updated.
#[derive(Debug)]
pub enum Change<K> {
    /// Created (old is `None`) or updated.
    Applied {
        /// The previous cached version.
        old: Option<Arc<K>>,
        /// The new cached version.
        new: Arc<K>,
    },
    /// Deleted (also reported for objects that vanished across a relist).
    Deleted(Arc<K>),
}

/// The trait bound of cached kinds.
pub trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}
impl<K> Cached for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// A cached kind: its store and writer, before the informer runs.
pub struct Informer<K: Cached> {
    /// Reader of the cache.
    pub store: Store<K>,
    writer: Writer<K>,
}

impl<K: Cached> Default for Informer<K> {
    fn default() -> Self {
        let writer = Writer::default();
        Self {
            store: writer.as_reader(),
            writer,
        }
    }
}

/// Looks an object up in a store by namespace and name.
pub fn get<K: Cached>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    store.get(&ObjectRef::new(name).within(namespace))
}

impl<K: Cached> Informer<K> {
    /// Runs the watch forever, applying events to the store and calling `hook` for each change.
    /// Objects are reported after the initial list (and after every relist) as a whole, with
    /// deletions for objects that disappeared in between.
    pub async fn run(
        self,
        client: Client,
        namespace: Option<String>,
        mut hook: impl FnMut(Change<K>) + Send,
    ) {
        let api: Api<K> = match &namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let Informer { store, mut writer } = self;
        let mut events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        let mut before_relist: Vec<Arc<K>> = Vec::new();
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying");
                    continue;
                }
            };
            match &ev {
                watcher::Event::Apply(obj) => {
                    let r = ObjectRef::from_obj(obj);
                    let old = store.get(&r);
                    writer.apply_watcher_event(&ev);
                    if let Some(new) = store.get(&r) {
                        hook(Change::Applied { old, new });
                    }
                }
                watcher::Event::Delete(obj) => {
                    writer.apply_watcher_event(&ev);
                    hook(Change::Deleted(Arc::new(obj.clone())));
                }
                watcher::Event::Init => {
                    before_relist = store.state();
                    writer.apply_watcher_event(&ev);
                }
                watcher::Event::InitApply(_) => writer.apply_watcher_event(&ev),
                watcher::Event::InitDone => {
                    writer.apply_watcher_event(&ev);
                    let mut old: HashMap<(String, String), Arc<K>> = before_relist
                        .drain(..)
                        .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
                        .collect();
                    for new in store.state() {
                        let key = (new.namespace().unwrap_or_default(), new.name_any());
                        let prev = old.remove(&key);
                        hook(Change::Applied { old: prev, new });
                    }
                    for gone in old.into_values() {
                        hook(Change::Deleted(gone));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_moves_and_clears() {
        let i = Index::default();
        i.set("ns", "a", Some("h1"));
        i.set("ns", "b", Some("h1"));
        i.set("other", "c", Some("h1"));
        assert_eq!(i.get("ns", "h1"), ["a", "b"]);
        i.set("ns", "a", Some("h2"));
        assert_eq!(i.get("ns", "h1"), ["b"]);
        assert_eq!(i.get("ns", "h2"), ["a"]);
        i.set("ns", "b", None);
        assert!(i.get("ns", "h1").is_empty());
        assert_eq!(i.get("other", "h1"), ["c"]);
        i.clear();
        assert!(i.get("other", "h1").is_empty());
    }
}
