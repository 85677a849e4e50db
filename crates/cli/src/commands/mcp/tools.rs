//! The MCP server's tools: upstream's (`create_sandbox`, `delete_sandbox`, `execute_command`,
//! `upload_file`, `download_file`, `list_files`, `file_exists`, with upstream's argument names)
//! and this project's (`run_code`, `suspend_sandbox`, `resume_sandbox`, `list_sandboxes`; the
//! pause, snapshot, fork and rollback tools are in [`super::lifecycle`]). Each
//! tool parses its arguments, calls the control plane or the sandbox's sandboxd through the
//! router, and answers with structured content; a failure is a tool error whose text says what
//! happened and what to do, so the model can act on it.

use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::{
    OperatingMode, PodMetadata, Sandbox, SandboxClaim, SandboxClaimSpec, SandboxWarmPoolRef,
};
use anyhow::Context;
use base64::Engine;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use reqwest::{Method, StatusCode};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData as McpError, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::commands::connect::Connection;
use crate::commands::data_plane::{SandboxdClient, files_url, percent_encode};
use crate::commands::sandboxes::{delete_after, ensure_pool, is_ready};

/// The most entries `list_files` returns (upstream's bound).
const MAX_LIST_ENTRIES: usize = 10_000;

/// The tool set, over one connection to the control plane and the router.
#[derive(Clone)]
pub(crate) struct SandboxTools {
    conn: Connection,
    tool_router: ToolRouter<Self>,
}

fn default_ready_timeout() -> u64 {
    180
}
fn default_shutdown_after() -> Option<u64> {
    Some(300)
}
fn default_timeout() -> u64 {
    60
}
fn default_max_entries() -> usize {
    1000
}
fn default_language() -> String {
    "python".into()
}

/// `create_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct CreateArgs {
    /// The SandboxWarmPool to claim a sandbox from.
    warmpool: String,
    /// Namespace of the pool and the claim (default: the server's namespace).
    namespace: Option<String>,
    /// Seconds to wait for the sandbox to be Ready.
    #[serde(default = "default_ready_timeout")]
    sandbox_ready_timeout: u64,
    /// Labels of the claim.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Delete the claim (and its sandbox) this many seconds after creation; null: never.
    #[serde(default = "default_shutdown_after")]
    shutdown_after_seconds: Option<u64>,
    /// Labels added to the sandbox's Pod.
    #[serde(default)]
    pod_labels: BTreeMap<String, String>,
    /// Annotations added to the sandbox's Pod.
    #[serde(default)]
    pod_annotations: BTreeMap<String, String>,
}

/// Arguments that name a sandbox by its claim.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct TargetArgs {
    /// The claim (or Sandbox) name.
    pub(super) sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    pub(super) namespace: Option<String>,
}

/// `execute_command`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ExecuteArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// A shell command line (run with /bin/sh -c).
    command: String,
    /// Seconds before the command is killed.
    #[serde(default = "default_timeout")]
    timeout: u64,
}

/// `upload_file`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct UploadArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// The file's path in the sandbox.
    path: String,
    /// The content: text, or base64 when `binary` is true.
    content: String,
    /// Whether `content` is base64-encoded bytes.
    #[serde(default)]
    binary: bool,
    /// Seconds before the request gives up.
    #[serde(default = "default_timeout")]
    timeout: u64,
}

/// `download_file`'s and `file_exists`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct PathArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// A path in the sandbox.
    path: String,
    /// Return the content base64-encoded (for files that are not UTF-8 text).
    #[serde(default)]
    binary: bool,
    /// Seconds before the request gives up.
    #[serde(default = "default_timeout")]
    timeout: u64,
}

/// `list_files`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ListArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// The directory in the sandbox.
    path: String,
    /// Seconds before the request gives up.
    #[serde(default = "default_timeout")]
    timeout: u64,
    /// The most entries to return (at most 10000).
    #[serde(default = "default_max_entries")]
    max_entries: usize,
}

/// `run_code`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct RunCodeArgs {
    /// The claim (or Sandbox) name.
    sandbox_claim_name: String,
    /// Its namespace (default: the server's namespace).
    namespace: Option<String>,
    /// The code to run.
    code: String,
    /// python, javascript or bash.
    #[serde(default = "default_language")]
    language: String,
    /// A persistent context (its variables survive between calls); default: the language's.
    context: Option<String>,
    /// Seconds before the cell is interrupted.
    #[serde(default = "default_timeout")]
    timeout: u64,
}

