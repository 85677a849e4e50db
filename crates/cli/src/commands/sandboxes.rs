//! The control-plane verbs: `apply`, `claim`, `get`, `delete`, `suspend`, `resume`, `pause`,
//! `unpause`, `logs`.
//! They act through the API server only.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_sandbox_api::conditions::{find_status_condition, is_status_condition_true};
use agent_sandbox_api::constants::{condition_types, extensions as ext};
use agent_sandbox_api::v1beta1::{
    ClaimShutdownPolicy, EnvVar, Lifecycle, OperatingMode, Sandbox, SandboxClaim, SandboxClaimSpec,
    SandboxTemplate, SandboxWarmPool, SandboxWarmPoolRef,
};
use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, DynamicObject, LogParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::connect::{Connection, ready_message};
use crate::args::{ApplyArgs, ClaimArgs, DeleteArgs, GetArgs, Kind, LogsArgs, Output, TargetArgs};

/// How often waits look again (the embedded API server answers a get in well under 1 ms).
const POLL: Duration = Duration::from_millis(20);

/// Whether the Ready condition is True.
pub(super) fn is_ready(conditions: &[Condition]) -> bool {
    is_status_condition_true(conditions, condition_types::READY)
}

/// Fails unless warm pool `pool` exists in the connection's namespace, naming the pools there.
pub(crate) async fn ensure_pool(conn: &Connection, pool: &str) -> anyhow::Result<()> {
    let pools: Api<SandboxWarmPool> = conn.api();
    if pools.get_opt(pool).await?.is_some() {
        return Ok(());
    }
    let names: Vec<String> = pools
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    anyhow::bail!(
        "no warm pool {}/{pool}; pools in this namespace: {}",
        conn.namespace,
        if names.is_empty() {
            "none (create one with `agent-sandbox apply -f examples/manifests/warmpool.yaml`)"
                .to_owned()
        } else {
            names.join(", ")
        }
    );
}

/// A claim lifecycle that deletes the claim (and its sandbox) `seconds` from now.
pub(crate) fn delete_after(seconds: u64) -> anyhow::Result<Lifecycle> {
    let at = k8s_openapi::jiff::Timestamp::now().checked_add(
        k8s_openapi::jiff::SignedDuration::from_secs(i64::try_from(seconds)?),
    )?;
    Ok(Lifecycle {
        shutdown_time: Some(Time(at)),
        shutdown_policy: Some(ClaimShutdownPolicy::Delete),
        ..Default::default()
    })
}

