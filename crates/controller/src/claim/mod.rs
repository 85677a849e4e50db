//! The SandboxClaim reconciler (upstream-core §9–§10): lookup order, warm adoption from the pool
//! queue (one optimistic ownership transfer; the claim's reference follows its status), cold
//! creation, lifecycle expiry, the claim status with an optimistic lock, first-Ready metrics and
//! events.

pub mod logic;

use std::sync::Arc;
use std::time::Duration;

use crate::runner::Action;
use agent_sandbox_api::conditions::is_status_condition_true;
use agent_sandbox_api::constants::{
    EXTENSIONS_GROUP, annotations, condition_types as ct, labels, launch_type,
};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{
    ClaimShutdownPolicy, PodMetadata, Sandbox, SandboxClaim, SandboxClaimStatus, SandboxTemplate,
    SandboxWarmPool, UpdateStrategyType,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::cache::get;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, is_already_exists, is_conflict, is_not_found};
use crate::meta::{
    annotation, controller_of, controller_ref, is_controlled_by, label, map_patch, merge_diff,
    normalize_created_by, now, ref_is,
};
use crate::metrics::{ClaimCreationLabels, CreationLabels, StartupLabels};
use crate::queue::{SandboxKey, pick_smart, pool_key};
use crate::warmpool::logic::{blueprint_hash, blueprint_matches};
use logic::ClaimError;

/// The controller name in metrics.
pub const CONTROLLER: &str = "sandboxclaim";
/// How long a claim waits for warm candidates that have no pod IP yet.
pub const WARM_CANDIDATE_GRACE: Duration = Duration::from_secs(2);

/// The key of a claim in the first-seen map.
pub fn first_seen_key(claim: &SandboxClaim) -> String {
    format!(
        "{}/{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any(),
        claim.uid().unwrap_or_default()
    )
}

/// Whether a Sandbox can be adopted from a pool (§9.5 `isAdoptable`).
pub fn is_adoptable(sb: &Sandbox) -> bool {
    sb.metadata.deletion_timestamp.is_none()
        && label(&sb.metadata, labels::WARM_POOL_SANDBOX).is_some()
        && label(&sb.metadata, labels::SANDBOX_TEMPLATE_REF_HASH).is_some()
        && controller_of(&sb.metadata)
            .is_some_and(|r| ref_is(r, EXTENSIONS_GROUP, "SandboxWarmPool"))
}

/// The pool a Sandbox belongs to: its controller's name, else any pool owner reference.
pub fn pool_of(sb: &Sandbox) -> Option<String> {
    controller_of(&sb.metadata)
        .filter(|r| ref_is(r, EXTENSIONS_GROUP, "SandboxWarmPool"))
        .or_else(|| {
            sb.metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|r| ref_is(r, EXTENSIONS_GROUP, "SandboxWarmPool"))
        })
        .map(|r| r.name.clone())
}

/// Queue upkeep for a Sandbox change (§10.1): adoptable sandboxes are (re-)added when they become
/// adoptable, change pool or change node; deleted ones are removed.
pub fn queue_on_change(
    ctx_queue: &crate::queue::WarmQueue,
    old: Option<&Sandbox>,
    new: Option<&Sandbox>,
) {
    match new {
        None => {
            if let Some(o) = old
                && let Some(pool) = pool_of(o)
            {
                ctx_queue.remove_item(
                    &pool_key(&o.namespace().unwrap_or_default(), &pool),
                    &o.namespace().unwrap_or_default(),
                    &o.name_any(),
                );
            }
        }
        Some(n) => {
            if !is_adoptable(n) {
                return;
            }
            let node = |s: &Sandbox| {
                s.status
                    .as_ref()
                    .map(|st| st.node_name.clone())
                    .unwrap_or_default()
            };
            let changed = match old {
                None => true,
                Some(o) => !is_adoptable(o) || pool_of(o) != pool_of(n) || node(o) != node(n),
            };
            if changed && let Some(pool) = pool_of(n) {
                let ns = n.namespace().unwrap_or_default();
                ctx_queue.add(
                    &pool_key(&ns, &pool),
                    SandboxKey {
                        namespace: ns,
                        name: n.name_any(),
                        node_name: node(n),
                    },
                );
            }
        }
    }
}

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

/// Reconciles one SandboxClaim.
pub async fn reconcile(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    cleanup_legacy_network_policy(&ctx, &claim).await;
    let span = tracing::info_span!(
        "ReconcileSandboxClaim",
        claim.name = %claim.name_any(),
        claim.namespace = %claim.namespace().unwrap_or_default(),
        "agents.x-k8s.io/created-by" = tracing::field::Empty,
    );
    if let Some(c) = label(&claim.metadata, labels::CREATED_BY) {
        span.record("agents.x-k8s.io/created-by", normalize_created_by(c));
    }
    let trace_context = crate::otel::link_span(&span, &claim.metadata, ctx.config.tracing);
    reconcile_claim(claim, ctx, trace_context)
        .instrument(span)
        .await
}

