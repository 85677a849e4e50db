//! The SandboxWarmPool reconciler (upstream-core §8): keeps `spec.replicas` unclaimed Sandboxes
//! from the pool's template, gated by expectations, with slow-start creates, unready-first
//! scale-down, staleness handling per update strategy and the readiness grace period.

pub mod logic;
pub mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runner::Action;
use agent_sandbox_api::constants::annotations;
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{
    Sandbox, SandboxTemplate, SandboxWarmPool, SandboxWarmPoolStatus,
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
use crate::meta::{annotation, merge_diff, now};
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

/// Reconciles one SandboxWarmPool: reads the cache, plans ([`plan::plan`]), applies the plan.
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
    let members: Vec<Arc<Sandbox>> = ctx
        .indexes
        .sandboxes_by_pool
        .get(&ns, &name_hash(&name))
        .iter()
        .filter_map(|n| get(&ctx.stores.sandboxes, &ns, n))
        .collect();
    let tpl = get(&ctx.stores.templates, &ns, &pool.spec.template_ref.name);
    let t0 = Instant::now();
    let was_not_progressing = ctx
        .pools_not_progressing
        .lock()
        .get(&key)
        .copied()
        .unwrap_or(false);
    let plan = plan::plan(
        &pool,
        plan::Inputs {
            members,
            template: tpl.as_deref(),
            pending_deletion: &|uid| ctx.expectations.is_pending_deletion(&key, uid, t0),
            unschedulable: &|sb| pod_unschedulable(&ctx, sb),
            readiness_grace: ctx.config.warm_pool_readiness_grace,
            max_batch: ctx.config.warm_pool_max_batch,
            was_not_progressing,
            now: now(),
        },
    );
    Apply {
        ctx: &ctx,
        pool: &pool,
        key: &key,
        api: Api::namespaced(ctx.client.clone(), &ns),
        errors: Vec::new(),
    }
    .run(plan, tpl.as_deref())
    .await
}

/// Applies a [`plan::Plan`], collecting the failures into one error.
struct Apply<'a> {
    ctx: &'a Context,
    pool: &'a SandboxWarmPool,
    key: &'a str,
    api: Api<Sandbox>,
    errors: Vec<String>,
}

