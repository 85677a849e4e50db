//! Pure decisions of the Sandbox reconciler (upstream-core §6): conditions, Service ports, Pod
//! metadata propagation, new-Pod construction, status-write rules and expiry, and this project's
//! pause extension (the `Paused` condition, the paused annotation on the Pod). No I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agent_sandbox_api::conditions::{
    NewCondition, remove_status_condition, set_status_condition, status,
};
use agent_sandbox_api::constants::{
    EXTENSIONS_GROUP, annotations, condition_types as ct, extensions as ext, is_system_annotation,
    is_system_label, labels, messages, reasons,
};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox, SandboxStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ServicePort, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::meta::{controller_of, group_of, label, normalize_created_by};

/// The `status.selector` value for a Sandbox name.
pub fn selector_for(sandbox_name: &str) -> String {
    format!("{}={}", labels::SANDBOX_NAME_HASH, name_hash(sandbox_name))
}

/// The PVC name for a volume claim template of a Sandbox.
pub fn pvc_name(vct_name: &str, sandbox_name: &str) -> String {
    format!("{vct_name}-{sandbox_name}")
}

/// Errors seen while reconciling children, as they feed the Ready condition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildErrors {
    /// The multiple-owned-pods error text, if that is what the Pod step failed with.
    pub multiple_pods: Option<String>,
    /// Other error texts, in the order PVCs, Pod, Service.
    pub others: Vec<String>,
}

impl ChildErrors {
    /// Whether no error was seen.
    pub fn is_empty(&self) -> bool {
        self.multiple_pods.is_none() && self.others.is_empty()
    }
}

/// What the reconciler observed about the Pod in this pass.
#[derive(Clone, Copy, Debug)]
pub struct PodView<'a> {
    /// The Pod chosen for this Sandbox (owned, or a foreign Pod with the tracked name).
    pub pod: Option<&'a Pod>,
    /// Whether `pod` is controlled by this Sandbox.
    pub owned: bool,
    /// Whether the Pod step returned an error.
    pub pod_err: bool,
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn pod_condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The Suspended condition (§6.9).
pub fn suspended_condition(mode: OperatingMode, view: PodView<'_>) -> NewCondition {
    let (st, reason, msg) = if mode != OperatingMode::Suspended {
        (
            status::FALSE,
            reasons::NOT_SUSPENDED,
            messages::NOT_SUSPENDED,
        )
    } else {
        match view.pod {
            None if view.pod_err => (
                status::UNKNOWN,
                reasons::POD_STATE_UNKNOWN,
                messages::POD_STATE_UNKNOWN,
            ),
            None => (
                status::TRUE,
                reasons::POD_TERMINATED,
                messages::POD_TERMINATED,
            ),
            Some(_) if !view.owned => (
                status::FALSE,
                reasons::POD_NOT_OWNED,
                messages::POD_NOT_OWNED,
            ),
            Some(_) => (
                status::FALSE,
                reasons::POD_TERMINATING,
                messages::POD_TERMINATING,
            ),
        }
    };
    NewCondition::new(ct::SUSPENDED, st, reason, msg)
}

/// The PodScheduled condition, or `None` when it must be absent (§6.9).
pub fn pod_scheduled_condition(view: PodView<'_>) -> Option<NewCondition> {
    let pod = match view.pod {
        None if view.pod_err => {
            return Some(NewCondition::new(
                ct::POD_SCHEDULED,
                status::UNKNOWN,
                reasons::POD_SCHEDULING_UNKNOWN,
                messages::POD_SCHEDULING_UNKNOWN,
            ));
        }
        None => return None,
        Some(_) if !view.owned => return None,
        Some(p) => p,
    };
    Some(match pod_condition(pod, "PodScheduled") {
        Some(c) => {
            let reason = match c.reason.as_deref() {
                Some(r) if !r.is_empty() => r,
                _ if c.status == status::TRUE => reasons::POD_SCHEDULED,
                _ => reasons::POD_SCHEDULING_UNKNOWN,
            };
            NewCondition::new(
                ct::POD_SCHEDULED,
                &c.status,
                reason,
                c.message.clone().unwrap_or_default(),
            )
        }
        None => NewCondition::new(
            ct::POD_SCHEDULED,
            status::UNKNOWN,
            reasons::POD_SCHEDULING_UNKNOWN,
            messages::POD_SCHEDULED_NOT_REPORTED,
        ),
    })
}