async fn reconcile_claim(
    claim: Arc<SandboxClaim>,
    ctx: Arc<Context>,
    trace_context: Option<String>,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut claim = (*claim).clone();
    // The observability annotations are stamped in memory here and written after the status,
    // with the claim's other annotations: never as a round trip in front of an adoption.
    let annotation_pending = initialize_annotations(&ctx, &mut claim, trace_context.as_deref());

    let t = now();
    let expired = logic::expire_at(&claim).is_some_and(|at| t.0 >= at.0);
    let policy = claim
        .spec
        .lifecycle
        .as_ref()
        .map(|l| l.shutdown_policy())
        .unwrap_or_default();
    if annotation_pending && expired {
        let values = observability_values(&claim);
        write_claim_annotations(&ctx, &mut claim, values).await?;
    }
    if expired && !logic::is_marked_expired(&claim) {
        let st = logic::compute_status(&claim, None, None, true, &t);
        let mut st = st;
        // Keep the identity until the Sandbox is gone.
        st.sandbox = claim.status.clone().unwrap_or_default().sandbox;
        write_status(&ctx, &claim, &st).await?;
        publish_claim(
            &ctx,
            &claim,
            "ClaimExpired",
            "Claim Expired",
            "Claim expired".into(),
        )
        .await;
        return Ok(Action::requeue(Duration::from_millis(1)));
    }
    if expired && policy != ClaimShutdownPolicy::Retain {
        publish_claim(
            &ctx,
            &claim,
            "ClaimExpired",
            "Deleting",
            format!("Deleting Claim (ShutdownPolicy={policy:?})"),
        )
        .await;
        let api: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let dp = if policy == ClaimShutdownPolicy::DeleteForeground {
            DeleteParams {
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..Default::default()
            }
        } else {
            DeleteParams::default()
        };
        return match api.delete(&name, &dp).await {
            Ok(_) => Ok(Action::await_change()),
            Err(e) if is_not_found(&e) => Ok(Action::await_change()),
            Err(e) => Err(api_err("delete", "SandboxClaim", &ns, &name, e)),
        };
    }

    let outcome = if expired {
        reconcile_expired(&ctx, &claim).await
    } else {
        reconcile_active(&ctx, &mut claim).await
    };
    // A write of the claim's reference replaced it with the server's copy: stamp it again.
    let annotation_pending = !expired
        && (initialize_annotations(&ctx, &mut claim, trace_context.as_deref())
            || annotation_pending);
    let (sandbox, err) = match outcome {
        Outcome::Pending(d) => return Ok(Action::requeue(d)),
        Outcome::Done(sb, err) => (sb, err),
    };
    let t = now();
    let mut st = logic::compute_status(&claim, sandbox.as_deref(), err.as_ref(), expired, &t);
    let mut claim_with_status = claim.clone();
    claim_with_status.status = Some(st.clone());
    let now_expired =
        !expired && logic::expire_at(&claim_with_status).is_some_and(|at| t.0 >= at.0);
    if now_expired {
        st = logic::compute_status(&claim_with_status, None, None, true, &t);
        st.sandbox = claim_with_status.status.clone().unwrap_or_default().sandbox;
        write_status(&ctx, &claim, &st).await?;
        publish_claim(
            &ctx,
            &claim,
            "ClaimExpired",
            "Claim Expired",
            "Claim expired".into(),
        )
        .await;
        return Ok(Action::requeue(Duration::from_millis(1)));
    }
    let authoritative = write_status(&ctx, &claim, &st).await?;
    // Then the claim's own annotations, in one write off the path to Ready: the observability
    // times, the adopted sandbox's name (upstream's lock step 1, here after the status), and the
    // first-Ready time.
    let mut values = if annotation_pending {
        observability_values(&claim)
    } else {
        Map::new()
    };
    if let Some(sb) = sandbox.as_deref()
        && label(&sb.metadata, labels::LAUNCH_TYPE) == Some(launch_type::WARM)
        && annotation(&claim.metadata, annotations::CLAIM_SANDBOX_NAME)
            != Some(sb.name_any().as_str())
    {
        values.insert(annotations::CLAIM_SANDBOX_NAME.into(), json!(sb.name_any()));
    }
    if authoritative
        && let Some(at) = first_ready_value(&ctx, &claim, &st, sandbox.as_deref()).await?
    {
        values.insert(annotations::CLAIM_FIRST_READY_AT.into(), json!(at));
    }
    write_claim_annotations(&ctx, &mut claim, values).await?;

    let time_left = logic::expire_at(&claim_with_status)
        .and_then(|at| Duration::try_from(at.0.duration_since(t.0)).ok());
    let cap = |d: Duration| {
        time_left
            .map_or(d, |l| l.min(d))
            .max(Duration::from_millis(1))
    };
    match err {
        Some(ClaimError::WarmPoolNotFound(_)) | Some(ClaimError::TemplateNotFound(_)) => {
            Ok(Action::requeue(cap(Duration::from_secs(60))))
        }
        Some(ClaimError::CreatePending) | Some(ClaimError::AdoptionConflict(_)) => {
            Ok(Action::requeue(cap(Duration::from_millis(200))))
        }
        Some(ClaimError::Other(message)) => Err(Error::Claim {
            namespace: ns,
            name,
            message,
        }),
        _ => Ok(time_left
            .filter(|d| !d.is_zero())
            .map_or_else(Action::await_change, Action::requeue)),
    }
}

enum Outcome {
    Pending(Duration),
    Done(Option<Arc<Sandbox>>, Option<ClaimError>),
}

