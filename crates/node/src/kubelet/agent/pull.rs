//! Images per pull policy, with `Pulling`/`Pulled`/`Failed` events, the pull's progress in
//! the container's waiting message, and the Pod's image pull secrets.

use super::*;

impl NodeAgent {
    /// Resolve the image per pull policy, with `Pulling`/`Pulled`/`Failed` events and the pull
    /// progress in the container's waiting message. `None` when it is not available (the state
    /// says why; a retry is scheduled).
    pub(super) async fn pull(
        self: &Arc<Self>,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        image: &str,
        policy: PullPolicy,
    ) -> Option<crate::image::Image> {
        let fp = Some(field_path(role, name));
        let id = uid(pod);
        let present = self.engine.images().get(image).ok().flatten();
        let fail = |reason: &str, msg: String, this: &Arc<Self>| {
            let delay = {
                let mut r = lock(rt);
                let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                c.state = CState::Waiting {
                    reason: reason.into(),
                    message: Some(msg),
                };
                let delay = plan::error_backoff(this.config.backoff_base, this.config.backoff_max);
                c.backoff_until = Some(Instant::now() + delay);
                delay
            };
            this.trigger_after(&id, delay);
        };
        match (policy, present) {
            (PullPolicy::Never, None) => {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event(pod, fp, true, "ErrImageNeverPull", msg.clone());
                fail("ErrImageNeverPull", msg, self);
                None
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(img)) => {
                self.event(
                    pod,
                    fp,
                    false,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                Some(img)
            }
            _ => {
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                );
                let t = Instant::now();
                let progress = {
                    let this = Arc::clone(self);
                    let (rt, name, image, pod) = (
                        Arc::clone(rt),
                        name.to_string(),
                        image.to_string(),
                        pod.clone(),
                    );
                    tokio::spawn(async move {
                        // Bounded by the pull: aborted when it ends.
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let Some(p) = this.engine.images().pull_progress(&image) else {
                                continue;
                            };
                            {
                                let mut r = lock(&rt);
                                if let Some(c) = r.containers.get_mut(&name) {
                                    c.state = CState::Waiting {
                                        reason: "ContainerCreating".into(),
                                        message: Some(format!(
                                            "Pulling image \"{image}\": {} of {} blobs, {:.1} of {:.1} MB",
                                            p.blobs_done,
                                            p.blobs_total,
                                            p.bytes_done as f64 / 1e6,
                                            p.bytes_total as f64 / 1e6
                                        )),
                                    };
                                }
                            }
                            let ns = pod
                                .metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".into());
                            let api: Api<Pod> = Api::namespaced(this.client.clone(), &ns);
                            let _ = this.write_status(&pod, &api, &rt).await;
                        }
                    })
                };
                let secrets = self.pull_secrets(pod, fp.clone()).await;
                let res = self
                    .engine
                    .images()
                    .ensure_with(image, policy, &secrets)
                    .await;
                progress.abort();
                match res {
                    Ok(report) => {
                        let size: u64 = report
                            .image
                            .layers
                            .iter()
                            .map(|l| l.size.max(0) as u64)
                            .sum();
                        self.event(
                            pod,
                            fp,
                            false,
                            "Pulled",
                            format!(
                                "Successfully pulled image \"{image}\" in {:.3}s. Image size: {size} bytes.",
                                t.elapsed().as_secs_f64()
                            ),
                        );
                        Some(report.image)
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.event(
                            pod,
                            fp.clone(),
                            true,
                            "Failed",
                            format!("Failed to pull image \"{image}\": {msg}"),
                        );
                        self.event(pod, fp, true, "Failed", "Error: ErrImagePull".into());
                        fail(waiting_reason(&e), msg, self);
                        None
                    }
                }
            }
        }
    }

    /// The registry credentials of the Pod's `imagePullSecrets` (Secrets of type
    /// `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`), in order. Like kubelet,
    /// a Secret that cannot be read or used is reported and the pull goes on without it.
    pub(super) async fn pull_secrets(
        &self,
        pod: &Pod,
        fp: Option<String>,
    ) -> crate::image::PullSecrets {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let mut out = crate::image::PullSecrets::default();
        let mut unusable = Vec::new();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        for name in names {
            let secret = api.get_opt(&name).await.ok().flatten();
            match secret.as_ref().and_then(crate::refs::docker_auths) {
                Some(auths) => out.0.push((format!("secret {ns}/{name}"), auths)),
                None => unusable.push(name),
            }
        }
        if !unusable.is_empty() {
            self.event(
                pod,
                fp,
                true,
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    unusable.join(", ")
                ),
            );
        }
        out
    }
}