/// The Finished condition, only for an owned Pod in a terminal phase (§6.9).
pub fn finished_condition(view: PodView<'_>) -> Option<NewCondition> {
    let pod = view.pod.filter(|_| view.owned)?;
    match pod_phase(pod) {
        "Succeeded" => Some(NewCondition::new(
            ct::FINISHED,
            status::TRUE,
            reasons::POD_SUCCEEDED,
            messages::POD_SUCCEEDED,
        )),
        "Failed" => Some(NewCondition::new(
            ct::FINISHED,
            status::TRUE,
            reasons::POD_FAILED,
            messages::POD_FAILED,
        )),
        _ => None,
    }
}

/// Inputs of the Ready condition beyond the Pod.
#[derive(Clone, Copy, Debug)]
pub struct ReadyInputs<'a> {
    /// The Sandbox's operating mode.
    pub mode: OperatingMode,
    /// `spec.service`.
    pub spec_service: Option<bool>,
    /// Whether a Service is in use after this pass (`status.service != ""`).
    pub service_exists: bool,
    /// `status.podIPs` computed in this pass.
    pub pod_ips: &'a [String],
    /// Child errors.
    pub errors: &'a ChildErrors,
    /// The Sandbox's [`ext::annotations::PAUSED`] annotation, if it has one.
    pub paused_annotation: Option<&'a str>,
}

/// The Ready condition (§6.9, items 1–4).
pub fn ready_condition(view: PodView<'_>, input: ReadyInputs<'_>) -> NewCondition {
    let ready = |st: &str, reason: &str, msg: String| NewCondition::new(ct::READY, st, reason, msg);
    if let Some(text) = &input.errors.multiple_pods {
        return ready(status::FALSE, reasons::MULTIPLE_PODS, text.clone());
    }
    if !input.errors.others.is_empty() {
        return ready(
            status::FALSE,
            reasons::RECONCILER_ERROR,
            format!(
                "{}{}",
                messages::ERROR_SEEN_PREFIX,
                input.errors.others.join("\n")
            ),
        );
    }
    if input.mode == OperatingMode::Suspended {
        let msg = if view.pod.is_some() {
            messages::SANDBOX_SUSPENDING
        } else {
            messages::SANDBOX_SUSPENDED
        };
        return ready(status::FALSE, reasons::SANDBOX_SUSPENDED, msg.into());
    }
    if let Some(pod) = view.pod {
        match pod_phase(pod) {
            "Succeeded" => {
                return ready(
                    status::FALSE,
                    reasons::POD_SUCCEEDED,
                    messages::POD_SUCCEEDED.into(),
                );
            }
            "Failed" => {
                return ready(
                    status::FALSE,
                    reasons::POD_FAILED,
                    messages::POD_FAILED.into(),
                );
            }
            _ => {}
        }
        if view.owned && pod_frozen(pod) {
            return ready(
                status::FALSE,
                ext::reasons::SANDBOX_PAUSED,
                ext::messages::READY_PAUSED.into(),
            );
        }
    }
    let mut pod_ready = false;
    let mut msg = match view.pod {
        None => messages::POD_DOES_NOT_EXIST.to_string(),
        Some(pod) => {
            let phase = pod_phase(pod);
            if phase == "Running" {
                if pod_condition(pod, "Ready").is_some_and(|c| c.status == status::TRUE) {
                    if input.pod_ips.is_empty() {
                        messages::POD_READY_NO_IPS.to_string()
                    } else {
                        pod_ready = true;
                        messages::POD_READY.to_string()
                    }
                } else {
                    messages::POD_RUNNING_NOT_READY.to_string()
                }
            } else {
                format!("{}{phase}", messages::POD_EXISTS_WITH_PHASE)
            }
        }
    };
    let svc_required = input.spec_service.unwrap_or(input.service_exists);
    let mut svc_ready = true;
    if svc_required {
        if input.service_exists {
            msg.push_str(messages::SERVICE_EXISTS);
        } else {
            msg.push_str(messages::SERVICE_DOES_NOT_EXIST);
            svc_ready = false;
        }
    }
    if pod_ready && svc_ready {
        ready(status::TRUE, reasons::DEPENDENCIES_READY, msg)
    } else {
        ready(status::FALSE, reasons::DEPENDENCIES_NOT_READY, msg)
    }
}

