//! The Sandbox reconciler (upstream-core §6): one Pod by owner UID, the headless Service, PVCs
//! from volume claim templates, metadata propagation, suspension, two-pass expiry, conditions and
//! semantic status writes. Decisions live in [`logic`]; this module does the I/O.

pub mod logic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::runner::Action;
use agent_sandbox_api::constants::{
    annotations, condition_types, extensions as ext, labels, reasons,
};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox, SandboxStatus, ShutdownPolicy};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::cache::get;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, is_already_exists, is_not_found};
use crate::meta::{
    annotation, controller_of, controller_ref, is_controlled_by_uid, label, map_patch, merge_diff,
    normalize_created_by, now,
};
use logic::{ChildErrors, PodView, ReadyInputs};

/// The controller name in metrics.
pub const CONTROLLER: &str = "sandbox";

fn api_err(
    action: &'static str,
    kind: &'static str,
    ns: &str,
    name: &str,
    source: kube::Error,
) -> Error {
    Error::Api {
        action,
        kind,
        namespace: ns.into(),
        name: name.into(),
        source,
    }
}

/// Reconciles one Sandbox in a `ReconcileSandbox` span, a child of the trace its annotation names.
pub async fn reconcile(sb: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "ReconcileSandbox",
        sandbox.name = %sb.name_any(),
        sandbox.namespace = %sb.namespace().unwrap_or_default(),
        "agents.x-k8s.io/created-by" = tracing::field::Empty,
    );
    if let Some(c) = label(&sb.metadata, labels::CREATED_BY) {
        span.record("agents.x-k8s.io/created-by", normalize_created_by(c));
    }
    let trace_context = crate::otel::link_span(&span, &sb.metadata, ctx.config.tracing);
    reconcile_sandbox(sb, ctx, trace_context)
        .instrument(span)
        .await
}

async fn reconcile_sandbox(
    sb: Arc<Sandbox>,
    ctx: Arc<Context>,
    trace_context: Option<String>,
) -> Result<Action, Error> {
    if sb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    if let Some(value) = trace_context {
        let patch = json!({"metadata": {"annotations": {annotations::TRACE_CONTEXT: value}}});
        Api::<Sandbox>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| api_err("annotate", "Sandbox", &ns, &name, e))?;
    }
    let generation = sb.metadata.generation;
    let old = sb.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let t = now();
    let shutdown = sb.spec.shutdown_time.as_ref();
    let pause_wait = match logic::pause_at(&sb.metadata, &t) {
        Some(logic::PauseAt::Due) => {
            let patch = json!({"metadata": {"annotations": {
                ext::annotations::PAUSED: ext::PAUSED_TRUE,
                ext::annotations::PAUSE_AT: null,
            }}});
            Api::<Sandbox>::namespaced(ctx.client.clone(), &ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| api_err("pause at its pause-at time", "Sandbox", &ns, &name, e))?;
            return Ok(Action::await_change());
        }
        Some(logic::PauseAt::Wait(d)) => Some(d),
        None => None,
    };

    if logic::is_expired(shutdown, &t) {
        if !logic::is_marked_expired(Some(&old)) {
            logic::mark_expired(&mut new, generation, &t);
            write_status(&ctx, &sb, &old, &new).await?;
            return Ok(Action::requeue(Duration::from_millis(1)));
        }
        let errors = handle_expiry(&ctx, &sb).await;
        if sb.spec.shutdown_policy() == ShutdownPolicy::Delete && errors.is_empty() {
            let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => return Ok(Action::await_change()),
                Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
                Err(e) => return Err(api_err("delete", "Sandbox", &ns, &name, e)),
            }
        }
        if errors.is_empty() {
            new = logic::retained_expiry_status(&old, generation, &t);
            write_status(&ctx, &sb, &old, &new).await?;
            return Ok(Action::await_change());
        }
        return Err(Error::Children {
            namespace: ns,
            name,
            errors,
        });
    }

    // A local copy tracks this pass's own annotation writes, which the cache has not seen yet.
    let mut local = (*sb).clone();
    let errors = reconcile_children(&ctx, &mut local, &mut new).await;
    let t = now();
    let action = if logic::is_expired(shutdown, &t) {
        logic::mark_expired(&mut new, generation, &t);
        Action::requeue(Duration::from_millis(1))
    } else {
        match [logic::requeue_until_shutdown(shutdown, &t), pause_wait]
            .into_iter()
            .flatten()
            .min()
        {
            Some(d) => Action::requeue(d),
            None => Action::await_change(),
        }
    };
    write_status(&ctx, &sb, &old, &new).await?;
    if !errors.others.is_empty() {
        return Err(Error::Children {
            namespace: ns,
            name,
            errors: errors.others,
        });
    }
    Ok(action)
}

