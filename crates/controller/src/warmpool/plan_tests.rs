//! Decision tables of the warm pool's plan: membership, staleness, readiness grace, sizing and
//! the progress signal.

use super::*;
use agent_sandbox_api::v1beta1::{
    SandboxStatus, SandboxTemplateRef, SandboxTemplateSpec, SandboxWarmPoolSpec, UpdateStrategy,
};
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use k8s_openapi::jiff::Timestamp;

const NOW: i64 = 10_000;
const GRACE: Duration = Duration::from_secs(60);

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn template() -> SandboxTemplate {
    let mut t = SandboxTemplate::new("tpl", SandboxTemplateSpec::default());
    t.metadata.namespace = Some("ns".into());
    t.spec.pod_template.spec.containers = vec![Container {
        name: "c".into(),
        image: Some("pause".into()),
        ..Default::default()
    }];
    t
}

fn pool(replicas: i32) -> SandboxWarmPool {
    let mut p = SandboxWarmPool::new(
        "pool",
        SandboxWarmPoolSpec {
            template_ref: SandboxTemplateRef { name: "tpl".into() },
            replicas: Some(replicas),
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("ns".into());
    p.metadata.uid = Some("pool-uid".into());
    p.metadata.generation = Some(3);
    p
}

/// A member as the pool creates it (the pool its controller), `age` seconds old, Ready or not.
fn member(name: &str, age: i64, ready: bool) -> Arc<Sandbox> {
    let mut sb = logic::build_pool_sandbox(&pool(1), &template(), false);
    sb.metadata.name = Some(name.into());
    sb.metadata.uid = Some(format!("{name}-uid"));
    sb.metadata.creation_timestamp = Some(at(NOW - age));
    if ready {
        sb.status = Some(SandboxStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "DependenciesReady".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: at(NOW - age),
            }],
            ..Default::default()
        });
    }
    Arc::new(sb)
}

fn owned_by(sb: &Arc<Sandbox>, kind: &str, uid: &str) -> Arc<Sandbox> {
    let mut s = (**sb).clone();
    s.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "extensions.agents.x-k8s.io/v1beta1".into(),
        kind: kind.into(),
        name: "x".into(),
        uid: uid.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    Arc::new(s)
}

struct Case {
    pool: SandboxWarmPool,
    members: Vec<Arc<Sandbox>>,
    template: Option<SandboxTemplate>,
    pending: Vec<String>,
    unschedulable: Vec<String>,
    was_not_progressing: bool,
}

impl Case {
    fn new(replicas: i32, members: Vec<Arc<Sandbox>>) -> Self {
        Self {
            pool: pool(replicas),
            members,
            template: Some(template()),
            pending: vec![],
            unschedulable: vec![],
            was_not_progressing: false,
        }
    }

    fn plan(&self) -> Plan {
        plan(
            &self.pool,
            Inputs {
                members: self.members.clone(),
                template: self.template.as_ref(),
                pending_deletion: &|uid| self.pending.iter().any(|p| p == uid),
                unschedulable: &|sb| self.unschedulable.contains(&sb.name_any()),
                readiness_grace: GRACE,
                max_batch: 100,
                was_not_progressing: self.was_not_progressing,
                now: at(NOW),
            },
        )
    }
}

fn names(v: &[Arc<Sandbox>]) -> Vec<String> {
    v.iter().map(|s| s.name_any()).collect()
}

#[test]
fn fills_the_deficit_and_reports_the_members() {
    let p = Case::new(3, vec![member("a", 5, true)]).plan();
    assert_eq!(p.create, 2);
    assert_eq!(p.status.replicas, 1);
    assert_eq!(p.status.ready_replicas, 1);
    assert_eq!(p.status.observed_generation, 3);
    assert_eq!(p.status.selector, logic::pool_selector("pool"));
    assert!(p.relabel.is_empty() && p.delete_stale.is_empty() && p.scale_down.is_empty());
}

#[test]
fn creation_waits_for_the_template_and_is_bounded_by_the_batch() {
    let mut c = Case::new(3, vec![]);
    c.template = None;
    assert_eq!(c.plan().create, 0);
    let mut c = Case::new(500, vec![]);
    c.template = Some(template());
    assert_eq!(c.plan().create, 100);
}