/// Whether the node reports the Pod frozen (its [`ext::condition_types::POD_PAUSED`] condition
/// is True).
pub fn pod_frozen(pod: &Pod) -> bool {
    pod_condition(pod, ext::condition_types::POD_PAUSED).is_some_and(|c| c.status == status::TRUE)
}

/// The `Paused` condition of this project's pause extension, or `None` while it stays absent.
///
/// It is absent on a Sandbox that was never asked to pause (so upstream's status is unchanged);
/// once it exists it stays, True or False, as `Suspended` does, so that `kubectl wait
/// --for=condition=Paused=False` works after an unpause. Its status is what the node reports:
/// True while the Pod is frozen (reason `SandboxPaused`, or `SandboxUnpausing` while the
/// unpause waits for the node), False otherwise (`SandboxRunning`, `SandboxPausing` while the
/// pause waits for the node, `NoPodToPause` when there is no running Pod to freeze: suspended,
/// not created yet, or finished, `PauseFailed` with the node's message).
pub fn paused_condition(
    mode: OperatingMode,
    view: PodView<'_>,
    annotation: Option<&str>,
    had_condition: bool,
) -> Option<NewCondition> {
    let pod = view.pod.filter(|_| view.owned);
    let pod_cond = pod.and_then(|p| pod_condition(p, ext::condition_types::POD_PAUSED));
    if annotation.is_none() && pod_cond.is_none() && !had_condition {
        return None;
    }
    let asked = annotation == Some(ext::PAUSED_TRUE);
    let node_message = || pod_cond.and_then(|c| c.message.clone()).unwrap_or_default();
    let failed =
        pod_cond.is_some_and(|c| c.reason.as_deref() == Some(ext::pod_reasons::PAUSE_FAILED));
    let cond = |st: &str, reason: &str, msg: String| {
        NewCondition::new(ext::condition_types::PAUSED, st, reason, msg)
    };
    let frozen = pod.is_some_and(pod_frozen);
    Some(if frozen {
        if failed {
            cond(status::TRUE, ext::reasons::PAUSE_FAILED, node_message())
        } else if asked {
            cond(
                status::TRUE,
                ext::reasons::SANDBOX_PAUSED,
                ext::messages::SANDBOX_PAUSED.into(),
            )
        } else {
            cond(
                status::TRUE,
                ext::reasons::SANDBOX_UNPAUSING,
                ext::messages::SANDBOX_UNPAUSING.into(),
            )
        }
    } else if asked {
        let no_pod = |msg: String| cond(status::FALSE, ext::reasons::NO_POD_TO_PAUSE, msg);
        match pod {
            _ if mode == OperatingMode::Suspended => no_pod(ext::messages::SUSPENDED_NO_POD.into()),
            None => no_pod(ext::messages::NO_POD.into()),
            Some(p) if matches!(pod_phase(p), "Succeeded" | "Failed") => no_pod(format!(
                "{}{}",
                ext::messages::POD_FINISHED_PREFIX,
                pod_phase(p)
            )),
            Some(_) if failed => cond(status::FALSE, ext::reasons::PAUSE_FAILED, node_message()),
            Some(_) => cond(
                status::FALSE,
                ext::reasons::SANDBOX_PAUSING,
                ext::messages::SANDBOX_PAUSING.into(),
            ),
        }
    } else {
        let msg = match annotation {
            Some(v) => format!(
                "{} (the annotation {} is {v:?}; only {:?} pauses)",
                ext::messages::SANDBOX_RUNNING,
                ext::annotations::PAUSED,
                ext::PAUSED_TRUE
            ),
            None => ext::messages::SANDBOX_RUNNING.into(),
        };
        cond(status::FALSE, ext::reasons::SANDBOX_RUNNING, msg)
    })
}