async fn publish_claim(
    ctx: &Context,
    claim: &SandboxClaim,
    reason: &str,
    action: &str,
    note: String,
) {
    if let Some(r) = &ctx.recorders.claim {
        ctx.publish(r, claim, EventType::Normal, reason, action, note)
            .await;
    }
}

async fn cleanup_legacy_network_policy(ctx: &Context, claim: &SandboxClaim) {
    let ns = claim.namespace().unwrap_or_default();
    let np_name = format!("{}-network-policy", claim.name_any());
    if let Some(np) = get(&ctx.stores.network_policies, &ns, &np_name)
        && controller_of(&np.metadata).is_some_and(|r| ref_is(r, EXTENSIONS_GROUP, "SandboxClaim"))
        && is_controlled_by(&np.metadata, claim)
    {
        let api: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            Api::namespaced(ctx.client.clone(), &ns);
        if let Err(error) = api.delete(&np_name, &DeleteParams::default()).await {
            tracing::debug!(%error, "deleting legacy claim NetworkPolicy failed");
        }
    }
}

/// Sets the observability annotations missing on `claim` in memory: the first-observed time, and
/// the trace context when tracing gave one. Returns whether something is left to write.
fn initialize_annotations(
    ctx: &Context,
    claim: &mut SandboxClaim,
    trace_context: Option<&str>,
) -> bool {
    let mut stamped = false;
    if annotation(&claim.metadata, annotations::CONTROLLER_FIRST_OBSERVED_AT).is_none() {
        let key = first_seen_key(claim);
        let seen = *ctx
            .claim_first_seen
            .lock()
            .entry(key)
            .or_insert_with(Timestamp::now);
        claim.annotations_mut().insert(
            annotations::CONTROLLER_FIRST_OBSERVED_AT.into(),
            seen.to_string(),
        );
        stamped = true;
    }
    if let Some(tc) = trace_context
        && annotation(&claim.metadata, annotations::TRACE_CONTEXT).is_none_or(str::is_empty)
    {
        claim
            .annotations_mut()
            .insert(annotations::TRACE_CONTEXT.into(), tc.into());
        stamped = true;
    }
    stamped && !ctx.config.disable_claim_observability_annotations
}

/// The observability annotations set in memory by [`initialize_annotations`].
fn observability_values(claim: &SandboxClaim) -> Map<String, Value> {
    [
        annotations::CONTROLLER_FIRST_OBSERVED_AT,
        annotations::TRACE_CONTEXT,
    ]
    .into_iter()
    .filter_map(|k| Some((k.to_owned(), json!(annotation(&claim.metadata, k)?))))
    .collect()
}

/// Adds `values` to the claim's annotations in one merge patch (nothing when empty).
async fn write_claim_annotations(
    ctx: &Context,
    claim: &mut SandboxClaim,
    values: Map<String, Value>,
) -> Result<(), Error> {
    if values.is_empty() {
        return Ok(());
    }
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"metadata": {"annotations": values}});
    match api
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(c) => {
            claim.metadata.resource_version = c.metadata.resource_version;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(api_err(
            "annotate",
            "SandboxClaim",
            &ns,
            &claim.name_any(),
            e,
        )),
    }
}

/// Writes the status with an optimistic lock; returns whether the write was authoritative.
async fn write_status(
    ctx: &Context,
    claim: &SandboxClaim,
    st: &SandboxClaimStatus,
) -> Result<bool, Error> {
    let old = claim.status.clone().unwrap_or_default();
    if agent_sandbox_api::semantic::eq(&old, st) {
        return Ok(true);
    }
    let old_v = serde_json::to_value(&old).unwrap_or(Value::Null);
    let new_v = serde_json::to_value(st).unwrap_or(Value::Null);
    let Some(diff) = merge_diff(&old_v, &new_v) else {
        return Ok(true);
    };
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let patch =
        json!({"metadata": {"resourceVersion": claim.metadata.resource_version}, "status": diff});
    match api
        .patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(api_err(
            "patch status of",
            "SandboxClaim",
            &ns,
            &claim.name_any(),
            e,
        )),
    }
}

