//! `create`, `run` and `prepare`: checks, handler choice, images, and the Pod-level part of a
//! sandbox (record, volumes, network, `/etc` files).

use super::*;

impl SandboxEngine {
    /// Create a sandbox for a Pod (see [`SandboxSpec::from_pod`] for the fields honoured).
    pub async fn create_pod(&self, pod: &k8s_openapi::api::core::v1::Pod) -> Result<SandboxHandle> {
        self.create(SandboxSpec::from_pod(pod)?).await
    }

    /// Create a sandbox with its regular containers (created, not started). Init containers
    /// are left to the caller ([`SandboxEngine::create_container`]).
    pub async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, Some(false)).await
    }

    /// Create and start a sandbox's regular containers with one runtime call each
    /// (`run --detach`): the fast path when nothing has to happen between create and start.
    pub async fn run(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, Some(true)).await
    }

    /// Make the Pod-level part of a sandbox only (directory, network namespace and CNI, the
    /// network hook, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, volume directories);
    /// containers are added with [`SandboxEngine::create_container`]. With a pod network
    /// (runc, crun) the namespace, CNI ADD and the hook are still running when this returns
    /// (the handle has no pod IP yet): the first container's create overlaps them and its start
    /// waits for them; if they fail, that container fails and the sandbox is removed.
    pub async fn prepare(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, None).await
    }

    pub(super) fn check_spec(&self, spec: &SandboxSpec) -> Result<()> {
        spec.validate()?;
        let who = spec.display_name();
        for c in spec.all_containers() {
            if c.security.privileged {
                return Err(NodeError::Unsupported {
                    sandbox: who,
                    field: c.field("securityContext.privileged"),
                    reason: "privileged sandboxes are refused on this node".into(),
                });
            }
            for v in &c.volumes {
                if let VolumeSource::HostPath { path } = &v.source {
                    if !self.config.allow_host_path {
                        return Err(NodeError::Unsupported {
                            sandbox: who,
                            field: format!("spec.volumes[{}].hostPath", v.name),
                            reason: format!(
                                "hostPath {path:?} is refused: this node does not allow host directories; use a persistentVolumeClaim or emptyDir"
                            ),
                        });
                    }
                    if !Path::new(path).is_absolute() {
                        return Err(NodeError::InvalidSpec {
                            sandbox: who,
                            field: format!("spec.volumes[{}].hostPath.path", v.name),
                            reason: "must be absolute".into(),
                        });
                    }
                }
            }
        }
        if !spec.host_ports.is_empty() && self.cni.is_none() {
            return Err(NodeError::Unsupported {
                sandbox: who,
                field: "spec.containers[].ports[].hostPort".into(),
                reason: "this node has no pod network to map host ports to".into(),
            });
        }
        Ok(())
    }

    /// Runtime monitoring needs runsc, and the `falco` sink a Falco socket on this node.
    fn check_monitoring(&self, spec: &SandboxSpec, handler: HandlerKind) -> Result<()> {
        use agent_sandbox_api::constants::extensions::annotations::RUNTIME_MONITORING;
        let Some(m) = spec.runtime_monitoring else {
            return Ok(());
        };
        let field = format!("metadata.annotations[{RUNTIME_MONITORING}]");
        if handler != HandlerKind::Runsc {
            return Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field,
                reason: format!(
                    "runtime monitoring traces gVisor's kernel, and this sandbox runs under {handler}; set `runtimeClassName: gvisor` on the Pod template, or remove the annotation"
                ),
            });
        }
        if m.falco && self.config.runtime_monitoring.falco_socket.is_none() {
            return Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field,
                reason: format!(
                    "{:?} asks for Falco, and this node forwards to no Falco socket; start the node with `agent-sandbox up --runtime-monitoring-falco-socket PATH`, or write `log`",
                    m.as_value()
                ),
            });
        }
        Ok(())
    }

    /// `start`: `None` prepares only; `Some(s)` also creates the regular containers, starting
    /// them when `s`.
    pub(super) async fn create_inner(
        &self,
        spec: SandboxSpec,
        start: Option<bool>,
    ) -> Result<SandboxHandle> {
        self.check_spec(&spec)?;
        let handler = self.resolve_handler(&spec)?;
        self.check_monitoring(&spec, handler)?;
        let paths = self.paths(&spec.id);
        {
            let map = lock(&self.sandboxes);
            if map.contains_key(&spec.id) || paths.dir.exists() {
                return Err(NodeError::AlreadyExists(spec.id.clone()));
            }
        }
        let timeline = Timeline::new();
        // Resolve the images first: a pull failure leaves nothing behind.
        let mut images = Vec::new();
        if start.is_some() {
            let t = Instant::now();
            for c in spec.regular() {
                images.push(self.images.ensure(&c.image, c.pull_policy).await?.image);
            }
            timeline.record("image", t);
        }
        let rec = Record {
            handler,
            netns: self.netns_path(&spec.id),
            attachment: None,
            containers: Vec::new(),
            prepared: false,
            image: None,
            lowers: Vec::new(),
            cgroup_path: None,
            shim_pid: None,
            container_pid: None,
            started: false,
            paused: false,
            spec,
        };
        // Reserve the id.
        let entry = Arc::new(Entry::new(rec.clone(), timeline, 0));
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&rec.spec.id) {
                return Err(NodeError::AlreadyExists(rec.spec.id.clone()));
            }
            map.insert(rec.spec.id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        let id = rec.spec.id.clone();
        let result = async {
            let mut rec = self.prepare_steps(&paths, rec).await?;
            if let Some(start) = start {
                let names: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
                for (name, image) in names.iter().zip(images) {
                    rec = self
                        .create_container_steps(&entry, rec, name, image, start)
                        .await?;
                }
                // `create` returns with the network in place (the handle has the pod IP);
                // `prepare` leaves it to the first container start.
                self.join_network(&entry).await?;
                rec = lock(&entry.record).clone();
            }
            Ok::<Record, NodeError>(rec)
        }
        .await;
        match result {
            Ok(rec) => Ok(SandboxHandle {
                id: rec.spec.id.clone(),
                handler,
                pod_ip: rec.attachment.as_ref().map(|a| a.ip),
                image: rec.containers.first().map(|c| c.image.clone()),
            }),
            Err(e) => {
                let _ = self.join_network(&entry).await;
                let rec = lock(&entry.record).clone();
                if let Err(ce) = self.teardown(&paths, &rec).await {
                    tracing::warn!(target: "node::engine", sandbox = %id, error = %ce, "cleanup after failed create");
                }
                lock(&self.sandboxes).remove(&id);
                Err(e)
            }
        }
    }

    /// The Pod-level steps. On error the caller tears down what the entry's record says.
    pub(super) async fn prepare_steps(&self, paths: &Paths, mut rec: Record) -> Result<Record> {
        let entry = self.entry(&rec.spec.id)?;
        let tl = entry.timeline.clone();
        let t = Instant::now();
        fs_err::create_dir_all(paths.etc())?;
        self.commit(&entry, &rec)?;
        tl.record("record", t);
        if let Some(m) = rec.spec.runtime_monitoring
            && rec.handler == HandlerKind::Runsc
        {
            let t = Instant::now();
            self.monitoring
                .start(&rec.spec.id, &paths.dir, m)
                .map_err(|e| {
                    NodeError::Io(std::io::Error::new(
                        e.kind(),
                        format!(
                            "starting runtime monitoring of sandbox {}: {e}",
                            rec.spec.display_name()
                        ),
                    ))
                })?;
            tl.record("runtime monitoring", t);
        }
        let t = Instant::now();

        steps::make_volumes(self.host.as_ref(), &rec.spec, |v| {
            self.host_dir(paths, &rec.spec, v)
        })?;
        if let Some(snapshot) = rec.spec.restore_from.clone() {
            self.restore_files(paths, &rec.spec, &snapshot).await?;
        }

        tl.record("volumes", t);
        if let Some(cni) = &self.cni {
            // The network namespace, CNI ADD and the network hook run in the background while
            // the containers' rootfs and bundles are made and the runtime creates them: the
            // runtime's create waits for the namespace (`wait_netns`), every container start
            // for the rest (`join_network`). runsc's sandbox takes the namespace as it is at
            // create, so it waits here.
            let (ready, netns_ready) = tokio::sync::watch::channel(None);
            *lock(&entry.netns_ready) = Some(netns_ready);
            let task = tokio::spawn(attach(
                Arc::clone(&self.host),
                cni.clone(),
                self.hook(),
                rec.spec.clone(),
                rec.netns.clone(),
                tl.clone(),
                ready,
            ));
            *entry.net.lock().await = Some(task);
            if rec.handler == HandlerKind::Runsc {
                self.join_network(&entry).await?;
                rec = lock(&entry.record).clone();
            }
        } else {
            let t = Instant::now();
            self.host.create_netns(&rec.netns)?;
            tl.record("netns", t);
        }
        let t = Instant::now();
        fs_err::write(
            paths.etc().join("hosts"),
            hosts_file(&rec.spec, rec.attachment.as_ref().map(|a| a.ip)),
        )?;
        let hostname = rec
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| rec.spec.name.clone());
        fs_err::write(paths.etc().join("hostname"), format!("{hostname}\n"))?;
        if let Some(dns) = &rec.spec.dns {
            fs_err::write(paths.etc().join("resolv.conf"), resolv_conf(dns))?;
        }
        rec.prepared = true;
        self.commit(&entry, &rec)?;
        tl.record("etc files", t);
        Ok(rec)
    }
}