/// The expired Ready condition (§6.9 item 5).
pub fn expired_condition() -> NewCondition {
    NewCondition::new(
        ct::READY,
        status::FALSE,
        reasons::SANDBOX_EXPIRED,
        messages::SANDBOX_EXPIRED,
    )
}

/// Applies the conditions of one pass in the order Suspended, Finished, PodScheduled, Ready, then
/// removes Finished and PodScheduled when they were not computed (§6.3 step 5).
pub fn apply_conditions(
    status_: &mut SandboxStatus,
    generation: Option<i64>,
    view: PodView<'_>,
    input: ReadyInputs<'_>,
    now: &Time,
) {
    let conds = &mut status_.conditions;
    set_status_condition(
        conds,
        suspended_condition(input.mode, view).generation(generation),
        now,
    );
    match finished_condition(view) {
        Some(c) => {
            set_status_condition(conds, c.generation(generation), now);
        }
        None => {
            remove_status_condition(conds, ct::FINISHED);
        }
    }
    match pod_scheduled_condition(view) {
        Some(c) => {
            set_status_condition(conds, c.generation(generation), now);
        }
        None => {
            remove_status_condition(conds, ct::POD_SCHEDULED);
        }
    }
    set_status_condition(
        conds,
        ready_condition(view, input).generation(generation),
        now,
    );
    let had = conds
        .iter()
        .any(|c| c.type_ == ext::condition_types::PAUSED);
    if let Some(c) = paused_condition(input.mode, view, input.paused_annotation, had) {
        set_status_condition(conds, c.generation(generation), now);
    }
}

/// Whether the Sandbox's Ready condition already says it expired.
pub fn is_marked_expired(status_: Option<&SandboxStatus>) -> bool {
    status_.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ct::READY && c.reason == reasons::SANDBOX_EXPIRED)
    })
}

/// Where the startup action [`ext::annotations::PAUSE_AT`] stands.
#[derive(Debug, PartialEq, Eq)]
pub enum PauseAt {
    /// Its time has come: annotate the Sandbox paused and remove the key.
    Due,
    /// Look again after this long.
    Wait(Duration),
}

/// The startup action `agent-sandbox-rs.github.io/pause-at` (RFC 3339) of a Sandbox at `now`;
/// `None` without it or when it does not parse (admission refuses such values).
pub fn pause_at(meta: &ObjectMeta, now: &Time) -> Option<PauseAt> {
    let at =
        ext::parse_pause_at(meta.annotations.as_ref()?.get(ext::annotations::PAUSE_AT)?).ok()?;
    let left = Duration::try_from(at.duration_since(now.0)).unwrap_or(Duration::ZERO);
    Some(if left.is_zero() {
        PauseAt::Due
    } else {
        PauseAt::Wait(left)
    })
}

/// Whether `shutdown_time` has passed at `now`.
pub fn is_expired(shutdown_time: Option<&Time>, now: &Time) -> bool {
    shutdown_time.is_some_and(|t| now.0 >= t.0)
}

/// The requeue until shutdownTime: `max(shutdownTime - now, 2s)` (§6.2 step 6).
pub fn requeue_until_shutdown(shutdown_time: Option<&Time>, now: &Time) -> Option<Duration> {
    let t = shutdown_time?;
    let left = t.0.duration_since(now.0);
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Some(left.max(Duration::from_secs(2)))
}