fn parse_ts(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// The first-Ready annotation's value to write, if any: the time (and the startup metrics
/// observed) when this status makes the claim Ready for the first time, or the
/// unknown-sentinel for a claim that was Ready before without one.
async fn first_ready_value(
    ctx: &Context,
    claim: &SandboxClaim,
    st: &SandboxClaimStatus,
    sb: Option<&Sandbox>,
) -> Result<Option<String>, Error> {
    let was_ready = claim
        .status
        .as_ref()
        .is_some_and(|s| is_status_condition_true(&s.conditions, ct::READY));
    let is_ready = is_status_condition_true(&st.conditions, ct::READY);
    if annotation(&claim.metadata, annotations::CLAIM_FIRST_READY_AT).is_some() {
        return Ok(None);
    }
    let value = if !was_ready && is_ready {
        let now_ts = Timestamp::now();
        let lt = match sb.and_then(|s| label(&s.metadata, labels::LAUNCH_TYPE)) {
            Some(launch_type::WARM) => "warm",
            Some(_) => "cold",
            None => "unknown",
        };
        let tpl = sb
            .and_then(|s| annotation(&s.metadata, annotations::SANDBOX_TEMPLATE_REF))
            .unwrap_or("__unknown__")
            .to_string();
        let l = StartupLabels {
            launch_type: lt.into(),
            sandbox_template: tpl.clone(),
        };
        let ms = |from: Timestamp| {
            let d = now_ts.duration_since(from);
            (d.as_millis_f64() >= 0.0).then(|| d.as_millis_f64())
        };
        for (key, hist) in [
            (
                annotations::WEBHOOK_FIRST_OBSERVED_AT,
                &ctx.metrics.claim_startup,
            ),
            (
                annotations::CONTROLLER_FIRST_OBSERVED_AT,
                &ctx.metrics.claim_controller_startup,
            ),
            (
                annotations::CLIENT_FIRST_REQUESTED_AT,
                &ctx.metrics.client_claim_startup,
            ),
        ] {
            if let Some(v) = annotation(&claim.metadata, key)
                .and_then(parse_ts)
                .and_then(ms)
            {
                hist.get_or_create(&l).observe(v);
            }
        }
        if let Some(sb) = sb
            && let Some(ready) = sb.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == ct::READY && c.status == "True")
            })
            && let Some(created) = &sb.metadata.creation_timestamp
        {
            let d = ready
                .last_transition_time
                .0
                .duration_since(created.0)
                .as_millis_f64();
            if d >= 0.0 {
                ctx.metrics
                    .creation_latency
                    .get_or_create(&CreationLabels {
                        namespace: claim.namespace().unwrap_or_default(),
                        launch_type: lt.into(),
                        sandbox_template: tpl,
                    })
                    .observe(d);
            }
        }
        now_ts.to_string()
    } else if was_ready {
        // The cached claim may lag behind our own earlier annotation write; read it directly
        // before writing the sentinel so a recorded time is never overwritten.
        let ns = claim.namespace().unwrap_or_default();
        let api: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_opt(&claim.name_any()).await {
            Ok(Some(fresh))
                if annotation(&fresh.metadata, annotations::CLAIM_FIRST_READY_AT).is_none() => {}
            Ok(_) => return Ok(None),
            Err(e) => return Err(api_err("get", "SandboxClaim", &ns, &claim.name_any(), e)),
        }
        agent_sandbox_api::constants::CLAIM_FIRST_READY_UNKNOWN.to_string()
    } else {
        return Ok(None);
    };
    Ok(Some(value))
}

async fn reconcile_expired(ctx: &Context, claim: &SandboxClaim) -> Outcome {
    let ns = claim.namespace().unwrap_or_default();
    let target = claim
        .status
        .as_ref()
        .map(|s| s.sandbox.name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| claim.name_any());
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&target).await {
        Ok(None) => Outcome::Done(None, None),
        Err(e) => Outcome::Done(
            None,
            Some(ClaimError::Other(format!(
                "failed to get sandbox {target:?}: {e}"
            ))),
        ),
        Ok(Some(sb)) if !is_controlled_by(&sb.metadata, claim) => Outcome::Done(
            None,
            Some(ClaimError::SandboxNotOwned(format!(
                "sandbox {target:?} is not controlled by claim {:?}",
                claim.name_any()
            ))),
        ),
        Ok(Some(sb)) => {
            if sb.metadata.deletion_timestamp.is_none()
                && let Err(e) = api.delete(&target, &DeleteParams::default()).await
                && !is_not_found(&e)
            {
                return Outcome::Done(
                    Some(Arc::new(sb)),
                    Some(ClaimError::Other(format!(
                        "failed to delete sandbox {target:?}: {e}"
                    ))),
                );
            }
            Outcome::Done(Some(Arc::new(sb)), None)
        }
    }
}

/// How long a reconcile that saw a stale claim waits before it looks again.
const STALE_CLAIM_RETRY: Duration = Duration::from_millis(50);

/// Before a cold creation (which nothing undoes): whether the cache's claim is older than the API
/// server's. The cache can lag behind this controller's own writes, and a claim that adopted a
/// warm sandbox a moment ago may still look unassigned there; creating a cold sandbox for it
/// would leave it owning two. The next pass sees the newer claim (and its sandbox). A failed
/// read keeps the cached view.
async fn stale_claim(ctx: &Context, claim: &SandboxClaim) -> Option<Duration> {
    let api: Api<SandboxClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let fresh = api.get_opt(&claim.name_any()).await.ok()??;
    (fresh.metadata.resource_version != claim.metadata.resource_version)
        .then_some(STALE_CLAIM_RETRY)
}

/// The pool and template a claim points at.
fn get_template(
    ctx: &Context,
    claim: &SandboxClaim,
) -> Result<(Arc<SandboxWarmPool>, Arc<SandboxTemplate>), ClaimError> {
    let ns = claim.namespace().unwrap_or_default();
    let pool_name = &claim.spec.warm_pool_ref.name;
    let pool = get(&ctx.stores.pools, &ns, pool_name)
        .ok_or_else(|| ClaimError::WarmPoolNotFound(pool_name.clone()))?;
    let tpl_name = &pool.spec.template_ref.name;
    let tpl = get(&ctx.stores.templates, &ns, tpl_name)
        .ok_or_else(|| ClaimError::TemplateNotFound(tpl_name.clone()))?;
    Ok((pool, tpl))
}

