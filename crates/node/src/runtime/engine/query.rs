//! Read-only questions about sandboxes: paths, ids, images, attachments, timelines.

use super::*;

impl SandboxEngine {
    pub(super) fn paths(&self, id: &str) -> Paths {
        Paths {
            dir: self.config.root.join("sandboxes").join(id),
        }
    }

    /// The host directory backing a PVC (durable; outlives sandboxes).
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.config.root.join("volumes").join(namespace).join(claim)
    }

    /// The cgroup path of a sandbox's main container, relative to each hierarchy root.
    pub fn cgroup_path(&self, id: &str) -> String {
        if let Ok(e) = self.entry(id) {
            let rec = lock(&e.record);
            if let Some(c) = rec.container(&rec.spec.main.name) {
                return c.cgroup_path.clone();
            }
        }
        format!("/{}/{id}", self.config.cgroup_parent)
    }

    /// Runtime id and cgroup path of a container: `<id>.<name>.`. The closing dot keeps the
    /// ids of a node prefix-free (runsc resolves an id that is a prefix of several containers'
    /// as ambiguous): sandbox ids and container names have no dots, so no `<id>.<name>.` starts
    /// with another.
    pub(super) fn container_ids(&self, spec: &SandboxSpec, name: &str) -> (String, String) {
        let rid = format!("{}.{name}.", spec.id);
        let cg = format!("/{}/{rid}", self.config.cgroup_parent);
        (rid, cg)
    }

    /// The runtime's id of a container (`containerID` in the Pod status).
    pub fn container_runtime_id(&self, id: &str, name: &str) -> Option<String> {
        let e = self.entry(id).ok()?;
        let rec = lock(&e.record);
        Some(rec.container(name)?.runtime_id.clone())
    }

    /// The image a container of a sandbox was made from.
    pub fn container_image(&self, id: &str, name: &str) -> Option<Image> {
        let e = self.entry(id).ok()?;
        let rec = lock(&e.record);
        Some(rec.container(name)?.image.clone())
    }

    /// Whether the sandbox's containers are frozen by [`SandboxEngine::pause`] (any of them,
    /// as recorded, so it survives an agent restart); `false` for an unknown sandbox.
    pub fn is_paused(&self, id: &str) -> bool {
        self.entry(id)
            .is_ok_and(|e| lock(&e.record).containers.iter().any(|c| c.paused))
    }

    /// A container whose process runs now, for [`crate::exec`]; `None` when it does not run
    /// (unknown, never started, exited or paused).
    pub fn running_container(&self, id: &str, name: &str) -> Option<RunningContainer> {
        let entry = self.entry(id).ok()?;
        let (handler, runtime_id, dir) = {
            let rec = lock(&entry.record);
            let c = rec.container(name)?;
            if !c.started || c.paused {
                return None;
            }
            (rec.handler, c.runtime_id.clone(), c.dir.clone())
        };
        if !matches!(self.container_exit(id, name), Ok(None)) {
            return None;
        }
        Some(RunningContainer {
            runtime: self.runtimes.get(&handler)?.clone(),
            runtime_id,
            bundle: CPaths { dir }.bundle(),
        })
    }

    /// Where a volume of a sandbox lives on the host.
    pub(super) fn host_dir(&self, paths: &Paths, spec: &SandboxSpec, v: &VolumeSpec) -> PathBuf {
        match &v.source {
            VolumeSource::EmptyDir | VolumeSource::Projected => paths.volume(&v.name),
            VolumeSource::Pvc { claim } => self.pvc_dir(&spec.namespace, claim),
            VolumeSource::HostPath { path } => PathBuf::from(path),
        }
    }

    /// The host directory of a sandbox's `configMap`, `secret`, `downwardAPI` or `projected`
    /// volume, whose files the node agent writes ([`crate::projected::write`]).
    pub fn projected_dir(&self, id: &str, volume: &str) -> PathBuf {
        self.paths(id).volume(volume)
    }

    /// The netns path of a sandbox.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.config.run_dir.join("netns").join(id)
    }

    /// The main container's log (stdout and stderr).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.paths(id).dir.join("container.log")
    }

    /// The JSON log of a sandbox's runtime events (gVisor runtime monitoring with `log`):
    /// `<root>/sandboxes/<id>/runtime-events.jsonl`, rotated to `.1` at the configured size.
    pub fn runtime_events_path(&self, id: &str) -> PathBuf {
        crate::monitor::log_path(&self.paths(id).dir)
    }

    /// The log of a container's previous instance (the current one's is rotated here when the
    /// container is created again).
    pub fn previous_log_path(&self, id: &str, name: &str) -> PathBuf {
        self.container_log_path(id, name)
            .with_file_name("container.log.previous")
    }

    /// A container's log: stdout and stderr of its current instance.
    pub fn container_log_path(&self, id: &str, name: &str) -> PathBuf {
        match self.entry(id) {
            Ok(e) => {
                let rec = lock(&e.record);
                self.paths(id).container(&rec.spec, name).log()
            }
            Err(_) => self
                .paths(id)
                .dir
                .join("c")
                .join(name)
                .join("container.log"),
        }
    }

    /// Where the sandbox's creation and start spent their time, step by step (see
    /// [`crate::timeline`]).
    pub fn timeline(&self, id: &str) -> Result<Vec<StepTime>> {
        Ok(self.entry(id)?.timeline.steps())
    }

    /// Add a step to a sandbox's timeline (the agent's own steps: firewall wait, first status
    /// write), from `begin` to now, unless a step of that name is there already.
    /// Returns whether it was recorded.
    pub fn record_step(&self, id: &str, name: &'static str, begin: Instant) -> bool {
        self.entry(id)
            .is_ok_and(|e| e.timeline.record_once(name, begin))
    }

    /// Ids of known sandboxes.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether a sandbox with this id is known.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.sandboxes).contains_key(id)
    }

    /// The spec a sandbox was created with.
    pub fn spec(&self, id: &str) -> Result<SandboxSpec> {
        Ok(lock(&self.entry(id)?.record).spec.clone())
    }

    /// Names of the containers that exist in a sandbox (created, running or exited).
    pub fn containers(&self, id: &str) -> Result<Vec<String>> {
        Ok(lock(&self.entry(id)?.record)
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect())
    }

    /// The pids of a sandbox's shims (one per container that has one), for measurements.
    pub fn shim_pids(&self, id: &str) -> Vec<i32> {
        self.entry(id)
            .map(|e| {
                lock(&e.record)
                    .containers
                    .iter()
                    .filter_map(|c| c.shim_pid)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pod IP of a sandbox, if networked.
    pub fn pod_ip(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        Ok(lock(&self.entry(id)?.record)
            .attachment
            .as_ref()
            .map(|a| a.ip))
    }

    pub(super) fn main_name(&self, id: &str) -> Result<String> {
        Ok(lock(&self.entry(id)?.record).spec.main.name.clone())
    }
}