/// Marks the status expired in pass 1: Ready=False/SandboxExpired and PodScheduled removed.
pub fn mark_expired(status_: &mut SandboxStatus, generation: Option<i64>, now: &Time) {
    set_status_condition(
        &mut status_.conditions,
        expired_condition().generation(generation),
        now,
    );
    remove_status_condition(&mut status_.conditions, ct::POD_SCHEDULED);
}

/// The Retain-expiry status: only the conditions survive, Ready is SandboxExpired (§6.8 step 4).
pub fn retained_expiry_status(
    old: &SandboxStatus,
    generation: Option<i64>,
    now: &Time,
) -> SandboxStatus {
    let mut s = SandboxStatus {
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    set_status_condition(
        &mut s.conditions,
        expired_condition().generation(generation),
        now,
    );
    s
}

/// Whether a status write is needed (§6.10): not when semantically equal, and not when the only
/// change is `nodeName` while Ready is not True.
pub fn should_write_status(old: &SandboxStatus, new: &SandboxStatus) -> bool {
    if agent_sandbox_api::semantic::eq(old, new) {
        return false;
    }
    let ready_true = new
        .conditions
        .iter()
        .any(|c| c.type_ == ct::READY && c.status == status::TRUE);
    if !ready_true {
        let mut only_node = new.clone();
        only_node.node_name = old.node_name.clone();
        if agent_sandbox_api::semantic::eq(old, &only_node) {
            return false;
        }
    }
    true
}

/// The Service ports for a Pod spec (§6.7): containers and native sidecars, de-duplicated by
/// (port, protocol), sorted, unnamed ports named `p-<port>-<proto>` with `-2`, `-3`… on clashes.
pub fn service_ports(spec: &PodSpec) -> Option<Vec<ServicePort>> {
    let sidecars = spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut entries: Vec<(i32, String, Option<String>)> = Vec::new();
    let mut reserved: BTreeSet<String> = BTreeSet::new();
    for c in spec.containers.iter().chain(sidecars) {
        for p in c.ports.as_deref().unwrap_or_default() {
            if p.container_port == 0 {
                continue;
            }
            let proto = p
                .protocol
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "TCP".into());
            let name = p.name.clone().filter(|n| !n.is_empty());
            let idx = entries
                .iter()
                .position(|(port, pr, _)| *port == p.container_port && *pr == proto);
            let idx = match idx {
                Some(i) => i,
                None => {
                    entries.push((p.container_port, proto, None));
                    entries.len() - 1
                }
            };
            if entries[idx].2.is_none()
                && let Some(n) = name
                && !reserved.contains(&n)
            {
                reserved.insert(n.clone());
                entries[idx].2 = Some(n);
            }
        }
    }
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let ports = entries
        .into_iter()
        .map(|(port, proto, name)| {
            let name = name.unwrap_or_else(|| {
                let base = format!("p-{port}-{}", proto.to_lowercase());
                let mut candidate = base.clone();
                let mut n = 2;
                while reserved.contains(&candidate) {
                    candidate = format!("{base}-{n}");
                    n += 1;
                }
                reserved.insert(candidate.clone());
                candidate
            });
            ServicePort {
                name: Some(name),
                port,
                protocol: Some(proto),
                target_port: Some(IntOrString::Int(port)),
                ..Default::default()
            }
        })
        .collect();
    Some(ports)
}