async fn reconcile_active(ctx: &Context, claim: &mut SandboxClaim) -> Outcome {
    if let Err(e) = logic::validate_additional_pod_metadata(
        &claim.spec.additional_pod_metadata,
        &ctx.config.allowed_label_domains,
    ) {
        return Outcome::Done(None, Some(e));
    }
    let found = match get_or_create_sandbox(ctx, claim).await {
        Ok(Found::Pending(d)) => return Outcome::Pending(d),
        Ok(Found::Sandbox(sb)) => Some(sb),
        Ok(Found::None) => None,
        Err(e) => return Outcome::Done(None, Some(e)),
    };
    if let Some(sb) = found {
        match get_template(ctx, claim) {
            Err(e) if !claim.spec.additional_pod_metadata.is_empty() => {
                return Outcome::Done(
                    Some(sb),
                    Some(ClaimError::Other(format!(
                        "failed to get template for metadata propagation: {}",
                        e.text()
                    ))),
                );
            }
            Err(_) => return Outcome::Done(Some(sb), None),
            Ok((_, tpl)) => {
                let desired = match logic::desired_pod_metadata(&tpl, claim) {
                    Ok(m) => m,
                    Err(e) => return Outcome::Done(Some(sb), Some(e)),
                };
                return match sync_sandbox_metadata(ctx, claim, &sb, &tpl, &desired).await {
                    Ok(sb) => Outcome::Done(Some(sb), None),
                    Err(e) => Outcome::Done(Some(sb), Some(e)),
                };
            }
        }
    }
    // Cold path.
    if let Some(d) = stale_claim(ctx, claim).await {
        return Outcome::Pending(d);
    }
    let (pool, tpl) = match get_template(ctx, claim) {
        Ok(v) => v,
        Err(e) => return Outcome::Done(None, Some(e)),
    };
    let sandbox = match logic::build_cold_sandbox(claim, &tpl) {
        Ok(s) => s,
        Err(e) => return Outcome::Done(None, Some(e)),
    };
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &sandbox).await {
        Ok(created) => {
            ctx.claim_sandboxes
                .lock()
                .insert(first_seen_key(claim), created.name_any());
            publish_claim(
                ctx,
                claim,
                "SandboxProvisioned",
                "Provisioning",
                format!("Created Sandbox {:?}", created.name_any()),
            )
            .await;
            ctx.metrics
                .claim_creation
                .get_or_create(&ClaimCreationLabels {
                    namespace: ns,
                    sandbox_template: tpl.name_any(),
                    launch_type: launch_type::COLD.into(),
                    warmpool_name: pool.name_any(),
                    pod_condition: "not_ready".into(),
                    created_by: normalize_created_by(
                        label(&claim.metadata, labels::CREATED_BY).unwrap_or(""),
                    )
                    .into(),
                })
                .inc();
            Outcome::Done(Some(Arc::new(created)), None)
        }
        Err(e) if is_already_exists(&e) => Outcome::Done(None, Some(ClaimError::CreatePending)),
        Err(e) => Outcome::Done(
            None,
            Some(ClaimError::Other(format!("failed to create sandbox: {e}"))),
        ),
    }
}

/// Keeps the claimed Sandbox's pod template metadata and top-level labels in line with the
/// template and the claim (§9.3 step 3).
async fn sync_sandbox_metadata(
    ctx: &Context,
    claim: &SandboxClaim,
    sb: &Arc<Sandbox>,
    tpl: &SandboxTemplate,
    desired: &PodMetadata,
) -> Result<Arc<Sandbox>, ClaimError> {
    let current = &sb.spec.pod_template.metadata;
    let ref_hash = name_hash(&tpl.name_any());
    let want_created_by = label(&claim.metadata, labels::CREATED_BY).filter(|s| !s.is_empty());
    let top_ok = label(&sb.metadata, labels::SANDBOX_TEMPLATE_REF_HASH) == Some(ref_hash.as_str())
        && label(&sb.metadata, labels::CREATED_BY).filter(|s| !s.is_empty()) == want_created_by;
    if current == desired && top_ok {
        return Ok(sb.clone());
    }
    let mut top = Map::new();
    top.insert(labels::SANDBOX_TEMPLATE_REF_HASH.into(), json!(ref_hash));
    top.insert(labels::CREATED_BY.into(), json!(want_created_by));
    let patch = json!({
        "metadata": {"labels": top},
        "spec": {"podTemplate": {"metadata": {
            "labels": map_patch(&current.labels, &desired.labels),
            "annotations": map_patch(&current.annotations, &desired.annotations),
        }}}
    });
    let api: Api<Sandbox> =
        Api::namespaced(ctx.client.clone(), &sb.namespace().unwrap_or_default());
    api.patch(
        &sb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(Arc::new)
    .map_err(|e| ClaimError::Other(format!("failed to update sandbox metadata: {e}")))
}

enum Found {
    Sandbox(Arc<Sandbox>),
    None,
    Pending(Duration),
}

async fn ensure_launch_type(
    ctx: &Context,
    sb: Arc<Sandbox>,
    value: &str,
) -> Result<Arc<Sandbox>, ClaimError> {
    if label(&sb.metadata, labels::LAUNCH_TYPE).is_some() {
        return Ok(sb);
    }
    let api: Api<Sandbox> =
        Api::namespaced(ctx.client.clone(), &sb.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"labels": {labels::LAUNCH_TYPE: value}}});
    api.patch(
        &sb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(Arc::new)
    .map_err(|e| ClaimError::Other(format!("failed to set launch type: {e}")))
}

