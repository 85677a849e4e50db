//! `remove` (one container or the whole sandbox) and `recover` (re-adopt or clean up what a
//! previous engine left).

use super::*;

impl SandboxEngine {
    /// Remove one container (killing it if needed): runtime delete, rootfs unmount, its
    /// writable layer and bundle; its log stays (a new container of the same name keeps it as
    /// the previous instance's).
    pub async fn remove_container(&self, id: &str, name: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        let Some(c) = rec.container(name).cloned() else {
            return Ok(());
        };
        self.teardown_container(rec.handler, &c, false).await?;
        rec.containers.retain(|x| x.name != name);
        self.commit(&entry, &rec)
    }

    /// Remove the sandbox: kill it if needed and delete its containers, mounts, network,
    /// cgroups and directory. PVC directories stay.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        // A network attachment still in flight finishes first, so that DEL releases it.
        let _ = self.join_network(&entry).await;
        let rec = lock(&entry.record).clone();
        let paths = self.paths(id);
        self.teardown(&paths, &rec).await?;
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    /// Undo one container: kill, wait, runtime delete, wait for the shim, unmount, remove its
    /// cgroup and files (with `all`, its log too).
    pub(super) async fn teardown_container(
        &self,
        handler: HandlerKind,
        c: &ContainerRecord,
        all: bool,
    ) -> Result<()> {
        self.teardown_container_with(handler, c).await?;
        let cp = CPaths { dir: c.dir.clone() };
        steps::remove_container_files(self.host.as_ref(), &cp, &c.runtime_id, all)
    }

    pub(super) async fn teardown(&self, paths: &Paths, rec: &Record) -> Result<()> {
        let id = &rec.spec.id;
        self.monitoring.stop(id);
        let mut first_err: Option<NodeError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "teardown step failed");
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        };
        for c in rec.containers.iter().rev() {
            note(self.teardown_container_with(rec.handler, c).await);
        }
        if let Some(cni) = &self.cni
            && (rec.attachment.is_some() || rec.netns.exists())
        {
            note(
                cni.del(
                    id,
                    &rec.netns,
                    rec.attachment.as_ref().map(|a| &a.result),
                    &rec.spec.host_ports,
                )
                .await,
            );
            if let Some(hook) = self.hook() {
                hook.detached(id).await;
            }
        }
        // The network namespace, then the memory-backed volumes (see `steps::make_volumes`).
        for e in steps::release_pod(self.host.as_ref(), &rec.netns, paths) {
            note(Err(e));
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        steps::remove_sandbox_dir(self.host.as_ref(), id, paths)
    }

    /// [`SandboxEngine::teardown_container`] for a sandbox that may no longer be in the map.
    pub(super) async fn teardown_container_with(
        &self,
        handler: HandlerKind,
        c: &ContainerRecord,
    ) -> Result<()> {
        let rid = &c.runtime_id;
        let mut first_err: Option<NodeError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(target: "node::engine", container = %rid, error = %e, "teardown step failed");
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        };
        for e in effects::remove_from_runtime(self.runtimes.get(&handler), c).await {
            note(Err(e));
        }
        let cp = CPaths { dir: c.dir.clone() };
        for e in steps::release_container(self.host.as_ref(), &cp, &c.cgroup_path) {
            note(Err(e));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A re-adopted monitored sandbox: its sentries' connections ended with the previous
    /// engine, so the node listens again and each running sentry gets its trace session anew
    /// (`runsc trace create --force`). Failures are logged: the sandbox runs on, unmonitored
    /// until it is made again.
    async fn reconnect_monitoring(&self, paths: &Paths, rec: &Record) {
        let (Some(m), HandlerKind::Runsc) = (rec.spec.runtime_monitoring, rec.handler) else {
            return;
        };
        let id = &rec.spec.id;
        let config = match self.monitoring.start(id, &paths.dir, m) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "runtime monitoring could not listen again; the sandbox runs unmonitored");
                return;
            }
        };
        let Some(rt) = self.runtimes.get(&HandlerKind::Runsc) else {
            return;
        };
        for c in rec.containers.iter().filter(|c| c.started) {
            if let Err(e) = rt.trace_create(&c.runtime_id, &config).await {
                tracing::warn!(target: "node::engine", sandbox = %id, container = %c.name, error = %e, "runtime monitoring could not reconnect a sentry; it runs unmonitored");
            }
        }
    }

    /// Find sandboxes left by a previous engine (after a crash or restart): re-adopt those
    /// whose network namespace is there and whose every container the runtime still knows
    /// with its rootfs mounted; clean up the rest.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let dir = self.config.root.join("sandboxes");
        let mut ids: Vec<String> = fs_err::read_dir(&dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        for id in ids {
            if lock(&self.sandboxes).contains_key(&id) {
                continue;
            }
            let paths = self.paths(&id);
            let Some((generation, mut rec)) = crate::record_file::read::<Record>(&paths.dir) else {
                // No record: a create that never got far. Remove what can be removed.
                steps::clean_unrecorded(self.host.as_ref(), &paths, &self.netns_path(&id))?;
                report.cleaned.push(id);
                continue;
            };
            rec.migrate(&paths.dir);
            // With a pod network, a sandbox whose attachment never completed is not intact.
            let mut intact = rec.prepared
                && rec.netns.exists()
                && (self.cni.is_none() || rec.attachment.is_some());
            if let Some(rt) = self.runtimes.get(&rec.handler) {
                for c in &rec.containers {
                    let known = rt.state(&c.runtime_id).await.ok().flatten().is_some();
                    let cp = CPaths { dir: c.dir.clone() };
                    intact &=
                        known && self.host.is_mounted(&cp.rootfs()) && c.container_pid.is_some();
                }
            } else {
                intact = false;
            }
            if intact {
                match self.save_record(&rec, generation + 1) {
                    Ok(()) => crate::record_file::remove_legacy(&paths.dir),
                    Err(e) => {
                        tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "rewriting a migrated record failed");
                    }
                }
                self.reconnect_monitoring(&paths, &rec).await;
                lock(&self.sandboxes).insert(
                    id.clone(),
                    Arc::new(Entry::new(rec, Timeline::new(), generation + 1)),
                );
                report.adopted.push(id);
            } else {
                self.teardown(&paths, &rec).await?;
                report.cleaned.push(id);
            }
        }
        Ok(report)
    }
}