#[test]
fn adopted_members_leave_and_terminating_ones_count_until_gone() {
    let adopted = owned_by(&member("a", 5, true), "SandboxClaim", "claim-uid");
    let mut deleting = (*member("b", 5, true)).clone();
    deleting.metadata.deletion_timestamp = Some(at(NOW));
    let expected_gone = member("c", 5, true);
    let mut c = Case::new(
        3,
        vec![
            adopted,
            Arc::new(deleting),
            expected_gone,
            member("d", 5, true),
        ],
    );
    c.pending = vec!["c-uid".into()];
    let p = c.plan();
    // a left the pool, b and c are on their way out and still hold their places.
    assert_eq!(p.status.replicas, 1);
    assert_eq!(p.create, 0);
}

#[test]
fn an_orphan_is_taken_in_with_the_pool_as_controller() {
    let mut orphan = (*member("a", 5, true)).clone();
    orphan.metadata.owner_references = None;
    let p = Case::new(1, vec![Arc::new(orphan)]).plan();
    let [updated] = p.relabel.as_slice() else {
        panic!("one relabel expected: {:?}", p.relabel)
    };
    let refs = updated
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    assert!(
        refs.iter()
            .any(|r| r.uid == "pool-uid" && r.controller == Some(true))
    );
    assert_eq!(label(&updated.metadata, labels::LAUNCH_TYPE), Some("warm"));
    assert_eq!(p.status.replicas, 1);
}

#[test]
fn a_member_without_the_launch_type_label_gets_it() {
    let mut sb = (*member("a", 5, true)).clone();
    sb.labels_mut().remove(labels::LAUNCH_TYPE);
    let p = Case::new(1, vec![Arc::new(sb)]).plan();
    assert_eq!(p.relabel.len(), 1);
    assert_eq!(
        p.relabel[0]
            .metadata
            .owner_references
            .as_ref()
            .map(Vec::len),
        Some(1),
        "an owned member keeps its one controller reference"
    );
}

#[test]
fn stale_members_go_under_recreate_and_stay_on_replenish() {
    let stale = |name: &str| {
        let mut sb = (*member(name, 5, true)).clone();
        sb.spec.pod_template.spec.containers[0].image = Some("old".into());
        sb.labels_mut()
            .insert(labels::SANDBOX_TEMPLATE_HASH.into(), "old-hash".into());
        Arc::new(sb)
    };
    let mut c = Case::new(1, vec![stale("a")]);
    c.pool.spec.update_strategy = Some(UpdateStrategy {
        type_: Some(UpdateStrategyType::Recreate),
    });
    let p = c.plan();
    assert_eq!(p.delete_stale.len(), 1);
    assert!(
        p.delete_stale[0].1,
        "the pool owns it, so it is expected to go"
    );
    assert_eq!(p.create, 0, "it holds its place until it is gone");
    assert_eq!(p.status.replicas, 0);

    let p = Case::new(1, vec![stale("a")]).plan();
    assert!(p.delete_stale.is_empty());
    assert_eq!(p.status.replicas, 1);
}

#[test]
fn unready_members_get_their_grace_then_are_replaced_unless_unschedulable() {
    let young = member("young", 10, false);
    let stuck = member("stuck", 120, false);
    let held = member("held", 120, false);
    let mut c = Case::new(3, vec![young, stuck, held]);
    c.unschedulable = vec!["held".into()];
    let p = c.plan();
    assert_eq!(names(&p.delete_stuck), ["stuck"]);
    assert_eq!(p.unschedulable, 1);
    assert_eq!(p.not_progressing, Some(true));
    assert_eq!(p.status.replicas, 2);
    assert_eq!(
        p.create, 0,
        "the stuck member holds its place while it terminates"
    );
    // The young member is looked at again when its grace ends (+2 s and some jitter).
    let r = p.requeue.expect("a requeue for the young member");
    assert!(
        r >= Duration::from_secs(52) && r <= Duration::from_secs(78),
        "{r:?}"
    );
}

#[test]
fn progress_turns_back_once_nothing_is_unschedulable() {
    let mut c = Case::new(1, vec![member("a", 5, true)]);
    c.was_not_progressing = true;
    assert_eq!(c.plan().not_progressing, Some(false));
    c.was_not_progressing = false;
    assert_eq!(c.plan().not_progressing, None);
}

#[test]
fn scale_down_takes_unready_then_newest() {
    let p = Case::new(
        1,
        vec![
            member("old-ready", 50, true),
            member("new-ready", 5, true),
            member("unready", 30, false),
        ],
    )
    .plan();
    assert_eq!(names(&p.scale_down), ["unready", "new-ready"]);
    assert_eq!(p.create, 0);
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
