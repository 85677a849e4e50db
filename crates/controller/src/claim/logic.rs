//! Pure decisions of the SandboxClaim reconciler (upstream-core §9): `additionalPodMetadata`
//! validation and merging, env injection and volume claim template policies, the cold Sandbox,
//! expiry, and the claim status. No I/O.

use std::collections::BTreeMap;

use agent_sandbox_api::conditions::{
    NewCondition, find_status_condition, remove_status_condition, set_status_condition, status,
};
use agent_sandbox_api::constants::{
    annotations, condition_types as ct, labels, launch_type, reasons as sb_reasons,
};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{
    EnvVar, InjectionPolicy, PersistentVolumeClaimTemplate, PodMetadata, Sandbox, SandboxClaim,
    SandboxClaimStatus, SandboxSpec, SandboxTemplate,
};
use k8s_openapi::api::core::v1::{EnvVar as CoreEnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

use crate::meta::{annotation, controller_ref, label};
use crate::template::apply_secure_defaults;

/// Claim condition reasons and messages that the `api` crate does not define yet.
pub mod reasons {
    /// The pool's template is missing.
    pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
    /// The claim's pool is missing.
    pub const WARM_POOL_NOT_FOUND: &str = "WarmPoolNotFound";
    /// A concurrent adoption won.
    pub const ADOPTION_CONFLICT: &str = "AdoptionConflict";
    /// The cold Sandbox exists but the cache has not seen it.
    pub const SANDBOX_CREATE_PENDING: &str = "SandboxCreatePending";
    /// `additionalPodMetadata` is invalid.
    pub const INVALID_METADATA: &str = "InvalidMetadata";
    /// Env injection is not allowed.
    pub const ENV_VARS_INJECTION_REJECTED: &str = "EnvVarsInjectionRejected";
    /// Volume claim templates are invalid or not allowed.
    pub const VOLUME_CLAIM_TEMPLATES_ERROR: &str = "VolumeClaimTemplatesError";
    /// Any other error.
    pub const RECONCILER_ERROR: &str = "ReconcilerError";
    /// The claim expired.
    pub const CLAIM_EXPIRED: &str = "ClaimExpired";
    /// The claim has no Sandbox.
    pub const SANDBOX_MISSING: &str = "SandboxMissing";
    /// The Sandbox expired on its own.
    pub const SANDBOX_EXPIRED: &str = "SandboxExpired";
    /// The Sandbox has no Ready condition.
    pub const SANDBOX_NOT_READY: &str = "SandboxNotReady";
    /// Message: the cold Sandbox exists but the cache lags.
    pub const MSG_CREATE_PENDING: &str = "Sandbox already created; waiting for cache to converge";
    /// Message: expired and cleaning up.
    pub const MSG_CLAIM_EXPIRED: &str = "Claim expired. Sandbox cleanup initiated.";
    /// Message: no Sandbox.
    pub const MSG_SANDBOX_MISSING: &str = "Sandbox does not exist";
    /// Message: the Sandbox expired on its own.
    pub const MSG_SANDBOX_EXPIRED: &str =
        "Underlying Sandbox resource has expired independently of the Claim.";
    /// Message: the Sandbox has no Ready condition.
    pub const MSG_SANDBOX_NOT_READY: &str = "Sandbox is not ready";
}

/// Why a claim pass failed; decides the Ready condition and whether to back off.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimError {
    /// The pool's template is missing (template name).
    TemplateNotFound(String),
    /// The pool is missing (pool name).
    WarmPoolNotFound(String),
    /// A concurrent adoption won (detail).
    AdoptionConflict(String),
    /// AlreadyExists from a lagging cache.
    CreatePending,
    /// Invalid `additionalPodMetadata` (full text).
    InvalidMetadata(String),
    /// Env injection rejected (full text).
    EnvRejected(String),
    /// Expired, but the Sandbox is not the claim's (full text).
    SandboxNotOwned(String),
    /// Volume claim template error (full text).
    Vct(String),
    /// Anything else.
    Other(String),
}

impl ClaimError {
    /// Whether the error is a configuration error that must not cause exponential backoff.
    pub fn suppressed(&self) -> bool {
        !matches!(self, ClaimError::Other(_))
    }

