//! One sync of a Pod: observe the sandbox and the agent's memory, ask [`crate::kubelet::plan`]
//! what to do, and do it (create the sandbox, step the init and regular containers, enforce the
//! deadline, write the status); and the deletion of a Pod.

use super::*;

impl NodeAgent {
    pub(super) async fn sync(self: &Arc<Self>, pod: &Pod) -> Result<(), kube::Error> {
        let id = uid(pod);
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);

        // (A Pod the agent has no memory of is finished here only if its status says so.)
        let terminal_here = lock(&self.pods)
            .get(&id)
            .is_some_and(|rt| lock(rt).terminal());
        match plan::pod_action(pod, terminal_here) {
            PodAction::Terminate => return self.terminate(pod, &api).await,
            PodAction::Finished => {
                if let Some(rt) = lock(&self.pods).get(&id) {
                    for c in lock(rt).containers.values_mut() {
                        c.stop_tasks();
                    }
                }
                return Ok(());
            }
            // Finished on this node, though the Pod read here may not say so yet: nothing is
            // started again (a stopped sidecar would otherwise be restarted per its policy).
            PodAction::ReportOnly => {
                let rt = self.pod_rt(pod);
                return self.write_status(pod, &api, &rt).await;
            }
            PodAction::Run => {}
        }
        let rt = self.pod_rt(pod);

        // The spec, with every refused field named.
        let checks = match self.checks_of(pod) {
            Ok(c) => c,
            Err(e) => return self.report_failure(pod, &api, &rt, e).await,
        };
        if !self.engine.contains(&id) {
            if let Some(enf) = &self.enforcer {
                // The engine's network hook needs the labels before the sandbox gets its address.
                enf.set_pod(&id, PodMeta::of(pod));
            }
            self.bind_claims(pod);
            let mut spec = checks.0.clone();
            match self.runtime_class_handler(&spec).await {
                Ok(h) => spec.handler = h,
                Err(e) => return self.report_failure(pod, &api, &rt, e).await,
            }
            match self.restore_dir(pod).await {
                Ok(dir) => spec.restore_from = dir,
                Err(e) => return self.report_failure(pod, &api, &rt, e).await,
            }
            match Self::restore_replaces_volumes(pod) {
                Ok(replace) => spec.restore_replaces_volumes = replace,
                Err(e) => return self.report_failure(pod, &api, &rt, e).await,
            }
            match self.runtime_monitoring_of(pod, &spec) {
                Ok(m) => spec.runtime_monitoring = m,
                Err(e) => return self.report_failure(pod, &api, &rt, e).await,
            }
            let prepared = {
                let _turn = self.starts.take().await;
                self.engine.prepare(spec).await
            };
            if let Err(e) = prepared {
                return self.report_failure(pod, &api, &rt, e).await;
            }
            let mut r = lock(&rt);
            r.start_time.get_or_insert_with(now);
            r.started = Some(Instant::now());
            r.last_error = None;
        }
        {
            let mut r = lock(&rt);
            r.ignored =
                crate::audit::ignored_fields(pod.spec.as_ref().unwrap_or(&Default::default()));
            r.pod_ip = self
                .engine
                .pod_ip(&id)
                .ok()
                .flatten()
                .map(|ip| ip.to_string());
            r.started.get_or_insert_with(Instant::now);
            r.start_time.get_or_insert_with(now);
        }
        let spec = self.engine.spec(&id).unwrap_or(checks.0.clone());

