//! Lossless conversion between v1alpha1 and v1beta1 for the four kinds (upstream-core §2.1), as
//! pure functions, and the `ConversionReview` handler that the cluster webhook and the embedded
//! API server both call.
//!
//! Scheme (the same for every kind): going up (v1alpha1 → v1beta1) the whole v1alpha1 object,
//! without its own state annotation, is serialised into a state annotation on the v1beta1 object;
//! going down the state annotation is always removed, and Sandbox and SandboxClaim use it to
//! restore what v1beta1 cannot express. Metadata is copied verbatim both ways. Owner references
//! are never rewritten (they are matched on group and kind, never version).

use std::collections::BTreeMap;

use kube::core::ObjectMeta;
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::constants::{CORE_GROUP, EXTENSIONS_GROUP, SHADOW_POOL_PREFIX, annotations};
use crate::v1beta1::{InjectionPolicy, OperatingMode};
use crate::{v1alpha1, v1beta1};

/// Why an object could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    /// The object has no usable `apiVersion`/`kind`.
    #[error("object has no {0}; every object must carry apiVersion and kind")]
    MissingTypeField(&'static str),
    /// The kind or version is not one this project serves.
    #[error(
        "cannot convert {kind} from {from} to {to}: supported kinds are Sandbox ({CORE_GROUP}) and SandboxTemplate, SandboxClaim, SandboxWarmPool ({EXTENSIONS_GROUP}), in versions v1beta1 and v1alpha1"
    )]
    Unsupported {
        /// Kind of the object.
        kind: String,
        /// Its apiVersion.
        from: String,
        /// The requested apiVersion.
        to: String,
    },
    /// The object does not match the schema of its version.
    #[error("{kind} {name:?} is not a valid {api_version} object: {source}")]
    Decode {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// Its apiVersion.
        api_version: String,
        /// The decoding error, naming the field.
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// The template's stashed `volumeClaimTemplatesPolicy` is not a policy.
    #[error("invalid VolumeClaimTemplatesPolicy annotation value: {0:?}")]
    InvalidVctPolicyAnnotation(String),
    /// A stashed v1alpha1 state annotation is not valid JSON of that kind.
    #[error("failed to unmarshal v1alpha1 {kind} state in annotation {annotation}: {source}")]
    BadState {
        /// Kind of the object.
        kind: &'static str,
        /// The annotation key.
        annotation: &'static str,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// Converts one object to `desired_api_version` (`<group>/<version>`). An object already in that
/// version is returned unchanged.
pub fn convert(object: Value, desired_api_version: &str) -> Result<Value, ConversionError> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(ConversionError::MissingTypeField("apiVersion"))?
        .to_owned();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(ConversionError::MissingTypeField("kind"))?
        .to_owned();
    if api_version == desired_api_version {
        return Ok(object);
    }
    let unsupported = || ConversionError::Unsupported {
        kind: kind.clone(),
        from: api_version.clone(),
        to: desired_api_version.to_owned(),
    };
    let (group, from) = api_version.split_once('/').ok_or_else(unsupported)?;
    let (to_group, to) = desired_api_version
        .split_once('/')
        .ok_or_else(unsupported)?;
    if group != to_group {
        return Err(unsupported());
    }
    let decode_err = |source| ConversionError::Decode {
        kind: kind.clone(),
        name: object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        api_version: api_version.clone(),
        source,
    };
    match (group, kind.as_str(), from, to) {
        (CORE_GROUP, "Sandbox", "v1alpha1", "v1beta1") => {
            to_value(&sandbox_up(decode(&object).map_err(decode_err)?))
        }
        (CORE_GROUP, "Sandbox", "v1beta1", "v1alpha1") => {
            to_value(&sandbox_down(decode(&object).map_err(decode_err)?)?)
        }
        (EXTENSIONS_GROUP, "SandboxTemplate", "v1alpha1", "v1beta1") => {
            to_value(&template_up(decode(&object).map_err(decode_err)?)?)
        }
        (EXTENSIONS_GROUP, "SandboxTemplate", "v1beta1", "v1alpha1") => {
            to_value(&template_down(decode(&object).map_err(decode_err)?))
        }
        (EXTENSIONS_GROUP, "SandboxClaim", "v1alpha1", "v1beta1") => {
            to_value(&claim_up(decode(&object).map_err(decode_err)?))
        }
        (EXTENSIONS_GROUP, "SandboxClaim", "v1beta1", "v1alpha1") => {
            to_value(&claim_down(decode(&object).map_err(decode_err)?)?)
        }
        (EXTENSIONS_GROUP, "SandboxWarmPool", "v1alpha1", "v1beta1") => {
            to_value(&warm_pool_up(decode(&object).map_err(decode_err)?))
        }
        (EXTENSIONS_GROUP, "SandboxWarmPool", "v1beta1", "v1alpha1") => {
            to_value(&warm_pool_down(decode(&object).map_err(decode_err)?))
        }
        _ => Err(unsupported()),
    }
}

/// Answers an apiextensions `ConversionReview`: converts every object or fails the whole review
/// with the first error, as kube-apiserver expects.
pub fn review(review: ConversionReview) -> ConversionReview {
    let request = match ConversionRequest::from_review(review) {
        Ok(request) => request,
        Err(err) => {
            return ConversionResponse::invalid(kube::core::Status::failure(
                &err.to_string(),
                "InvalidRequest",
            ))
            .into_review();
        }
    };
    let response = ConversionResponse::for_request(request.clone());
    let converted: Result<Vec<Value>, ConversionError> = request
        .objects
        .into_iter()
        .map(|o| convert(o, &request.desired_api_version))
        .collect();
    match converted {
        Ok(objects) => response.success(objects).into_review(),
        Err(err) => response
            .failure(kube::core::Status::failure(&err.to_string(), "Invalid"))
            .into_review(),
    }
}

fn decode<T: DeserializeOwned>(
    v: &Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(v)
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ConversionError> {
    Ok(serde_json::to_value(v).expect("API types always serialise"))
}

/// Metadata for the v1beta1 side: a copy with the v1alpha1 object stored under `key`.
fn stash_state<T: Serialize>(meta: &ObjectMeta, original: &T, key: &str) -> ObjectMeta {
    let mut stored = serde_json::to_value(original).expect("API types always serialise");
    if let Some(a) = stored
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(key);
        if a.is_empty() {
            stored["metadata"]
                .as_object_mut()
                .map(|m| m.remove("annotations"));
        }
    }
    let mut meta = meta.clone();
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), stored.to_string());
    meta
}