    /// The error text.
    pub fn text(&self) -> String {
        match self {
            ClaimError::TemplateNotFound(t) => format!("SandboxTemplate {t:?} not found"),
            ClaimError::WarmPoolNotFound(p) => format!("SandboxWarmPool {p:?} not found"),
            ClaimError::AdoptionConflict(d) => d.clone(),
            ClaimError::CreatePending => reasons::MSG_CREATE_PENDING.into(),
            ClaimError::InvalidMetadata(s)
            | ClaimError::EnvRejected(s)
            | ClaimError::SandboxNotOwned(s)
            | ClaimError::Vct(s)
            | ClaimError::Other(s) => s.clone(),
        }
    }
}

use agent_sandbox_api::validation::{label_key_errors, label_value_errors};

const RESTRICTED_DOMAINS: [&str; 3] = ["kubernetes.io", "k8s.io", "agents.x-k8s.io"];

fn is_restricted_domain(domain: &str) -> bool {
    RESTRICTED_DOMAINS
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
}

fn validate_key(key: &str, value: &str, is_label: bool, allowed: &[String]) -> Result<(), String> {
    let kind = if is_label { "label" } else { "annotation" };
    let errs = label_key_errors(key);
    if !errs.is_empty() {
        return Err(format!("invalid {kind} key: {key:?}: {}", errs.join("; ")));
    }
    if is_label && key.eq_ignore_ascii_case("app") && value.eq_ignore_ascii_case("sandbox-router") {
        return Err(format!(
            "restricted system label value: {key:?}={value:?} is not allowed in AdditionalPodMetadata"
        ));
    }
    let domain = match key.split_once('/') {
        Some((d, _)) => d.to_lowercase(),
        None if is_label => {
            return Err(format!(
                "label {key:?} must have a domain prefix (e.g. 'sandbox.users.io/my-label') to prevent opting into unintended policy domains"
            ));
        }
        None => String::new(),
    };
    if is_label {
        if !allowed
            .iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
        {
            return Err(format!("label domain {domain:?} is not in the allowlist"));
        }
        let errs = label_value_errors(value);
        if !errs.is_empty() {
            return Err(format!(
                "invalid label value: {value:?} does not match allowed pattern: {}",
                errs.join("; ")
            ));
        }
    } else if is_restricted_domain(&domain) && key != annotations::SAFE_TO_EVICT {
        return Err(format!(
            "restricted system domain: {key:?} is not allowed in AdditionalPodMetadata"
        ));
    }
    Ok(())
}

/// `validateAdditionalPodMetadata` (§9.4), keys checked in sorted order.
pub fn validate_additional_pod_metadata(
    meta: &PodMetadata,
    allowed: &[String],
) -> Result<(), ClaimError> {
    let wrap =
        |e: String| ClaimError::InvalidMetadata(format!("invalid additionalPodMetadata: {e}"));
    for (k, v) in &meta.labels {
        validate_key(k, v, true, allowed)
            .map_err(|e| wrap(format!("failed to validate label {k:?}: {e}")))?;
    }
    for (k, v) in &meta.annotations {
        validate_key(k, v, false, allowed)
            .map_err(|e| wrap(format!("failed to validate annotation {k:?}: {e}")))?;
    }
    Ok(())
}