fn assigned_ref(claim: &SandboxClaim) -> Option<(String, bool)> {
    annotation(&claim.metadata, annotations::CLAIM_SANDBOX_NAME)
        .filter(|s| !s.is_empty())
        .map(|s| (s.to_string(), false))
        .or_else(|| {
            label(&claim.metadata, labels::DEPRECATED_CLAIM_SANDBOX_NAME)
                .filter(|s| !s.is_empty())
                .map(|s| (s.to_string(), true))
        })
}

/// Removes the claim's assigned reference (annotation and legacy label), or only migrates the
/// legacy label to the annotation when `keep` names the sandbox to keep.
async fn set_claim_ref(
    ctx: &Context,
    claim: &mut SandboxClaim,
    keep: Option<&str>,
) -> Result<(), ClaimError> {
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"metadata": {
        "annotations": {annotations::CLAIM_SANDBOX_NAME: keep},
        "labels": {labels::DEPRECATED_CLAIM_SANDBOX_NAME: Value::Null},
    }});
    match api
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(c) => {
            *claim = c;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ClaimError::Other(format!(
            "failed to update claim sandbox reference: {e}"
        ))),
    }
}

async fn get_or_create_sandbox(
    ctx: &Context,
    claim: &mut SandboxClaim,
) -> Result<Found, ClaimError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    // 1. status.sandbox.name (read from the API server when the cache does not have it yet:
    // the cache can lag behind the creation by tens of seconds on a busy kube-apiserver, and
    // the claim must not then adopt a second sandbox).
    let status_name = claim
        .status
        .as_ref()
        .map(|s| s.sandbox.name.clone())
        .filter(|s| !s.is_empty());
    let named = match &status_name {
        Some(sname) => match get(&ctx.stores.sandboxes, &ns, sname) {
            Some(sb) => Some(sb),
            None => Api::<Sandbox>::namespaced(ctx.client.clone(), &ns)
                .get_opt(sname)
                .await
                .ok()
                .flatten()
                .map(Arc::new),
        },
        None => None,
    };
    if let (Some(sname), Some(sb)) = (status_name, named)
        && is_controlled_by(&sb.metadata, claim)
    {
        let warm = assigned_ref(claim).is_some_and(|(n, _)| n == sname) || sname != name;
        let lt = if warm {
            launch_type::WARM
        } else {
            launch_type::COLD
        };
        return ensure_launch_type(ctx, sb, lt).await.map(Found::Sandbox);
    }
    // 2. The assigned reference.
    if let Some((assigned, legacy)) = assigned_ref(claim) {
        match get(&ctx.stores.sandboxes, &ns, &assigned) {
            Some(sb) if is_controlled_by(&sb.metadata, claim) => {
                if legacy {
                    let _ = set_claim_ref(ctx, claim, Some(&assigned)).await;
                }
                return ensure_launch_type(ctx, sb, launch_type::WARM)
                    .await
                    .map(Found::Sandbox);
            }
            Some(sb)
                if controller_of(&sb.metadata)
                    .is_some_and(|r| ref_is(r, EXTENSIONS_GROUP, "SandboxWarmPool")) =>
            {
                if verify_candidate(&sb, claim) {
                    let sb = complete_adoption(ctx, claim, &sb).await?;
                    if legacy {
                        let _ = set_claim_ref(ctx, claim, Some(&assigned)).await;
                    }
                    return Ok(Found::Sandbox(sb));
                }
                set_claim_ref(ctx, claim, None).await?;
            }
            Some(_) | None => set_claim_ref(ctx, claim, None).await?,
        }
    }
    // 3. A Sandbox named after the claim.
    if let Some(sb) = get(&ctx.stores.sandboxes, &ns, &name) {
        if !is_controlled_by(&sb.metadata, claim) {
            return Err(ClaimError::Other(format!(
                "sandbox {name:?} is not controlled by claim {name:?}. Please use a different claim name or delete the sandbox manually"
            )));
        }
        return ensure_launch_type(ctx, sb, launch_type::COLD)
            .await
            .map(Found::Sandbox);
    }
    // 3b. A sandbox this claim got that neither its status nor its reference names yet.
    if let Some(sb) = given_sandbox(ctx, claim).await {
        let lt = if sb.name_any() == name {
            launch_type::COLD
        } else {
            launch_type::WARM
        };
        return ensure_launch_type(ctx, sb, lt).await.map(Found::Sandbox);
    }
    // 4. env or VCTs force a cold start.
    if !claim.spec.env.is_empty() || !claim.spec.volume_claim_templates.is_empty() {
        return Ok(Found::None);
    }
    // 5. Adopt a warm candidate.
    let (candidate, pending) = get_candidate(ctx, claim);
    if let Some(sb) = candidate {
        return adopt(ctx, claim, sb).await.map(Found::Sandbox);
    }
    // 6. Network-pending candidates within the grace period.
    if pending > 0 {
        let age = claim
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|c| Duration::try_from(Timestamp::now().duration_since(c.0)).ok())
            .unwrap_or_default();
        if age < WARM_CANDIDATE_GRACE {
            return Ok(Found::Pending(
                (WARM_CANDIDATE_GRACE - age).min(Duration::from_millis(500)),
            ));
        }
        tracing::info!(
            pending,
            "warm candidates still have no pod IPs after the grace period; starting cold"
        );
    }
    Ok(Found::None)
}