async fn write_status(
    ctx: &Context,
    sb: &Sandbox,
    old: &SandboxStatus,
    new: &SandboxStatus,
) -> Result<(), Error> {
    if !logic::should_write_status(old, new) {
        return Ok(());
    }
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let old_v = serde_json::to_value(old).unwrap_or(Value::Null);
    let new_v = serde_json::to_value(new).unwrap_or(Value::Null);
    let Some(diff) = merge_diff(&old_v, &new_v) else {
        return Ok(());
    };
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": diff })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(api_err("patch status of", "Sandbox", &ns, &name, e)),
    }
}

async fn set_pod_name_annotation(
    ctx: &Context,
    sb: &mut Sandbox,
    value: Option<&str>,
) -> Result<(), String> {
    let current = annotation(&sb.metadata, annotations::POD_NAME);
    if current == value {
        return Ok(());
    }
    let ns = sb.namespace().unwrap_or_default();
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"metadata": {"annotations": {annotations::POD_NAME: value}}});
    match api
        .patch(
            &sb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => {
            match value {
                Some(v) => sb
                    .annotations_mut()
                    .insert(annotations::POD_NAME.into(), v.into()),
                None => sb.annotations_mut().remove(annotations::POD_NAME),
            };
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(format!("failed to update pod-name annotation: {e}")),
    }
}

async fn reconcile_children(
    ctx: &Context,
    sb: &mut Sandbox,
    status: &mut SandboxStatus,
) -> ChildErrors {
    let mut errors = ChildErrors::default();
    let name = sb.name_any();
    errors.others.extend(reconcile_pvcs(ctx, sb).await);

    let outcome = reconcile_pod(ctx, sb).await;
    let (pod, pod_err) = (outcome.pod, outcome.err);
    let owned = pod
        .as_ref()
        .is_some_and(|p| is_controlled_by_uid(&p.metadata, sb.uid().as_deref().unwrap_or("-")));
    let mut conflict = false;
    match &pod_err {
        Some(PodError::Multiple(text)) => {
            conflict = true;
            errors.multiple_pods = Some(text.clone());
            let already = sb.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == condition_types::READY && c.reason == reasons::MULTIPLE_PODS
                })
            });
            if !already {
                ctx.publish(
                    &ctx.recorders.sandbox,
                    sb,
                    EventType::Warning,
                    reasons::MULTIPLE_PODS,
                    "Reconciling",
                    text.clone(),
                )
                .await;
            }
        }
        Some(PodError::Other(text)) => errors.others.push(text.clone()),
        None => {}
    }
    let view = PodView {
        pod: pod.as_ref(),
        owned,
        pod_err: pod_err.is_some(),
    };
    logic::apply_pod_to_status(status, &name, view);

    if !conflict && let Err(e) = reconcile_service(ctx, sb, status).await {
        errors.others.push(e);
    }
    let input = ReadyInputs {
        mode: sb.spec.operating_mode(),
        spec_service: sb.spec.service,
        service_exists: !status.service.is_empty(),
        pod_ips: &status.pod_ips.clone(),
        errors: &errors,
        paused_annotation: annotation(&sb.metadata, ext::annotations::PAUSED),
    };
    logic::apply_conditions(status, sb.metadata.generation, view, input, &now());
    errors
}

enum PodError {
    Multiple(String),
    Other(String),
}

struct PodOutcome {
    pod: Option<Pod>,
    err: Option<PodError>,
}