        // configMap, secret, downwardAPI and projected volumes: written before the first
        // container starts, kept current on every sync.
        if let Err(message) = self.refresh_volumes(pod, &spec).await {
            self.event(pod, None, true, "FailedMount", message);
            let first_time =
                !lock(&rt).volumes_ready && self.engine.containers(&id).is_ok_and(|c| c.is_empty());
            if first_time {
                for c in lock(&rt).containers.values_mut() {
                    c.state = CState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: None,
                    };
                }
                return self.write_status(pod, &api, &rt).await;
            }
        }
        lock(&rt).volumes_ready = true;

        // activeDeadlineSeconds.
        let elapsed = lock(&rt).started.map(|t| t.elapsed()).unwrap_or_default();
        let active_deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        match plan::deadline(active_deadline, elapsed) {
            Deadline::None => {}
            Deadline::Left(left) => self.trigger_after(&id, left),
            Deadline::Exceeded => {
                self.event(
                    pod,
                    None,
                    true,
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline".into(),
                );
                self.stop_all(pod, &rt, spec.termination_grace).await;
                {
                    let mut r = lock(&rt);
                    r.phase = "Failed".into();
                    r.reason = Some("DeadlineExceeded".into());
                    r.message = Some(
                        "Pod was active on the node longer than the specified deadline".into(),
                    );
                    for c in r.containers.values_mut() {
                        c.ready = false;
                    }
                }
                return self.write_status(pod, &api, &rt).await;
            }
        }

        // The pause extension: a frozen Pod that stays frozen is not stepped at all; one whose
        // annotation went is thawed first, then synced as usual.
        let pause = plan::pause_action(Self::asks_paused(pod), self.engine.is_paused(&id), false);
        if pause == PauseAction::Hold {
            return self.hold_paused(pod, &api, &rt).await;
        }
        if pause == PauseAction::Thaw && !self.thaw(pod, &spec, &rt, &checks.1).await {
            return self.write_status(pod, &api, &rt).await;
        }

        let policy = RestartPolicy::of(pod);

        // Init containers, in order; sidecars keep being maintained afterwards.
        let initialized = lock(&rt).initialized;
        let mut pod_failed = false;
        for c in &spec.init_containers {
            let done = lock(&rt).containers.get(&c.name).is_some_and(|x| x.done);
            if done {
                continue;
            }
            let step = self.step(pod, &spec, &rt, &c.name, &checks.1, policy).await;
            if !plan::after_init_step(step, initialized) {
                pod_failed = step == Step::PodFailed;
                break;
            }
        }
        if pod_failed {
            self.stop_all(pod, &rt, spec.termination_grace).await;
            {
                let mut r = lock(&rt);
                r.phase = "Failed".into();
                for c in r.containers.values_mut() {
                    c.ready = false;
                }
            }
            return self.write_status(pod, &api, &rt).await;
        }
        if plan::initialized(&lock(&rt)) {
            lock(&rt).initialized = true;
        }

        if lock(&rt).initialized {
            let mut steps = Vec::new();
            for c in spec.regular() {
                let step = self.step(pod, &spec, &rt, &c.name, &checks.1, policy).await;
                steps.push((c.name.clone(), step));
            }
            let mut r = lock(&rt);
            if let Some(phase) = plan::pod_phase(&r, &steps) {
                r.phase = phase.into();
            }
        }
        if lock(&rt).terminal() {
            // Kubelet stops the sidecars once the regular containers are done.
            self.stop_all(pod, &rt, spec.termination_grace).await;
        }
        if !lock(&rt).terminal() {
            self.pause_after_steps(pod, &rt).await;
        }
        // The pod IP is known once a container started (the network is attached meanwhile).
        if let Some(ip) = self.engine.pod_ip(&id).ok().flatten() {
            lock(&rt).pod_ip = Some(ip.to_string());
        }
        // The sandbox's network works once its firewall rules are in (see crate::firewall).
        if let Some(enf) = &self.enforcer
            && enf.available().is_ok()
        {
            let t = Instant::now();
            let res = enf.wait_applied(&id).await;
            self.engine.record_step(&id, "firewall wait", t);
            lock(&rt).network_error = res.err().map(|e| e.to_string());
        }
        let running = lock(&rt).phase == "Running";
        let t = Instant::now();
        let res = self.write_status(pod, &api, &rt).await;
        if running && res.is_ok() && self.engine.record_step(&id, "status write", t) {
            tracing::debug!(target: "node::agent", pod = ?pod.metadata.name,
                steps = %crate::timeline::summary(&self.engine.timeline(&id).unwrap_or_default()),
                "sandbox running");
        }
        res
    }

    /// The handler of the Pod's `runtimeClassName`: the `RuntimeClass` object's `handler`, as
    /// in Kubernetes; without such an object, a name the engine knows as a handler (`runc`,
    /// `crun`, `runsc`, `gvisor`, configured aliases) is used as is.
    pub(super) async fn runtime_class_handler(
        &self,
        spec: &SandboxSpec,
    ) -> Result<Option<String>, NodeError> {
        let Some(name) = spec.handler.clone() else {
            return Ok(None);
        };
        let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.client.clone());
        match api.get_opt(&name).await {
            Ok(Some(rc)) => Ok(Some(rc.handler)),
            Ok(None)
                if crate::runtime::HandlerKind::from_name(&name).is_some()
                    || self.engine.config().handler_aliases.contains_key(&name) =>
            {
                Ok(Some(name))
            }
            Ok(None) => Err(NodeError::InvalidSpec {
                sandbox: spec.display_name(),
                field: "spec.runtimeClassName".into(),
                reason: format!(
                    "RuntimeClass {name:?} not found; create it or use a handler name (runc, crun, runsc, gvisor)"
                ),
            }),
            Err(e) => {
                tracing::debug!(runtime_class = %name, error = %e, "reading the RuntimeClass failed; using the name as the handler");
                Ok(Some(name))
            }
        }
    }

    /// Binds the claims `pod` uses to the volumes this node provisions for them, off the
    /// start's critical path.
    pub(super) fn bind_claims(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let claims: Vec<(String, std::path::PathBuf)> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| {
                (
                    c.claim_name.clone(),
                    self.engine.pvc_dir(&ns, &c.claim_name),
                )
            })
            .collect();
        if claims.is_empty() {
            return;
        }
        let (client, node) = (self.client.clone(), self.node_name.clone());
        tokio::spawn(async move {
            for (claim, dir) in claims {
                if let Err(e) = crate::storage::bind(&client, &node, &ns, &claim, &dir).await {
                    tracing::warn!(claim = %format!("{ns}/{claim}"), error = %e, "binding the claim to its volume failed");
                }
            }
        });
    }

    /// The sandbox spec and every container's probes and hooks, or the first refusal.
    pub(super) fn checks_of(
        &self,
        pod: &Pod,
    ) -> Result<(SandboxSpec, BTreeMap<String, ContainerChecks>), NodeError> {
        let spec = SandboxSpec::from_pod(pod)?;
        let who = format!("{}/{}", spec.namespace, spec.name);
        let mut checks = BTreeMap::new();
        let ps = pod.spec.as_ref().cloned().unwrap_or_default();
        let all = ps
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
            .chain(
                ps.containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
            );
        for (field, c) in all {
            let k =
                ContainerChecks::of(c, &field).map_err(|(f, reason)| NodeError::Unsupported {
                    sandbox: who.clone(),
                    field: f,
                    reason,
                })?;
            let plain_init = field.starts_with("spec.initContainers")
                && c.restart_policy.as_deref() != Some("Always");
            if plain_init && (k.has_probes() || k.post_start.is_some() || k.pre_stop.is_some()) {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: format!("{field}.lifecycle/probes"),
                    reason: "init containers that run to completion cannot have probes or lifecycle hooks".into(),
                });
            }
            checks.insert(c.name.clone(), k);
        }
        Ok((spec, checks))
    }

    /// A Pod being deleted: stop and remove its sandbox, then finish the deletion.
    pub(super) async fn terminate(
        self: &Arc<Self>,
        pod: &Pod,
        api: &Api<Pod>,
    ) -> Result<(), kube::Error> {
        let id = uid(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.engine.contains(&id) {
            // A frozen Pod is thawed first: its preStop hooks and signals must reach it.
            if self.engine.is_paused(&id)
                && let Err(e) = self.engine.resume(&id).await
            {
                tracing::warn!(pod = %name, error = %e, "thawing a paused pod before deleting it failed; it is killed");
            }
            let grace = plan::deletion_grace(pod);
            let rt = self.pod_rt(pod);
            // The containers may be running even if the memory is fresh (agent restart).
            {
                let mut r = lock(&rt);
                for n in self.engine.containers(&id).unwrap_or_default() {
                    if self.engine.container_exit(&id, &n).ok().flatten().is_none()
                        && let Some(c) = r.containers.get_mut(&n)
                        && !matches!(c.state, CState::Running { .. })
                    {
                        c.state = CState::Running { started_at: now() };
                    }
                }
            }
            self.stop_all(pod, &rt, grace).await;
            if let Err(e) = self.engine.remove(&id).await {
                tracing::warn!(pod = %name, error = %e, "removing sandbox failed; will retry");
                return Ok(());
            }
        }
        self.forget(&id);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The Pod cannot be (or has not yet been) given a sandbox: waiting containers with the
    /// reason, retried on the next resync.
    pub(super) async fn report_failure(
        self: &Arc<Self>,
        pod: &Pod,
        api: &Api<Pod>,
        rt: &Shared<PodRt>,
        err: NodeError,
    ) -> Result<(), kube::Error> {
        let message = err.to_string();
        let reason = waiting_reason(&err);
        let first = {
            let mut r = lock(rt);
            let first = r.last_error.as_deref() != Some(message.as_str());
            r.last_error = Some(message.clone());
            for c in r.containers.values_mut() {
                c.state = CState::Waiting {
                    reason: reason.into(),
                    message: Some(message.clone()),
                };
                c.ready = false;
            }
            first
        };
        if first {
            tracing::warn!(pod = ?pod.metadata.name, error = %message, "starting the sandbox failed");
            self.event(pod, None, true, "Failed", format!("Error: {message}"));
        }
        self.write_status(pod, api, rt).await
    }
}
