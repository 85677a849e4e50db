//! The idle-wake scenario: the first request through the router to a sandbox the router paused
//! for being idle (wake + forward), beside an unpause through the API of the same sandbox (the
//! resume time) and a request to it running (the forward alone), measured in the same run.
//! Target: the first request adds at most the resume time + 10 ms.

use std::time::{Duration, Instant};

use agent_sandbox_api::constants::extensions::annotations::PAUSED;
use agent_sandbox_api::idle::{IDLE_PAUSED, IDLE_TIMEOUT};
use agent_sandbox_api::v1beta1::Sandbox;
use anyhow::Context;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::Row;
use super::fixture::{Fixture, RUN_LABEL};
use super::nodes::delete_sandboxes;
use super::pause::Watched;
use crate::args::{BenchArgs, Scenario};

/// Rounds measured (each waits for the sandbox to go idle: about two seconds).
const MAX_ROUNDS: usize = 10;

pub(super) async fn idle_wake(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let name = format!("bench-idle-{}", f.run_id);
    let mut template = f.pod_template(None);
    template["metadata"]["annotations"][IDLE_TIMEOUT] = json!("1s");
    let sandbox: Sandbox = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": name, "labels": {RUN_LABEL: f.run_id}},
        "spec": {"podTemplate": template},
    }))?;
    let sandboxes: Api<Sandbox> = f.conn.api();
    sandboxes
        .create(&PostParams::default(), &sandbox)
        .await
        .with_context(|| format!("creating sandbox {name}"))?;
    let result = measure(f, args, &name).await;
    delete_sandboxes(f, std::slice::from_ref(&name)).await?;
    result
}

/// One request through the router to `name`'s sandboxd; its time to the whole response.
async fn request(f: &Fixture, name: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut req = f
        .http
        .get(format!("{}/v2/processes", f.router))
        .header("X-Sandbox-ID", name)
        .header("X-Sandbox-Namespace", &f.conn.namespace)
        .header("X-Sandbox-Port", "8080");
    if let Some(token) = &f.token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(
        status.is_success(),
        "request to sandbox {name} through the router: {status} {body}"
    );
    Ok(t.elapsed())
}

async fn measure(f: &Fixture, args: &BenchArgs, name: &str) -> anyhow::Result<Vec<Row>> {
    f.tracker
        .wait(&format!("sandbox/{name}"), Duration::from_secs(60))
        .await?;
    let sandboxes: Api<Sandbox> = f.conn.api();
    let mut watched = Watched::start(sandboxes.clone(), name);
    let idle_wait = Duration::from_secs(30);
    let (mut wakes, mut unpauses, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.iterations.clamp(2, MAX_ROUNDS * 2) {
        // The router pauses it about a second after the last request.
        watched.until(name, true, idle_wait).await?;
        if round % 2 == 0 {
            wakes.push(request(f, name).await?);
            warm.push(request(f, name).await?);
        } else {
            let t = Instant::now();
            let patch = json!({"metadata": {"annotations": {PAUSED: null, IDLE_PAUSED: null}}});
            sandboxes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            watched.until(name, false, idle_wait).await?;
            unpauses.push(t.elapsed());
        }
    }
    Ok(vec![
        Row::latencies(
            Scenario::IdleWake,
            "router: first request to an idle-paused sandbox",
            &wakes,
        )
        .target("≤ unpause + 10 ms"),
        Row::latencies(
            Scenario::IdleWake,
            "baseline: unpause through the API (→ Paused=False)",
            &unpauses,
        ),
        Row::latencies(
            Scenario::IdleWake,
            "baseline: the next request (running)",
            &warm,
        ),
    ])
}
