//! The decisions of a Pod sync, as pure functions of the Pod, the agent's memory of it
//! ([`PodRt`], [`CRt`]) and what the runtime reports: what a sync does with the Pod as a whole
//! ([`pod_action`], [`deadline`]), with each container ([`container_action`], [`after_exit`],
//! [`absent_action`]), in which order ([`after_init_step`], [`initialized`], [`pod_phase`]),
//! after which back-off ([`crash_backoff`], [`error_backoff`]), and the kubelet-style names it
//! reports ([`waiting_reason`], [`field_path`], [`image_id`]), and the pause extension
//! ([`pause_action`], [`shift_backoff`]). The agent ([`super::agent`])
//! observes, asks these, and executes the answer; nothing here does I/O.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::pod::{CRt, CState, PodRt, Role};
use crate::error::NodeError;

/// A Pod's `restartPolicy` (the API server admits only these three; absent means `Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart every exit.
    Always,
    /// Restart failures only.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The policy of `pod`.
    pub fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }
}

/// What a sync does with the Pod as a whole, before looking at containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAction {
    /// Being deleted: stop the containers, remove the sandbox, finish the deletion.
    Terminate,
    /// The API says the Pod is finished: stop the probes and do nothing else.
    Finished,
    /// Finished on this node though the Pod read may not say so yet: only write the status
    /// (nothing is started again; a stopped sidecar would otherwise be restarted).
    ReportOnly,
    /// Bring the containers where the Pod wants them.
    Run,
}

/// What a sync does with `pod`, given whether the agent's memory says it is finished.
pub fn pod_action(pod: &Pod, terminal_here: bool) -> PodAction {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::Terminate;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return PodAction::Finished;
    }
    if terminal_here {
        return PodAction::ReportOnly;
    }
    PodAction::Run
}

/// What a sync does about the pause extension: the Pod annotation
/// `agent-sandbox-rs.github.io/paused: "true"` asks for every container to be frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseAction {
    /// Not asked, not frozen: sync as usual.
    None,
    /// Asked and frozen: stay so. No container is stepped (nothing is created or restarted and
    /// back-off clocks stand still), no probe runs.
    Hold,
    /// Not asked, but frozen: thaw, then sync as usual.
    Thaw,
    /// Asked and not frozen while the Pod runs and is ready ([`freezable`]): freeze it after
    /// the container steps.
    Freeze,
    /// Asked while the Pod's containers do not run, or are not ready, yet: report it; a later
    /// sync freezes.
    NotYet,
}

/// Whether a Pod asked to pause may be frozen now: it runs and every regular container is
/// ready (its startup and readiness probes passed, or it has none). A process frozen half-way
/// through its start-up would otherwise be held at an arbitrary point, for example before it
/// installed its SIGTERM handler, which as a container's PID 1 then drops the signal that
/// deleting the Pod sends and makes the deletion last the whole grace period.
pub fn freezable(rt: &PodRt) -> bool {
    rt.phase == "Running"
        && rt.regular_order.iter().all(|n| {
            rt.containers
                .get(n)
                .is_some_and(|c| c.ready && matches!(c.state, CState::Running { .. }))
        })
}

/// The pause decision from whether the Pod asks for it, whether the runtime has the sandbox
/// frozen, and whether the Pod is [`freezable`] after this sync's container steps (only asked
/// for [`PauseAction::Freeze`] and [`PauseAction::NotYet`]).
pub fn pause_action(asked: bool, frozen: bool, freezable: bool) -> PauseAction {
    match (asked, frozen) {
        (true, true) => PauseAction::Hold,
        (false, true) => PauseAction::Thaw,
        (true, false) if freezable => PauseAction::Freeze,
        (true, false) => PauseAction::NotYet,
        (false, false) => PauseAction::None,
    }
}

/// After a thaw: a container's restart back-off ends as much later as the Pod was frozen, so
/// the time spent frozen does not count towards it.
pub fn shift_backoff(c: &mut CRt, frozen_for: Duration) {
    if let Some(t) = c.backoff_until.as_mut() {
        *t += frozen_for;
    }
}

/// Where the Pod stands against its `activeDeadlineSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No deadline.
    None,
    /// Exceeded: the Pod fails with `DeadlineExceeded`.
    Exceeded,
    /// This much is left (the agent syncs again then).
    Left(Duration),
}

