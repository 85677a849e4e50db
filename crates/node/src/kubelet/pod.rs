//! The node agent's memory of each Pod it runs — container states, restart counts, probe
//! results, conditions with their transition times — and the rendering of that memory as the
//! Pod's `status` (phase, conditions, `initContainerStatuses`, `containerStatuses`), as kubelet
//! reports it. Pure: the agent ([`crate::agent`]) drives the state and writes the result.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// RFC 3339 now, as the API server stores times.
pub fn now() -> String {
    Timestamp::now().to_string()
}

/// What a container is doing, as in `ContainerState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CState {
    /// Not running: being created, pulled, or backing off.
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// RFC 3339.
        started_at: String,
    },
    /// Exited.
    Terminated {
        /// Exit code (128+signal when killed).
        code: i32,
        /// `Completed`, `Error`, ...
        reason: String,
        /// Termination message.
        message: Option<String>,
        /// RFC 3339.
        started_at: Option<String>,
        /// RFC 3339.
        finished_at: String,
    },
}

impl CState {
    fn to_json(&self) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                code,
                reason,
                message,
                started_at,
                finished_at,
            } => json!({"terminated": {"exitCode": code, "reason": reason, "message": message,
                       "startedAt": started_at, "finishedAt": finished_at}}),
        }
    }
}

/// Which list a container is in and how it restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container that runs to completion.
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    /// A regular container.
    Regular,
}

/// The agent's memory of one container.
#[derive(Debug)]
pub struct CRt {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Image as in the spec.
    pub image: String,
    /// `<repo>@<digest>` once pulled.
    pub image_id: String,
    /// Runtime container id once created.
    pub container_id: Option<String>,
    /// Restarts so far.
    pub restarts: i32,
    /// Current state.
    pub state: CState,
    /// The previous termination.
    pub last_state: Option<CState>,
    /// Readiness (probe result, or running and started without a readiness probe).
    pub ready: bool,
    /// The startup probe passed (or there is none) while running.
    pub started: bool,
    /// An init container that completed successfully.
    pub done: bool,
    /// No new container before this instant (crash-loop back-off).
    pub backoff_until: Option<Instant>,
    /// When the current container started (probe delays count from here).
    pub running_since: Option<Instant>,
    /// Probe and exit-watch tasks of the current container.
    pub tasks: Vec<tokio::task::AbortHandle>,
}

impl CRt {
    /// A container not created yet: waiting with `ContainerCreating`, or `PodInitializing` in a
    /// Pod that has init containers (kubelet's default waiting reason for every container of
    /// such a Pod).
    pub fn new(name: &str, role: Role, image: &str, pod_has_init: bool) -> Self {
        CRt {
            name: name.to_string(),
            role,
            image: image.to_string(),
            image_id: String::new(),
            container_id: None,
            restarts: 0,
            state: CState::Waiting {
                reason: if pod_has_init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }
                .into(),
                message: None,
            },
            last_state: None,
            ready: false,
            started: false,
            done: false,
            backoff_until: None,
            running_since: None,
            tasks: Vec::new(),
        }
    }

    /// Stop the probe and exit-watch tasks.
    pub fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "ready": self.ready,
            "started": self.started && matches!(self.state, CState::Running { .. }),
            "restartCount": self.restarts,
            "image": self.image,
            "imageID": self.image_id,
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(CState::to_json).unwrap_or_else(|| json!({})),
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(format!("agent-sandbox://{id}"));
        }
        v
    }
}

/// What the node reports in the Pod's [`POD_PAUSED`] condition (the pause extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseReport {
    /// Every container is frozen.
    pub paused: bool,
    /// One of [`agent_sandbox_api::constants::extensions::pod_reasons`].
    pub reason: &'static str,
    /// What happened, naming the Pod.
    pub message: String,
}

/// The Pod condition type of [`PauseReport`].
pub use agent_sandbox_api::constants::extensions::condition_types::POD_PAUSED;

/// A Pod condition with its transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    status: bool,
    reason: Option<String>,
    message: Option<String>,
    since: String,
}

