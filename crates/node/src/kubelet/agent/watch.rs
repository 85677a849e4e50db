//! What the agent keeps current by watching: ConfigMaps and Secrets (a cache for volume
//! refreshes), NetworkPolicies and Namespaces (for the firewall).

use super::*;

/// The ConfigMaps and Secrets of every namespace, kept current by two watches that
/// [`NodeAgent::run`] starts (kubelet's watch strategy): the volume refresh of every sync reads
/// them here instead of through the API. An object the cache has not seen is read through the
/// API, so one created just before its Pod is never missed.
pub(super) struct DataCache {
    config_maps: reflector::Store<ConfigMap>,
    secrets: reflector::Store<Secret>,
    /// The stores' writers, until `run` gives them to the watches.
    pub(super) writers: Mutex<
        Option<(
            reflector::store::Writer<ConfigMap>,
            reflector::store::Writer<Secret>,
        )>,
    >,
}

impl DataCache {
    pub(super) fn new() -> Self {
        let (config_maps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        DataCache {
            config_maps,
            secrets,
            writers: Mutex::new(Some((cm_writer, secret_writer))),
        }
    }

    /// The cached data of `kind` `ns/name`, if the cache holds it.
    pub(super) fn get(&self, kind: DataKind, ns: &str, name: &str) -> Option<crate::refs::Data> {
        match kind {
            DataKind::ConfigMap => self
                .config_maps
                .get(&reflector::ObjectRef::new(name).within(ns))
                .map(|c| crate::refs::config_map_data(&c)),
            DataKind::Secret => self
                .secrets
                .get(&reflector::ObjectRef::new(name).within(ns))
                .map(|s| crate::refs::secret_data(&s)),
        }
    }
}

/// Feed a reflector store from a watch of every `K` until the task is dropped.
pub(super) async fn keep_cached<K>(api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
        }
    }
}

impl NodeAgent {
    /// Keeps the enforcer's NetworkPolicies current.
    pub(super) async fn watch_policies(self: Arc<Self>, enf: Arc<PolicyEnforcer>) {
        let api: Api<NetworkPolicy> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relist: Vec<NetworkPolicy> = Vec::new();
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Init) => {
                    relist.clear();
                    false
                }
                Ok(Event::InitApply(np)) => {
                    relist.push(np);
                    false
                }
                Ok(Event::InitDone) => {
                    enf.replace_policies(std::mem::take(&mut relist));
                    true
                }
                Ok(Event::Apply(np)) => enf.set_policy(np),
                Ok(Event::Delete(np)) => enf.remove_policy(
                    np.metadata.namespace.as_deref().unwrap_or("default"),
                    np.metadata.name.as_deref().unwrap_or_default(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "NetworkPolicy watch failed; retrying");
                    false
                }
            };
            if changed {
                self.resync_firewall();
            }
        }
    }

    /// Keeps the enforcer's namespace labels current (for namespaceSelector peers).
    pub(super) async fn watch_namespaces(self: Arc<Self>, enf: Arc<PolicyEnforcer>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Apply(ns) | Event::InitApply(ns)) => enf.set_namespace(
                    ns.metadata.name.as_deref().unwrap_or_default(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                ),
                Ok(Event::Delete(ns)) => {
                    enf.remove_namespace(ns.metadata.name.as_deref().unwrap_or_default())
                }
                Ok(Event::Init | Event::InitDone) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "Namespace watch failed; retrying");
                    false
                }
            };
            if changed {
                self.resync_firewall();
            }
        }
    }

    /// The ConfigMaps and Secrets named in `refs`, in the Pod's namespace (absent ones recorded
    /// as absent); with `cached`, those the [`DataCache`] holds are taken from it, the others
    /// read through the API. The error says which read failed.
    pub(super) async fn fetch(
        &self,
        pod: &Pod,
        refs: std::collections::BTreeSet<(DataKind, String)>,
        cached: bool,
    ) -> Result<Sources, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut sources = Sources::new(ns);
        for (kind, name) in refs {
            if cached && let Some(data) = self.data_cache.get(kind, ns, &name) {
                sources.insert(kind, name, Some(data));
                continue;
            }
            let data = match kind {
                DataKind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .map(|o| o.as_ref().map(crate::refs::config_map_data)),
                DataKind::Secret => Api::<Secret>::namespaced(self.client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .map(|o| o.as_ref().map(crate::refs::secret_data)),
            }
            .map_err(|e| format!("reading {} {ns}/{name}: {e}", kind.word()))?;
            sources.insert(kind, name, data);
        }
        Ok(sources)
    }
}