impl PodOutcome {
    fn ok(pod: Option<Pod>) -> Self {
        Self { pod, err: None }
    }
    fn err(pod: Option<Pod>, text: String) -> Self {
        Self {
            pod,
            err: Some(PodError::Other(text)),
        }
    }
}

fn owner_desc(meta: &ObjectMeta) -> (String, String, String) {
    controller_of(meta)
        .map(|r| (r.kind.clone(), r.name.clone(), r.uid.clone()))
        .unwrap_or_default()
}

async fn reconcile_pod(ctx: &Context, sb: &mut Sandbox) -> PodOutcome {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let uid = sb.uid().unwrap_or_default();
    let hash = name_hash(&name);
    let tracked = annotation(&sb.metadata, annotations::POD_NAME)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let pod_name = tracked.clone().unwrap_or_else(|| name.clone());

    let mut owned: Vec<Arc<Pod>> = ctx
        .indexes
        .pods_by_hash
        .get(&ns, &hash)
        .iter()
        .filter_map(|n| get(&ctx.stores.pods, &ns, n))
        .filter(|p| is_controlled_by_uid(&p.metadata, &uid))
        .collect();
    let mut pod: Option<Arc<Pod>> = get(&ctx.stores.pods, &ns, &pod_name);
    if pod.is_none()
        && tracked.is_some()
        && let Err(e) = set_pod_name_annotation(ctx, sb, None).await
    {
        return PodOutcome::err(None, e);
    }
    if let Some(p) = &pod
        && is_controlled_by_uid(&p.metadata, &uid)
        && !owned.iter().any(|o| o.name_any() == p.name_any())
    {
        owned.push(p.clone());
    }
    if owned.len() > 1 {
        return PodOutcome {
            pod: None,
            err: Some(PodError::Multiple(format!(
                "multiple Pods ({}) are controlled by this Sandbox; refusing to choose or create a Pod",
                owned.len()
            ))),
        };
    }
    if owned.len() == 1
        && pod
            .as_ref()
            .is_none_or(|p| p.name_any() != owned[0].name_any())
    {
        if tracked.is_some()
            && let Err(e) = set_pod_name_annotation(ctx, sb, None).await
        {
            return PodOutcome::err(None, e);
        }
        pod = Some(owned[0].clone());
    }

    if sb.spec.operating_mode() == OperatingMode::Suspended {
        if let Some(p) = &pod {
            if is_controlled_by_uid(&p.metadata, &uid) {
                if p.metadata.deletion_timestamp.is_none() {
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    if let Err(e) = api.delete(&p.name_any(), &DeleteParams::default()).await
                        && !is_not_found(&e)
                    {
                        return PodOutcome::err(
                            Some((**p).clone()),
                            format!("failed to delete pod: {e}"),
                        );
                    }
                }
                return PodOutcome::ok(Some((**p).clone()));
            }
            tracing::info!(pod = %p.name_any(), "refusing to delete a pod this sandbox does not own");
        }
        if let Err(e) = set_pod_name_annotation(ctx, sb, None).await {
            return PodOutcome::err(pod.map(|p| (*p).clone()), e);
        }
        return PodOutcome::ok(pod.map(|p| (*p).clone()));
    }

    match pod {
        Some(p) => reconcile_existing_pod(ctx, sb, (*p).clone()).await,
        None => create_pod(ctx, sb).await,
    }
}