/// Metadata for the v1alpha1 side: a copy without `key`, and the removed value.
fn take_state(meta: &ObjectMeta, key: &str) -> (ObjectMeta, Option<String>) {
    let mut meta = meta.clone();
    let state = meta.annotations.as_mut().and_then(|a| a.remove(key));
    if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
        meta.annotations = None;
    }
    (meta, state)
}

fn parse_state<T: DeserializeOwned>(
    state: Option<String>,
    kind: &'static str,
    annotation: &'static str,
) -> Result<Option<T>, ConversionError> {
    state
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|source| ConversionError::BadState {
            kind,
            annotation,
            source,
        })
}

/// v1alpha1 → v1beta1 Sandbox: `replicas: 0` becomes Suspended, anything else Running.
pub fn sandbox_up(src: v1alpha1::Sandbox) -> v1beta1::Sandbox {
    let metadata = stash_state(&src.metadata, &src, annotations::V1ALPHA1_SANDBOX_STATE);
    let spec = src.spec;
    let mode = if spec.replicas == Some(0) {
        OperatingMode::Suspended
    } else {
        OperatingMode::Running
    };
    let mut dst = v1beta1::Sandbox::new(
        "",
        v1beta1::SandboxSpec {
            pod_template: spec.pod_template,
            volume_claim_templates: spec.volume_claim_templates,
            service: spec.service,
            shutdown_time: spec.shutdown_time,
            shutdown_policy: spec.shutdown_policy,
            operating_mode: Some(mode),
        },
    );
    dst.metadata = metadata;
    dst.status = src.status.map(|s| v1beta1::SandboxStatus {
        service_fqdn: s.service_fqdn,
        service: s.service,
        conditions: s.conditions,
        label_selector: s.label_selector,
        pod_ips: s.pod_ips,
        node_name: String::new(),
    });
    dst
}