/// The sandbox this claim got when the claim (as cached) does not name it yet: its reference
/// annotation is written after the status, and a requeued reconcile may see a claim older than
/// its last status. This controller's record of what it gave the claim (read through when the
/// cache has not seen the sandbox yet), else a cached Sandbox the claim controls (after a
/// restart the cache is listed whole before any reconcile).
async fn given_sandbox(ctx: &Context, claim: &SandboxClaim) -> Option<Arc<Sandbox>> {
    let ns = claim.namespace().unwrap_or_default();
    let recorded = ctx
        .claim_sandboxes
        .lock()
        .get(&first_seen_key(claim))
        .cloned();
    if let Some(name) = recorded {
        let sb = match get(&ctx.stores.sandboxes, &ns, &name) {
            Some(sb) if is_controlled_by(&sb.metadata, claim) => Some(sb),
            _ => Api::<Sandbox>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .map(Arc::new),
        };
        return sb.filter(|sb| is_controlled_by(&sb.metadata, claim));
    }
    ctx.stores
        .sandboxes
        .find(|sb| sb.namespace() == claim.namespace() && is_controlled_by(&sb.metadata, claim))
}

/// `verifySandboxCandidate`.
fn verify_candidate(sb: &Sandbox, claim: &SandboxClaim) -> bool {
    sb.namespace() == claim.namespace()
        && is_adoptable(sb)
        && pool_of(sb).as_deref() == Some(claim.spec.warm_pool_ref.name.as_str())
}

/// Pops a candidate (§10.2): Ready first, else the first networked one; counts network-pending.
fn get_candidate(ctx: &Context, claim: &SandboxClaim) -> (Option<Arc<Sandbox>>, usize) {
    let ns = claim.namespace().unwrap_or_default();
    let qkey = pool_key(&ns, &claim.spec.warm_pool_ref.name);
    let mut requeue: Vec<SandboxKey> = Vec::new();
    let mut fallback: Option<(SandboxKey, Arc<Sandbox>)> = None;
    let mut pending = 0usize;
    let mut recreate: Option<Option<Arc<SandboxTemplate>>> = None;
    let mut chosen = None;
    while let Some(key) = ctx.queue.pop_with(&qkey, pick_smart) {
        let Some(sb) = get(&ctx.stores.sandboxes, &key.namespace, &key.name) else {
            continue;
        };
        if !verify_candidate(&sb, claim) {
            continue;
        }
        let strategy_tpl = recreate.get_or_insert_with(|| {
            get_template(ctx, claim)
                .ok()
                .filter(|(p, _)| p.spec.update_strategy_type() == UpdateStrategyType::Recreate)
                .map(|(_, t)| t)
        });
        if let Some(tpl) = strategy_tpl
            && label(&sb.metadata, labels::SANDBOX_TEMPLATE_HASH)
                != Some(blueprint_hash(tpl).as_str())
            && !blueprint_matches(tpl, &sb.spec)
        {
            continue;
        }
        let st = sb.status.clone().unwrap_or_default();
        if st.pod_ips.is_empty() {
            pending += 1;
            requeue.push(SandboxKey {
                node_name: st.node_name.clone(),
                ..key
            });
            continue;
        }
        if is_status_condition_true(&st.conditions, ct::READY) {
            chosen = Some(sb);
            break;
        }
        if fallback.is_none() {
            fallback = Some((key, sb));
        } else {
            requeue.push(key);
        }
    }
    let chosen = match chosen {
        Some(c) => {
            if let Some((k, _)) = fallback {
                requeue.push(k);
            }
            Some(c)
        }
        None => fallback.map(|(_, sb)| sb),
    };
    for k in requeue {
        ctx.queue.add(&qkey, k);
    }
    (chosen, pending)
}

async fn adopt(
    ctx: &Context,
    claim: &mut SandboxClaim,
    sb: Arc<Sandbox>,
) -> Result<Arc<Sandbox>, ClaimError> {
    let ns = claim.namespace().unwrap_or_default();
    let sname = sb.name_any();
    // An adoption that does not happen hands the sandbox back to its pool's reconcile.
    let requeue_pool = |claim: &SandboxClaim| {
        ctx.queue.add(
            &pool_key(&ns, &claim.spec.warm_pool_ref.name),
            SandboxKey {
                namespace: ns.clone(),
                name: sname.clone(),
                node_name: String::new(),
            },
        );
    };
    // The ownership transfer is the adoption's one atomic step: a merge patch with the
    // candidate's resourceVersion as precondition, so of two claims racing for it one wins.
    // The claim's reference annotation follows the status (`write_claim_annotations`); until
    // then this controller's own record, and after a restart the cache's owner references,
    // find the adopted sandbox again (`given_sandbox`).
    let adopted = match complete_adoption(ctx, claim, &sb).await {
        Ok(a) => a,
        Err(e) => {
            if matches!(e, ClaimError::Other(_)) {
                requeue_pool(claim);
            }
            return Err(e);
        }
    };
    ctx.claim_sandboxes
        .lock()
        .insert(first_seen_key(claim), sname.clone());
    let pool = pool_of(&sb).unwrap_or_else(|| "none".into());
    publish_claim(
        ctx,
        claim,
        "SandboxAdopted",
        "Adoption",
        format!("Adopted warm pool Sandbox {sname:?}"),
    )
    .await;
    let ready = sb
        .status
        .as_ref()
        .is_some_and(|s| is_status_condition_true(&s.conditions, ct::READY));
    ctx.metrics
        .claim_creation
        .get_or_create(&ClaimCreationLabels {
            namespace: ns,
            sandbox_template: annotation(&sb.metadata, annotations::SANDBOX_TEMPLATE_REF)
                .unwrap_or("unknown")
                .into(),
            launch_type: launch_type::WARM.into(),
            warmpool_name: pool,
            pod_condition: if ready { "ready" } else { "not_ready" }.into(),
            created_by: normalize_created_by(
                label(&claim.metadata, labels::CREATED_BY).unwrap_or(""),
            )
            .into(),
        })
        .inc();
    Ok(adopted)
}