/// `list_sandboxes`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct NamespaceArgs {
    /// The namespace (default: the server's namespace).
    namespace: Option<String>,
}

/// A tool failure the model reads: what happened and what to do.
fn failure(e: &anyhow::Error) -> CallToolResult {
    CallToolResult::structured_error(json!({"error": format!("{e:#}")}))
}

pub(super) fn answer(r: anyhow::Result<Value>) -> Result<CallToolResult, McpError> {
    Ok(match r {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => failure(&e),
    })
}

#[tool_router]
impl SandboxTools {
    pub(crate) fn new(conn: Connection) -> Self {
        SandboxTools {
            conn,
            tool_router: Self::tool_router() + Self::lifecycle_router(),
        }
    }

    pub(super) fn conn(&self, namespace: Option<&str>) -> Connection {
        match namespace {
            Some(ns) if !ns.is_empty() => self.conn.in_namespace(ns),
            _ => self.conn.clone(),
        }
    }

    async fn sandboxd(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> anyhow::Result<SandboxdClient> {
        SandboxdClient::for_sandbox(&self.conn(namespace), name).await
    }

    #[tool(
        description = "Claim a new sandbox from a warm pool and wait until it is Ready. Returns the claim name, which the other tools take as sandbox_claim_name."
    )]
    async fn create_sandbox(
        &self,
        Parameters(a): Parameters<CreateArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.create(a).await)
    }

    #[tool(description = "Delete a sandbox claim and its sandbox.")]
    async fn delete_sandbox(
        &self,
        Parameters(a): Parameters<TargetArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.delete(a).await)
    }

    #[tool(
        description = "Run a shell command in a sandbox. Returns exit_code, stdout and stderr (and timed_out when it was killed)."
    )]
    async fn execute_command(
        &self,
        Parameters(a): Parameters<ExecuteArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.execute(a).await)
    }

    #[tool(
        description = "Write a file in a sandbox (text, or base64 with binary=true); parent directories are created. Returns the number of bytes written."
    )]
    async fn upload_file(
        &self,
        Parameters(a): Parameters<UploadArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.upload(a).await)
    }

    #[tool(
        description = "Read a file from a sandbox (text, or base64 with binary=true). Returns its content and size."
    )]
    async fn download_file(
        &self,
        Parameters(a): Parameters<PathArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.download(a).await)
    }

    #[tool(
        description = "List a directory in a sandbox: entries with name, size, type (file or directory) and mod_time, total_entries and truncated."
    )]
    async fn list_files(
        &self,
        Parameters(a): Parameters<ListArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.list(a).await)
    }

    #[tool(
        description = "Whether a file or directory exists in a sandbox (a missing path is exists=false, not an error)."
    )]
    async fn file_exists(
        &self,
        Parameters(a): Parameters<PathArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.exists(a).await)
    }

    #[tool(
        description = "Run code in a persistent interpreter in a sandbox (python, javascript or bash): variables survive between calls in the same context. Returns stdout, stderr, results (the last expression's value), error and status."
    )]
    async fn run_code(
        &self,
        Parameters(a): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.code(a).await)
    }

    #[tool(
        description = "Suspend a sandbox: its Pod is deleted, its volumes are kept; resume_sandbox starts it again."
    )]
    async fn suspend_sandbox(
        &self,
        Parameters(a): Parameters<TargetArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.set_mode(a, OperatingMode::Suspended).await)
    }

    #[tool(description = "Resume a suspended sandbox and wait until it is Ready again.")]
    async fn resume_sandbox(
        &self,
        Parameters(a): Parameters<TargetArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.set_mode(a, OperatingMode::Running).await)
    }

    #[tool(
        description = "List the sandbox claims of a namespace with their sandbox and readiness."
    )]
    async fn list_sandboxes(
        &self,
        Parameters(a): Parameters<NamespaceArgs>,
    ) -> Result<CallToolResult, McpError> {
        answer(self.list_claims(a).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "agent-sandbox",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Sandboxes for running code: create_sandbox claims one from a warm pool; \
                 execute_command, run_code and the file tools act in it by its claim name; \
                 delete_sandbox when done.",
            )
    }
}