async fn reconcile_existing_pod(ctx: &Context, sb: &mut Sandbox, pod: Pod) -> PodOutcome {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let uid = sb.uid().unwrap_or_default();
    let pod_name = pod.name_any();
    let mut adopt = false;
    match controller_of(&pod.metadata) {
        Some(r) if r.uid != uid => {
            let (kind, owner, owner_uid) = owner_desc(&pod.metadata);
            let _ = set_pod_name_annotation(ctx, sb, None).await;
            return PodOutcome::err(
                Some(pod),
                format!(
                    "pod {pod_name:?} is owned by {kind}/{owner} (UID: {owner_uid}), not by sandbox {name:?}"
                ),
            );
        }
        Some(_) => {}
        None => {
            let adoptable = label(&pod.metadata, labels::ADOPTABLE) == Some("true")
                || label(&pod.metadata, labels::SANDBOX_NAME_HASH)
                    == Some(name_hash(&name).as_str());
            if !adoptable {
                return PodOutcome::err(
                    Some(pod),
                    format!(
                        "cannot adopt unowned pod {pod_name:?}: missing required pool authorization label ({:?}) or sandbox tracking label ({:?})",
                        labels::ADOPTABLE,
                        labels::SANDBOX_NAME_HASH
                    ),
                );
            }
            adopt = true;
        }
    }
    let old_l = pod.metadata.labels.clone().unwrap_or_default();
    let old_a = pod.metadata.annotations.clone().unwrap_or_default();
    let (new_l, new_a) = logic::propagate_pod_metadata(sb, &old_l, &old_a);
    let lp = map_patch(&old_l, &new_l);
    let ap = map_patch(&old_a, &new_a);
    let mut pod = pod;
    if adopt || !lp.is_empty() || !ap.is_empty() {
        let mut meta = serde_json::Map::new();
        if !lp.is_empty() {
            meta.insert("labels".into(), Value::Object(lp));
        }
        if !ap.is_empty() {
            meta.insert("annotations".into(), Value::Object(ap));
        }
        if adopt {
            let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
            refs.push(controller_ref(sb));
            meta.insert(
                "ownerReferences".into(),
                serde_json::to_value(refs).unwrap_or(Value::Null),
            );
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch(
                &pod_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": meta })),
            )
            .await
        {
            Ok(p) => pod = p,
            Err(e) => {
                return PodOutcome::err(
                    Some(pod),
                    format!("failed to update pod {pod_name:?}: {e}"),
                );
            }
        }
    }
    if annotation(&sb.metadata, annotations::POD_NAME).is_none_or(str::is_empty)
        && let Err(e) = set_pod_name_annotation(ctx, sb, Some(&pod_name)).await
    {
        return PodOutcome::err(Some(pod), e);
    }
    PodOutcome::ok(Some(pod))
}

async fn create_pod(ctx: &Context, sb: &mut Sandbox) -> PodOutcome {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let (l, a) = logic::new_pod_metadata(sb);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(l),
            annotations: (!a.is_empty()).then_some(a),
            owner_references: Some(vec![controller_ref(sb)]),
            ..Default::default()
        },
        spec: Some(logic::new_pod_spec(sb)),
        status: None,
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &pod).await {
        Ok(created) => {
            tracing::debug!(pod.name = %name, "NewPodStatusObserved");
            if let Err(e) = set_pod_name_annotation(ctx, sb, Some(&name)).await {
                return PodOutcome::err(Some(created), e);
            }
            PodOutcome::ok(Some(created))
        }
        Err(e) if is_already_exists(&e) => match api.get(&name).await {
            Ok(existing) => reconcile_existing_pod(ctx, sb, existing).await,
            Err(e) => PodOutcome::err(None, format!("pod get failed: {e}")),
        },
        Err(e) => PodOutcome::err(None, format!("failed to create pod: {e}")),
    }
}