/// The deadline check for a Pod active on the node for `elapsed`.
pub fn deadline(active_deadline_seconds: Option<i64>, elapsed: Duration) -> Deadline {
    match active_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64)) {
        None => Deadline::None,
        Some(d) if elapsed >= d => Deadline::Exceeded,
        Some(d) => Deadline::Left(d - elapsed),
    }
}

/// The grace period of a Pod being deleted: the deletion's, else the spec's, else 30 s,
/// capped at 300 s.
pub fn deletion_grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .clamp(0, 300);
    Duration::from_secs(secs as u64)
}

/// Outcome of one container's step in a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Running (a sidecar: started).
    Running,
    /// Not there yet (creating, pulling, backing off, a sidecar's startup probe pending, an
    /// init container still running).
    Waiting,
    /// An init container completed.
    Done,
    /// Exited and will not run again.
    Finished,
    /// The Pod failed (an init container failed under restartPolicy Never).
    PodFailed,
}

/// What the runtime says of a container at the start of its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// No container of that name exists (never created, or removed after exiting).
    Absent,
    /// Its process runs (or was never started).
    Running,
    /// Its process exited, with this code if known.
    Exited(Option<i32>),
    /// The runtime could not tell.
    Unknown,
}

/// What to do with a container whose process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// An init container succeeded: remove it and go on with the next.
    Done,
    /// Remove it and create it again after a crash-loop back-off.
    Restart,
    /// It stays exited: the Pod failed (an init container under `Never`).
    PodFailed,
    /// It stays exited (a regular container the policy does not restart).
    Finished,
}

/// The restart rule: sidecars always restart; an init container restarts when it failed
/// unless the policy is `Never` (then the Pod fails); a regular container per the policy.
pub fn after_exit(role: Role, policy: RestartPolicy, code: i32) -> AfterExit {
    match role {
        Role::Init if code == 0 => AfterExit::Done,
        Role::Init if policy == RestartPolicy::Never => AfterExit::PodFailed,
        Role::Init | Role::Sidecar => AfterExit::Restart,
        Role::Regular => match policy {
            RestartPolicy::Always => AfterExit::Restart,
            RestartPolicy::OnFailure if code != 0 => AfterExit::Restart,
            _ => AfterExit::Finished,
        },
    }
}

/// What to do with a container that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// A regular container that exited and will not run again.
    Finished,
    /// Its image failed to pull: report `ImagePullBackOff` until the retry.
    ImagePullBackOff,
    /// Its create failed: keep reporting that error until the retry.
    KeepError,
    /// It crashed: report `CrashLoopBackOff` for the time left.
    CrashLoopBackOff(Duration),
    /// Create (and start) it.
    Create,
}

/// The decision for a container that does not exist, from the agent's memory of it.
pub fn absent_action(c: &CRt, now: Instant) -> Absent {
    if c.role == Role::Regular
        && matches!(c.state, CState::Terminated { .. })
        && c.backoff_until.is_none()
    {
        return Absent::Finished;
    }
    if let Some(until) = c.backoff_until
        && until > now
    {
        return match &c.state {
            CState::Waiting { reason, .. }
                if reason == "ErrImagePull" || reason == "ImagePullBackOff" =>
            {
                Absent::ImagePullBackOff
            }
            CState::Waiting { reason, .. } if reason != "CrashLoopBackOff" => Absent::KeepError,
            _ => Absent::CrashLoopBackOff(until - now),
        };
    }
    Absent::Create
}

/// The plan for one container in a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerAction {
    /// It runs: make sure its probes and exit watch run, then report [`running_step`].
    Running,
    /// It exited with `code` (-1 if unknown): record the termination, then `then`.
    Exited {
        /// Exit code.
        code: i32,
        /// What follows.
        then: AfterExit,
    },
    /// It does not exist.
    Absent(Absent),
    /// The runtime could not tell: wait for the next sync.
    Wait,
}

/// The plan for container `c` given what the runtime reports of it.
pub fn container_action(
    c: &CRt,
    observed: Observed,
    policy: RestartPolicy,
    now: Instant,
) -> ContainerAction {
    match observed {
        Observed::Running => ContainerAction::Running,
        Observed::Exited(code) => {
            let code = code.unwrap_or(-1);
            ContainerAction::Exited {
                code,
                then: after_exit(c.role, policy, code),
            }
        }
        Observed::Unknown => ContainerAction::Wait,
        Observed::Absent => ContainerAction::Absent(absent_action(c, now)),
    }
}

