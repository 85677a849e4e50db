//! The SandboxWarmPool reconciler (upstream-core §8): keeps `spec.replicas` unclaimed Sandboxes
//! from the pool's template, gated by expectations, with slow-start creates, unready-first
//! scale-down, staleness handling per update strategy and the readiness grace period.

pub mod logic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runner::Action;
use agent_sandbox_api::constants::{annotations, labels, launch_type};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{
    Sandbox, SandboxWarmPool, SandboxWarmPoolStatus, UpdateStrategyType,
};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::instrument;

use crate::cache::get;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, is_conflict, is_not_found};
use crate::meta::{annotation, controller_of, controller_ref, label, merge_diff, now};
use crate::queue::pool_key;

/// The controller name in metrics.
pub const CONTROLLER: &str = "sandboxwarmpool";
/// Requeue while expectations are unsatisfied.
pub const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(30);

/// Formats a duration as Go's `time.Duration.String` does for whole seconds and milliseconds
/// (`5m0s`, `1h0m0s`, `1m30s`, `500ms`).
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn min_requeue(cur: &mut Option<Duration>, d: Duration) {
    if d.is_zero() {
        return;
    }
    *cur = Some(cur.map_or(d, |c| c.min(d)));
}

fn pod_unschedulable(ctx: &Context, sb: &Sandbox) -> bool {
    let ns = sb.namespace().unwrap_or_default();
    let name = annotation(&sb.metadata, annotations::POD_NAME)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .unwrap_or_else(|| sb.name_any());
    get(&ctx.stores.pods, &ns, &name).is_some_and(|p: Arc<Pod>| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
    })
}