async fn reconcile_pvcs(ctx: &Context, sb: &Sandbox) -> Vec<String> {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let uid = sb.uid().unwrap_or_default();
    let hash = name_hash(&name);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut errors = Vec::new();
    for vct in &sb.spec.volume_claim_templates {
        let pvc_name = logic::pvc_name(&vct.metadata.name, &name);
        match api.get_opt(&pvc_name).await {
            Err(e) => errors.push(format!("failed to get PVC {pvc_name:?}: {e}")),
            Ok(Some(pvc)) => match controller_of(&pvc.metadata) {
                Some(r) if r.uid == uid => {}
                Some(r) => errors.push(format!(
                    "PVC {pvc_name:?} is owned by {}/{} (UID: {}), not by sandbox {name:?}",
                    r.kind, r.name, r.uid
                )),
                None => {
                    let ok = label(&pvc.metadata, labels::ADOPTABLE) == Some("true")
                        || label(&pvc.metadata, labels::SANDBOX_NAME_HASH) == Some(hash.as_str());
                    if !ok {
                        errors.push(format!(
                            "cannot adopt unowned PVC {pvc_name:?}: missing required pool authorization label ({:?}) or sandbox tracking label ({:?})",
                            labels::ADOPTABLE,
                            labels::SANDBOX_NAME_HASH
                        ));
                        continue;
                    }
                    let mut refs = pvc.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_ref(sb));
                    let patch = json!({"metadata": {"ownerReferences": refs}});
                    if let Err(e) = api
                        .patch(&pvc_name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        errors.push(format!("failed to adopt PVC {pvc_name:?}: {e}"));
                    }
                }
            },
            Ok(None) => {
                let mut l = vct.metadata.labels.clone();
                l.insert(labels::SANDBOX_NAME_HASH.into(), hash.clone());
                let pvc = PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(pvc_name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(l),
                        annotations: (!vct.metadata.annotations.is_empty())
                            .then(|| vct.metadata.annotations.clone()),
                        owner_references: Some(vec![controller_ref(sb)]),
                        ..Default::default()
                    },
                    spec: Some(vct.spec.clone()),
                    status: None,
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&pp, &pvc).await {
                    Ok(_) => {}
                    Err(e) if is_already_exists(&e) => {}
                    Err(e) => errors.push(format!("failed to create PVC {pvc_name:?}: {e}")),
                }
            }
        }
    }
    errors
}

fn set_service_status(ctx: &Context, sb: &Sandbox, status: &mut SandboxStatus, present: bool) {
    if present {
        let name = sb.name_any();
        status.service_fqdn = format!(
            "{name}.{}.svc.{}",
            sb.namespace().unwrap_or_default(),
            ctx.config.cluster_domain
        );
        status.service = name;
    } else {
        status.service.clear();
        status.service_fqdn.clear();
    }
}

