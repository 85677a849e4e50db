//! Container probes (startup, liveness, readiness) and lifecycle hooks (postStart, preStop),
//! with kubelet's semantics and defaults.
//!
//! Actions: `exec` runs the command in the container through the runtime's `exec` (the
//! container's user, environment and working directory); `httpGet` and `tcpSocket` connect
//! to the pod IP from a socket made inside the sandbox's network namespace, so they behave as
//! kubelet's (the server must listen on the pod IP or on all addresses) and are not subject to
//! the node's NetworkPolicy rules, which filter host traffic; `sleep` (hooks) waits.
//! Timing: each probe first runs `initialDelaySeconds` after the container started, then every
//! `periodSeconds`, each attempt bounded by `timeoutSeconds`; `successThreshold` consecutive
//! successes make it succeed, `failureThreshold` consecutive failures make it fail. Refused (the
//! Pod does not start, the status names the field): gRPC probes, `httpGet.host` (probes always
//! go to the pod), HTTPS probes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::SandboxEngine;

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command in the container; exit 0 is success.
    Exec(Vec<String>),
    /// `GET path` on the pod IP; 200–399 is success.
    Http {
        /// Port.
        port: u16,
        /// Path (with query).
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection to the pod IP succeeds.
    Tcp {
        /// Port.
        port: u16,
    },
    /// Wait (hooks only).
    Sleep(Duration),
    /// Always fails with the message (a hook kubelet accepts but cannot run).
    Fail(String),
}

/// A probe with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The check.
    pub action: Action,
    /// Delay after the container started before the first attempt.
    pub initial_delay: Duration,
    /// Time between attempts.
    pub period: Duration,
    /// Bound of one attempt.
    pub timeout: Duration,
    /// Consecutive successes to succeed.
    pub success_threshold: u32,
    /// Consecutive failures to fail.
    pub failure_threshold: u32,
    /// `terminationGracePeriodSeconds` of the probe (liveness and startup kills).
    pub termination_grace: Option<Duration>,
}

/// The probes and hooks of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerChecks {
    /// `startupProbe`.
    pub startup: Option<ProbeSpec>,
    /// `livenessProbe`.
    pub liveness: Option<ProbeSpec>,
    /// `readinessProbe`.
    pub readiness: Option<ProbeSpec>,
    /// `lifecycle.postStart`.
    pub post_start: Option<Action>,
    /// `lifecycle.preStop`.
    pub pre_stop: Option<Action>,
}

type Refusal = (String, String);

fn port_of(p: &IntOrString, c: &Container, field: &str) -> Result<u16, Refusal> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| {
                    (
                        format!("{field}.port"),
                        format!("no container port named {name:?}"),
                    )
                })?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| (format!("{field}.port"), format!("{n} is not a port")))
}

fn http_action(h: &HTTPGetAction, c: &Container, field: &str) -> Result<Action, Refusal> {
    let field = format!("{field}.httpGet");
    if h.host.as_deref().is_some_and(|x| !x.is_empty()) {
        return Err((
            format!("{field}.host"),
            "probes and hooks always go to the pod's own address; remove host".into(),
        ));
    }
    if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return Err((
            format!("{field}.scheme"),
            "only HTTP is supported for probes and hooks".into(),
        ));
    }
    let mut headers = Vec::new();
    for hd in h.http_headers.iter().flatten() {
        let ok = |s: &str| !s.contains(['\r', '\n']);
        if !ok(&hd.name) || !ok(&hd.value) {
            return Err((
                format!("{field}.httpHeaders"),
                "header names and values must be single lines".into(),
            ));
        }
        headers.push((hd.name.clone(), hd.value.clone()));
    }
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if path.contains(['\r', '\n', ' ']) {
        return Err((format!("{field}.path"), "not a valid request path".into()));
    }
    Ok(Action::Http {
        port: port_of(&h.port, c, &field)?,
        path: if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        headers,
    })
}

