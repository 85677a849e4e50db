//! The pause extension in a sync: freezing every container of a Pod whose annotation
//! `agent-sandbox-rs.github.io/paused` is `"true"` (the runtime's pause: the cgroup freezer,
//! under every handler), keeping it frozen (no probe, no restart, no back-off clock), thawing it
//! when the annotation goes, and the Pod condition `agent-sandbox-rs.github.io/Paused` that
//! reports it.

use super::*;
use crate::pod::PauseReport;
use agent_sandbox_api::constants::extensions as ext;

/// The Pod's `namespace/name`, for messages.
fn who(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The report of a Pod whose containers run, saying why when the annotation has another value.
fn running_report(pod: &Pod) -> PauseReport {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ext::annotations::PAUSED));
    let message = match value {
        Some(v) if v != ext::PAUSED_TRUE => format!(
            "pod {} runs: the annotation {} is {v:?}, and only {:?} pauses",
            who(pod),
            ext::annotations::PAUSED,
            ext::PAUSED_TRUE
        ),
        _ => format!("pod {} runs", who(pod)),
    };
    PauseReport {
        paused: false,
        reason: ext::pod_reasons::RUNNING,
        message,
    }
}

fn paused_report(pod: &Pod) -> PauseReport {
    PauseReport {
        paused: true,
        reason: ext::pod_reasons::PAUSED,
        message: format!(
            "every container of pod {} is frozen and keeps its memory; remove the annotation {} to thaw it",
            who(pod),
            ext::annotations::PAUSED
        ),
    }
}

/// Whether the Pod's status (as last read) already says it is paused.
fn status_says_paused(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == ext::condition_types::POD_PAUSED && c.status == "True")
}

impl NodeAgent {
    /// Whether the Pod asks to be paused.
    pub(super) fn asks_paused(pod: &Pod) -> bool {
        ext::asks_paused(pod.metadata.annotations.as_ref())
    }

    /// A frozen Pod that stays frozen: nothing is stepped. The status is written only when it
    /// does not say so yet (after an agent restart the memory is fresh, and the status written
    /// before the restart is the truth).
    pub(super) async fn hold_paused(
        &self,
        pod: &Pod,
        api: &Api<Pod>,
        rt: &Shared<PodRt>,
    ) -> Result<(), kube::Error> {
        let fresh = {
            let mut r = lock(rt);
            r.paused_at.get_or_insert_with(Instant::now);
            for c in r.containers.values_mut() {
                c.stop_tasks();
            }
            let fresh = r.pause.is_none();
            r.pause = Some(paused_report(pod));
            fresh
        };
        if fresh && status_says_paused(pod) {
            return Ok(());
        }
        self.write_status(pod, api, rt).await
    }

    /// Freeze every container (probes and exit watches stop first: a frozen process must not
    /// fail a probe and be killed). A failure is reported in the condition and retried.
    pub(super) async fn freeze(&self, pod: &Pod, rt: &Shared<PodRt>) {
        let id = uid(pod);
        for c in lock(rt).containers.values_mut() {
            c.stop_tasks();
        }
        let t = Instant::now();
        let res = self.engine.pause(&id).await;
        let report = match res {
            Ok(()) => {
                self.engine.record_step(&id, "pause", t);
                lock(rt).paused_at = Some(Instant::now());
                self.event(
                    pod,
                    None,
                    false,
                    "Paused",
                    format!("Froze pod {}", who(pod)),
                );
                paused_report(pod)
            }
            Err(e) => {
                tracing::warn!(pod = %who(pod), error = %e, "pausing the pod failed");
                PauseReport {
                    paused: self.engine.is_paused(&id),
                    reason: ext::pod_reasons::PAUSE_FAILED,
                    message: format!(
                        "pausing pod {} failed: {e}; the node tries again on its next sync",
                        who(pod)
                    ),
                }
            }
        };
        lock(rt).pause = Some(report);
    }

    /// Thaw a frozen Pod whose annotation is gone: the back-off clocks move on by the time
    /// spent frozen, and the probes and exit watches of the running containers start again
    /// (their readiness stays as it was). A failure is reported, and the sync stops there.
    pub(super) async fn thaw(
        self: &Arc<Self>,
        pod: &Pod,
        spec: &SandboxSpec,
        rt: &Shared<PodRt>,
        checks: &BTreeMap<String, ContainerChecks>,
    ) -> bool {
        let id = uid(pod);
        let t = Instant::now();
        if let Err(e) = self.engine.resume(&id).await {
            tracing::warn!(pod = %who(pod), error = %e, "unpausing the pod failed");
            lock(rt).pause = Some(PauseReport {
                paused: true,
                reason: ext::pod_reasons::PAUSE_FAILED,
                message: format!(
                    "unpausing pod {} failed: {e}; the node tries again on its next sync",
                    who(pod)
                ),
            });
            return false;
        }
        self.engine.record_step(&id, "resume", t);
        let restart: Vec<(String, ContainerChecks)> = {
            let mut r = lock(rt);
            let frozen_for = r.paused_at.take().map(|t| t.elapsed()).unwrap_or_default();
            r.pause = Some(running_report(pod));
            r.containers
                .values_mut()
                .filter_map(|c| {
                    plan::shift_backoff(c, frozen_for);
                    if !matches!(c.state, CState::Running { .. }) || !c.tasks.is_empty() {
                        return None;
                    }
                    let mut k = checks.get(&c.name).cloned().unwrap_or_default();
                    if c.started {
                        k.startup = None;
                    }
                    Some((c.name.clone(), k))
                })
                .collect()
        };
        for (name, k) in restart {
            self.start_tasks(pod, spec, rt, &name, k);
        }
        self.event(
            pod,
            None,
            false,
            "Unpaused",
            format!("Thawed pod {}", who(pod)),
        );
        true
    }

    /// After the container steps: freeze a running Pod that asks for it, or say why not yet;
    /// a Pod with the annotation at another value says it runs.
    pub(super) async fn pause_after_steps(&self, pod: &Pod, rt: &Shared<PodRt>) {
        let id = uid(pod);
        let asked = Self::asks_paused(pod);
        let freezable = plan::freezable(&lock(rt));
        match plan::pause_action(asked, self.engine.is_paused(&id), freezable) {
            PauseAction::Freeze => self.freeze(pod, rt).await,
            PauseAction::NotYet => {
                let phase = lock(rt).phase.clone();
                lock(rt).pause = Some(PauseReport {
                    paused: false,
                    reason: ext::pod_reasons::NOT_RUNNING,
                    message: format!(
                        "pod {} is asked to pause but its containers do not run and pass their readiness yet (phase {phase}); it is frozen once they do",
                        who(pod)
                    ),
                });
            }
            PauseAction::None => {
                let annotated = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(ext::annotations::PAUSED));
                let mut r = lock(rt);
                if annotated || r.pause.is_some() {
                    r.pause = Some(running_report(pod));
                }
            }
            PauseAction::Hold | PauseAction::Thaw => {}
        }
    }
}
