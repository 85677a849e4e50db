//! PersistentVolumeClaims as a cluster shows them: the node's default StorageClass
//! (`local-path`, bound when the first Pod uses a claim, as on kind or k3s), and for each claim a
//! Pod uses, the PersistentVolume the node provisions for it (the claim's directory on this
//! node) bound to the claim, so `kubectl get pvc,pv` and clients that check them see `Bound`
//! with a capacity and access modes. A deleted claim's volume is deleted with it (reclaim
//! policy `Delete`).
//!
//! [`binding`] computes the writes without I/O; [`bind`] applies them.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::Path;

/// The provisioner the node's StorageClass names.
pub const PROVISIONER: &str = "agent-sandbox/local-path";
/// The node's default StorageClass.
pub const DEFAULT_CLASS: &str = "local-path";
/// The annotation that marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// The node's default StorageClass.
pub fn default_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// Creates the default StorageClass unless a class of that name exists (an operator's edits
/// are kept).
pub async fn ensure_default_class(client: &kube::Client) -> Result<(), kube::Error> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let class: StorageClass =
        serde_json::from_value(default_class()).map_err(kube::Error::SerdeError)?;
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The PersistentVolume name of a claim, as dynamic provisioning names it.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// What binding a claim writes: the PersistentVolume, its status, and the claim's update and
/// status. `None` when the claim is bound already or is being deleted.
pub struct Binding {
    /// The volume to create.
    pub volume: Value,
    /// The claim's metadata and `spec.volumeName` (a merge patch).
    pub claim: Value,
    /// The claim's status (a merge patch).
    pub claim_status: Value,
}

/// The writes that bind `claim` to a volume at `path` on `node`.
pub fn binding(claim: &Value, node: &str, path: &Path) -> Option<Binding> {
    let meta = &claim["metadata"];
    let uid = meta["uid"].as_str()?;
    if claim.pointer("/status/phase") == Some(&json!("Bound"))
        || !meta["deletionTimestamp"].is_null()
    {
        return None;
    }
    let name = volume_name(uid);
    let spec = &claim["spec"];
    let access_modes = match &spec["accessModes"] {
        Value::Array(a) if !a.is_empty() => Value::Array(a.clone()),
        _ => json!(["ReadWriteOnce"]),
    };
    // A directory has no size of its own: the claim's request is what is reported.
    let storage = spec
        .pointer("/resources/requests/storage")
        .cloned()
        .unwrap_or(json!("0"));
    let class = spec["storageClassName"].as_str().unwrap_or("");
    let volume = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": class,
            "volumeMode": "Filesystem",
            "hostPath": {"path": path.display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"], "name": meta["name"], "uid": uid,
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]},
            ]}]}},
        },
    });
    let claim_patch = json!({
        "metadata": {"annotations": {
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes",
            "volume.kubernetes.io/selected-node": node,
            "volume.kubernetes.io/storage-provisioner": PROVISIONER,
        }},
        "spec": {"volumeName": name},
    });
    let claim_status = json!({"status": {
        "phase": "Bound",
        "accessModes": access_modes,
        "capacity": {"storage": storage},
    }});
    Some(Binding {
        volume,
        claim: claim_patch,
        claim_status,
    })
}