fn parse_key_list(v: Option<&str>) -> Vec<String> {
    v.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The extension labels a Sandbox's Pod should carry, from the Sandbox's top-level labels, only
/// under an extensions-group controller (§6.5 step 4). `None` means "remove".
pub fn extension_labels(sandbox_meta: &ObjectMeta) -> [(&'static str, Option<String>); 2] {
    let ctrl = controller_of(sandbox_meta).filter(|r| group_of(&r.api_version) == EXTENSIONS_GROUP);
    let pool = ctrl
        .filter(|r| r.kind == "SandboxWarmPool")
        .and_then(|_| label(sandbox_meta, labels::WARM_POOL_SANDBOX))
        .filter(|v| !v.is_empty())
        .map(String::from);
    let tpl = ctrl
        .and_then(|_| label(sandbox_meta, labels::SANDBOX_TEMPLATE_REF_HASH))
        .filter(|v| !v.is_empty())
        .map(String::from);
    [
        (labels::WARM_POOL_SANDBOX, pool),
        (labels::SANDBOX_TEMPLATE_REF_HASH, tpl),
    ]
}

/// The normalised `created-by` value for the Pod, if the Sandbox has a non-empty label.
pub fn pod_created_by(sandbox_meta: &ObjectMeta) -> Option<String> {
    label(sandbox_meta, labels::CREATED_BY)
        .filter(|v| !v.is_empty())
        .map(|v| normalize_created_by(v).to_string())
}

/// Desired Pod labels and annotations after metadata propagation onto an existing Pod (§6.5).
/// Returns the new maps; compare them with the old ones to decide on a patch.
pub fn propagate_pod_metadata(
    sandbox: &Sandbox,
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let name = sandbox.metadata.name.as_deref().unwrap_or_default();
    let tmpl = &sandbox.spec.pod_template.metadata;
    let mut l = pod_labels.clone();
    let mut a = pod_annotations.clone();

    l.insert(labels::SANDBOX_NAME_HASH.into(), name_hash(name));
    let tmpl_labels: BTreeSet<&String> =
        tmpl.labels.keys().filter(|k| !is_system_label(k)).collect();
    for k in &tmpl_labels {
        l.insert((*k).clone(), tmpl.labels[*k].clone());
    }
    for k in parse_key_list(
        pod_annotations
            .get(annotations::PROPAGATED_LABELS)
            .map(String::as_str),
    ) {
        if is_system_label(&k) {
            if k != labels::SANDBOX_NAME_HASH {
                l.remove(&k);
            }
        } else if !tmpl_labels.contains(&k) {
            l.remove(&k);
        }
    }
    for (k, v) in extension_labels(&sandbox.metadata) {
        match v {
            Some(v) => l.insert(k.into(), v),
            None => l.remove(k),
        };
    }
    match pod_created_by(&sandbox.metadata) {
        Some(v) => l.insert(labels::CREATED_BY.into(), v),
        None => l.remove(labels::CREATED_BY),
    };

    let tmpl_annos: BTreeSet<&String> = tmpl
        .annotations
        .keys()
        .filter(|k| !is_system_annotation(k))
        .collect();
    for k in &tmpl_annos {
        a.insert((*k).clone(), tmpl.annotations[*k].clone());
    }
    for k in parse_key_list(
        pod_annotations
            .get(annotations::PROPAGATED_ANNOTATIONS)
            .map(String::as_str),
    ) {
        let tracking =
            k == annotations::PROPAGATED_LABELS || k == annotations::PROPAGATED_ANNOTATIONS;
        if is_system_annotation(&k) {
            if !tracking {
                a.remove(&k);
            }
        } else if !tmpl_annos.contains(&k) {
            a.remove(&k);
        }
    }
    let joined = |keys: &BTreeSet<&String>| {
        keys.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (key, value) in [
        (annotations::PROPAGATED_LABELS, joined(&tmpl_labels)),
        (annotations::PROPAGATED_ANNOTATIONS, joined(&tmpl_annos)),
    ] {
        let existing = a.get(key).map(String::as_str).unwrap_or("");
        if existing != value {
            a.insert(key.into(), value);
        }
    }
    sync_paused_annotation(&sandbox.metadata, &mut a);
    (l, a)
}

/// The Pod carries [`ext::annotations::PAUSED`] `"true"` exactly when its Sandbox asks for a
/// pause: the Sandbox's own annotation decides (a pod template's copy of the key is overridden),
/// and any other value is not copied (it means running).
pub fn sync_paused_annotation(
    sandbox_meta: &ObjectMeta,
    pod_annotations: &mut BTreeMap<String, String>,
) {
    if ext::asks_paused(sandbox_meta.annotations.as_ref()) {
        pod_annotations.insert(ext::annotations::PAUSED.into(), ext::PAUSED_TRUE.into());
    } else {
        pod_annotations.remove(ext::annotations::PAUSED);
    }
}

/// Labels and annotations of a new Pod (§6.4 step 8).
pub fn new_pod_metadata(sandbox: &Sandbox) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let name = sandbox.metadata.name.as_deref().unwrap_or_default();
    let tmpl = &sandbox.spec.pod_template.metadata;
    let mut l: BTreeMap<String, String> = tmpl
        .labels
        .iter()
        .filter(|(k, _)| !is_system_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let propagated_labels = l.keys().cloned().collect::<Vec<_>>().join(",");
    l.insert(labels::SANDBOX_NAME_HASH.into(), name_hash(name));
    for (k, v) in extension_labels(&sandbox.metadata) {
        if let Some(v) = v {
            l.insert(k.into(), v);
        }
    }
    if let Some(v) = pod_created_by(&sandbox.metadata) {
        l.insert(labels::CREATED_BY.into(), v);
    }
    let mut a: BTreeMap<String, String> = tmpl
        .annotations
        .iter()
        .filter(|(k, _)| !is_system_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let propagated_annos = a.keys().cloned().collect::<Vec<_>>().join(",");
    if !propagated_labels.is_empty() {
        a.insert(annotations::PROPAGATED_LABELS.into(), propagated_labels);
    }
    if !propagated_annos.is_empty() {
        a.insert(annotations::PROPAGATED_ANNOTATIONS.into(), propagated_annos);
    }
    sync_paused_annotation(&sandbox.metadata, &mut a);
    // A rollback names its snapshot on the Sandbox itself (a claim keeps its Sandbox's pod
    // template as its template says): the new Pod starts from it.
    for key in [
        ext::annotations::RESTORE_FROM,
        ext::annotations::RESTORE_VOLUMES,
    ] {
        if let Some(v) = sandbox
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(key))
        {
            a.insert(key.into(), v.clone());
        }
    }
    (l, a)
}

/// The Pod spec of a new Pod: the template spec with one PVC volume per volume claim template;
/// a template volume of the same name is replaced (StatefulSet semantics).
pub fn new_pod_spec(sandbox: &Sandbox) -> PodSpec {
    let name = sandbox.metadata.name.as_deref().unwrap_or_default();
    let mut spec = sandbox.spec.pod_template.spec.clone();
    let vcts = &sandbox.spec.volume_claim_templates;
    if vcts.is_empty() {
        return spec;
    }
    let vct_names: BTreeSet<&str> = vcts.iter().map(|v| v.metadata.name.as_str()).collect();
    let mut volumes: Vec<Volume> = spec
        .volumes
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !vct_names.contains(v.name.as_str()))
        .collect();
    for vct in vcts {
        volumes.push(Volume {
            name: vct.metadata.name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(&vct.metadata.name, name),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    spec.volumes = Some(volumes);
    spec
}

/// The pod IPs of a Pod's status, `None`-free.
pub fn pod_ips(pod: &Pod) -> Vec<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| {
            ips.iter()
                .map(|i| i.ip.clone())
                .filter(|ip| !ip.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The status fields derived from the Pod of this pass (§6.3 step 3).
pub fn apply_pod_to_status(status_: &mut SandboxStatus, sandbox_name: &str, view: PodView<'_>) {
    match view.pod {
        None => {
            status_.pod_ips = Vec::new();
            status_.node_name = String::new();
        }
        Some(pod) => {
            status_.label_selector = selector_for(sandbox_name);
            if view.owned {
                status_.pod_ips = pod_ips(pod);
                status_.node_name = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
            } else {
                status_.pod_ips = Vec::new();
                status_.node_name = String::new();
            }
        }
    }
}

#[cfg(test)]
mod startup_tests;
#[cfg(test)]
mod tests;