async fn reconcile_service(
    ctx: &Context,
    sb: &Sandbox,
    status: &mut SandboxStatus,
) -> Result<(), String> {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let uid = sb.uid().unwrap_or_default();
    let hash = name_hash(&name);
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing = get(&ctx.stores.services, &ns, &name).map(|s| (*s).clone());
    let want = sb.spec.service;
    let selector = BTreeMap::from([(labels::SANDBOX_NAME_HASH.to_string(), hash.clone())]);
    let ports = logic::service_ports(&sb.spec.pod_template.spec);

    if existing.is_none() {
        if want != Some(true) {
            set_service_status(ctx, sb, status, false);
            return Ok(());
        }
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(selector.clone()),
                owner_references: Some(vec![controller_ref(sb)]),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(selector.clone()),
                ports: ports.clone(),
                ..Default::default()
            }),
            status: None,
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &svc).await {
            Ok(_) => {
                set_service_status(ctx, sb, status, true);
                return Ok(());
            }
            Err(e) if is_already_exists(&e) => match api.get(&name).await {
                Ok(s) => existing = Some(s),
                Err(e) => return Err(format!("failed to get service {name:?}: {e}")),
            },
            Err(e) => return Err(format!("failed to create service {name:?}: {e}")),
        }
    }
    let Some(svc) = existing else {
        return Ok(());
    };
    match controller_of(&svc.metadata) {
        Some(r) if r.uid == uid => {
            if want == Some(false) {
                if let Err(e) = api.delete(&name, &DeleteParams::default()).await
                    && !is_not_found(&e)
                {
                    return Err(format!("failed to delete service {name:?}: {e}"));
                }
                set_service_status(ctx, sb, status, false);
                return Ok(());
            }
            let spec = svc.spec.clone().unwrap_or_default();
            let mut patch = serde_json::Map::new();
            if label(&svc.metadata, labels::SANDBOX_NAME_HASH) != Some(hash.as_str()) {
                patch.insert(
                    "metadata".into(),
                    json!({"labels": {labels::SANDBOX_NAME_HASH: hash}}),
                );
            }
            let mut spec_patch = serde_json::Map::new();
            if spec.selector.as_ref() != Some(&selector) {
                let old = spec.selector.clone().unwrap_or_default();
                spec_patch.insert("selector".into(), Value::Object(map_patch(&old, &selector)));
            }
            if want == Some(true) && !agent_sandbox_api::semantic::eq(&spec.ports, &ports) {
                spec_patch.insert(
                    "ports".into(),
                    serde_json::to_value(&ports).unwrap_or(Value::Null),
                );
            }
            if !spec_patch.is_empty() {
                patch.insert("spec".into(), Value::Object(spec_patch));
            }
            if !patch.is_empty()
                && let Err(e) = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(Value::Object(patch)),
                    )
                    .await
            {
                return Err(format!("failed to update service {name:?}: {e}"));
            }
            set_service_status(ctx, sb, status, true);
            Ok(())
        }
        Some(r) => {
            if want == Some(false) {
                set_service_status(ctx, sb, status, false);
                return Ok(());
            }
            Err(format!(
                "service {name:?} is owned by {}/{} (UID: {}), not by sandbox {name:?}",
                r.kind, r.name, r.uid
            ))
        }
        None => {
            if want != Some(true) {
                set_service_status(ctx, sb, status, false);
                return Ok(());
            }
            let adoptable = label(&svc.metadata, labels::ADOPTABLE) == Some("true")
                || label(&svc.metadata, labels::SANDBOX_NAME_HASH) == Some(hash.as_str());
            if !adoptable {
                return Err(format!(
                    "cannot adopt unowned service {name:?}: missing required pool authorization label ({:?}) or sandbox tracking label ({:?})",
                    labels::ADOPTABLE,
                    labels::SANDBOX_NAME_HASH
                ));
            }
            let cluster_ip = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .unwrap_or_default();
            if !(cluster_ip.is_empty() || cluster_ip == "None") {
                return Err(format!(
                    "cannot adopt service {name:?}: ClusterIP is {cluster_ip:?} (expected \"None\", field is immutable)"
                ));
            }
            let mut svc = svc;
            svc.labels_mut()
                .insert(labels::SANDBOX_NAME_HASH.into(), hash.clone());
            let mut refs = svc.metadata.owner_references.clone().unwrap_or_default();
            refs.push(controller_ref(sb));
            svc.metadata.owner_references = Some(refs);
            let spec = svc.spec.get_or_insert_with(Default::default);
            spec.selector = Some(selector);
            spec.ports = ports;
            svc.metadata.managed_fields = None;
            if let Err(e) = api.replace(&name, &PostParams::default(), &svc).await {
                return Err(format!("failed to adopt service {name:?}: {e}"));
            }
            set_service_status(ctx, sb, status, true);
            Ok(())
        }
    }
}

/// Pass 2 of expiry: delete the owned Pod and Service (§6.8 steps 1–2).
async fn handle_expiry(ctx: &Context, sb: &Sandbox) -> Vec<String> {
    let ns = sb.namespace().unwrap_or_default();
    let name = sb.name_any();
    let uid = sb.uid().unwrap_or_default();
    let pod_name = annotation(&sb.metadata, annotations::POD_NAME)
        .filter(|s| !s.is_empty())
        .unwrap_or(&name)
        .to_string();
    let mut errors = Vec::new();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match pods.get_opt(&pod_name).await {
        Ok(Some(p)) if is_controlled_by_uid(&p.metadata, &uid) => {
            if p.metadata.deletion_timestamp.is_none()
                && let Err(e) = pods.delete(&pod_name, &DeleteParams::default()).await
                && !is_not_found(&e)
            {
                errors.push(format!("failed to delete pod: {e}"));
            }
        }
        Ok(Some(_)) => {
            tracing::info!(pod = %pod_name, "expiry skips a pod this sandbox does not own")
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("pod get failed: {e}")),
    }
    let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    match svcs.get_opt(&name).await {
        Ok(Some(s)) if is_controlled_by_uid(&s.metadata, &uid) => {
            if let Err(e) = svcs.delete(&name, &DeleteParams::default()).await
                && !is_not_found(&e)
            {
                errors.push(format!("failed to delete service {name:?}: {e}"));
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(format!("failed to get service {name:?}: {e}")),
    }
    errors
}