fn adoption_patch(ctx: &Context, claim: &SandboxClaim, sb: &Sandbox) -> Value {
    let tpl = get_template(ctx, claim).ok().map(|(_, t)| t);
    let mut top = Map::new();
    for k in [
        labels::WARM_POOL_SANDBOX,
        labels::DEPRECATED_SANDBOX_POD_TEMPLATE_HASH,
        labels::SANDBOX_TEMPLATE_HASH,
    ] {
        top.insert(k.into(), Value::Null);
    }
    top.insert(labels::LAUNCH_TYPE.into(), json!(launch_type::WARM));
    top.insert(
        labels::CLAIM_UID.into(),
        json!(claim.uid().unwrap_or_default()),
    );
    top.insert(
        labels::CREATED_BY.into(),
        json!(label(&claim.metadata, labels::CREATED_BY).filter(|s| !s.is_empty())),
    );
    let ref_hash = label(&sb.metadata, labels::SANDBOX_TEMPLATE_REF_HASH)
        .map(String::from)
        .or_else(|| tpl.as_ref().map(|t| name_hash(&t.name_any())));
    if let Some(h) = &ref_hash {
        top.insert(labels::SANDBOX_TEMPLATE_REF_HASH.into(), json!(h));
    }
    let mut annos = Map::new();
    annos.insert(annotations::POD_NAME.into(), json!(sb.name_any()));
    if let Some(tc) = annotation(&claim.metadata, annotations::TRACE_CONTEXT) {
        annos.insert(annotations::TRACE_CONTEXT.into(), json!(tc));
    }
    let current = &sb.spec.pod_template.metadata;
    let desired = match tpl.as_ref().map(|t| logic::desired_pod_metadata(t, claim)) {
        Some(Ok(m)) => m,
        _ => {
            let mut m = current.clone();
            if m.annotations
                .get(annotations::SAFE_TO_EVICT)
                .map(String::as_str)
                == Some("true")
            {
                m.annotations.remove(annotations::SAFE_TO_EVICT);
            }
            m.labels
                .insert(labels::CLAIM_UID.into(), claim.uid().unwrap_or_default());
            if let Some(h) = &ref_hash {
                m.labels
                    .insert(labels::SANDBOX_TEMPLATE_REF_HASH.into(), h.clone());
            }
            let _ = logic::merge_pod_metadata(&mut m, &claim.spec.additional_pod_metadata);
            m
        }
    };
    json!({
        "metadata": {
            "resourceVersion": sb.metadata.resource_version,
            "labels": top,
            "annotations": annos,
            "ownerReferences": [controller_ref(claim)],
        },
        "spec": {"podTemplate": {"metadata": {
            "labels": map_patch(&current.labels, &desired.labels),
            "annotations": map_patch(&current.annotations, &desired.annotations),
        }}}
    })
}

/// Lock step 2 (`completeAdoption`) with conflict resolution against fresh reads.
async fn complete_adoption(
    ctx: &Context,
    claim: &mut SandboxClaim,
    sb: &Sandbox,
) -> Result<Arc<Sandbox>, ClaimError> {
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let mut base = sb.clone();
    for _ in 0..5 {
        let patch = adoption_patch(ctx, claim, &base);
        match api
            .patch(
                &base.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e) if is_conflict(&e) || is_not_found(&e) => {
                match api.get_opt(&base.name_any()).await {
                    Ok(Some(fresh)) if is_controlled_by(&fresh.metadata, claim) => {
                        return Ok(Arc::new(fresh));
                    }
                    Ok(Some(fresh)) if verify_candidate(&fresh, claim) => base = fresh,
                    Ok(Some(_)) => {
                        return Err(ClaimError::AdoptionConflict(format!(
                            "sandbox {:?} was adopted by another claim",
                            base.name_any()
                        )));
                    }
                    Ok(None) => {
                        if assigned_ref(claim).is_some() {
                            set_claim_ref(ctx, claim, None).await?;
                        }
                        return Err(ClaimError::AdoptionConflict(format!(
                            "sandbox {:?} is gone",
                            base.name_any()
                        )));
                    }
                    Err(e) => {
                        return Err(ClaimError::Other(format!("failed to re-read sandbox: {e}")));
                    }
                }
            }
            Err(e) => {
                return Err(ClaimError::Other(format!(
                    "failed to adopt sandbox {:?}: {e}",
                    base.name_any()
                )));
            }
        }
    }
    Err(ClaimError::AdoptionConflict(format!(
        "adopting sandbox {:?} (conflicting concurrent write)",
        sb.name_any()
    )))
}