/// Reconciles one SandboxWarmPool.
#[instrument(name = "ReconcileSandboxWarmPool", skip_all, fields(pool.name = %pool.name_any(), pool.namespace = pool.namespace().unwrap_or_default()))]
pub async fn reconcile(pool: Arc<SandboxWarmPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let key = pool_key(&ns, &name);
    if pool.metadata.deletion_timestamp.is_some() {
        ctx.expectations.forget(&key);
        ctx.pools_not_progressing.lock().remove(&key);
        return Ok(Action::await_change());
    }
    let pool_uid = pool.uid().unwrap_or_default();
    let pool_hash = name_hash(&name);
    let sb_api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let members: Vec<Arc<Sandbox>> = ctx
        .indexes
        .sandboxes_by_pool
        .get(&ns, &pool_hash)
        .iter()
        .filter_map(|n| get(&ctx.stores.sandboxes, &ns, n))
        .collect();
    let tpl = get(&ctx.stores.templates, &ns, &pool.spec.template_ref.name);
    let strategy = pool.spec.update_strategy_type();
    let mut checker = tpl.as_deref().map(logic::StaleChecker::new);
    let mut errors: Vec<String> = Vec::new();
    let mut terminating = 0usize;
    let mut active: Vec<Arc<Sandbox>> = Vec::new();
    let t0 = Instant::now();

    for sb in members {
        let ctrl = controller_of(&sb.metadata);
        let pool_owned = ctrl.is_some_and(|r| r.uid == pool_uid);
        let sb_uid = sb.uid().unwrap_or_default();
        if sb.metadata.deletion_timestamp.is_some() {
            terminating += usize::from(pool_owned);
            continue;
        }
        if pool_owned && ctx.expectations.is_pending_deletion(&key, &sb_uid, t0) {
            terminating += 1;
            continue;
        }
        if ctrl.is_some() && !pool_owned {
            continue;
        }
        let orphan = ctrl.is_none();
        if let Some(c) = checker.as_mut()
            && (strategy == UpdateStrategyType::Recreate || orphan)
            && c.is_stale(&sb, orphan)
        {
            if pool_owned {
                ctx.expectations.expect_deletion(&key, &sb_uid, t0);
            }
            match sb_api
                .delete(&sb.name_any(), &member_delete_params(&sb))
                .await
            {
                Ok(_) => terminating += usize::from(pool_owned),
                Err(e) => {
                    ctx.expectations.deletion_observed(&key, &sb_uid);
                    if !member_changed(&e) {
                        errors.push(format!(
                            "failed to delete stale sandbox {:?}: {e}",
                            sb.name_any()
                        ));
                    }
                }
            }
            continue;
        }
        let mut sb = sb;
        if orphan || label(&sb.metadata, labels::LAUNCH_TYPE) != Some(launch_type::WARM) {
            let mut updated = (*sb).clone();
            updated
                .labels_mut()
                .insert(labels::LAUNCH_TYPE.into(), launch_type::WARM.into());
            if orphan {
                let mut refs = updated
                    .metadata
                    .owner_references
                    .clone()
                    .unwrap_or_default();
                refs.push(controller_ref(pool.as_ref()));
                updated.metadata.owner_references = Some(refs);
            }
            updated.metadata.managed_fields = None;
            match sb_api
                .replace(&sb.name_any(), &PostParams::default(), &updated)
                .await
            {
                Ok(s) => sb = Arc::new(s),
                Err(e) => {
                    errors.push(format!("failed to update sandbox {:?}: {e}", sb.name_any()));
                    if orphan {
                        continue;
                    }
                }
            }
        }
        active.push(sb);
    }

    // Readiness grace: replace members stuck unready, except unschedulable ones.
    let mut requeue: Option<Duration> = None;
    let mut unschedulable = 0usize;
    let grace = ctx.config.warm_pool_readiness_grace;
    let t = now();
    let mut kept = Vec::with_capacity(active.len());
    for sb in active {
        if logic::is_ready(&sb) {
            kept.push(sb);
            continue;
        }
        let age = sb
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|c| Duration::try_from(t.0.duration_since(c.0)).ok())
            .unwrap_or(Duration::ZERO);
        if age <= grace {
            let base = grace - age + Duration::from_secs(2);
            let jitter = base.mul_f64(jitter_fraction(&sb.name_any()) * 0.5);
            min_requeue(&mut requeue, base + jitter);
            kept.push(sb);
        } else if pod_unschedulable(&ctx, &sb) {
            unschedulable += 1;
            kept.push(sb);
        } else {
            let sb_uid = sb.uid().unwrap_or_default();
            ctx.expectations.expect_deletion(&key, &sb_uid, t0);
            match sb_api
                .delete(&sb.name_any(), &member_delete_params(&sb))
                .await
            {
                Ok(_) => terminating += 1,
                Err(e) => {
                    ctx.expectations.deletion_observed(&key, &sb_uid);
                    if !member_changed(&e) {
                        errors.push(format!(
                            "failed to delete stuck sandbox {:?}: {e}",
                            sb.name_any()
                        ));
                    }
                    kept.push(sb);
                }
            }
        }
    }
    let active = kept;

    let desired = usize::try_from(pool.spec.replicas().max(0)).unwrap_or(0);
    let current = active.len();
    let total = current + terminating;
    let new_status = SandboxWarmPoolStatus {
        replicas: i32::try_from(current).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(active.iter().filter(|s| logic::is_ready(s)).count())
            .unwrap_or(i32::MAX),
        selector: logic::pool_selector(&name),
        observed_generation: pool.metadata.generation.unwrap_or(0),
    };

    if total < desired
        && let Some(tpl) = tpl.as_deref()
    {
        let deficit = (desired - total).min(ctx.config.warm_pool_max_batch);
        let n = i64::try_from(deficit).unwrap_or(i64::MAX);
        if ctx
            .expectations
            .try_expect_creations(&key, n, Instant::now())
        {
            let sandbox =
                logic::build_pool_sandbox(&pool, tpl, ctx.config.enable_warm_pool_eviction);
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let mut done = 0usize;
            for batch in logic::slow_start_batches(deficit) {
                let results = join_all((0..batch).map(|_| sb_api.create(&pp, &sandbox))).await;
                let failed: Vec<String> = results
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|e| e.to_string())
                    .collect();
                done += batch;
                if !failed.is_empty() {
                    let not_created = failed.len() + (deficit - done);
                    ctx.expectations
                        .lower_creations(&key, i64::try_from(not_created).unwrap_or(i64::MAX));
                    errors.push(format!("failed to create pool sandbox: {}", failed[0]));
                    break;
                }
            }
        } else {
            min_requeue(&mut requeue, EXPECTATIONS_RECHECK);
        }
    }

    if current > desired {
        if ctx.expectations.satisfied(&key, Instant::now()) {
            let mut order: Vec<&Sandbox> = active.iter().map(|s| s.as_ref()).collect();
            logic::scale_down_order(&mut order);
            let excess = (current - desired).min(ctx.config.warm_pool_max_batch);
            let victims: Vec<&Sandbox> = order.into_iter().take(excess).collect();
            let mut i = 0;
            'batches: for batch in logic::slow_start_batches(victims.len()) {
                let chunk = &victims[i..i + batch];
                i += batch;
                for sb in chunk {
                    ctx.expectations.expect_deletion(
                        &key,
                        sb.uid().as_deref().unwrap_or(""),
                        Instant::now(),
                    );
                }
                let params: Vec<DeleteParams> =
                    chunk.iter().map(|sb| member_delete_params(sb)).collect();
                let results =
                    join_all(chunk.iter().zip(&params).map(|(sb, dp)| {
                        sb_api.delete(sb.metadata.name.as_deref().unwrap_or(""), dp)
                    }))
                    .await;
                let mut failed = false;
                for (sb, r) in chunk.iter().zip(results) {
                    if let Err(e) = r {
                        ctx.expectations
                            .deletion_observed(&key, sb.uid().as_deref().unwrap_or(""));
                        if !member_changed(&e) {
                            errors.push(format!(
                                "failed to delete excess sandbox {:?}: {e}",
                                sb.name_any()
                            ));
                            failed = true;
                        }
                    }
                }
                if failed {
                    break 'batches;
                }
            }
        } else {
            min_requeue(&mut requeue, EXPECTATIONS_RECHECK);
        }
    }

    // Not-progressing signal.
    let was = ctx
        .pools_not_progressing
        .lock()
        .get(&key)
        .copied()
        .unwrap_or(false);
    if unschedulable > 0 {
        min_requeue(&mut requeue, ctx.config.warm_pool_unschedulable_recheck);
        if !was {
            ctx.pools_not_progressing.lock().insert(key.clone(), true);
            let note = format!(
                "{unschedulable}/{desired} sandboxes are unschedulable past the {} readiness grace period; holding them instead of replacing (replacements would be equally unschedulable)",
                go_duration(grace)
            );
            ctx.publish(
                &ctx.recorders.pool,
                pool.as_ref(),
                EventType::Warning,
                "WarmPoolNotProgressing",
                "Reconciling",
                note,
            )
            .await;
        }
    } else if was {
        ctx.pools_not_progressing.lock().insert(key.clone(), false);
        ctx.publish(
            &ctx.recorders.pool,
            pool.as_ref(),
            EventType::Normal,
            "WarmPoolProgressing",
            "Reconciling",
            "Warm pool is progressing again".into(),
        )
        .await;
    }

    let old_status = pool.status.clone().unwrap_or_default();
    if old_status != new_status {
        let old_v = serde_json::to_value(&old_status).unwrap_or(Value::Null);
        let new_v = serde_json::to_value(&new_status).unwrap_or(Value::Null);
        if let Some(diff) = merge_diff(&old_v, &new_v) {
            let api: Api<SandboxWarmPool> = Api::namespaced(ctx.client.clone(), &ns);
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": diff })),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => errors.push(format!("failed to update status: {e}")),
            }
        }
    }
    if !errors.is_empty() {
        return Err(Error::Pool {
            namespace: ns,
            name,
            errors,
        });
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// A deterministic jitter in [0, 1) derived from a name, so requeues of many members spread out.
fn jitter_fraction(name: &str) -> f64 {
    f64::from(agent_sandbox_api::hash::fnv1a32(name) % 1000) / 1000.0
}

/// Deletes a pool member only as the pool saw it: same uid and resourceVersion. A member changed
/// since (adopted by a claim between this reconcile's read and its delete, or updated) answers
/// 409 and is left alone; the change's own event brings the pool back with a fresh view.
fn member_delete_params(sb: &Sandbox) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: sb.uid(),
            resource_version: sb.resource_version(),
        }),
        ..DeleteParams::default()
    }
}

/// A member delete that found the member gone or changed: nothing to report.
fn member_changed(e: &kube::Error) -> bool {
    is_not_found(e) || is_conflict(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn requeue_keeps_the_minimum_non_zero() {
        let mut r = None;
        min_requeue(&mut r, Duration::ZERO);
        assert_eq!(r, None);
        min_requeue(&mut r, Duration::from_secs(30));
        min_requeue(&mut r, Duration::from_secs(60));
        assert_eq!(r, Some(Duration::from_secs(30)));
        assert!((0.0..1.0).contains(&jitter_fraction("pool-abcde")));
    }
}