pub(crate) async fn claim(args: &ClaimArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    ensure_pool(&conn, &args.pool).await?;
    let mut claim = SandboxClaim::new(
        args.name.as_deref().unwrap_or_default(),
        SandboxClaimSpec {
            warm_pool_ref: SandboxWarmPoolRef {
                name: args.pool.clone(),
            },
            ..Default::default()
        },
    );
    if args.name.is_none() {
        claim.meta_mut().generate_name = Some(format!("{}-", args.pool));
    }
    claim.meta_mut().namespace = Some(conn.namespace.clone());
    for pair in &args.labels {
        let (k, v) = super::split_pair(pair, "--label")?;
        claim.labels_mut().insert(k, v);
    }
    for pair in &args.env {
        let (name, value) = super::split_pair(pair, "--env")?;
        claim.spec.env.push(EnvVar {
            name,
            value,
            ..Default::default()
        });
    }
    if let Some(after) = args.shutdown_after {
        claim.spec.lifecycle = Some(delete_after(after).context("--shutdown-after is too large")?);
    }
    let started = Instant::now();
    let claims: Api<SandboxClaim> = conn.api();
    let created = claims
        .create(&PostParams::default(), &claim)
        .await
        .with_context(|| format!("creating a claim on pool {}", args.pool))?;
    let name = created.name_any();
    eprintln!("claim {}/{name} created", conn.namespace);
    if args.timeout == 0 {
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let current = claims.get(&name).await?;
        let status = current.status.unwrap_or_default();
        if is_ready(&status.conditions) {
            eprintln!(
                "claim {name} ready in {:.0?}: sandbox {} (pod IP {})",
                started.elapsed(),
                status.sandbox.name,
                status
                    .sandbox
                    .pod_ips
                    .first()
                    .map_or("none", String::as_str)
            );
            println!("{name}");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "claim {}/{name} is not Ready after {} s: {}; see `agent-sandbox get` and `agent-sandbox logs {name}`, or wait longer with --timeout",
                conn.namespace,
                args.timeout,
                ready_message(Some(&status.conditions))
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(super) fn age(meta: &kube::api::ObjectMeta) -> String {
    let Some(Time(created)) = meta.creation_timestamp.as_ref() else {
        return "-".into();
    };
    let secs = k8s_openapi::jiff::Timestamp::now()
        .duration_since(*created)
        .as_secs()
        .max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn ready_column(conditions: &[Condition]) -> String {
    find_status_condition(conditions, condition_types::READY)
        .map(|c| format!("{} ({})", c.status, c.reason))
        .unwrap_or_else(|| "-".into())
}

/// Prints rows as aligned columns.
pub(super) fn table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

async fn list<K>(conn: &Connection, name: Option<&str>) -> anyhow::Result<Vec<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = conn.api();
    match name {
        Some(n) => Ok(api.get_opt(n).await?.into_iter().collect()),
        None => Ok(api.list(&Default::default()).await?.items),
    }
}

pub(crate) async fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let want = |k: Kind| args.kind == k || args.kind == Kind::All;
    let name = args.name.as_deref();
    let mut objects: Vec<Value> = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut printed = false;
    let mut section = |out: &mut std::io::StdoutLock<'_>,
                       header: &[&str],
                       rows: Vec<Vec<String>>|
     -> std::io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if printed {
            writeln!(out)?;
        }
        printed = true;
        table(out, header, &rows)
    };
    fn keep<T: Serialize>(objects: &mut Vec<Value>, items: &[T]) -> anyhow::Result<()> {
        for i in items {
            objects.push(serde_json::to_value(i)?);
        }
        Ok(())
    }
    if want(Kind::Claims) {
        let items: Vec<SandboxClaim> = list(&conn, name).await?;
        keep(&mut objects, &items)?;
        let rows = items
            .iter()
            .map(|c| {
                let status = c.status.clone().unwrap_or_default();
                vec![
                    format!("claim/{}", c.name_any()),
                    c.spec.warm_pool_ref.name.clone(),
                    if status.sandbox.name.is_empty() {
                        "-".into()
                    } else {
                        status.sandbox.name.clone()
                    },
                    ready_column(&status.conditions),
                    age(c.meta()),
                ]
            })
            .collect();
        if args.output == Output::Table {
            section(&mut out, &["NAME", "POOL", "SANDBOX", "READY", "AGE"], rows)?;
        }
    }
    if want(Kind::Sandboxes) {
        let items: Vec<Sandbox> = list(&conn, name).await?;
        keep(&mut objects, &items)?;
        let rows = items
            .iter()
            .map(|s| {
                let status = s.status.clone().unwrap_or_default();
                vec![
                    format!("sandbox/{}", s.name_any()),
                    format!("{:?}", s.spec.operating_mode()),
                    ready_column(&status.conditions),
                    status
                        .pod_ips
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "-".into()),
                    age(s.meta()),
                ]
            })
            .collect();
        if args.output == Output::Table {
            section(&mut out, &["NAME", "MODE", "READY", "POD IP", "AGE"], rows)?;
        }
    }
    if want(Kind::Pools) {
        let items: Vec<SandboxWarmPool> = list(&conn, name).await?;
        keep(&mut objects, &items)?;
        let rows = items
            .iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                vec![
                    format!("pool/{}", p.name_any()),
                    format!("{}/{}", status.ready_replicas, p.spec.replicas.unwrap_or(1)),
                    p.spec.template_ref.name.clone(),
                    age(p.meta()),
                ]
            })
            .collect();
        if args.output == Output::Table {
            section(&mut out, &["NAME", "READY", "TEMPLATE", "AGE"], rows)?;
        }
    }
    if want(Kind::Templates) {
        let items: Vec<SandboxTemplate> = list(&conn, name).await?;
        keep(&mut objects, &items)?;
        let rows = items
            .iter()
            .map(|t| vec![format!("template/{}", t.name_any()), age(t.meta())])
            .collect();
        if args.output == Output::Table {
            section(&mut out, &["NAME", "AGE"], rows)?;
        }
    }
    if objects.is_empty() {
        match name {
            Some(n) => anyhow::bail!("nothing named {n} in namespace {}", conn.namespace),
            None if args.output == Output::Table => {
                eprintln!("no objects in namespace {}", conn.namespace);
            }
            None => {}
        }
    }
    match args.output {
        Output::Table => {}
        Output::Json if objects.len() == 1 => {
            serde_json::to_writer_pretty(&mut out, &objects[0])?;
            writeln!(out)?;
        }
        Output::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_writer_pretty(&mut out, &list)?;
            writeln!(out)?;
        }
        Output::Yaml => {
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{}", serde_yaml_ng::to_string(o)?)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let mut documents: Vec<(String, Value)> = Vec::new();
    for path in &args.files {
        let text = super::manifests::read(path)?;
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc)
                .with_context(|| format!("{} document {}: not YAML", path.display(), i + 1))?;
            if !value.is_null() {
                documents.push((format!("{} document {}", path.display(), i + 1), value));
            }
        }
    }
    let discovery = Discovery::new(conn.client.clone())
        .run()
        .await
        .context("discovering the API server's resources")?;
    for (origin, value) in documents {
        let mut object: DynamicObject = serde_json::from_value(value)
            .with_context(|| format!("{origin}: not a Kubernetes object"))?;
        let types = object
            .types
            .clone()
            .with_context(|| format!("{origin}: apiVersion and kind are required"))?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| {
            anyhow::anyhow!("{origin}: bad apiVersion {:?}: {e}", types.api_version)
        })?;
        let (resource, caps) = discovery.resolve_gvk(&gvk).with_context(|| {
            format!(
                "{origin}: the API server does not serve {} {}",
                types.api_version, types.kind
            )
        })?;
        let name = object
            .metadata
            .name
            .clone()
            .with_context(|| format!("{origin}: metadata.name is required"))?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| conn.namespace.clone());
            object.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(conn.client.clone(), &ns, &resource)
        } else {
            Api::all_with(conn.client.clone(), &resource)
        };
        let what = format!("{}/{name}", resource.kind.to_lowercase());
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("{origin}: creating {what}"))?;
                println!("{what} created");
            }
            Some(current) => {
                // A merge patch of what the file says: fields it does not mention are kept.
                let mut body = serde_json::to_value(&object)?;
                if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                let patched = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .with_context(|| format!("{origin}: updating {what}"))?;
                if patched.metadata.resource_version == current.metadata.resource_version {
                    println!("{what} unchanged");
                } else {
                    println!("{what} configured");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn delete(args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let claims: Api<SandboxClaim> = conn.api();
    let sandboxes: Api<Sandbox> = conn.api();
    let pods: Api<Pod> = conn.api();
    let started = Instant::now();
    let mut pods_to_go = Vec::new();
    for name in &args.names {
        let foreground = DeleteParams::foreground();
        if let Some(claim) = claims.get_opt(name).await? {
            let sandbox = claim.status.map(|s| s.sandbox.name).unwrap_or_default();
            claims.delete(name, &foreground).await?;
            println!("claim/{name} deleted");
            if !sandbox.is_empty() {
                pods_to_go.push(sandbox);
            }
        } else if sandboxes.get_opt(name).await?.is_some() {
            sandboxes.delete(name, &foreground).await?;
            println!("sandbox/{name} deleted");
            pods_to_go.push(name.clone());
        } else {
            anyhow::bail!(
                "no claim or sandbox named {name} in namespace {}; list them with `agent-sandbox get`",
                conn.namespace
            );
        }
    }
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    // Strict 1:1 mapping: a sandbox's Pod has its name.
    let deadline = started + Duration::from_secs(args.timeout);
    for pod in pods_to_go {
        while pods.get_opt(&pod).await?.is_some() || sandboxes.get_opt(&pod).await?.is_some() {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "sandbox {pod} is still terminating after {} s; it finishes in the background",
                    args.timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    eprintln!("gone in {:.0?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

async fn set_mode(args: &TargetArgs, mode: OperatingMode) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let name = conn.resolve_sandbox(&args.name).await?.name_any();
    let took = set_operating_mode(&conn, &name, mode, args.timeout).await?;
    eprintln!("sandbox {}/{name}: {mode:?}", conn.namespace);
    if let Some(took) = took {
        eprintln!("done in {took:.0?}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets sandbox `name`'s operating mode and waits up to `timeout_s` seconds until its Pod is
/// gone (Suspended) or it is Ready (Running): the time it took, `None` when not waited for
/// (`timeout_s` 0).
pub(crate) async fn set_operating_mode(
    conn: &Connection,
    name: &str,
    mode: OperatingMode,
    timeout_s: u64,
) -> anyhow::Result<Option<Duration>> {
    let sandboxes: Api<Sandbox> = conn.api();
    let pods: Api<Pod> = conn.api();
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"operatingMode": mode}});
    sandboxes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting sandbox {name} to {mode:?}"))?;
    if timeout_s == 0 {
        return Ok(None);
    }
    let deadline = started + Duration::from_secs(timeout_s);
    loop {
        let done = match mode {
            OperatingMode::Suspended => pods.get_opt(name).await?.is_none(),
            OperatingMode::Running => sandboxes
                .get(name)
                .await?
                .status
                .is_some_and(|s| is_ready(&s.conditions)),
        };
        if done {
            return Ok(Some(started.elapsed()));
        }
        if Instant::now() >= deadline {
            let status = sandboxes.get(name).await?.status;
            anyhow::bail!(
                "sandbox {name} did not become {mode:?} within {timeout_s} s: {}",
                ready_message(status.as_ref().map(|s| s.conditions.as_slice()))
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) async fn suspend(args: &TargetArgs) -> anyhow::Result<ExitCode> {
    set_mode(args, OperatingMode::Suspended).await
}

pub(crate) async fn resume(args: &TargetArgs) -> anyhow::Result<ExitCode> {
    set_mode(args, OperatingMode::Running).await
}

/// The pause extension's annotation patch: `"true"` to pause, removed to unpause.
pub(crate) fn paused_patch(paused: bool) -> serde_json::Value {
    let value = paused.then_some(ext::PAUSED_TRUE);
    serde_json::json!({"metadata": {"annotations": {ext::annotations::PAUSED: value}}})
}

/// Where a Sandbox's `Paused` condition stands against what was asked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PauseProgress {
    /// The condition says what was asked.
    Done,
    /// Not yet.
    Waiting,
    /// It will not happen: the message says why.
    Refused(String),
}

/// Reads the `Paused` condition of a Sandbox's status against `paused` (what was asked).
pub(crate) fn pause_progress(conditions: &[Condition], paused: bool) -> PauseProgress {
    let Some(c) = find_status_condition(conditions, ext::condition_types::PAUSED) else {
        // Never paused: unpausing is already done; pausing waits for the controller.
        return if paused {
            PauseProgress::Waiting
        } else {
            PauseProgress::Done
        };
    };
    match (paused, c.status.as_str(), c.reason.as_str()) {
        (true, "True", r) if r == ext::reasons::SANDBOX_PAUSED => PauseProgress::Done,
        (true, "False", r) if r == ext::reasons::NO_POD_TO_PAUSE => {
            PauseProgress::Refused(c.message.clone())
        }
        (false, "False", _) => PauseProgress::Done,
        _ => PauseProgress::Waiting,
    }
}

/// `pause` (`paused`) and `unpause`: set or remove the annotation, then wait until the
/// Sandbox's `Paused` condition shows it.
pub(crate) async fn pause(args: &TargetArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let name = conn.resolve_sandbox(&args.name).await?.name_any();
    match set_paused(&conn, &name, paused, args.timeout).await? {
        None => eprintln!(
            "sandbox {}/{name}: asked to {}",
            conn.namespace,
            if paused { "pause" } else { "unpause" }
        ),
        Some(took) => eprintln!(
            "sandbox {}/{name}: {} in {took:.1?}",
            conn.namespace,
            if paused { "paused" } else { "running" },
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses (or unpauses) sandbox `name` and waits up to `timeout_s` seconds for its `Paused`
/// condition to say so: the time it took, `None` when not waited for (`timeout_s` 0).
pub(crate) async fn set_paused(
    conn: &Connection,
    name: &str,
    paused: bool,
    timeout_s: u64,
) -> anyhow::Result<Option<Duration>> {
    let verb = if paused { "pause" } else { "unpause" };
    let sandboxes: Api<Sandbox> = conn.api();
    let started = Instant::now();
    sandboxes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&paused_patch(paused)),
        )
        .await
        .with_context(|| format!("annotating sandbox {}/{name} to {verb} it", conn.namespace))?;
    if timeout_s == 0 {
        return Ok(None);
    }
    let deadline = started + Duration::from_secs(timeout_s);
    loop {
        let sb = sandboxes.get(name).await?;
        let conditions = sb.status.map(|s| s.conditions).unwrap_or_default();
        match pause_progress(&conditions, paused) {
            PauseProgress::Done => return Ok(Some(started.elapsed())),
            PauseProgress::Refused(why) => {
                anyhow::bail!("cannot pause sandbox {}/{name}: {why}", conn.namespace)
            }
            PauseProgress::Waiting => {}
        }
        if Instant::now() >= deadline {
            let why = find_status_condition(&conditions, ext::condition_types::PAUSED)
                .map(|c| format!("{} ({})", c.message, c.reason))
                .unwrap_or_else(|| "the controller has not reported a Paused condition".into());
            anyhow::bail!(
                "sandbox {}/{name} did not {verb} within {timeout_s} s: {why}",
                conn.namespace,
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) async fn logs(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let sandbox = conn.resolve_sandbox(&args.name).await?;
    let name = sandbox.name_any();
    let pods: Api<Pod> = conn.api();
    let Some(pod) = pods.get_opt(&name).await? else {
        anyhow::bail!(
            "sandbox {name} has no Pod (suspended, or not started yet); `agent-sandbox get sandboxes {name}` shows why"
        );
    };
    if args.runtime_events {
        let dir = args
            .connect
            .data_dir
            .join("node/sandboxes")
            .join(pod.uid().unwrap_or_default());
        return runtime_events(&name, &agent_sandbox_node::monitor::log_path(&dir), args).await;
    }
    let params = LogParams {
        tail_lines: args.tail,
        follow: args.follow,
        previous: args.previous,
        container: args.container.clone(),
        ..LogParams::default()
    };
    let mut stream = pods
        .log_stream(&name, &params)
        .await
        .with_context(|| format!("reading the log of sandbox {name}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        use futures::AsyncReadExt;
        let n = stream
            .read(&mut buf)
            .await
            .with_context(|| format!("reading the log of sandbox {name}"))?;
        if n == 0 {
            break;
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `logs --runtime-events`: the sandbox's JSON event log, its last `--tail` lines, then with
/// `--follow` what is appended until the sandbox (and its log) is removed.
async fn runtime_events(
    name: &str,
    path: &std::path::Path,
    args: &LogsArgs,
) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "sandbox {name} has no runtime event log at {} ({e}); it needs runtimeClassName gvisor and the annotation agent-sandbox-rs.github.io/runtime-monitoring: log (or `up --runtime-monitoring log`), and this command must run as root on the machine of `agent-sandbox up` with its --data-dir",
            path.display()
        )
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let skip = match args.tail {
        Some(n) if n >= 0 => lines.len().saturating_sub(n as usize),
        _ => 0,
    };
    {
        let mut out = std::io::stdout().lock();
        for l in &lines[skip..] {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut pos = file.stream_position()?;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(ExitCode::SUCCESS);
        };
        if meta.len() < pos {
            // Rotated: the new file starts from its beginning.
            file = std::fs::File::open(path)?;
            pos = 0;
        }
        file.seek(std::io::SeekFrom::Start(pos))?;
        let mut more = Vec::new();
        file.read_to_end(&mut more)?;
        pos += more.len() as u64;
        let mut out = std::io::stdout().lock();
        out.write_all(&more)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: ext::condition_types::PAUSED.into(),
            status: status.into(),
            reason: reason.into(),
            message: "why".into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }]
    }

    #[test]
    fn pause_progress_reads_the_paused_condition() {
        use PauseProgress::*;
        assert_eq!(pause_progress(&[], true), Waiting);
        assert_eq!(pause_progress(&[], false), Done);
        let paused = cond("True", ext::reasons::SANDBOX_PAUSED);
        assert_eq!(pause_progress(&paused, true), Done);
        assert_eq!(pause_progress(&paused, false), Waiting);
        let unpausing = cond("True", ext::reasons::SANDBOX_UNPAUSING);
        assert_eq!(pause_progress(&unpausing, true), Waiting);
        let running = cond("False", ext::reasons::SANDBOX_RUNNING);
        assert_eq!(pause_progress(&running, false), Done);
        assert_eq!(pause_progress(&running, true), Waiting);
        let no_pod = cond("False", ext::reasons::NO_POD_TO_PAUSE);
        assert_eq!(pause_progress(&no_pod, true), Refused("why".into()));
        assert_eq!(
            pause_progress(&cond("False", ext::reasons::PAUSE_FAILED), true),
            Waiting
        );
        assert_eq!(
            paused_patch(false),
            serde_json::json!({"metadata": {"annotations": {"agent-sandbox-rs.github.io/paused": null}}})
        );
    }
}