/// The agent's memory of one Pod.
#[derive(Debug)]
pub struct PodRt {
    /// Containers by name (init containers and regular ones).
    pub containers: BTreeMap<String, CRt>,
    /// Init container names in order.
    pub init_order: Vec<String>,
    /// Regular container names in order.
    pub regular_order: Vec<String>,
    /// `startTime`.
    pub start_time: Option<String>,
    /// When the sandbox was prepared (for `activeDeadlineSeconds`).
    pub started: Option<Instant>,
    /// All init containers completed (sticky, as kubelet's `Initialized`).
    pub initialized: bool,
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    pub phase: String,
    /// Pod-level reason (`DeadlineExceeded`).
    pub reason: Option<String>,
    /// Pod-level message.
    pub message: Option<String>,
    /// Pod IP.
    pub pod_ip: Option<String>,
    /// Fields accepted but not honoured.
    pub ignored: Vec<(String, String)>,
    /// The last error reported for the whole Pod (to emit its event once).
    pub last_error: Option<String>,
    /// Why the sandbox's network is not usable yet (its firewall rules failed to apply).
    pub network_error: Option<String>,
    /// The configMap, secret, downwardAPI and projected volumes were written once (later
    /// failures to refresh them do not hold the containers back).
    pub volumes_ready: bool,
    /// The pause condition to report; `None` until the Pod is first asked to pause (then the
    /// condition stays, True or False).
    pub pause: Option<PauseReport>,
    /// When the containers were frozen (restart back-off clocks are moved on by the time spent
    /// frozen when they thaw).
    pub paused_at: Option<Instant>,
    conditions: BTreeMap<String, Cond>,
    /// The last status written.
    pub last_written: Option<Value>,
}

