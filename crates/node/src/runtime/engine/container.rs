//! One container of a sandbox: its rootfs, bundle and the runtime's `create` (through the
//! shim), and `start` once the network is there.

use super::*;

impl SandboxEngine {
    /// Create (and with `start`, start) the container `name` of a prepared sandbox: ensure its
    /// image (pull policy), overlay rootfs, bundle, runtime create. A container of that name
    /// that exists must be removed first ([`SandboxEngine::remove_container`]).
    pub async fn create_container(&self, id: &str, name: &str, start: bool) -> Result<()> {
        let spec = self.spec(id)?;
        let c = spec.container(name).ok_or_else(|| NodeError::InvalidSpec {
            sandbox: spec.display_name(),
            field: "containers".into(),
            reason: format!("no container named {name:?}"),
        })?;
        let image = self.images.ensure(&c.image, c.pull_policy).await?.image;
        self.create_container_from(id, name, None, image, start)
            .await
    }

    /// [`SandboxEngine::create_container`] with the image already resolved (the caller pulled
    /// it, e.g. to report progress) and, when given, the container's resolved environment,
    /// command and args in place of the spec's (the node agent resolves them from the Pod at
    /// every create: [`crate::env`]); the record keeps what the container was made with.
    pub async fn create_container_from(
        &self,
        id: &str,
        name: &str,
        process: Option<crate::env::Process>,
        image: Image,
        start: bool,
    ) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        if let Some(p) = process
            && let Some(c) = rec.spec.container_mut(name)
        {
            c.env = p.env;
            c.command = p.command;
            c.args = p.args;
        }
        if rec.container(name).is_some() {
            return Err(NodeError::AlreadyExists(format!("{id}/{name}")));
        }
        if !rec.prepared {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "create a container",
                state: "not prepared".into(),
            });
        }
        match self
            .create_container_steps(&entry, rec, name, image, start)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let rec = lock(&entry.record).clone();
                if let Some(c) = rec.container(name).cloned() {
                    if let Err(ce) = self.teardown_container(rec.handler, &c, false).await {
                        tracing::warn!(target: "node::engine", sandbox = %id, container = %name, error = %ce, "cleanup after failed container create");
                    }
                    let mut rec = rec;
                    rec.containers.retain(|x| x.name != name);
                    self.commit(&entry, &rec)?;
                }
                self.drop_if_network_failed(&entry).await;
                Err(e)
            }
        }
    }

    /// The container steps; the record (with the container in it) is committed as it goes, so
    /// on error the caller can tear down what it says.
    pub(super) async fn create_container_steps(
        &self,
        entry: &Entry,
        mut rec: Record,
        name: &str,
        image: Image,
        start: bool,
    ) -> Result<Record> {
        let tl = &entry.timeline;
        let t = Instant::now();
        let paths = self.paths(&rec.spec.id);
        let cp = paths.container(&rec.spec, name);
        let (runtime_id, cgroup_path) = self.container_ids(&rec.spec, name);
        let lowers = self.images.lower_dirs(&image);
        rec.containers.push(ContainerRecord {
            name: name.to_string(),
            runtime_id: runtime_id.clone(),
            dir: cp.dir.clone(),
            cgroup_path: cgroup_path.clone(),
            image: image.clone(),
            lowers,
            shim_pid: None,
            container_pid: None,
            started: false,
            paused: false,
        });
        for d in [cp.rootfs(), cp.upper(), cp.work()] {
            fs_err::create_dir_all(d)?;
        }
        for f in [cp.exit(), cp.exit_tmp(), cp.pid()] {
            let _ = fs_err::remove_file(f);
        }
        // A container made again (a restart) starts a new log; the last one stays as the
        // previous instance's (`kubectl logs --previous`).
        match fs_err::rename(cp.log(), cp.previous_log()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.commit(entry, &rec)?;
        let c = rec
            .spec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{}/{name}", rec.spec.id)))?;
        let cr = rec
            .container(name)
            .cloned()
            .unwrap_or_else(|| unreachable!());
        steps::mount_rootfs(self.host.as_ref(), &cr.lowers, &cp)?;
        tl.record("rootfs", t);
        let t = Instant::now();

        let mut volumes: Vec<(VolumeSpec, PathBuf)> = Vec::new();
        for v in &c.volumes {
            let host_dir = self.host_dir(&paths, &rec.spec, v);
            volumes.push((v.clone(), host_dir));
        }
        let termination_log = cp.termination_log();
        if c.termination_message_path.is_some() {
            use std::os::unix::fs::PermissionsExt;
            fs_err::write(&termination_log, b"")?;
            fs_err::set_permissions(&termination_log, std::fs::Permissions::from_mode(0o666))?;
        }
        let resolv = paths.etc().join("resolv.conf");
        let oci = bundle::build(&BundleInputs {
            spec: &rec.spec,
            container: &c,
            image: &cr.image,
            rootfs: &cp.rootfs(),
            handler: rec.handler,
            netns: &rec.netns,
            cgroup_path: &cr.cgroup_path,
            volumes: &volumes,
            hosts_file: &paths.etc().join("hosts"),
            hostname_file: &paths.etc().join("hostname"),
            resolv_file: rec.spec.dns.is_some().then_some(resolv.as_path()),
            termination_log: c
                .termination_message_path
                .is_some()
                .then_some(termination_log.as_path()),
            default_pids_limit: self.config.default_pids_limit,
            sandboxd_kit: self.config.sandboxd_kit.as_deref(),
            capability_defaults: self.config.capability_defaults,
        })?;
        bundle::write(&oci, &cp.bundle())?;
        tl.record("bundle", t);

        let t = Instant::now();
        let rt = self.runtimes[&rec.handler].clone();
        // While the network is still being attached, create now and start once it is there;
        // otherwise create and start in one runtime call.
        let split = start && entry.net.lock().await.is_some();
        let one_call = start && !split;
        self.wait_netns(entry).await?;
        let pod_init = (rec.spec.runtime_monitoring.is_some() && rec.handler == HandlerKind::Runsc)
            .then(|| crate::monitor::config_path(&paths.dir));
        let started = spawn_create(
            Arc::clone(&self.host),
            &rt,
            &runtime_id,
            &cp,
            one_call,
            pod_init.as_deref(),
        )
        .await?;
        tl.record(
            if one_call {
                "runtime run"
            } else {
                "runtime create"
            },
            t,
        );
        let t = Instant::now();
        if let Some(x) = rec.container_mut(name) {
            x.shim_pid = Some(started.shim_pid);
        }
        if started.create_exit != 0 {
            self.commit(entry, &rec)?;
            let log = fs_err::read_to_string(cp.log()).unwrap_or_default();
            return Err(NodeError::Runtime {
                handler: rec.handler.to_string(),
                op: if one_call { "run" } else { "create" }.into(),
                id: runtime_id,
                status: started.create_exit,
                message: crate::runtime::clean_message(&log),
            });
        }
        let pid = fs_err::read_to_string(cp.pid())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(x) = rec.container_mut(name) {
            x.container_pid = pid;
            x.started = one_call;
        }
        self.commit(entry, &rec)?;
        tl.record("records", t);
        if split {
            self.join_network(entry).await?;
            rec = lock(&entry.record).clone();
            let t = Instant::now();
            rt.start(&runtime_id).await?;
            tl.record("runtime start", t);
            if let Some(x) = rec.container_mut(name) {
                x.started = true;
            }
            self.commit(entry, &rec)?;
        }
        Ok(rec)
    }
}

pub(super) async fn spawn_create(
    host: Arc<dyn Host>,
    rt: &OciRuntime,
    id: &str,
    paths: &CPaths,
    start: bool,
    pod_init: Option<&Path>,
) -> Result<sys::ShimStarted> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cs = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    let log: OwnedFd = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())?
        .into_parts()
        .0
        .into();
    let devnull: OwnedFd = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into_parts()
        .0
        .into();
    let plan = sys::ShimPlan {
        argv: rt.create_argv(id, &paths.bundle(), &paths.pid(), start, pod_init),
        envp: vec![
            CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .unwrap_or_default(),
        ],
        log,
        devnull,
        pid_file: cs(&paths.pid()),
        exit_tmp: cs(&paths.exit_tmp()),
        exit_file: cs(&paths.exit()),
        hide_cgroup2: rt.hides_cgroup2(),
    };
    tokio::task::spawn_blocking(move || host.spawn_shim(plan))
        .await
        .map_err(|e| NodeError::Config(format!("shim task failed: {e}")))?
        .map_err(|e| {
            NodeError::Io(std::io::Error::new(
                e.kind(),
                format!("starting the shim for sandbox {id}: {e}"),
            ))
        })
}
