//! One container's step in a sync, executing [`plan::container_action`]: create it, notice its
//! exit and restart it after a back-off, or report why it waits.

use super::*;

impl NodeAgent {
    /// One container's turn in a sync: create it, notice its exit, restart it.
    pub(super) async fn step(
        self: &Arc<Self>,
        pod: &Pod,
        spec: &SandboxSpec,
        rt: &Shared<PodRt>,
        name: &str,
        checks: &BTreeMap<String, ContainerChecks>,
        policy: RestartPolicy,
    ) -> Step {
        let id = spec.id.clone();
        let Some(cspec) = spec.container(name).cloned() else {
            return Step::Waiting;
        };
        let role = lock(rt)
            .containers
            .get(name)
            .map(|c| c.role)
            .unwrap_or(Role::Regular);
        let fp = Some(field_path(role, name));
        let exists = self
            .engine
            .containers(&id)
            .map(|v| v.iter().any(|n| n == name))
            .unwrap_or(false);
        let observed = if !exists {
            Observed::Absent
        } else {
            match self.engine.container_exit(&id, name) {
                Ok(None) => Observed::Running,
                Ok(Some(code)) => Observed::Exited(code),
                Err(_) => Observed::Unknown,
            }
        };
        let action = {
            let r = lock(rt);
            plan::container_action(&r.containers[name], observed, policy, Instant::now())
        };
        match action {
            ContainerAction::Wait => return Step::Waiting,
            ContainerAction::Running => {
                // After an agent restart, its probes and exit watch are not running.
                let need_tasks = lock(rt)
                    .containers
                    .get(name)
                    .is_some_and(|c| c.tasks.is_empty());
                if need_tasks {
                    let k = checks.get(name).cloned().unwrap_or_default();
                    {
                        let mut r = lock(rt);
                        if let Some(c) = r.containers.get_mut(name) {
                            c.container_id = self.engine.container_runtime_id(&id, name);
                            if let Some(image) = self.engine.container_image(&id, name) {
                                c.image_id = image_id(&image);
                            }
                            if !matches!(c.state, CState::Running { .. }) {
                                c.state = CState::Running { started_at: now() };
                            }
                            c.running_since.get_or_insert_with(Instant::now);
                            // As at create: without a startup (readiness) probe the
                            // container counts as started (ready); with one, its probe
                            // decides again, as after a kubelet restart.
                            c.started = c.started || k.startup.is_none();
                            c.ready = c.started && k.readiness.is_none();
                        }
                    }
                    self.start_tasks(pod, spec, rt, name, k);
                }
                let r = lock(rt);
                return plan::running_step(role, r.containers[name].started);
            }
            ContainerAction::Exited { code, then } => {
                let message = self.engine.termination_message(&id, name);
                {
                    let mut r = lock(rt);
                    if let Some(c) = r.containers.get_mut(name) {
                        c.stop_tasks();
                        c.state = plan::terminated(code, message, &c.state, now());
                        c.ready = false;
                        c.started = false;
                        c.running_since = None;
                    }
                }
                match then {
                    AfterExit::Done => {
                        if let Some(c) = lock(rt).containers.get_mut(name) {
                            c.done = true;
                        }
                        let _ = self.engine.remove_container(&id, name).await;
                        return Step::Done;
                    }
                    AfterExit::PodFailed => return Step::PodFailed,
                    AfterExit::Finished => return Step::Finished,
                    AfterExit::Restart => {}
                }
                if let Err(e) = self.engine.remove_container(&id, name).await {
                    tracing::warn!(pod = %spec.name, container = %name, error = %e, "removing an exited container failed");
                    return Step::Waiting;
                }
                let delay = {
                    let mut r = lock(rt);
                    let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                    c.restarts += 1;
                    let delay = plan::crash_backoff(
                        self.config.backoff_base,
                        self.config.backoff_max,
                        c.restarts,
                    );
                    c.backoff_until = Some(Instant::now() + delay);
                    c.last_state = Some(c.state.clone());
                    c.container_id = None;
                    delay
                };
                self.trigger_after(&id, delay);
                return self.backing_off(pod, rt, name, role, delay);
            }
            ContainerAction::Absent(Absent::Finished) => return Step::Finished,
            ContainerAction::Absent(Absent::ImagePullBackOff) => {
                return self.image_back_off(pod, rt, name, role, &cspec.image);
            }
            // A create error: keep reporting it until the retry.
            ContainerAction::Absent(Absent::KeepError) => return Step::Waiting,
            ContainerAction::Absent(Absent::CrashLoopBackOff(left)) => {
                return self.backing_off(pod, rt, name, role, left);
            }
            ContainerAction::Absent(Absent::Create) => {}
        }
        if self.is_stopped() {
            return Step::Waiting;
        }

        // The image, with events and progress.
        let image = match self
            .pull(pod, rt, name, role, &cspec.image, cspec.pull_policy)
            .await
        {
            Some(i) => i,
            None => return Step::Waiting,
        };
        let created = match self.process_of(pod, &id, name, fp.clone()).await {
            Ok(process) => {
                let _turn = self.starts.take().await;
                self.engine
                    .create_container_from(&id, name, Some(process), image.clone(), true)
                    .await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(()) => {
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Created",
                    format!("Created container: {name}"),
                );
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Started",
                    format!("Started container {name}"),
                );
                let k = checks.get(name).cloned().unwrap_or_default();
                {
                    let mut r = lock(rt);
                    let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                    c.state = CState::Running { started_at: now() };
                    c.container_id = self.engine.container_runtime_id(&id, name);
                    c.image_id = image_id(&image);
                    c.started = k.startup.is_none();
                    c.ready = c.started && k.readiness.is_none();
                    c.backoff_until = None;
                    c.running_since = Some(Instant::now());
                }
                if let Some(hook) = &k.post_start {
                    let target = self.target(spec, name);
                    let r = probe::run(
                        &target,
                        hook,
                        spec.termination_grace.max(Duration::from_secs(30)),
                    )
                    .await;
                    if let Err(msg) = r {
                        self.event(
                            pod,
                            fp.clone(),
                            true,
                            "FailedPostStartHook",
                            format!("PostStartHook failed: {msg}"),
                        );
                        let _ = self
                            .engine
                            .stop_container(&id, name, spec.termination_grace)
                            .await;
                        self.trigger(&id);
                        return Step::Waiting;
                    }
                }
                self.start_tasks(pod, spec, rt, name, k);
                let r = lock(rt);
                match role {
                    Role::Init => Step::Waiting,
                    Role::Sidecar if !r.containers[name].started => Step::Waiting,
                    _ => Step::Running,
                }
            }
            Err(e) => {
                let reason = waiting_reason(&e);
                self.event(pod, fp, true, "Failed", format!("Error: {e}"));
                let delay = {
                    let mut r = lock(rt);
                    let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                    c.state = CState::Waiting {
                        reason: reason.into(),
                        message: Some(e.to_string()),
                    };
                    let delay =
                        plan::error_backoff(self.config.backoff_base, self.config.backoff_max);
                    c.backoff_until = Some(Instant::now() + delay);
                    delay
                };
                self.trigger_after(&id, delay);
                Step::Waiting
            }
        }
    }

    pub(super) fn image_back_off(
        &self,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        image: &str,
    ) -> Step {
        let first = {
            let mut r = lock(rt);
            let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
            let first =
                !matches!(&c.state, CState::Waiting { reason, .. } if reason == "ImagePullBackOff");
            c.state = CState::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!("Back-off pulling image \"{image}\"")),
            };
            first
        };
        if first {
            self.event(
                pod,
                Some(field_path(role, name)),
                false,
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
        }
        Step::Waiting
    }

    pub(super) fn backing_off(
        &self,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        left: Duration,
    ) -> Step {
        let mut r = lock(rt);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
        let msg = format!(
            "back-off {:.1}s restarting failed container={name} pod={pod_name}",
            left.as_secs_f64()
        );
        let first =
            !matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        c.state = CState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(msg),
        };
        drop(r);
        if first {
            self.event(
                pod,
                Some(field_path(role, name)),
                true,
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_name}"),
            );
        }
        Step::Waiting
    }
}