/// v1beta1 → v1alpha1 Sandbox: Suspended becomes `replicas: 0`, Running `replicas: 1` unless the
/// stashed original had nil or another non-zero value; `status.nodeName` is dropped.
pub fn sandbox_down(src: v1beta1::Sandbox) -> Result<v1alpha1::Sandbox, ConversionError> {
    let (metadata, state) = take_state(&src.metadata, annotations::V1ALPHA1_SANDBOX_STATE);
    let original: Option<v1alpha1::Sandbox> =
        parse_state(state, "Sandbox", annotations::V1ALPHA1_SANDBOX_STATE)?;
    let suspended = src.spec.operating_mode() == OperatingMode::Suspended;
    let replicas = match (&original, suspended) {
        (_, true) => Some(0),
        (Some(o), false) if o.spec.replicas != Some(0) => o.spec.replicas,
        _ => Some(1),
    };
    let spec = src.spec;
    let mut dst = v1alpha1::Sandbox::new(
        "",
        v1alpha1::SandboxSpec {
            pod_template: spec.pod_template,
            volume_claim_templates: spec.volume_claim_templates,
            shutdown_time: spec.shutdown_time,
            shutdown_policy: spec.shutdown_policy,
            replicas,
            service: spec.service,
        },
    );
    dst.metadata = metadata;
    let original_status_replicas = original.and_then(|o| o.status).map(|s| s.replicas);
    dst.status = src.status.map(|s| v1alpha1::SandboxStatus {
        service_fqdn: s.service_fqdn,
        service: s.service,
        conditions: s.conditions,
        replicas: original_status_replicas.unwrap_or(if suspended { 0 } else { 1 }),
        label_selector: s.label_selector,
        pod_ips: s.pod_ips,
    });
    Ok(dst)
}

/// v1alpha1 → v1beta1 SandboxTemplate: restores a stashed `volumeClaimTemplatesPolicy`.
pub fn template_up(
    src: v1alpha1::SandboxTemplate,
) -> Result<v1beta1::SandboxTemplate, ConversionError> {
    let mut metadata = stash_state(
        &src.metadata,
        &src,
        annotations::V1ALPHA1_SANDBOXTEMPLATE_STATE,
    );
    let policy = match metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove(annotations::V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY))
    {
        None => None,
        Some(v) => Some(match v.as_str() {
            "Disallowed" => InjectionPolicy::Disallowed,
            "Allowed" => InjectionPolicy::Allowed,
            "Overrides" => InjectionPolicy::Overrides,
            _ => return Err(ConversionError::InvalidVctPolicyAnnotation(v)),
        }),
    };
    let spec = src.spec;
    let mut dst = v1beta1::SandboxTemplate::new(
        "",
        v1beta1::SandboxTemplateSpec {
            pod_template: spec.pod_template,
            volume_claim_templates: spec.volume_claim_templates,
            service: spec.service,
            network_policy: spec.network_policy,
            network_policy_management: spec.network_policy_management,
            env_vars_injection_policy: spec.env_vars_injection_policy,
            volume_claim_templates_policy: policy,
        },
    );
    dst.metadata = metadata;
    Ok(dst)
}