impl PodRt {
    /// Memory for `pod`, seeded from its status (restart counts, completed init containers,
    /// `Initialized`) so a restarted agent continues where the previous one was.
    pub fn seed(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let mut containers = BTreeMap::new();
        let mut init_order = Vec::new();
        let mut regular_order = Vec::new();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        for c in spec.init_containers.iter().flatten() {
            let role = if c.restart_policy.as_deref() == Some("Always") {
                Role::Sidecar
            } else {
                Role::Init
            };
            init_order.push(c.name.clone());
            containers.insert(
                c.name.clone(),
                CRt::new(
                    &c.name,
                    role,
                    c.image.as_deref().unwrap_or_default(),
                    has_init,
                ),
            );
        }
        for c in &spec.containers {
            regular_order.push(c.name.clone());
            containers.insert(
                c.name.clone(),
                CRt::new(
                    &c.name,
                    Role::Regular,
                    c.image.as_deref().unwrap_or_default(),
                    has_init,
                ),
            );
        }
        for cs in status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
        {
            if let Some(c) = containers.get_mut(&cs.name) {
                c.restarts = cs.restart_count;
                let completed = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0);
                if c.role == Role::Init && completed {
                    c.done = true;
                    c.state = CState::Terminated {
                        code: 0,
                        reason: "Completed".into(),
                        message: None,
                        started_at: None,
                        finished_at: now(),
                    };
                }
            }
        }
        let initialized = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Initialized" && c.status == "True")
            && status.phase.as_deref() != Some("Pending");
        PodRt {
            containers,
            init_order,
            regular_order,
            start_time: status.start_time.as_ref().map(|t| t.0.to_string()),
            started: None,
            initialized: initialized || spec.init_containers.as_ref().is_none_or(|v| v.is_empty()),
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
            reason: None,
            message: None,
            pod_ip: status.pod_ip,
            ignored: Vec::new(),
            last_error: None,
            network_error: None,
            volumes_ready: false,
            pause: None,
            paused_at: None,
            conditions: BTreeMap::new(),
            last_written: None,
        }
    }

    /// Whether the phase is final.
    pub fn terminal(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }

    fn set_cond(&mut self, t: &str, status: bool, reason: Option<&str>, message: Option<String>) {
        let reason = reason.map(str::to_string);
        match self.conditions.get_mut(t) {
            Some(c) if c.status == status => {
                c.reason = reason;
                c.message = message;
            }
            _ => {
                self.conditions.insert(
                    t.to_string(),
                    Cond {
                        status,
                        reason,
                        message,
                        since: now(),
                    },
                );
            }
        }
    }

    /// Recompute the conditions from the containers (`gates`: readiness gate condition types
    /// with whether the Pod's status has them True).
    pub fn update_conditions(&mut self, gates: &[(String, bool)]) {
        let prepared = self.start_time.is_some();
        self.set_cond("PodScheduled", true, None, None);
        self.set_cond("PodReadyToStartContainers", prepared, None, None);
        let pending_init: Vec<String> = self
            .init_order
            .iter()
            .filter(|n| {
                let c = &self.containers[*n];
                match c.role {
                    Role::Init => !c.done,
                    _ => !(c.started && matches!(c.state, CState::Running { .. })),
                }
            })
            .cloned()
            .collect();
        if self.initialized {
            self.set_cond("Initialized", true, None, None);
        } else {
            self.set_cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    pending_init.join(" ")
                )),
            );
        }
        let terminal = self.terminal();
        let unready: Vec<String> = self
            .regular_order
            .iter()
            .filter(|n| !self.containers[*n].ready)
            .cloned()
            .collect();
        let (cr, cr_reason, cr_msg) = if terminal {
            (false, Some("PodCompleted"), None)
        } else if let Some(e) = &self.network_error {
            (false, Some("NetworkNotReady"), Some(e.clone()))
        } else if unready.is_empty() {
            (true, None, None)
        } else {
            (
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        self.set_cond("ContainersReady", cr, cr_reason, cr_msg.clone());
        let gates_missing: Vec<String> = gates
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(t, _)| t.clone())
            .collect();
        if cr && !gates_missing.is_empty() {
            self.set_cond(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some(format!(
                    "corresponding condition of pod readiness gate \"{}\" does not exist or is not True",
                    gates_missing.join("\", \"")
                )),
            );
        } else {
            self.set_cond("Ready", cr, cr_reason, cr_msg);
        }
        if let Some(p) = self.pause.clone() {
            self.set_cond(POD_PAUSED, p.paused, Some(p.reason), Some(p.message));
        }
        if self.ignored.is_empty() {
            self.conditions
                .remove(crate::audit::IGNORED_FIELDS_CONDITION);
        } else {
            let msg = self
                .ignored
                .iter()
                .map(|(f, why)| format!("{f}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            self.set_cond(
                crate::audit::IGNORED_FIELDS_CONDITION,
                true,
                Some("NotSupportedOnNode"),
                Some(msg),
            );
        }
    }

    /// The `status` object to write.
    pub fn status(&self) -> Value {
        let order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ];
        let mut conditions: Vec<Value> = Vec::new();
        let mut names: Vec<&String> = self.conditions.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
        for n in names {
            let c = &self.conditions[n];
            conditions.push(json!({"type": n, "status": if c.status {"True"} else {"False"},
                "lastTransitionTime": c.since, "lastProbeTime": null, "reason": c.reason, "message": c.message}));
        }
        let ips: Vec<Value> = self.pod_ip.iter().map(|ip| json!({"ip": ip})).collect();
        let list = |names: &[String]| -> Vec<Value> {
            names
                .iter()
                .filter_map(|n| self.containers.get(n))
                .map(CRt::to_json)
                .collect()
        };
        let mut st = json!({
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": crate::refs::HOST_IP,
            "hostIPs": [{"ip": crate::refs::HOST_IP}],
            "podIP": self.pod_ip,
            "podIPs": ips,
            "startTime": self.start_time,
            "containerStatuses": list(&self.regular_order),
            "reason": self.reason,
            "message": self.message,
        });
        if !self.init_order.is_empty() {
            st["initContainerStatuses"] = json!(list(&self.init_order));
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn seeds_restarts_and_init_progress() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i", "image": "x"}, {"name": "s", "image": "x", "restartPolicy": "Always"}],
                     "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "i", "ready": false, "restartCount": 1, "image": "x", "imageID": "",
                    "state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 4, "image": "x", "imageID": ""}]}
        }));
        let rt = PodRt::seed(&p);
        assert!(rt.initialized);
        assert!(rt.containers["i"].done);
        assert_eq!(rt.containers["i"].restarts, 1);
        assert_eq!(rt.containers["s"].role, Role::Sidecar);
        assert_eq!(rt.containers["c"].restarts, 4);
    }

    #[test]
    fn the_pause_condition_appears_once_asked_and_stays() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        let mut rt = PodRt::seed(&p);
        let paused = |rt: &PodRt| {
            rt.status()["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == POD_PAUSED)
                .map(|c| (c["status"].clone(), c["reason"].clone()))
        };
        rt.update_conditions(&[]);
        assert_eq!(paused(&rt), None, "never asked: no condition");
        rt.pause = Some(PauseReport {
            paused: true,
            reason: "Paused",
            message: "frozen".into(),
        });
        rt.update_conditions(&[]);
        assert_eq!(paused(&rt), Some((json!("True"), json!("Paused"))));
        rt.pause = Some(PauseReport {
            paused: false,
            reason: "Running",
            message: "runs".into(),
        });
        rt.update_conditions(&[]);
        assert_eq!(paused(&rt), Some((json!("False"), json!("Running"))));
    }

    #[test]
    fn conditions_follow_readiness_and_gates() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        let mut rt = PodRt::seed(&p);
        rt.start_time = Some(now());
        rt.update_conditions(&[]);
        let st = rt.status();
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [c]");
        let since = ready["lastTransitionTime"].clone();
        rt.containers.get_mut("c").unwrap().ready = true;
        rt.update_conditions(&[("example.com/gate".into(), false)]);
        let st = rt.status();
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["reason"], "ReadinessGatesNotReady");
        assert_eq!(
            ready["lastTransitionTime"], since,
            "no transition: still False"
        );
        rt.update_conditions(&[("example.com/gate".into(), true)]);
        let st = rt.status();
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        );
        assert!(st.get("initContainerStatuses").is_none());
    }
}
