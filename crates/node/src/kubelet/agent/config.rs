//! A Pod's configuration as its containers see it: the configMap, secret, downwardAPI and
//! projected volumes, and each container's environment and command line.

use super::*;

impl NodeAgent {
    /// Write the files of the sandbox's `configMap`, `secret`, `downwardAPI` and `projected`
    /// volumes from their current sources (nothing is written when they are unchanged). Every
    /// volume that can be written is; the error is kubelet's `FailedMount` message of the
    /// first that cannot.
    pub(super) async fn refresh_volumes(
        &self,
        pod: &Pod,
        spec: &SandboxSpec,
    ) -> Result<(), String> {
        let mounted: HashSet<&str> = spec
            .all_containers()
            .flat_map(|c| c.volumes.iter())
            .filter(|v| v.source == crate::spec::VolumeSource::Projected)
            .map(|v| v.name.as_str())
            .collect();
        if mounted.is_empty() {
            return Ok(());
        }
        let volumes: Vec<k8s_openapi::api::core::v1::Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(|v| mounted.contains(v.name.as_str()))
            .cloned()
            .collect();
        // Every sync: from the watch cache.
        let sources = self
            .fetch(pod, crate::refs::volume_refs(&volumes), true)
            .await?;
        let mut first_error = None;
        for v in &volumes {
            let written =
                crate::projected::files(pod, v, &sources, &self.node_facts).and_then(|files| {
                    crate::projected::write(&self.engine.projected_dir(&spec.id, &v.name), &files)
                        .map_err(|e| e.to_string())
                });
            if let Err(m) = written {
                first_error.get_or_insert(format!(
                    "MountVolume.SetUp failed for volume {:?} : {m}",
                    v.name
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Container `name`'s environment and command line, resolved from the Pod and the
    /// ConfigMaps and Secrets it names (read now, so a restart sees their current values).
    /// `fp` is the container's field path, for events.
    pub(super) async fn process_of(
        &self,
        pod: &Pod,
        id: &str,
        name: &str,
        fp: Option<String>,
    ) -> Result<Process, NodeError> {
        let ps = pod.spec.clone().unwrap_or_default();
        let Some(c) = ps
            .containers
            .iter()
            .chain(ps.init_containers.iter().flatten())
            .find(|c| c.name == name)
        else {
            return Ok(Process::default());
        };
        let refused = |message| NodeError::Reference {
            sandbox: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            message,
        };
        let sources = self
            // At each container create: the API's current objects.
            .fetch(pod, crate::refs::container_refs(c), false)
            .await
            .map_err(refused)?;
        // A variable with the pod IP waits for the network (it is attached meanwhile).
        let ip = if crate::refs::needs_pod_ip(c) {
            self.engine.wait_pod_ip(id).await?
        } else {
            self.engine.pod_ip(id)?
        };
        let ips: Vec<String> = ip.iter().map(|ip| ip.to_string()).collect();
        let process =
            crate::env::resolve(pod, c, &sources, &ips, &self.node_facts).map_err(refused)?;
        for (source, keys) in &process.skipped {
            self.event(
                pod,
                fp.clone(),
                true,
                "InvalidEnvironmentVariableNames",
                format!(
                    "Keys [{}] from the EnvFrom {source} were skipped since they are considered invalid environment variable names.",
                    keys.join(", ")
                ),
            );
        }
        Ok(process)
    }
}
