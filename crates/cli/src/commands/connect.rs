//! Finding the API server and the router: explicit flags, else `KUBECONFIG`, else the instance
//! `agent-sandbox up` recorded in `<data dir>/endpoints.json`, else the usual kubeconfig or the
//! in-cluster service account. Also resolves a user's name for a sandbox (a claim or a Sandbox).

use std::path::{Path, PathBuf};

use agent_sandbox_api::v1beta1::{Sandbox, SandboxClaim};
use anyhow::Context;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

use crate::args::ConnectArgs;

/// What `agent-sandbox up` writes into its data directory.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoints {
    kubeconfig: PathBuf,
    router: String,
    router_token_file: PathBuf,
}

/// A connection to the control plane, and to the router when one is known.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) client: kube::Client,
    pub(crate) namespace: String,
    router: Option<(String, Option<String>)>,
}

impl Connection {
    pub(crate) async fn open(args: &ConnectArgs) -> anyhow::Result<Connection> {
        let endpoints_path = args.data_dir.join("endpoints.json");
        let endpoints: Option<Endpoints> = match fs_err::read(&endpoints_path) {
            Ok(data) => Some(
                serde_json::from_slice(&data)
                    .with_context(|| format!("reading {}", endpoints_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                anyhow::bail!(
                    "{}: permission denied; run as the user that runs `agent-sandbox up` (root), or pass --kubeconfig and --router",
                    endpoints_path.display()
                )
            }
            Err(e) => return Err(e.into()),
        };
        let kubeconfig = args
            .kubeconfig
            .clone()
            .or_else(|| endpoints.as_ref().map(|e| e.kubeconfig.clone()));
        let client = match &kubeconfig {
            Some(path) => client_from(path).await?,
            None => kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "no API server found: {e}. Start one with `agent-sandbox up` (it records itself in {}), or pass --kubeconfig",
                    endpoints_path.display()
                )
            })?,
        };
        let where_ = kubeconfig
            .as_ref()
            .map(|p| format!("the API server of {}", p.display()))
            .unwrap_or_else(|| "the API server".into());
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.apiserver_version(),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!(
                "{where_} does not answer: {e}; is `agent-sandbox up` running? (start it with `agent-sandbox up`, or pass --kubeconfig)"
            ),
            Err(_) => anyhow::bail!("{where_} did not answer within 10 s"),
        }
        // The router of `up` belongs to its API server: use it unless another kubeconfig was
        // chosen.
        let up_router = endpoints.filter(|e| kubeconfig.as_deref() == Some(e.kubeconfig.as_path()));
        let router = match (&args.router, up_router) {
            (Some(url), up) => {
                // `up`'s own router named by its URL still gets `up`'s token.
                let url = url.trim_end_matches('/').to_owned();
                let token = args.router_token.clone().or_else(|| {
                    up.filter(|e| e.router.trim_end_matches('/') == url)
                        .and_then(|e| fs_err::read_to_string(&e.router_token_file).ok())
                        .map(|t| t.trim().to_owned())
                });
                Some((url, token))
            }
            (None, Some(e)) => {
                let token = match &args.router_token {
                    Some(t) => Some(t.clone()),
                    None => Some(
                        fs_err::read_to_string(&e.router_token_file)
                            .context("reading the router token")?
                            .trim()
                            .to_owned(),
                    ),
                };
                Some((e.router.trim_end_matches('/').to_owned(), token))
            }
            (None, None) => None,
        };
        Ok(Connection {
            client,
            namespace: args.namespace.clone(),
            router,
        })
    }

    /// The same connection, for objects in `namespace`.
    pub(crate) fn in_namespace(&self, namespace: &str) -> Connection {
        Connection {
            namespace: namespace.to_owned(),
            ..self.clone()
        }
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The router's URL and token, or an error that says how to name one.
    pub(crate) fn router(&self) -> anyhow::Result<(&str, Option<&str>)> {
        self.router
            .as_ref()
            .map(|(url, token)| (url.as_str(), token.as_deref()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no sandbox router known for this API server; pass --router URL (in a cluster: `kubectl -n agent-sandbox-system port-forward svc/sandbox-router-svc 8080` and --router http://127.0.0.1:8080)"
                )
            })
    }

    /// The Sandbox a user means by `name`: a claim of that name (its sandbox), else a Sandbox.
    pub(crate) async fn resolve_sandbox(&self, name: &str) -> anyhow::Result<Sandbox> {
        let claims: Api<SandboxClaim> = self.api();
        let sandboxes: Api<Sandbox> = self.api();
        if let Some(claim) = claims.get_opt(name).await.context("reading claims")? {
            let Some(status) = claim.status.as_ref().filter(|s| !s.sandbox.name.is_empty()) else {
                anyhow::bail!(
                    "claim {}/{name} has no sandbox yet: {}",
                    self.namespace,
                    ready_message(claim.status.as_ref().map(|s| s.conditions.as_slice()))
                );
            };
            return sandboxes
                .get_opt(&status.sandbox.name)
                .await?
                .with_context(|| {
                    format!(
                        "claim {}/{name} names sandbox {}, which does not exist",
                        self.namespace, status.sandbox.name
                    )
                });
        }
        sandboxes.get_opt(name).await?.with_context(|| {
            format!(
                "no claim or sandbox named {name} in namespace {}; list them with `agent-sandbox get`",
                self.namespace
            )
        })
    }
}

async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
        anyhow::anyhow!(
            "reading kubeconfig {}: {e}; is `agent-sandbox up` running, or is --kubeconfig right?",
            path.display()
        )
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).with_context(|| format!("connecting with {}", path.display()))
}

/// The Ready condition's reason and message, for errors and tables.
pub(crate) fn ready_message(
    conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
) -> String {
    conditions
        .and_then(|c| {
            agent_sandbox_api::conditions::find_status_condition(
                c,
                agent_sandbox_api::constants::condition_types::READY,
            )
        })
        .map(|c| format!("{} ({})", c.reason, c.message))
        .unwrap_or_else(|| "no Ready condition yet".into())
}