/// The step of a running container: an init container is still at work; a sidecar counts
/// once its startup probe passed.
pub fn running_step(role: Role, started: bool) -> Step {
    match role {
        Role::Init => Step::Waiting,
        Role::Sidecar if !started => Step::Waiting,
        _ => Step::Running,
    }
}

/// After an init container's step: go on with the next (`true`) or stop here. Before the Pod
/// is initialized, init containers run one at a time, in order; afterwards only the sidecars
/// are maintained, each in turn.
pub fn after_init_step(step: Step, initialized: bool) -> bool {
    match step {
        Step::Done | Step::Running => true,
        Step::PodFailed => false,
        Step::Waiting | Step::Finished => initialized,
    }
}

/// Whether every init container is done (a sidecar: started).
pub fn initialized(pod: &PodRt) -> bool {
    pod.init_order.iter().all(|n| {
        pod.containers
            .get(n)
            .is_some_and(|x| x.done || (x.role == Role::Sidecar && x.started))
    })
}

/// The Pod's phase after the regular containers' steps (`None`: unchanged): `Succeeded` or
/// `Failed` once none will run again, `Running` once one was created.
pub fn pod_phase(pod: &PodRt, steps: &[(String, Step)]) -> Option<&'static str> {
    let finished: Vec<&String> = steps
        .iter()
        .filter(|(_, s)| *s == Step::Finished)
        .map(|(n, _)| n)
        .collect();
    if finished.len() == steps.len() {
        let failed = finished.iter().any(|n| {
            pod.containers
                .get(*n)
                .is_some_and(|c| !matches!(c.state, CState::Terminated { code: 0, .. }))
        });
        return Some(if failed { "Failed" } else { "Succeeded" });
    }
    steps
        .iter()
        .any(|(n, _)| {
            pod.containers
                .get(n)
                .is_some_and(|c| c.container_id.is_some() || c.restarts > 0)
        })
        .then_some("Running")
}

/// The crash-loop back-off before restart number `restarts` (counted from 1): `base`
/// doubling per restart, at most `max`.
pub fn crash_backoff(base: Duration, max: Duration, restarts: i32) -> Duration {
    let n = (restarts - 1).clamp(0, 16) as u32;
    base.saturating_mul(1 << n).min(max)
}

/// The back-off before retrying a failed pull or create: 8 × `base`, at most `max`.
pub fn error_backoff(base: Duration, max: Duration) -> Duration {
    base.saturating_mul(8).min(max)
}

/// The `terminated` state of a container that exited with `code`.
pub fn terminated(
    code: i32,
    message: Option<String>,
    previous: &CState,
    finished_at: String,
) -> CState {
    let started_at = match previous {
        CState::Running { started_at } => Some(started_at.clone()),
        _ => None,
    };
    CState::Terminated {
        code,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message,
        started_at,
        finished_at,
    }
}

/// The field path kubelet puts in a container event's object reference.
pub fn field_path(role: Role, name: &str) -> String {
    match role {
        Role::Regular => format!("spec.containers{{{name}}}"),
        _ => format!("spec.initContainers{{{name}}}"),
    }
}

/// A container status's `imageID`: the reference without a digest, `@`, the manifest digest.
pub fn image_id(image: &crate::image::Image) -> String {
    format!(
        "{}@{}",
        image
            .reference
            .split('@')
            .next()
            .unwrap_or(&image.reference),
        image.manifest_digest
    )
}

/// The container `waiting.reason` kubelet would report for a failure to start.
pub fn waiting_reason(err: &NodeError) -> &'static str {
    match err {
        NodeError::ImageNotPresent { .. } => "ErrImageNeverPull",
        NodeError::InvalidReference { .. } => "InvalidImageName",
        NodeError::Pull { .. } | NodeError::DigestMismatch { .. } | NodeError::BadImage { .. } => {
            "ErrImagePull"
        }
        NodeError::CommandNotFound { .. } => "RunContainerError",
        NodeError::Unsupported { .. }
        | NodeError::InvalidSpec { .. }
        | NodeError::UnknownHandler { .. }
        | NodeError::HandlerUnavailable { .. }
        | NodeError::Reference { .. } => "CreateContainerConfigError",
        _ => "CreateContainerError",
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