fn probe_spec(
    p: &Probe,
    c: &Container,
    field: &str,
    one_success: bool,
) -> Result<ProbeSpec, Refusal> {
    let action = if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return Err((format!("{field}.exec.command"), "must not be empty".into()));
        }
        Action::Exec(cmd)
    } else if let Some(h) = &p.http_get {
        http_action(h, c, field)?
    } else if let Some(t) = &p.tcp_socket {
        if t.host.as_deref().is_some_and(|x| !x.is_empty()) {
            return Err((
                format!("{field}.tcpSocket.host"),
                "probes always go to the pod's own address; remove host".into(),
            ));
        }
        Action::Tcp {
            port: port_of(&t.port, c, &format!("{field}.tcpSocket"))?,
        }
    } else if p.grpc.is_some() {
        return Err((
            format!("{field}.grpc"),
            "gRPC probes are not supported; use exec, httpGet or tcpSocket".into(),
        ));
    } else {
        return Err((
            field.into(),
            "a probe needs exec, httpGet or tcpSocket".into(),
        ));
    };
    let secs = |v: Option<i32>, default: i32, min: i32| -> Duration {
        Duration::from_secs(v.unwrap_or(default).max(min) as u64)
    };
    let success = p.success_threshold.unwrap_or(1).max(1) as u32;
    if one_success && success != 1 {
        return Err((
            format!("{field}.successThreshold"),
            "must be 1 for liveness and startup probes".into(),
        ));
    }
    Ok(ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0, 0),
        period: secs(p.period_seconds, 10, 1),
        timeout: secs(p.timeout_seconds, 1, 1),
        success_threshold: success,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        termination_grace: p
            .termination_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
    })
}

fn hook_action(h: &LifecycleHandler, c: &Container, field: &str) -> Result<Action, Refusal> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return Err((format!("{field}.exec.command"), "must not be empty".into()));
        }
        Ok(Action::Exec(cmd))
    } else if let Some(hg) = &h.http_get {
        http_action(hg, c, field)
    } else if let Some(s) = &h.sleep {
        Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
    } else if h.tcp_socket.is_some() {
        // Kubelet accepts the field for compatibility and fails the hook at run time.
        Ok(Action::Fail(
            "tcpSocket is not supported as a lifecycle handler".into(),
        ))
    } else {
        Err((field.into(), "a hook needs exec, httpGet or sleep".into()))
    }
}

impl ContainerChecks {
    /// The checks of container `c` at `field` (`spec.containers[0]`), or the first field the
    /// node refuses.
    pub fn of(c: &Container, field: &str) -> Result<Self, Refusal> {
        let f = |x: &str| format!("{field}.{x}");
        Ok(ContainerChecks {
            startup: c
                .startup_probe
                .as_ref()
                .map(|p| probe_spec(p, c, &f("startupProbe"), true))
                .transpose()?,
            liveness: c
                .liveness_probe
                .as_ref()
                .map(|p| probe_spec(p, c, &f("livenessProbe"), true))
                .transpose()?,
            readiness: c
                .readiness_probe
                .as_ref()
                .map(|p| probe_spec(p, c, &f("readinessProbe"), false))
                .transpose()?,
            post_start: c
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
                .map(|h| hook_action(h, c, &f("lifecycle.postStart")))
                .transpose()?,
            pre_stop: c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .map(|h| hook_action(h, c, &f("lifecycle.preStop")))
                .transpose()?,
        })
    }

    /// Whether there is any probe.
    pub fn has_probes(&self) -> bool {
        self.startup.is_some() || self.liveness.is_some() || self.readiness.is_some()
    }
}

/// Where an action runs: a container of a sandbox, its pod IP and network namespace.
#[derive(Clone)]
pub struct Target<'a> {
    /// The engine running the sandbox.
    pub engine: &'a SandboxEngine,
    /// Sandbox id.
    pub id: String,
    /// Container name.
    pub container: String,
    /// Pod IP (`None`: loopback inside the namespace, for sandboxes without a network).
    pub pod_ip: Option<Ipv4Addr>,
    /// The sandbox's network namespace.
    pub netns: PathBuf,
}