impl Apply<'_> {
    async fn run(
        mut self,
        plan: plan::Plan,
        tpl: Option<&SandboxTemplate>,
    ) -> Result<Action, Error> {
        let mut requeue = plan.requeue;
        for (sb, pool_owned) in &plan.delete_stale {
            self.delete_member(sb, *pool_owned, "stale").await;
        }
        for updated in plan.relabel {
            if let Err(e) = self
                .api
                .replace(&updated.name_any(), &PostParams::default(), &updated)
                .await
            {
                self.errors.push(format!(
                    "failed to update sandbox {:?}: {e}",
                    updated.name_any()
                ));
            }
        }
        for sb in &plan.delete_stuck {
            self.delete_member(sb, true, "stuck").await;
        }
        if let (n @ 1.., Some(tpl)) = (plan.create, tpl) {
            if self.ctx.expectations.try_expect_creations(
                self.key,
                i64::try_from(n).unwrap_or(i64::MAX),
                Instant::now(),
            ) {
                self.create(n, tpl).await;
            } else {
                plan::min_requeue(&mut requeue, EXPECTATIONS_RECHECK);
            }
        }
        if !plan.scale_down.is_empty() {
            if self.ctx.expectations.satisfied(self.key, Instant::now()) {
                self.scale_down(&plan.scale_down).await;
            } else {
                plan::min_requeue(&mut requeue, EXPECTATIONS_RECHECK);
            }
        }
        if plan.unschedulable > 0 {
            plan::min_requeue(
                &mut requeue,
                self.ctx.config.warm_pool_unschedulable_recheck,
            );
        }
        if let Some(stopped) = plan.not_progressing {
            self.publish_progress(stopped, plan.unschedulable, plan.desired)
                .await;
        }
        self.write_status(&plan.status).await;
        if !self.errors.is_empty() {
            return Err(Error::Pool {
                namespace: self.pool.namespace().unwrap_or_default(),
                name: self.pool.name_any(),
                errors: self.errors,
            });
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue))
    }

    /// Deletes a member as the plan saw it; a pool-owned one is expected to go.
    async fn delete_member(&mut self, sb: &Sandbox, pool_owned: bool, why: &str) {
        let uid = sb.uid().unwrap_or_default();
        if pool_owned {
            self.ctx
                .expectations
                .expect_deletion(self.key, &uid, Instant::now());
        }
        if let Err(e) = self
            .api
            .delete(&sb.name_any(), &member_delete_params(sb))
            .await
        {
            self.ctx.expectations.deletion_observed(self.key, &uid);
            if !member_changed(&e) {
                self.errors.push(format!(
                    "failed to delete {why} sandbox {:?}: {e}",
                    sb.name_any()
                ));
            }
        }
    }

    /// Creates `n` members in slow-start batches; a failed batch stops the rest.
    async fn create(&mut self, n: usize, tpl: &SandboxTemplate) {
        let sandbox =
            logic::build_pool_sandbox(self.pool, tpl, self.ctx.config.enable_warm_pool_eviction);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let mut done = 0usize;
        for batch in logic::slow_start_batches(n) {
            let results = join_all((0..batch).map(|_| self.api.create(&pp, &sandbox))).await;
            let failed: Vec<String> = results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| e.to_string())
                .collect();
            done += batch;
            if let Some(first) = failed.first() {
                let not_created = failed.len() + (n - done);
                self.ctx
                    .expectations
                    .lower_creations(self.key, i64::try_from(not_created).unwrap_or(i64::MAX));
                self.errors
                    .push(format!("failed to create pool sandbox: {first}"));
                return;
            }
        }
    }

    /// Deletes the excess members in slow-start batches; a failed batch stops the rest.
    async fn scale_down(&mut self, victims: &[Arc<Sandbox>]) {
        let mut rest = victims;
        for batch in logic::slow_start_batches(victims.len()) {
            let (chunk, after) = rest.split_at(batch);
            rest = after;
            for sb in chunk {
                self.ctx.expectations.expect_deletion(
                    self.key,
                    &sb.uid().unwrap_or_default(),
                    Instant::now(),
                );
            }
            let params: Vec<DeleteParams> =
                chunk.iter().map(|sb| member_delete_params(sb)).collect();
            let results = join_all(chunk.iter().zip(&params).map(|(sb, dp)| {
                self.api
                    .delete(sb.metadata.name.as_deref().unwrap_or(""), dp)
            }))
            .await;
            let mut failed = false;
            for (sb, r) in chunk.iter().zip(results) {
                if let Err(e) = r {
                    self.ctx
                        .expectations
                        .deletion_observed(self.key, &sb.uid().unwrap_or_default());
                    if !member_changed(&e) {
                        self.errors.push(format!(
                            "failed to delete excess sandbox {:?}: {e}",
                            sb.name_any()
                        ));
                        failed = true;
                    }
                }
            }
            if failed {
                return;
            }
        }
    }

    /// Publishes the pool's progress turning (`WarmPoolNotProgressing` / `WarmPoolProgressing`).
    async fn publish_progress(&self, stopped: bool, unschedulable: usize, desired: usize) {
        self.ctx
            .pools_not_progressing
            .lock()
            .insert(self.key.to_owned(), stopped);
        let (type_, reason, note) = if stopped {
            (
                EventType::Warning,
                "WarmPoolNotProgressing",
                format!(
                    "{unschedulable}/{desired} sandboxes are unschedulable past the {} readiness grace period; holding them instead of replacing (replacements would be equally unschedulable)",
                    go_duration(self.ctx.config.warm_pool_readiness_grace)
                ),
            )
        } else {
            (
                EventType::Normal,
                "WarmPoolProgressing",
                "Warm pool is progressing again".to_owned(),
            )
        };
        self.ctx
            .publish(
                &self.ctx.recorders.pool,
                self.pool,
                type_,
                reason,
                "Reconciling",
                note,
            )
            .await;
    }

    /// Merge-patches the status fields that changed.
    async fn write_status(&mut self, status: &SandboxWarmPoolStatus) {
        let old = self.pool.status.clone().unwrap_or_default();
        if &old == status {
            return;
        }
        let old_v = serde_json::to_value(&old).unwrap_or(Value::Null);
        let new_v = serde_json::to_value(status).unwrap_or(Value::Null);
        let Some(diff) = merge_diff(&old_v, &new_v) else {
            return;
        };
        let api: Api<SandboxWarmPool> = Api::namespaced(
            self.ctx.client.clone(),
            &self.pool.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &self.pool.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": diff })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => self.errors.push(format!("failed to update status: {e}")),
        }
    }
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
}
