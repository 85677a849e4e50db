//! The MCP server's lifecycle tools (this project's): `pause_sandbox`, `unpause_sandbox`,
//! `snapshot_sandbox`, `fork_sandbox` and `restore_sandbox`, over the same code as the CLI's
//! `pause`, `unpause`, `snapshot create`, `fork` and `restore`.

use std::time::Instant;

use agent_sandbox_api::extension::SandboxSnapshot;
use kube::ResourceExt;
use kube::api::PostParams;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{ErrorData as McpError, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tools::{SandboxTools, TargetArgs, answer};
use crate::commands::fork::{fork_sandboxes, roll_back};
use crate::commands::sandboxes::set_paused;
use crate::commands::snapshot::{new_snapshot, size, wait_ready};

/// How long the lifecycle tools wait, in seconds.
const WAIT: u64 = 600;

/// `snapshot_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SnapshotArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// The snapshot's name (default: the sandbox's name and a generated suffix).
    name: Option<String>,
}

/// `fork_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ForkArgs {
    /// The claim (or Sandbox) name to fork.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// How many forks (default 1).
    #[serde(default = "one")]
    count: usize,
    /// Fork from this Ready snapshot instead of taking one now.
    snapshot: Option<String>,
    /// Name the forks `<name>-1` … (default: the snapshot's name).
    name: Option<String>,
}

fn one() -> usize {
    1
}

/// `restore_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct RestoreArgs {
    /// The claim (or Sandbox) name to roll back.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// The snapshot to roll back to.
    snapshot: String,
}

#[tool_router(router = lifecycle_router, vis = "pub(crate)")]
impl SandboxTools {
    #[tool(
        description = "Pause a sandbox: every process is frozen, memory kept, no CPU used; unpause_sandbox thaws it where it was."
    )]
    async fn pause_sandbox(
        &self,
        Parameters(a): Parameters<TargetArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.pause(a, true).await)
    }

    #[tool(description = "Unpause a paused sandbox: its processes go on where they were.")]
    async fn unpause_sandbox(
        &self,
        Parameters(a): Parameters<TargetArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.pause(a, false).await)
    }

    #[tool(
        description = "Snapshot a sandbox (its writable filesystem layer and volumes' data, memory too under gVisor where it can) and wait until the snapshot is Ready. Returns its name, kind and size; fork_sandbox and restore_sandbox take it."
    )]
    async fn snapshot_sandbox(
        &self,
        Parameters(a): Parameters<SnapshotArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.snapshot(a).await)
    }

    #[tool(
        description = "Fork a sandbox: count new sandboxes started from a snapshot of it (taken now, or the given one), each with its own name and address; processes start afresh. Returns the forks' names, which the other tools take as sandbox_claim_name; delete them with delete_sandbox."
    )]
    async fn fork_sandbox(
        &self,
        Parameters(a): Parameters<ForkArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.fork(a).await)
    }

    #[tool(
        description = "Roll a sandbox back to a snapshot: its files and volumes' data as they were then (processes start afresh)."
    )]
    async fn restore_sandbox(
        &self,
        Parameters(a): Parameters<RestoreArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.restore(a).await)
    }
}

impl SandboxTools {
    async fn pause(&self, a: TargetArgs, paused: bool) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let name = conn
            .resolve_sandbox(&a.sandbox_claim_name)
            .await?
            .name_any();
        let took = set_paused(&conn, &name, paused, WAIT).await?;
        Ok(json!({
            "sandbox": name,
            "paused": paused,
            "seconds": took.map(|d| d.as_secs_f64()),
        }))
    }

    async fn snapshot(&self, a: SnapshotArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let sandbox = conn
            .resolve_sandbox(&a.sandbox_claim_name)
            .await?
            .name_any();
        let started = Instant::now();
        let created = conn
            .api::<SandboxSnapshot>()
            .create(
                &PostParams::default(),
                &new_snapshot(&sandbox, a.name.as_deref()),
            )
            .await?;
        let snap = wait_ready(&conn, &created.name_any(), started, WAIT).await?;
        let st = snap.status.clone().unwrap_or_default();
        Ok(json!({
            "snapshot": snap.name_any(),
            "sandbox": sandbox,
            "kind": st.kind.map(|k| k.as_str()),
            "size": size(st.size_bytes),
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    async fn fork(&self, a: ForkArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let source = conn.resolve_sandbox(&a.sandbox_claim_name).await?;
        let forked = fork_sandboxes(
            &conn,
            &source,
            a.snapshot.as_deref(),
            a.count,
            a.name.as_deref(),
            WAIT,
        )
        .await?;
        let forks: Vec<Value> = forked
            .forks
            .iter()
            .map(|(n, ip)| json!({"sandbox_claim_name": n, "pod_ip": ip}))
            .collect();
        Ok(json!({
            "snapshot": forked.snapshot,
            "forks": forks,
            "seconds": forked.ready_in.as_secs_f64(),
        }))
    }

    async fn restore(&self, a: RestoreArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let name = conn
            .resolve_sandbox(&a.sandbox_claim_name)
            .await?
            .name_any();
        let took = roll_back(&conn, &name, &a.snapshot, WAIT).await?;
        Ok(json!({
            "sandbox": name,
            "snapshot": a.snapshot,
            "seconds": took.as_secs_f64(),
        }))
    }
}
