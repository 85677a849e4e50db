//! Operations on existing containers, each guarded by [`crate::lifecycle::transition`]:
//! `start`, `state`, `wait`, `exec`, `pause`, `resume` (through the cgroup freezer directly
//! under runc and crun, through the runtime under runsc), `stop`.

use super::*;

/// How long `pause` waits for the freezer to report every process stopped.
const PAUSE_SETTLE: Duration = Duration::from_secs(5);

impl SandboxEngine {
    /// Start the sandbox's created regular containers.
    pub async fn start(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let regular: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
        let todo: Vec<&ContainerRecord> = rec
            .containers
            .iter()
            .filter(|c| regular.contains(&c.name) && !c.started)
            .collect();
        if todo.is_empty() {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "start",
                state: "already started".into(),
            });
        }
        let names: Vec<String> = todo.iter().map(|c| c.name.clone()).collect();
        drop(todo);
        for n in names {
            self.start_locked(&entry, &n).await?;
        }
        Ok(())
    }

    /// Start one created container.
    pub async fn start_container(&self, id: &str, name: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        self.start_locked(&entry, name).await
    }

    pub(super) async fn start_locked(&self, entry: &Entry, name: &str) -> Result<()> {
        let rec = lock(&entry.record).clone();
        let id = rec.spec.id.clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let phase = if c.started {
            Phase::Running
        } else {
            Phase::Created
        };
        lifecycle::transition(phase, Op::Start)
            .map_err(|e| lifecycle::refused(format!("{id}/{name}"), e))?;
        if let Err(e) = self.join_network(entry).await {
            self.drop_if_network_failed(entry).await;
            return Err(e);
        }
        let mut rec = lock(&entry.record).clone();
        let t = Instant::now();
        self.runtimes[&rec.handler].start(&c.runtime_id).await?;
        entry.timeline.record("runtime start", t);
        if let Some(x) = rec.container_mut(name) {
            x.started = true;
        }
        self.commit(entry, &rec)
    }

    /// State of the main container (the sandbox's state for single-container use).
    pub async fn state(&self, id: &str) -> Result<SandboxState> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        let main =
            rec.container(&rec.spec.main.name)
                .cloned()
                .ok_or_else(|| NodeError::InvalidState {
                    sandbox: id.into(),
                    op: "read the state",
                    state: "the main container does not exist".into(),
                })?;
        let cs = self.state_of(&rec, &main).await?;
        Ok(SandboxState {
            id: id.into(),
            phase: cs.phase,
            exit_code: cs.exit_code,
            pid: cs.pid,
            pod_ip: rec.attachment.as_ref().map(|a| a.ip),
            handler: rec.handler,
        })
    }

    /// State of one container.
    pub async fn container_state(&self, id: &str, name: &str) -> Result<ContainerState> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        self.state_of(&rec, &c).await
    }

    /// A cheap look at a container without running the runtime: `Some(code)` once its process
    /// exited (code `None` if unknown), `None` while it runs or was never started.
    pub fn container_exit(&self, id: &str, name: &str) -> Result<Option<Option<i32>>> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record);
        let c = rec
            .container(name)
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let cp = CPaths { dir: c.dir.clone() };
        if let Some(code) = read_exit(&cp.exit()) {
            return Ok(Some(Some(code)));
        }
        if !c.started || pid_alive(c.container_pid) {
            return Ok(None);
        }
        // The process is gone; the shim writes the code right after reaping it.
        if pid_alive(c.shim_pid) {
            return Ok(None);
        }
        Ok(Some(read_exit(&cp.exit())))
    }

    /// The termination message a container wrote (at most 4096 bytes), if any.
    pub fn termination_message(&self, id: &str, name: &str) -> Option<String> {
        let entry = self.entry(id).ok()?;
        let dir = lock(&entry.record).container(name)?.dir.clone();
        let data = fs_err::read(CPaths { dir }.termination_log()).ok()?;
        let data = &data[..data.len().min(4096)];
        let s = String::from_utf8_lossy(data).trim_end().to_string();
        (!s.is_empty()).then_some(s)
    }

    pub(super) async fn state_of(
        &self,
        rec: &Record,
        c: &ContainerRecord,
    ) -> Result<ContainerState> {
        effects::container_state(&self.runtimes[&rec.handler], c).await
    }

    /// Wait until the main container's process exits; returns its exit code (`None` if
    /// unknown).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<i32>> {
        let main = self.main_name(id)?;
        self.wait_container(id, &main, timeout).await
    }

    /// Wait until a container's process exits; returns its exit code (`None` if unknown).
    pub async fn wait_container(
        &self,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let c = lock(&entry.record)
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let cp = CPaths { dir: c.dir.clone() };
        let deadline = Instant::now() + timeout;
        if let Some(pid) = c.container_pid
            && !pid_exited(pid, timeout).await?
        {
            return Err(NodeError::Timeout {
                sandbox: format!("{id}/{name}"),
                what: "the process to exit",
                secs: timeout.as_secs_f64(),
            });
        }
        loop {
            if let Some(code) = read_exit(&cp.exit()) {
                return Ok(Some(code));
            }
            if !pid_alive(c.shim_pid) {
                return Ok(read_exit(&cp.exit()));
            }
            if Instant::now() > deadline {
                return Err(NodeError::Timeout {
                    sandbox: format!("{id}/{name}"),
                    what: "the exit code",
                    secs: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Run `argv` in a running container through the runtime's `exec` (the container's user,
    /// environment and working directory), bounded by `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let entry = self.entry(id)?;
        let (handler, rid) = {
            let rec = lock(&entry.record);
            let c = rec
                .container(name)
                .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
            (rec.handler, c.runtime_id.clone())
        };
        let out = self.runtimes[&handler].exec(&rid, argv, timeout).await?;
        Ok(ExecOutput {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Pause or resume through the cgroup freezer directly, for handlers whose processes all
    /// live in the container's cgroup and whose `state` reads that freezer (runc, crun): a
    /// file write per container and no runtime process, where the runtime's `pause` costs a
    /// process start and a `state` poll. Phases come from the record and the processes. `None`
    /// when this does not apply (runsc, whose sentry pauses itself; a host without a freezer
    /// for the container's cgroup): the runtime's own pause or resume is used then.
    async fn freeze_direct(&self, entry: &Entry, id: &str, freeze: bool) -> Option<Result<()>> {
        let mut rec = lock(&entry.record).clone();
        if !matches!(rec.handler, HandlerKind::Runc | HandlerKind::Crun) {
            return None;
        }
        let phase = |c: &ContainerRecord| {
            let exited = read_exit(&CPaths { dir: c.dir.clone() }.exit()).is_some()
                || !pid_alive(c.container_pid);
            match (c.started, exited, c.paused) {
                (false, _, _) => Phase::Created,
                (true, true, _) => Phase::Exited,
                (true, false, true) => Phase::Paused,
                (true, false, false) => Phase::Running,
            }
        };
        let op = if freeze { Op::Pause } else { Op::Resume };
        let main = rec.container(&rec.spec.main.name)?;
        if let Err(e) = lifecycle::transition(phase(main), op) {
            return Some(Err(lifecycle::refused(id, e)));
        }
        let targets: Vec<String> = rec
            .containers
            .iter()
            .filter(|c| lifecycle::can(phase(c), op))
            .map(|c| c.cgroup_path.clone())
            .collect();
        if targets.iter().any(|cg| self.host.is_frozen(cg).is_none()) {
            return None;
        }
        for cg in &targets {
            if let Err(e) = self.host.set_frozen(cg, freeze) {
                return Some(Err(e));
            }
        }
        // A v1 freezer passes through FREEZING until every task stopped; pausing means frozen.
        let deadline = Instant::now() + PAUSE_SETTLE;
        for cg in targets.iter().filter(|_| freeze) {
            let mut spins = 0u32;
            while self.host.is_frozen(cg) != Some(true) {
                if Instant::now() >= deadline {
                    return Some(Err(NodeError::Timeout {
                        sandbox: id.into(),
                        what: "the cgroup freezer to stop every process",
                        secs: PAUSE_SETTLE.as_secs_f64(),
                    }));
                }
                spins += 1;
                if spins < 100 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        for c in rec.containers.iter_mut() {
            if targets.contains(&c.cgroup_path) {
                c.paused = freeze;
            }
        }
        Some(self.commit(entry, &rec))
    }

    /// Whether the main container's phase, as the runtime reports it, allows `op`.
    async fn main_allows(&self, rec: &Record, id: &str, op: Op) -> Result<()> {
        let main = rec
            .container(&rec.spec.main.name)
            .ok_or_else(|| NodeError::NotFound(id.into()))?;
        let st = self.state_of(rec, main).await?;
        lifecycle::transition(st.phase, op)
            .map(drop)
            .map_err(|e| lifecycle::refused(id, e))
    }

    /// Freeze all processes of the sandbox (every running container).
    pub async fn pause(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        self.pause_locked(&entry, id).await
    }

    /// [`SandboxEngine::pause`] with the sandbox's operation lock held.
    pub(super) async fn pause_locked(&self, entry: &Entry, id: &str) -> Result<()> {
        if let Some(done) = self.freeze_direct(entry, id, true).await {
            return done;
        }
        let mut rec = lock(&entry.record).clone();
        self.main_allows(&rec, id, Op::Pause).await?;
        let rt = self.runtimes[&rec.handler].clone();
        let all = rec.containers.clone();
        let mut paused = Vec::new();
        for c in &all {
            if lifecycle::can(self.state_of(&rec, c).await?.phase, Op::Pause) {
                // runc gives up freezing a cgroup whose tasks keep changing ("unable to
                // freeze", seen under load) and thaws it again; a later attempt holds.
                let mut attempt = 0;
                while let Err(e) = rt.pause(&c.runtime_id).await {
                    attempt += 1;
                    if attempt > 3 || !matches!(e, NodeError::Runtime { .. }) {
                        return Err(e);
                    }
                    tracing::debug!(sandbox = %id, container = %c.name, attempt, error = %e, "pause failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                paused.push(c);
                if let Some(x) = rec.container_mut(&c.name) {
                    x.paused = true;
                }
            }
        }
        self.commit(entry, &rec)?;
        // The runtime returns once the freeze is requested; a v1 freezer passes through
        // FREEZING until every task stopped. Pausing means frozen, so wait for it.
        let deadline = Instant::now() + PAUSE_SETTLE;
        for c in paused {
            while self.state_of(&rec, c).await?.phase == Phase::Running {
                if Instant::now() >= deadline {
                    return Err(NodeError::Timeout {
                        sandbox: id.into(),
                        what: "the cgroup freezer to stop every process",
                        secs: PAUSE_SETTLE.as_secs_f64(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Thaw a paused sandbox.
    pub async fn resume(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        self.resume_locked(&entry, id).await
    }

    /// [`SandboxEngine::resume`] with the sandbox's operation lock held.
    pub(super) async fn resume_locked(&self, entry: &Entry, id: &str) -> Result<()> {
        if let Some(done) = self.freeze_direct(entry, id, false).await {
            return done;
        }
        let mut rec = lock(&entry.record).clone();
        self.main_allows(&rec, id, Op::Resume).await?;
        let rt = self.runtimes[&rec.handler].clone();
        let all = rec.containers.clone();
        for c in &all {
            if lifecycle::can(self.state_of(&rec, c).await?.phase, Op::Resume) {
                rt.resume(&c.runtime_id).await?;
                if let Some(x) = rec.container_mut(&c.name) {
                    x.paused = false;
                }
            }
        }
        self.commit(entry, &rec)
    }

    /// Stop every container: SIGTERM, then SIGKILL after `grace` (regular containers first,
    /// then sidecars and init containers in reverse order, as kubelet does). Returns the main
    /// container's exit code.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let regular: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
        let mut order: Vec<&ContainerRecord> = rec
            .containers
            .iter()
            .filter(|c| regular.contains(&c.name))
            .collect();
        order.extend(
            rec.containers
                .iter()
                .rev()
                .filter(|c| !regular.contains(&c.name)),
        );
        let deadline = Instant::now() + grace;
        let mut main_code = None;
        for c in order {
            let left = deadline.saturating_duration_since(Instant::now());
            let code = self.stop_rec(&rec, c, left).await?;
            if c.name == rec.spec.main.name {
                main_code = code;
            }
        }
        Ok(main_code)
    }

    /// Stop one container: SIGTERM, then SIGKILL after `grace`. Returns its exit code.
    pub async fn stop_container(
        &self,
        id: &str,
        name: &str,
        grace: Duration,
    ) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        self.stop_rec(&rec, &c, grace).await
    }

    pub(super) async fn stop_rec(
        &self,
        rec: &Record,
        c: &ContainerRecord,
        grace: Duration,
    ) -> Result<Option<i32>> {
        effects::stop(&self.runtimes[&rec.handler], c, grace).await
    }
}