/// `mergePodMetadata`: copies claim keys into `base`, failing on a different template value.
pub fn merge_pod_metadata(base: &mut PodMetadata, claim: &PodMetadata) -> Result<(), ClaimError> {
    for (kind, target, src) in [
        ("label", &mut base.labels, &claim.labels),
        ("annotation", &mut base.annotations, &claim.annotations),
    ] {
        for (k, v) in src {
            match target.get(k) {
                Some(tv) if tv != v => {
                    return Err(ClaimError::Other(format!(
                        "metadata override conflict: {kind} {k:?} is defined in template with value {tv:?}, but claim requests {v:?}"
                    )));
                }
                _ => {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(())
}

/// The desired `podTemplate.metadata` of a claim's Sandbox: the template's, plus claim-uid,
/// template-ref-hash, created-by (from the claim, or removed) and `additionalPodMetadata`.
pub fn desired_pod_metadata(
    tpl: &SandboxTemplate,
    claim: &SandboxClaim,
) -> Result<PodMetadata, ClaimError> {
    let mut m = tpl.spec.pod_template.metadata.clone();
    apply_claim_keys(&mut m, claim, &name_hash(&tpl.name_any()));
    merge_pod_metadata(&mut m, &claim.spec.additional_pod_metadata)?;
    Ok(m)
}

fn apply_claim_keys(m: &mut PodMetadata, claim: &SandboxClaim, ref_hash: &str) {
    m.labels
        .insert(labels::CLAIM_UID.into(), claim.uid().unwrap_or_default());
    m.labels
        .insert(labels::SANDBOX_TEMPLATE_REF_HASH.into(), ref_hash.into());
    match label(&claim.metadata, labels::CREATED_BY).filter(|s| !s.is_empty()) {
        Some(v) => m.labels.insert(labels::CREATED_BY.into(), v.into()),
        None => m.labels.remove(labels::CREATED_BY),
    };
}

/// Env injection (§9.6) into a pod spec under the template's policy.
pub fn inject_env(
    policy: InjectionPolicy,
    spec: &mut PodSpec,
    env: &[EnvVar],
) -> Result<(), ClaimError> {
    if env.is_empty() {
        return Ok(());
    }
    let rejected = |m: String| {
        ClaimError::EnvRejected(format!("environment variable injection rejected: {m}"))
    };
    if policy == InjectionPolicy::Disallowed {
        return Err(rejected(
            "environment variable injection is not allowed by the template policy".into(),
        ));
    }
    for e in env {
        let container = if e.container_name.is_empty() {
            spec.containers.first_mut()
        } else {
            let n = &e.container_name;
            match spec.containers.iter_mut().find(|c| &c.name == n) {
                Some(c) => Some(c),
                None => spec
                    .init_containers
                    .as_mut()
                    .and_then(|ics| ics.iter_mut().find(|c| &c.name == n)),
            }
        };
        let Some(c) = container else {
            let target = if e.container_name.is_empty() {
                "<first container>"
            } else {
                &e.container_name
            };
            return Err(ClaimError::Other(format!(
                "target container {target:?} not found in template for environment variable {:?}",
                e.name
            )));
        };
        if policy == InjectionPolicy::Allowed && c.env_from.as_ref().is_some_and(|v| !v.is_empty())
        {
            return Err(rejected(format!(
                "container {:?} uses EnvFrom sources; Allowed policy cannot safely prevent overriding EnvFrom-provided variables",
                c.name
            )));
        }
        let list = c.env.get_or_insert_with(Vec::new);
        let new = CoreEnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            value_from: None,
        };
        match list.iter_mut().find(|x| x.name == e.name) {
            Some(existing) if policy == InjectionPolicy::Overrides => *existing = new,
            Some(_) => {
                return Err(ClaimError::Other(format!(
                    "environment variable override is not allowed by the template policy for variable {:?}",
                    e.name
                )));
            }
            None => list.push(new),
        }
    }
    Ok(())
}

fn validate_vct_names(list: &[PersistentVolumeClaimTemplate]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in list.iter().enumerate() {
        if v.metadata.name.is_empty() {
            return Err(format!(
                "invalid volume claim templates: name at index {i} is empty"
            ));
        }
        if !seen.insert(v.metadata.name.as_str()) {
            return Err(format!(
                "invalid volume claim templates: duplicate name {:?}",
                v.metadata.name
            ));
        }
    }
    Ok(())
}

/// The Sandbox's volume claim templates from the template's and the claim's (§9.6).
pub fn merge_vcts(
    policy: InjectionPolicy,
    tpl: &[PersistentVolumeClaimTemplate],
    claim: &[PersistentVolumeClaimTemplate],
) -> Result<Vec<PersistentVolumeClaimTemplate>, ClaimError> {
    if claim.is_empty() {
        validate_vct_names(tpl).map_err(|e| {
            ClaimError::Vct(format!(
                "invalid volume claim templates in template: {}",
                strip_vct_prefix(&e)
            ))
        })?;
        return Ok(tpl.to_vec());
    }
    let wrap = |e: String| ClaimError::Vct(format!("failed to merge volume claim templates: {e}"));
    validate_vct_names(tpl).map_err(wrap)?;
    validate_vct_names(claim).map_err(wrap)?;
    match policy {
        InjectionPolicy::Disallowed => Err(wrap(
            "volume claim templates are disallowed by the template".into(),
        )),
        InjectionPolicy::Allowed => {
            if let Some(v) = claim
                .iter()
                .find(|c| tpl.iter().any(|t| t.metadata.name == c.metadata.name))
            {
                return Err(wrap(format!(
                    "overriding volume claim templates is forbidden by the template: cannot override template volume {:?}",
                    v.metadata.name
                )));
            }
            Ok(tpl.iter().chain(claim).cloned().collect())
        }
        InjectionPolicy::Overrides => {
            let mut out: Vec<PersistentVolumeClaimTemplate> = tpl
                .iter()
                .map(|t| {
                    claim
                        .iter()
                        .find(|c| c.metadata.name == t.metadata.name)
                        .unwrap_or(t)
                        .clone()
                })
                .collect();
            out.extend(
                claim
                    .iter()
                    .filter(|c| !tpl.iter().any(|t| t.metadata.name == c.metadata.name))
                    .cloned(),
            );
            Ok(out)
        }
    }
}

fn strip_vct_prefix(e: &str) -> &str {
    e.strip_prefix("invalid volume claim templates: ")
        .unwrap_or(e)
}

/// The cold Sandbox for a claim (§9.6).
pub fn build_cold_sandbox(
    claim: &SandboxClaim,
    tpl: &SandboxTemplate,
) -> Result<Sandbox, ClaimError> {
    let tpl_name = tpl.name_any();
    let ref_hash = name_hash(&tpl_name);
    let mut top = BTreeMap::from([
        (
            labels::CLAIM_UID.to_string(),
            claim.uid().unwrap_or_default(),
        ),
        (
            labels::LAUNCH_TYPE.to_string(),
            launch_type::COLD.to_string(),
        ),
        (
            labels::SANDBOX_TEMPLATE_REF_HASH.to_string(),
            ref_hash.clone(),
        ),
    ]);
    if let Some(v) = label(&claim.metadata, labels::CREATED_BY).filter(|s| !s.is_empty()) {
        top.insert(labels::CREATED_BY.into(), v.into());
    }
    let mut annos = BTreeMap::from([(
        annotations::SANDBOX_TEMPLATE_REF.to_string(),
        tpl_name.clone(),
    )]);
    if let Some(tc) = annotation(&claim.metadata, annotations::TRACE_CONTEXT) {
        annos.insert(annotations::TRACE_CONTEXT.into(), tc.into());
    }
    let vcts = merge_vcts(
        tpl.spec.volume_claim_templates_policy(),
        &tpl.spec.volume_claim_templates,
        &claim.spec.volume_claim_templates,
    )?;
    let mut pod_template = tpl.spec.pod_template.clone();
    apply_claim_keys(&mut pod_template.metadata, claim, &ref_hash);
    merge_pod_metadata(
        &mut pod_template.metadata,
        &claim.spec.additional_pod_metadata,
    )?;
    inject_env(
        tpl.spec.env_vars_injection_policy(),
        &mut pod_template.spec,
        &claim.spec.env,
    )?;
    apply_secure_defaults(&tpl.spec, &mut pod_template.spec);
    Ok(Sandbox {
        metadata: ObjectMeta {
            name: claim.metadata.name.clone(),
            namespace: claim.metadata.namespace.clone(),
            labels: Some(top),
            annotations: Some(annos),
            owner_references: Some(vec![controller_ref(claim)]),
            ..Default::default()
        },
        spec: SandboxSpec {
            pod_template,
            volume_claim_templates: vcts,
            service: tpl.spec.service,
            ..Default::default()
        },
        status: None,
    })
}

/// When the claim expires: the earlier of `lifecycle.shutdownTime` and the mirrored Finished
/// transition plus `ttlSecondsAfterFinished` (§9.8). `None` never expires.
pub fn expire_at(claim: &SandboxClaim) -> Option<Time> {
    let lc = claim.spec.lifecycle.as_ref()?;
    let finished = claim
        .status
        .as_ref()
        .and_then(|s| find_status_condition(&s.conditions, ct::FINISHED))
        .filter(|c| c.status == status::TRUE);
    let ttl_at = match (finished, lc.ttl_seconds_after_finished) {
        (Some(f), Some(ttl)) => f
            .last_transition_time
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(ttl)))
            .ok()
            .map(Time),
        _ => None,
    };
    match (lc.shutdown_time.clone(), ttl_at) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Whether the claim's Ready condition already says it expired.
pub fn is_marked_expired(claim: &SandboxClaim) -> bool {
    claim.status.as_ref().is_some_and(|s| {
        find_status_condition(&s.conditions, ct::READY)
            .is_some_and(|c| c.reason == reasons::CLAIM_EXPIRED)
    })
}

/// The claim's Ready condition (§9.9 table).
pub fn ready_condition(
    sandbox: Option<&Sandbox>,
    err: Option<&ClaimError>,
    expired: bool,
) -> NewCondition {
    let f = |reason: &str, msg: String| NewCondition::new(ct::READY, status::FALSE, reason, msg);
    if let Some(e) = err {
        return match e {
            ClaimError::TemplateNotFound(_) => f(reasons::TEMPLATE_NOT_FOUND, e.text()),
            ClaimError::WarmPoolNotFound(_) => f(reasons::WARM_POOL_NOT_FOUND, e.text()),
            ClaimError::AdoptionConflict(d) => f(
                reasons::ADOPTION_CONFLICT,
                format!("{d}; the next pass retries from a converged view"),
            ),
            ClaimError::CreatePending => f(reasons::SANDBOX_CREATE_PENDING, e.text()),
            ClaimError::InvalidMetadata(s) => f(reasons::INVALID_METADATA, s.clone()),
            ClaimError::EnvRejected(s) => f(reasons::ENV_VARS_INJECTION_REJECTED, s.clone()),
            ClaimError::SandboxNotOwned(s) => f(
                reasons::CLAIM_EXPIRED,
                format!("Claim expired. {s}; deletion skipped."),
            ),
            ClaimError::Vct(s) => f(reasons::VOLUME_CLAIM_TEMPLATES_ERROR, s.clone()),
            ClaimError::Other(s) => f(reasons::RECONCILER_ERROR, format!("Error seen: {s}")),
        };
    }
    if expired {
        return f(reasons::CLAIM_EXPIRED, reasons::MSG_CLAIM_EXPIRED.into());
    }
    let Some(sb) = sandbox else {
        return f(
            reasons::SANDBOX_MISSING,
            reasons::MSG_SANDBOX_MISSING.into(),
        );
    };
    let ready = sb
        .status
        .as_ref()
        .and_then(|s| find_status_condition(&s.conditions, ct::READY));
    match ready {
        Some(c) if c.reason == sb_reasons::SANDBOX_EXPIRED => f(
            reasons::SANDBOX_EXPIRED,
            reasons::MSG_SANDBOX_EXPIRED.into(),
        ),
        Some(c) => NewCondition::from_condition(c),
        None => f(
            reasons::SANDBOX_NOT_READY,
            reasons::MSG_SANDBOX_NOT_READY.into(),
        ),
    }
}

/// The new claim status (§9.9): Ready, the mirrored Finished, the Sandbox identity, conditions
/// sorted by type.
pub fn compute_status(
    claim: &SandboxClaim,
    sandbox: Option<&Sandbox>,
    err: Option<&ClaimError>,
    expired: bool,
    now: &Time,
) -> SandboxClaimStatus {
    let mut st = claim.status.clone().unwrap_or_default();
    let generation = claim.metadata.generation;
    if matches!(err, Some(ClaimError::CreatePending)) && !st.sandbox.name.is_empty() {
        return st;
    }
    set_status_condition(
        &mut st.conditions,
        ready_condition(sandbox, err, expired).generation(generation),
        now,
    );
    match sandbox {
        Some(sb) => {
            match sb
                .status
                .as_ref()
                .and_then(|s| find_status_condition(&s.conditions, ct::FINISHED))
            {
                Some(c) => {
                    set_status_condition(
                        &mut st.conditions,
                        NewCondition::from_condition(c).generation(generation),
                        now,
                    );
                }
                None => {
                    remove_status_condition(&mut st.conditions, ct::FINISHED);
                }
            }
        }
        None if !expired => {
            remove_status_condition(&mut st.conditions, ct::FINISHED);
        }
        None => {}
    }
    match sandbox {
        Some(sb) => {
            st.sandbox.name = sb.name_any();
            st.sandbox.pod_ips = sb
                .status
                .as_ref()
                .map(|s| s.pod_ips.clone())
                .unwrap_or_default();
        }
        None if err.is_none() || matches!(err, Some(ClaimError::SandboxNotOwned(_))) => {
            st.sandbox = Default::default();
        }
        None => {}
    }
    st.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    st
}

#[cfg(test)]
mod tests;