impl SandboxTools {
    async fn create(&self, a: CreateArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        ensure_pool(&conn, &a.warmpool).await?;
        let mut claim = SandboxClaim::new(
            "",
            SandboxClaimSpec {
                warm_pool_ref: SandboxWarmPoolRef {
                    name: a.warmpool.clone(),
                },
                additional_pod_metadata: PodMetadata {
                    labels: a.pod_labels,
                    annotations: a.pod_annotations,
                },
                ..Default::default()
            },
        );
        let meta = claim.meta_mut();
        meta.generate_name = Some(format!("{}-", a.warmpool));
        meta.namespace = Some(conn.namespace.clone());
        meta.labels = Some(a.labels.into_iter().collect());
        if let Some(after) = a.shutdown_after_seconds {
            claim.spec.lifecycle =
                Some(delete_after(after).context("shutdown_after_seconds is too large")?);
        }
        let started = Instant::now();
        let claims: kube::Api<SandboxClaim> = conn.api();
        let name = claims
            .create(&PostParams::default(), &claim)
            .await
            .with_context(|| format!("creating a claim on pool {}", a.warmpool))?
            .name_any();
        let deadline = started + Duration::from_secs(a.sandbox_ready_timeout);
        loop {
            let status = claims.get(&name).await?.status.unwrap_or_default();
            if is_ready(&status.conditions) {
                return Ok(json!({
                    "sandbox_claim_name": name,
                    "namespace": conn.namespace,
                    "sandbox": status.sandbox.name,
                    "ready_seconds": started.elapsed().as_secs_f64(),
                }));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "claim {}/{name} is not Ready after {} s: {}; it stays (delete it with delete_sandbox)",
                    conn.namespace,
                    a.sandbox_ready_timeout,
                    crate::commands::connect::ready_message(Some(&status.conditions))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn delete(&self, a: TargetArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let claims: kube::Api<SandboxClaim> = conn.api();
        let sandboxes: kube::Api<Sandbox> = conn.api();
        let name = &a.sandbox_claim_name;
        let dp = DeleteParams::foreground();
        let started = Instant::now();
        let is_claim = claims.get_opt(name).await?.is_some();
        if is_claim {
            claims.delete(name, &dp).await?;
        } else if sandboxes.get_opt(name).await?.is_some() {
            sandboxes.delete(name, &dp).await?;
        } else {
            anyhow::bail!(
                "no claim or sandbox named {name} in namespace {}; list them with list_sandboxes",
                conn.namespace
            );
        }
        // Foreground deletion: the object goes once its sandbox (and Pod) has.
        let deadline = started + Duration::from_secs(default_ready_timeout());
        loop {
            let present = if is_claim {
                claims.get_opt(name).await?.is_some()
            } else {
                sandboxes.get_opt(name).await?.is_some()
            };
            if !present {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{name} in namespace {} is still being deleted after {} s; it finishes in the background",
                    conn.namespace,
                    default_ready_timeout()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(json!({
            "deleted": name,
            "namespace": conn.namespace,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    async fn execute(&self, a: ExecuteArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let body = json!({"command": a.command, "timeout": a.timeout});
        let out: Value = c
            .send(
                c.request(Method::POST, "/v2/exec")
                    .header("Accept", "application/json")
                    .timeout(request_timeout(a.timeout))
                    .json(&body),
                "exec",
            )
            .await?
            .json()
            .await
            .context("reading the command's result")?;
        Ok(json!({
            "exit_code": out["exit_code"],
            "stdout": out["stdout"],
            "stderr": out["stderr"],
            "timed_out": out["timed_out"],
            "truncated": out["truncated"],
        }))
    }

    async fn upload(&self, a: UploadArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let data = if a.binary {
            base64::engine::general_purpose::STANDARD
                .decode(a.content.as_bytes())
                .context("content is not valid base64 (binary is true)")?
        } else {
            a.content.into_bytes()
        };
        let bytes = data.len();
        c.send(
            c.request(Method::PUT, &files_url(&a.path))
                .timeout(request_timeout(a.timeout))
                .body(data),
            &format!("writing {}", a.path),
        )
        .await?;
        Ok(json!({"path": a.path, "bytes_written": bytes}))
    }

    async fn download(&self, a: PathArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let data = c
            .send(
                c.request(Method::GET, &files_url(&a.path))
                    .timeout(request_timeout(a.timeout)),
                &format!("reading {}", a.path),
            )
            .await?
            .bytes()
            .await
            .with_context(|| format!("reading {}", a.path))?;
        let content = if a.binary {
            base64::engine::general_purpose::STANDARD.encode(&data)
        } else {
            String::from_utf8(data.to_vec()).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not UTF-8 text; download it with binary=true (base64)",
                    a.path
                )
            })?
        };
        Ok(json!({"path": a.path, "content": content, "size": data.len(), "binary": a.binary}))
    }

    async fn list(&self, a: ListArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let max = a.max_entries.min(MAX_LIST_ENTRIES);
        let listing: Value = c
            .send(
                c.request(Method::GET, &files_url(&a.path))
                    .header("Accept", "application/json")
                    .timeout(request_timeout(a.timeout)),
                &format!("listing {}", a.path),
            )
            .await?
            .json()
            .await
            .with_context(|| {
                format!("{} is not a directory; read it with download_file", a.path)
            })?;
        let all = listing["entries"].as_array().cloned().unwrap_or_default();
        let entries: Vec<Value> = all
            .iter()
            .take(max)
            .map(|e| {
                json!({
                    "name": e["name"],
                    "size": e["size"],
                    "type": if e["type"] == "directory" { "directory" } else { "file" },
                    "mod_time": e["modified_at"].as_str()
                        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                        .map(|t| t.as_millisecond() as f64 / 1000.0),
                })
            })
            .collect();
        Ok(json!({
            "path": a.path,
            "entries": entries,
            "total_entries": all.len(),
            "truncated": all.len() > entries.len(),
        }))
    }

    async fn exists(&self, a: PathArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let what = format!("stat {}", a.path);
        let url = format!("/v2/files/stat?path={}", percent_encode(&a.path, true));
        let resp = c
            .send_unchecked(
                c.request(Method::GET, &url)
                    .timeout(request_timeout(a.timeout)),
                &what,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(json!({"path": a.path, "exists": false}));
        }
        let stat: Value = c.check(resp, &what).await?.json().await?;
        Ok(json!({"path": a.path, "exists": true, "type": stat["type"]}))
    }

    async fn code(&self, a: RunCodeArgs) -> anyhow::Result<Value> {
        let c = self
            .sandboxd(&a.sandbox_claim_name, a.namespace.as_deref())
            .await?;
        let mut body = json!({"code": a.code, "language": a.language, "timeout": a.timeout});
        if let Some(ctx) = a.context {
            body["context"] = Value::String(ctx);
        }
        c.send(
            c.request(Method::POST, "/v2/code/run")
                .header("Accept", "application/json")
                .timeout(request_timeout(a.timeout))
                .json(&body),
            "run_code",
        )
        .await?
        .json()
        .await
        .context("reading the cell's result")
    }

    async fn set_mode(&self, a: TargetArgs, mode: OperatingMode) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let sandbox = conn.resolve_sandbox(&a.sandbox_claim_name).await?;
        let name = sandbox.name_any();
        let sandboxes: kube::Api<Sandbox> = conn.api();
        sandboxes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"operatingMode": mode}})),
            )
            .await
            .with_context(|| format!("setting sandbox {name} to {mode:?}"))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(default_ready_timeout());
        loop {
            let sb = sandboxes.get(&name).await?;
            let conditions = sb.status.map(|s| s.conditions).unwrap_or_default();
            let done = match mode {
                OperatingMode::Running => is_ready(&conditions),
                _ => conditions
                    .iter()
                    .any(|c| c.type_ == "Suspended" && c.status == "True"),
            };
            if done {
                return Ok(json!({
                    "sandbox": name,
                    "operating_mode": mode,
                    "seconds": started.elapsed().as_secs_f64(),
                }));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "sandbox {}/{name} did not reach {mode:?} in {} s: {}",
                    conn.namespace,
                    default_ready_timeout(),
                    crate::commands::connect::ready_message(Some(&conditions))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn list_claims(&self, a: NamespaceArgs) -> anyhow::Result<Value> {
        let conn = self.conn(a.namespace.as_deref());
        let claims: kube::Api<SandboxClaim> = conn.api();
        let items: Vec<Value> = claims
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|c| {
                let st = c.status.clone().unwrap_or_default();
                json!({
                    "sandbox_claim_name": c.name_any(),
                    "warmpool": c.spec.warm_pool_ref.name,
                    "sandbox": st.sandbox.name,
                    "ready": is_ready(&st.conditions),
                })
            })
            .collect();
        Ok(json!({"namespace": conn.namespace, "sandboxes": items}))
    }
}

/// A request's bound: the tool's timeout and some slack for the router and sandboxd.
fn request_timeout(seconds: u64) -> Duration {
    Duration::from_secs(seconds.saturating_add(10))
}