/// Binds claim `namespace/name` to a volume at `path` on `node` unless it is bound already;
/// a claim that does not exist is left to the Pod's own errors.
pub async fn bind(
    client: &kube::Client,
    node: &str,
    namespace: &str,
    name: &str,
    path: &Path,
) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(claim) = claims.get_opt(name).await? else {
        return Ok(());
    };
    let claim = serde_json::to_value(&claim).map_err(kube::Error::SerdeError)?;
    let Some(b) = binding(&claim, node, path) else {
        return Ok(());
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume: PersistentVolume =
        serde_json::from_value(b.volume.clone()).map_err(kube::Error::SerdeError)?;
    let volume_name = volume.metadata.name.clone().unwrap_or_default();
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let pp = PatchParams::default();
    volumes
        .patch_status(
            &volume_name,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
    claims.patch(name, &pp, &Patch::Merge(&b.claim)).await?;
    claims
        .patch_status(name, &pp, &Patch::Merge(&b.claim_status))
        .await?;
    Ok(())
}

/// After claim `uid` was deleted: its volume goes too (reclaim policy `Delete`). Whether the
/// directory may be removed is the caller's decision (no sandbox may still use it).
pub async fn release(client: &kube::Client, claim_uid: &str) -> Result<(), kube::Error> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    match volumes
        .delete(&volume_name(claim_uid), &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// How often, and how many times, a deleted claim's directory is tried again while a sandbox
/// (a Pod still stopping) uses it.
const RECLAIM_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
const RECLAIM_TRIES: u32 = 60;

/// Whether a sandbox on this node mounts claim `namespace/name`.
fn in_use(engine: &crate::SandboxEngine, namespace: &str, name: &str) -> bool {
    engine.list().iter().any(|id| {
        engine.spec(id).is_ok_and(|spec| {
            spec.namespace == namespace
                && std::iter::once(&spec.main)
                    .chain(&spec.containers)
                    .chain(&spec.init_containers)
                    .flat_map(|c| &c.volumes)
                    .any(|v| matches!(&v.source, crate::spec::VolumeSource::Pvc { claim } if claim == name))
        })
    })
}

/// Watches claims until the task is dropped: a deleted claim's volume is deleted, and its
/// directory removed once no sandbox uses it and no new claim of the same name took it over.
pub async fn reclaim_deleted(client: kube::Client, engine: std::sync::Arc<crate::SandboxEngine>) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let stream = watcher::watcher(claims, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let claim = match event {
            Ok(Event::Delete(c)) => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "claim watch failed; retrying");
                continue;
            }
        };
        let (Some(ns), Some(name), Some(uid)) = (
            claim.metadata.namespace.clone(),
            claim.metadata.name.clone(),
            claim.metadata.uid.clone(),
        ) else {
            continue;
        };
        let (client, engine) = (client.clone(), std::sync::Arc::clone(&engine));
        tokio::spawn(async move {
            if let Err(e) = release(&client, &uid).await {
                tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "deleting the claim's volume failed");
            }
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, &ns);
            for _ in 0..RECLAIM_TRIES {
                if matches!(claims.get_opt(&name).await, Ok(Some(_))) {
                    return; // A new claim of that name owns the directory now.
                }
                if !in_use(&engine, &ns, &name) {
                    let dir = engine.pvc_dir(&ns, &name);
                    let removed =
                        tokio::task::spawn_blocking(move || match fs_err::remove_dir_all(&dir) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                            _ => Ok(()),
                        })
                        .await;
                    if let Ok(Err(e)) = removed {
                        tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "removing the claim's directory failed");
                    }
                    return;
                }
                tokio::time::sleep(RECLAIM_RETRY).await;
            }
            tracing::warn!(claim = %format!("{ns}/{name}"), "the claim's directory is still in use; left in place");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Value {
        json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn a_pending_claim_gets_a_bound_volume_of_its_request() {
        let b = binding(&claim(), "vm", Path::new("/var/lib/x/pvc/default/data")).unwrap();
        assert_eq!(b.volume["metadata"]["name"], "pvc-u1");
        assert_eq!(b.volume["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(b.volume["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(b.volume["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(b.volume["spec"]["storageClassName"], "local-path");
        assert_eq!(b.volume["spec"]["claimRef"]["uid"], "u1");
        assert_eq!(
            b.volume["spec"]["hostPath"]["path"],
            "/var/lib/x/pvc/default/data"
        );
        assert_eq!(b.claim["spec"]["volumeName"], "pvc-u1");
        assert_eq!(
            b.claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            "vm"
        );
        assert_eq!(
            b.claim_status,
            json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"}}})
        );
        // The volume deserializes as the typed object the API server checks it against.
        let _: PersistentVolume = serde_json::from_value(b.volume).unwrap();
    }

    #[test]
    fn bound_or_deleted_claims_are_left_alone() {
        let mut bound = claim();
        bound["status"]["phase"] = json!("Bound");
        assert!(binding(&bound, "vm", Path::new("/x")).is_none());
        let mut gone = claim();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(binding(&gone, "vm", Path::new("/x")).is_none());
        // No access modes or request: ReadWriteOnce and 0.
        let bare = json!({"metadata": {"name": "d", "namespace": "n", "uid": "u"}, "spec": {}});
        let b = binding(&bare, "vm", Path::new("/x")).unwrap();
        assert_eq!(b.volume["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(b.volume["spec"]["capacity"]["storage"], "0");
    }
}
