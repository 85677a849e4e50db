//! The tasks of a running container (its exit watch and probes), killing a container that
//! failed a probe, and stopping a Pod's containers with their preStop hooks.

use super::*;

impl NodeAgent {
    pub(super) fn target(&self, spec: &SandboxSpec, name: &str) -> Target<'_> {
        Target {
            engine: &self.engine,
            id: spec.id.clone(),
            container: name.to_string(),
            pod_ip: self.engine.pod_ip(&spec.id).ok().flatten(),
            netns: self.engine.netns_path(&spec.id),
        }
    }

    /// Start the exit watch and the probes of a running container.
    pub(super) fn start_tasks(
        self: &Arc<Self>,
        pod: &Pod,
        spec: &SandboxSpec,
        rt: &Shared<PodRt>,
        name: &str,
        checks: ContainerChecks,
    ) {
        let id = spec.id.clone();
        let mut handles = Vec::new();
        {
            let (this, id, name) = (Arc::clone(self), id.clone(), name.to_string());
            handles.push(
                tokio::spawn(async move {
                    // Until the process exits (checked hourly so a lost wake-up cannot hide it).
                    while let Err(NodeError::Timeout { .. }) = this
                        .engine
                        .wait_container(&id, &name, Duration::from_secs(3600))
                        .await
                    {}
                    this.trigger(&id);
                })
                .abort_handle(),
            );
        }
        if checks.has_probes() {
            let this = Arc::clone(self);
            let (pod, rt, name, grace) = (
                pod.clone(),
                Arc::clone(rt),
                name.to_string(),
                spec.termination_grace,
            );
            handles.push(
                tokio::spawn(async move {
                    this.probe_loop(pod, id, rt, name, checks, grace).await;
                })
                .abort_handle(),
            );
        }
        if let Some(c) = lock(rt).containers.get_mut(name) {
            c.stop_tasks();
            c.tasks = handles;
        }
    }

    /// The probes of one running container: startup first, then liveness and readiness.
    pub(super) async fn probe_loop(
        self: Arc<Self>,
        pod: Pod,
        id: String,
        rt: Shared<PodRt>,
        name: String,
        checks: ContainerChecks,
        grace: Duration,
    ) {
        let since = lock(&rt)
            .containers
            .get(&name)
            .and_then(|c| c.running_since)
            .unwrap_or_else(Instant::now);
        let role = lock(&rt)
            .containers
            .get(&name)
            .map(|c| c.role)
            .unwrap_or(Role::Regular);
        let fp = Some(field_path(role, &name));
        let target = Target {
            engine: &self.engine,
            id: id.clone(),
            container: name.clone(),
            pod_ip: self.engine.pod_ip(&id).ok().flatten(),
            netns: self.engine.netns_path(&id),
        };
        if let Some(sp) = &checks.startup {
            sleep_until(since + sp.initial_delay).await;
            let mut fails = 0;
            loop {
                match probe::run(&target, &sp.action, sp.timeout).await {
                    Ok(()) => break,
                    Err(msg) => {
                        fails += 1;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Startup probe failed: {msg}"),
                        );
                        if fails >= sp.failure_threshold {
                            self.event(
                                &pod,
                                fp.clone(),
                                false,
                                "Killing",
                                format!("Container {name} failed startup probe, will be restarted"),
                            );
                            self.kill(&target, &checks, sp, grace).await;
                            return;
                        }
                    }
                }
                tokio::time::sleep(sp.period).await;
            }
        }
        {
            let mut r = lock(&rt);
            if let Some(c) = r.containers.get_mut(&name) {
                c.started = true;
                if checks.readiness.is_none() {
                    c.ready = true;
                }
            }
        }
        self.trigger(&id);
        let liveness = async {
            let Some(lp) = &checks.liveness else {
                return std::future::pending::<()>().await;
            };
            sleep_until(since + lp.initial_delay).await;
            let mut fails = 0;
            loop {
                match probe::run(&target, &lp.action, lp.timeout).await {
                    Ok(()) => fails = 0,
                    Err(msg) => {
                        fails += 1;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Liveness probe failed: {msg}"),
                        );
                        if fails >= lp.failure_threshold {
                            self.event(
                                &pod,
                                fp.clone(),
                                false,
                                "Killing",
                                format!(
                                    "Container {name} failed liveness probe, will be restarted"
                                ),
                            );
                            self.kill(&target, &checks, lp, grace).await;
                            return;
                        }
                    }
                }
                tokio::time::sleep(lp.period).await;
            }
        };
        let readiness = async {
            let Some(rp) = &checks.readiness else {
                return std::future::pending::<()>().await;
            };
            sleep_until(since + rp.initial_delay).await;
            let (mut ok, mut bad) = (0u32, 0u32);
            loop {
                let res = probe::run(&target, &rp.action, rp.timeout).await;
                let was = lock(&rt).containers.get(&name).is_some_and(|c| c.ready);
                let now_ready = match res {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= rp.success_threshold {
                            true
                        } else {
                            was
                        }
                    }
                    Err(msg) => {
                        bad += 1;
                        ok = 0;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Readiness probe failed: {msg}"),
                        );
                        if bad >= rp.failure_threshold {
                            false
                        } else {
                            was
                        }
                    }
                };
                if now_ready != was {
                    if let Some(c) = lock(&rt).containers.get_mut(&name) {
                        c.ready = now_ready;
                    }
                    self.trigger(&id);
                }
                tokio::time::sleep(rp.period).await;
            }
        };
        tokio::select! {
            _ = liveness => {}
            _ = readiness => {}
        }
    }

    /// Kill a container that failed a probe: preStop hook, then stop within the grace period
    /// (the probe's own, else the Pod's). Its exit restarts it per restartPolicy.
    pub(super) async fn kill(
        &self,
        target: &Target<'_>,
        checks: &ContainerChecks,
        p: &ProbeSpec,
        grace: Duration,
    ) {
        let grace = p.termination_grace.unwrap_or(grace);
        let t = Instant::now();
        if let Some(hook) = &checks.pre_stop {
            let _ = tokio::time::timeout(grace, probe::run(target, hook, grace)).await;
        }
        let left = grace.saturating_sub(t.elapsed());
        if let Err(e) = self
            .engine
            .stop_container(&target.id, &target.container, left)
            .await
        {
            tracing::warn!(sandbox = %target.id, container = %target.container, error = %e, "stopping a container that failed its probe failed");
        }
    }

    /// Stop every container of a Pod that still runs (preStop hooks first), within `grace`.
    pub(super) async fn stop_all(&self, pod: &Pod, rt: &Shared<PodRt>, grace: Duration) {
        let id = uid(pod);
        let Ok(spec) = self.engine.spec(&id) else {
            return;
        };
        let running: Vec<(String, Role)> = {
            let mut r = lock(rt);
            let mut v = Vec::new();
            for c in r.containers.values_mut() {
                c.stop_tasks();
                if matches!(c.state, CState::Running { .. }) {
                    v.push((c.name.clone(), c.role));
                }
            }
            v
        };
        if running.is_empty() {
            return;
        }
        let checks = self.checks_of(pod).map(|c| c.1).unwrap_or_default();
        let t = Instant::now();
        let hooks = running.iter().filter_map(|(n, role)| {
            let hook = checks.get(n)?.pre_stop.clone()?;
            let target = self.target(&spec, n);
            let fp = Some(field_path(*role, n));
            Some(async move {
                if let Ok(Err(msg)) =
                    tokio::time::timeout(grace, probe::run(&target, &hook, grace)).await
                {
                    self.event(
                        pod,
                        fp,
                        true,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {msg}"),
                    );
                }
            })
        });
        futures::future::join_all(hooks).await;
        for (n, role) in &running {
            self.event(
                pod,
                Some(field_path(*role, n)),
                false,
                "Killing",
                format!("Stopping container {n}"),
            );
        }
        let left = grace.saturating_sub(t.elapsed());
        // Regular containers first, then sidecars, as the engine's stop does.
        if let Err(e) = self.engine.stop(&id, left).await {
            tracing::warn!(sandbox = %id, error = %e, "stopping the pod's containers failed");
        }
        let mut r = lock(rt);
        for (n, _) in &running {
            if let Some(c) = r.containers.get_mut(n) {
                let code = self
                    .engine
                    .container_exit(&id, n)
                    .ok()
                    .flatten()
                    .flatten()
                    .unwrap_or(137);
                c.state = plan::terminated(code, None, &c.state, now());
                c.ready = false;
                c.started = false;
            }
        }
    }
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}