/// v1beta1 → v1alpha1 SandboxTemplate: stashes `volumeClaimTemplatesPolicy` in an annotation.
pub fn template_down(src: v1beta1::SandboxTemplate) -> v1alpha1::SandboxTemplate {
    let (mut metadata, _) = take_state(&src.metadata, annotations::V1ALPHA1_SANDBOXTEMPLATE_STATE);
    let key = annotations::V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY;
    match src.spec.volume_claim_templates_policy {
        Some(p) => {
            let value = serde_json::to_value(p).expect("enum serialises");
            metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    key.to_owned(),
                    value.as_str().unwrap_or_default().to_owned(),
                );
        }
        None => {
            if let Some(a) = metadata.annotations.as_mut() {
                a.remove(key);
            }
            if metadata
                .annotations
                .as_ref()
                .is_some_and(BTreeMap::is_empty)
            {
                metadata.annotations = None;
            }
        }
    }
    let spec = src.spec;
    let mut dst = v1alpha1::SandboxTemplate::new(
        "",
        v1alpha1::SandboxTemplateSpec {
            pod_template: spec.pod_template,
            volume_claim_templates: spec.volume_claim_templates,
            network_policy: spec.network_policy,
            network_policy_management: spec.network_policy_management,
            env_vars_injection_policy: spec.env_vars_injection_policy,
            service: spec.service,
        },
    );
    dst.metadata = metadata;
    dst
}

/// Whether a v1alpha1 `warmpool` policy names a specific pool (not "", `none` or `default`).
fn is_specific_pool(policy: Option<&str>) -> bool {
    policy.is_some_and(|p| !matches!(p, "" | "none" | "default"))
}

/// The part of a generated name before its last `-` (the pool a warm Sandbox came from).
pub fn strip_random_suffix(name: &str) -> &str {
    name.rfind('-').map_or(name, |i| &name[..i])
}

/// v1alpha1 → v1beta1 SandboxClaim: derives `warmPoolRef` from the warm pool policy, the adopted
/// Sandbox's name, or the template's shadow pool, in that order.
pub fn claim_up(src: v1alpha1::SandboxClaim) -> v1beta1::SandboxClaim {
    let metadata = stash_state(
        &src.metadata,
        &src,
        annotations::V1ALPHA1_SANDBOXCLAIM_STATE,
    );
    let claim_name = src.metadata.name.clone().unwrap_or_default();
    let sandbox_name = src
        .status
        .as_ref()
        .map(|s| s.sandbox.name.clone())
        .unwrap_or_default();
    let spec = src.spec;
    let pool = if is_specific_pool(spec.warm_pool.as_deref()) {
        spec.warm_pool.clone().unwrap_or_default()
    } else if !sandbox_name.is_empty() && sandbox_name != claim_name {
        strip_random_suffix(&sandbox_name).to_owned()
    } else {
        format!("{SHADOW_POOL_PREFIX}{}", spec.template_ref.name)
    };
    let mut dst = v1beta1::SandboxClaim::new(
        "",
        v1beta1::SandboxClaimSpec {
            warm_pool_ref: v1beta1::SandboxWarmPoolRef { name: pool },
            lifecycle: spec.lifecycle,
            additional_pod_metadata: spec.additional_pod_metadata,
            env: spec.env,
            volume_claim_templates: Vec::new(),
        },
    );
    dst.metadata = metadata;
    dst.status = src.status.map(|s| v1beta1::SandboxClaimStatus {
        conditions: s.conditions,
        sandbox: s.sandbox,
    });
    dst
}