/// Run one action, bounded by `timeout`; `Err` says why it failed (for events).
pub async fn run(t: &Target<'_>, action: &Action, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Fail(m) => Err(m.clone()),
        Action::Exec(argv) => match t.engine.exec(&t.id, &t.container, argv, timeout).await {
            Ok(out) if out.code == 0 => Ok(()),
            Ok(out) => {
                let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if !err.is_empty() {
                    if !msg.is_empty() {
                        msg.push_str("; ");
                    }
                    msg.push_str(&err);
                }
                msg.truncate(512);
                Err(format!("command {argv:?} exited with {}: {msg}", out.code))
            }
            Err(crate::NodeError::Timeout { .. }) => {
                Err(format!("command {argv:?} timed out after {timeout:?}"))
            }
            Err(e) => Err(e.to_string()),
        },
        Action::Tcp { port } => {
            let addr = SocketAddr::from((t.pod_ip.unwrap_or(Ipv4Addr::LOCALHOST), *port));
            match crate::host::tcp_connect_in_netns(&t.netns, addr, timeout).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("dial tcp {addr}: {e}")),
            }
        }
        Action::Http {
            port,
            path,
            headers,
        } => {
            let addr = SocketAddr::from((t.pod_ip.unwrap_or(Ipv4Addr::LOCALHOST), *port));
            let attempt = async {
                let mut s = crate::host::tcp_connect_in_netns(&t.netns, addr, timeout)
                    .await
                    .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
                let mut req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
                );
                for (k, v) in headers {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str("\r\n");
                s.write_all(req.as_bytes())
                    .await
                    .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
                let mut buf = vec![0u8; 1024];
                let mut got = 0;
                while got < buf.len() {
                    let n = s
                        .read(&mut buf[got..])
                        .await
                        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                    if buf[..got].contains(&b'\n') {
                        break;
                    }
                }
                let line = String::from_utf8_lossy(&buf[..got]);
                let code: u16 = line
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| {
                        format!("Get \"http://{addr}{path}\": malformed HTTP response")
                    })?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "Get \"http://{addr}{path}\": context deadline exceeded (timeout {timeout:?})"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_and_named_ports() {
        let c = container(serde_json::json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "healthz"}},
            "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2, "failureThreshold": 1},
            "startupProbe": {"tcpSocket": {"port": 8080}},
            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}
        }));
        let k = ContainerChecks::of(&c, "spec.containers[0]").unwrap();
        let r = k.readiness.unwrap();
        assert_eq!(
            r.action,
            Action::Http {
                port: 8080,
                path: "/healthz".into(),
                headers: vec![]
            }
        );
        assert_eq!(r.period, Duration::from_secs(10));
        assert_eq!(r.timeout, Duration::from_secs(1));
        assert_eq!((r.success_threshold, r.failure_threshold), (1, 3));
        let l = k.liveness.unwrap();
        assert_eq!(l.period, Duration::from_secs(2));
        assert_eq!(l.failure_threshold, 1);
        assert_eq!(k.startup.unwrap().action, Action::Tcp { port: 8080 });
        assert_eq!(k.pre_stop, Some(Action::Sleep(Duration::from_secs(1))));
    }

    #[test]
    fn refusals_name_the_field() {
        for (v, field) in [
            (
                serde_json::json!({"name": "c", "livenessProbe": {"grpc": {"port": 1}}}),
                "spec.containers[0].livenessProbe.grpc",
            ),
            (
                serde_json::json!({"name": "c", "readinessProbe": {"httpGet": {"port": 1, "host": "10.0.0.1"}}}),
                "spec.containers[0].readinessProbe.httpGet.host",
            ),
            (
                serde_json::json!({"name": "c", "livenessProbe": {"exec": {"command": ["x"]}, "successThreshold": 2}}),
                "spec.containers[0].livenessProbe.successThreshold",
            ),
            (
                serde_json::json!({"name": "c", "readinessProbe": {"tcpSocket": {"port": "nope"}}}),
                "spec.containers[0].readinessProbe.tcpSocket.port",
            ),
        ] {
            let err = ContainerChecks::of(&container(v), "spec.containers[0]").unwrap_err();
            assert_eq!(err.0, field, "{err:?}");
        }
    }
}
