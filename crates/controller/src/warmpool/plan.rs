//! The warm pool's plan: every write one reconcile of a SandboxWarmPool makes, computed from the
//! cached members, the template, the expectations' view and the clock, without I/O. The
//! reconciler ([`super::reconcile`]) applies it.
//!
//! The plan counts each of its writes as done: a stale or stuck member it deletes is
//! terminating, an orphan it relabels is a member. A write that fails brings the pool back (an
//! error requeues it, a member that changed meanwhile sends its own event), and that reconcile
//! plans from the converged view.

use std::sync::Arc;
use std::time::Duration;

use agent_sandbox_api::constants::{labels, launch_type};
use agent_sandbox_api::v1beta1::{
    Sandbox, SandboxTemplate, SandboxWarmPool, SandboxWarmPoolStatus, UpdateStrategyType,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::logic::{self, StaleChecker};
use crate::meta::{controller_of, controller_ref, label};

/// What the plan reads besides the pool itself.
pub struct Inputs<'a> {
    /// The pool's members from the cache (every Sandbox carrying the pool's label).
    pub members: Vec<Arc<Sandbox>>,
    /// The pool's template, when the cache has it.
    pub template: Option<&'a SandboxTemplate>,
    /// Whether the expectations still wait for the deletion of this member uid.
    pub pending_deletion: &'a dyn Fn(&str) -> bool,
    /// Whether this member's Pod is unschedulable.
    pub unschedulable: &'a dyn Fn(&Sandbox) -> bool,
    /// How long an unready member may take to become Ready before it is replaced.
    pub readiness_grace: Duration,
    /// The most creates or deletes of one reconcile.
    pub max_batch: usize,
    /// Whether the pool reported itself not progressing at its last reconcile.
    pub was_not_progressing: bool,
    /// The clock.
    pub now: Time,
}

/// The writes of one reconcile, in the order they are applied.
#[derive(Debug, Default)]
pub struct Plan {
    /// Members to delete because they no longer match the template, with whether the pool
    /// owns them (owned ones are expected to go).
    pub delete_stale: Vec<(Arc<Sandbox>, bool)>,
    /// Members to update: the launch-type label, and the pool's controller reference on an
    /// orphan. Each is the full object to write.
    pub relabel: Vec<Sandbox>,
    /// Unready members past the readiness grace, to replace.
    pub delete_stuck: Vec<Arc<Sandbox>>,
    /// Sandboxes to create from the template (gated by the expectations when applied).
    pub create: usize,
    /// Excess members to delete, in order (gated by the expectations when applied).
    pub scale_down: Vec<Arc<Sandbox>>,
    /// The progress signal to publish: `Some(true)` when the pool stops progressing,
    /// `Some(false)` when it progresses again.
    pub not_progressing: Option<bool>,
    /// Members holding an unschedulable Pod past the grace period.
    pub unschedulable: usize,
    /// `spec.replicas`.
    pub desired: usize,
    /// The status the pool should show.
    pub status: SandboxWarmPoolStatus,
    /// When to look again (a member's readiness grace ending, an unschedulable recheck is added
    /// by the caller).
    pub requeue: Option<Duration>,
}

/// Keeps the smallest non-zero requeue.
pub fn min_requeue(cur: &mut Option<Duration>, d: Duration) {
    if d.is_zero() {
        return;
    }
    *cur = Some(cur.map_or(d, |c| c.min(d)));
}

/// A deterministic jitter in [0, 1) derived from a name, so requeues of many members spread out.
pub fn jitter_fraction(name: &str) -> f64 {
    f64::from(agent_sandbox_api::hash::fnv1a32(name) % 1000) / 1000.0
}

/// Plans one reconcile of `pool` (upstream-core §8): classify the members (adopted elsewhere,
/// terminating, stale, orphaned, stuck), then size the pool to `spec.replicas`.
pub fn plan(pool: &SandboxWarmPool, input: Inputs<'_>) -> Plan {
    let pool_uid = pool.uid().unwrap_or_default();
    let strategy = pool.spec.update_strategy_type();
    let mut checker = input.template.map(StaleChecker::new);
    let mut out = Plan::default();
    let mut terminating = 0usize;
    let mut active: Vec<Arc<Sandbox>> = Vec::new();

    for sb in input.members {
        let ctrl = controller_of(&sb.metadata);
        let pool_owned = ctrl.is_some_and(|r| r.uid == pool_uid);
        if sb.metadata.deletion_timestamp.is_some() {
            terminating += usize::from(pool_owned);
            continue;
        }
        if pool_owned && (input.pending_deletion)(&sb.uid().unwrap_or_default()) {
            terminating += 1;
            continue;
        }
        if ctrl.is_some() && !pool_owned {
            // Adopted by a claim (or owned by someone else): not a member any more.
            continue;
        }
        let orphan = ctrl.is_none();
        if let Some(c) = checker.as_mut()
            && (strategy == UpdateStrategyType::Recreate || orphan)
            && c.is_stale(&sb, orphan)
        {
            terminating += usize::from(pool_owned);
            out.delete_stale.push((sb, pool_owned));
            continue;
        }
        if orphan || label(&sb.metadata, labels::LAUNCH_TYPE) != Some(launch_type::WARM) {
            let mut updated = (*sb).clone();
            updated
                .labels_mut()
                .insert(labels::LAUNCH_TYPE.into(), launch_type::WARM.into());
            if orphan {
                updated
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(controller_ref(pool));
            }
            updated.metadata.managed_fields = None;
            out.relabel.push(updated);
        }
        active.push(sb);
    }

    // Readiness grace: replace members stuck unready, except unschedulable ones.
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
            .and_then(|c| Duration::try_from(input.now.0.duration_since(c.0)).ok())
            .unwrap_or(Duration::ZERO);
        if age <= input.readiness_grace {
            let base = input.readiness_grace - age + Duration::from_secs(2);
            let jitter = base.mul_f64(jitter_fraction(&sb.name_any()) * 0.5);
            min_requeue(&mut out.requeue, base + jitter);
            kept.push(sb);
        } else if (input.unschedulable)(&sb) {
            out.unschedulable += 1;
            kept.push(sb);
        } else {
            terminating += 1;
            out.delete_stuck.push(sb);
        }
    }
    let active = kept;

    out.desired = usize::try_from(pool.spec.replicas().max(0)).unwrap_or(0);
    let current = active.len();
    out.status = SandboxWarmPoolStatus {
        replicas: i32::try_from(current).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(active.iter().filter(|s| logic::is_ready(s)).count())
            .unwrap_or(i32::MAX),
        selector: logic::pool_selector(&pool.name_any()),
        observed_generation: pool.metadata.generation.unwrap_or(0),
    };
    if current + terminating < out.desired && input.template.is_some() {
        out.create = (out.desired - current - terminating).min(input.max_batch);
    }
    if current > out.desired {
        let mut order = active.clone();
        logic::scale_down_order(&mut order);
        out.scale_down = order
            .into_iter()
            .take((current - out.desired).min(input.max_batch))
            .collect();
    }
    out.not_progressing = match (out.unschedulable > 0, input.was_not_progressing) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