/// v1beta1 → v1alpha1 SandboxClaim: a shadow pool maps back to its template with
/// `warmpool: default`; any other pool becomes both the template name and the warm pool
/// policy, unless the stashed original still matches and can be restored. `volumeClaimTemplates`
/// have no v1alpha1 form and are dropped.
pub fn claim_down(src: v1beta1::SandboxClaim) -> Result<v1alpha1::SandboxClaim, ConversionError> {
    let (metadata, state) = take_state(&src.metadata, annotations::V1ALPHA1_SANDBOXCLAIM_STATE);
    let original: Option<v1alpha1::SandboxClaim> = parse_state(
        state,
        "SandboxClaim",
        annotations::V1ALPHA1_SANDBOXCLAIM_STATE,
    )?;
    let pool = src.spec.warm_pool_ref.name.clone();
    let sandbox_name = src
        .status
        .as_ref()
        .map(|s| s.sandbox.name.clone())
        .unwrap_or_default();
    let (mut template, mut warm_pool) = match pool.strip_prefix(SHADOW_POOL_PREFIX) {
        Some(template) => (template.to_owned(), "default".to_owned()),
        None => (pool.clone(), pool.clone()),
    };
    let mut warm_pool = Some(std::mem::take(&mut warm_pool));
    if let Some(original) = original {
        let expected = if is_specific_pool(original.spec.warm_pool.as_deref()) {
            original.spec.warm_pool.clone().unwrap_or_default()
        } else {
            original.spec.template_ref.name.clone()
        };
        let matches = pool == expected
            || pool == format!("{SHADOW_POOL_PREFIX}{expected}")
            || (!sandbox_name.is_empty()
                && (pool == sandbox_name || pool == strip_random_suffix(&sandbox_name)));
        if matches {
            warm_pool = original.spec.warm_pool;
        } else {
            warm_pool = Some(pool.clone());
        }
        template = original.spec.template_ref.name;
    }
    let spec = src.spec;
    let mut dst = v1alpha1::SandboxClaim::new(
        "",
        v1alpha1::SandboxClaimSpec {
            template_ref: v1alpha1::SandboxTemplateRef { name: template },
            lifecycle: spec.lifecycle,
            warm_pool,
            additional_pod_metadata: spec.additional_pod_metadata,
            env: spec.env,
        },
    );
    dst.metadata = metadata;
    dst.status = src.status.map(|s| v1alpha1::SandboxClaimStatus {
        conditions: s.conditions,
        sandbox: s.sandbox,
    });
    Ok(dst)
}

/// v1alpha1 → v1beta1 SandboxWarmPool.
pub fn warm_pool_up(src: v1alpha1::SandboxWarmPool) -> v1beta1::SandboxWarmPool {
    let metadata = stash_state(
        &src.metadata,
        &src,
        annotations::V1ALPHA1_SANDBOXWARMPOOL_STATE,
    );
    let spec = src.spec;
    let mut dst = v1beta1::SandboxWarmPool::new(
        "",
        v1beta1::SandboxWarmPoolSpec {
            replicas: Some(spec.replicas),
            template_ref: v1beta1::SandboxTemplateRef {
                name: spec.template_ref.name,
            },
            update_strategy: spec.update_strategy,
        },
    );
    dst.metadata = metadata;
    dst.status = src.status.map(|s| v1beta1::SandboxWarmPoolStatus {
        replicas: s.replicas,
        ready_replicas: s.ready_replicas,
        selector: s.selector,
        observed_generation: 0,
    });
    dst
}

/// v1beta1 → v1alpha1 SandboxWarmPool: nil replicas become 1; `observedGeneration` is dropped.
pub fn warm_pool_down(src: v1beta1::SandboxWarmPool) -> v1alpha1::SandboxWarmPool {
    let (metadata, _) = take_state(&src.metadata, annotations::V1ALPHA1_SANDBOXWARMPOOL_STATE);
    let spec = src.spec;
    let mut dst = v1alpha1::SandboxWarmPool::new(
        "",
        v1alpha1::SandboxWarmPoolSpec {
            replicas: spec.replicas.unwrap_or(1),
            template_ref: v1alpha1::SandboxTemplateRef {
                name: spec.template_ref.name,
            },
            update_strategy: spec.update_strategy,
        },
    );
    dst.metadata = metadata;
    dst.status = src.status.map(|s| v1alpha1::SandboxWarmPoolStatus {
        replicas: s.replicas,
        ready_replicas: s.ready_replicas,
        selector: s.selector,
    });
    dst
}
