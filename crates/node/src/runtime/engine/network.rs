//! The network of a sandbox: its namespace, CNI ADD and the network hook, made in the
//! background while the containers are prepared, and joined before any container starts.

use super::*;

/// Called by the engine around a sandbox's network: `attached` after CNI ADD, while the
/// runtime may be creating the container but before any container starts (an error removes
/// the sandbox), `detached` after CNI DEL. The node's NetworkPolicy enforcer
/// ([`crate::firewall::PolicyEnforcer`]) is one.
pub trait NetworkHook: Send + Sync {
    /// The sandbox got its address; nothing runs in it yet.
    fn attached<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        attachment: &'a Attachment,
    ) -> futures::future::BoxFuture<'a, Result<()>>;
    /// The sandbox's network is gone.
    fn detached<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, ()>;
}

/// What the background network attachment of a sandbox produced.
pub(super) struct NetOutcome {
    /// The CNI result, when ADD succeeded (kept even if the hook failed, so that teardown
    /// releases it).
    attachment: Option<Attachment>,
    /// The first error: CNI ADD or the network hook.
    result: Result<()>,
}

/// The sandbox's network namespace (`ready` says when it exists), CNI ADD in it, then the
/// network hook (the firewall's rebuild starts).
pub(super) async fn attach(
    host: Arc<dyn Host>,
    cni: Cni,
    hook: Option<Arc<dyn NetworkHook>>,
    spec: SandboxSpec,
    netns: PathBuf,
    tl: Timeline,
    ready: tokio::sync::watch::Sender<Option<bool>>,
) -> NetOutcome {
    let t = Instant::now();
    let ns = netns.clone();
    let made = tokio::task::spawn_blocking(move || host.create_netns(&ns))
        .await
        .unwrap_or_else(|e| {
            Err(NodeError::Config(format!(
                "creating the network namespace failed: {e}"
            )))
        });
    tl.record("netns", t);
    let _ = ready.send(Some(made.is_ok()));
    if let Err(e) = made {
        return NetOutcome {
            attachment: None,
            result: Err(e),
        };
    }
    let t = Instant::now();
    let att = match cni.add(&spec.id, &netns, &spec.host_ports).await {
        Ok(a) => a,
        Err(e) => {
            return NetOutcome {
                attachment: None,
                result: Err(e),
            };
        }
    };
    tl.record("cni add", t);
    let mut result = Ok(());
    if let Some(hook) = hook {
        let t = Instant::now();
        result = hook.attached(&spec, &att).await;
        tl.record("network hook", t);
    }
    NetOutcome {
        attachment: Some(att),
        result,
    }
}

impl SandboxEngine {
    /// The pod IP of a sandbox once its network is attached (waits for an attachment in
    /// flight). If the attachment failed, the sandbox is removed and the error returned.
    pub async fn wait_pod_ip(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        if let Err(e) = self.join_network(&entry).await {
            self.drop_if_network_failed(&entry).await;
            return Err(e);
        }
        Ok(lock(&entry.record).attachment.as_ref().map(|a| a.ip))
    }

    /// Wait until the sandbox's network namespace exists (the runtime joins it at create). If it
    /// could not be made, the attachment's error.
    pub(super) async fn wait_netns(&self, entry: &Entry) -> Result<()> {
        let rx = lock(&entry.netns_ready).clone();
        let Some(mut rx) = rx else {
            return Ok(());
        };
        let made = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if made {
            return Ok(());
        }
        self.join_network(entry).await?;
        entry
            .net_failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Err(NodeError::Config(format!(
            "sandbox {}: its network namespace was not made",
            lock(&entry.record).spec.id
        )))
    }

    /// Wait for the sandbox's background network attachment, if one is in flight, and record
    /// what it made (the attachment in the record, the pod IP in `/etc/hosts`: the file is
    /// rewritten in place, so containers created meanwhile see it through their bind mount).
    /// An error means the sandbox has no network and must not run: the caller removes it.
    pub(super) async fn join_network(&self, entry: &Entry) -> Result<()> {
        let mut slot = entry.net.lock().await;
        let Some(task) = slot.as_mut() else {
            return Ok(());
        };
        let out = task.await.unwrap_or_else(|e| NetOutcome {
            attachment: None,
            result: Err(NodeError::Config(format!(
                "the network attachment task failed: {e}"
            ))),
        });
        *slot = None;
        if out.result.is_err() {
            entry
                .net_failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(att) = out.attachment {
            let mut rec = lock(&entry.record).clone();
            rec.attachment = Some(att);
            self.commit(entry, &rec)?;
            fs_err::write(
                self.paths(&rec.spec.id).etc().join("hosts"),
                hosts_file(&rec.spec, rec.attachment.as_ref().map(|a| a.ip)),
            )?;
        }
        out.result
    }

    /// After a failed container create or start: when the sandbox's network failed, remove
    /// the whole sandbox (it cannot run; a new one is made on the next try).
    pub(super) async fn drop_if_network_failed(&self, entry: &Entry) {
        if !entry.net_failed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let rec = lock(&entry.record).clone();
        let id = rec.spec.id.clone();
        if let Err(e) = self.teardown(&self.paths(&id), &rec).await {
            tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "removing a sandbox whose network failed");
        }
        lock(&self.sandboxes).remove(&id);
    }
}
