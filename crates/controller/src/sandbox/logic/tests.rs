//! Decision tables of the Sandbox reconciler.

use super::*;
use agent_sandbox_api::v1beta1::{PersistentVolumeClaimTemplate, SandboxSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn pod(phase: &str, ready: bool, ips: &[&str]) -> Pod {
    Pod {
        status: Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                },
            ]),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn owned(p: &Pod) -> PodView<'_> {
    PodView {
        pod: Some(p),
        owned: true,
        pod_err: false,
    }
}

const NONE: PodView<'static> = PodView {
    pod: None,
    owned: false,
    pod_err: false,
};

fn input<'a>(
    ips: &'a [String],
    errors: &'a ChildErrors,
    svc: Option<bool>,
    exists: bool,
) -> ReadyInputs<'a> {
    ReadyInputs {
        mode: OperatingMode::Running,
        spec_service: svc,
        service_exists: exists,
        pod_ips: ips,
        errors,
        paused_annotation: None,
    }
}

fn triple(c: &NewCondition) -> (&str, &str, &str) {
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn suspended_table() {
    let p = pod("Running", true, &["10.0.0.1"]);
    let s = OperatingMode::Suspended;
    assert_eq!(
        triple(&suspended_condition(OperatingMode::Running, owned(&p))),
        ("False", "NotSuspended", "Sandbox is not suspended")
    );
    assert_eq!(
        triple(&suspended_condition(
            s,
            PodView {
                pod: None,
                owned: false,
                pod_err: true
            }
        )),
        (
            "Unknown",
            "PodStateUnknown",
            "Pod state is unknown. Sandbox suspension cannot be confirmed"
        )
    );
    assert_eq!(
        triple(&suspended_condition(s, NONE)),
        (
            "True",
            "PodTerminated",
            "Pod has been terminated. Sandbox is suspended"
        )
    );
    assert_eq!(
        triple(&suspended_condition(
            s,
            PodView {
                pod: Some(&p),
                owned: false,
                pod_err: false
            }
        )),
        (
            "False",
            "PodNotOwned",
            "Refused to delete pod because it is not owned by this sandbox"
        )
    );
    assert_eq!(
        triple(&suspended_condition(s, owned(&p))),
        (
            "False",
            "PodTerminating",
            "Pod is terminating. Sandbox is suspending"
        )
    );
}

#[test]
fn pod_scheduled_table() {
    assert!(pod_scheduled_condition(NONE).is_none());
    let err = pod_scheduled_condition(PodView {
        pod: None,
        owned: false,
        pod_err: true,
    })
    .unwrap();
    assert_eq!(
        triple(&err),
        (
            "Unknown",
            "PodSchedulingUnknown",
            "Pod state is unknown. Pod scheduling cannot be determined"
        )
    );
    let p = pod("Running", true, &[]);
    assert!(
        pod_scheduled_condition(PodView {
            pod: Some(&p),
            owned: false,
            pod_err: false
        })
        .is_none()
    );
    assert_eq!(
        triple(&pod_scheduled_condition(owned(&p)).unwrap()),
        ("True", "PodScheduled", "")
    );
    let mut unsched = p.clone();
    unsched.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some("0/1 nodes".into()),
        ..Default::default()
    }]);
    assert_eq!(
        triple(&pod_scheduled_condition(owned(&unsched)).unwrap()),
        ("False", "Unschedulable", "0/1 nodes")
    );
    unsched
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .reason = None;
    assert_eq!(
        pod_scheduled_condition(owned(&unsched)).unwrap().reason,
        "PodSchedulingUnknown"
    );
    unsched.status.as_mut().unwrap().conditions = None;
    assert_eq!(
        triple(&pod_scheduled_condition(owned(&unsched)).unwrap()),
        (
            "Unknown",
            "PodSchedulingUnknown",
            "Pod has not reported a PodScheduled condition yet"
        )
    );
}

#[test]
fn finished_table() {
    let ok = pod("Succeeded", false, &[]);
    let bad = pod("Failed", false, &[]);
    let run = pod("Running", true, &[]);
    assert_eq!(
        triple(&finished_condition(owned(&ok)).unwrap()),
        ("True", "PodSucceeded", "Pod completed successfully")
    );
    assert_eq!(
        triple(&finished_condition(owned(&bad)).unwrap()),
        ("True", "PodFailed", "Pod failed")
    );
    assert!(finished_condition(owned(&run)).is_none());
    assert!(
        finished_condition(PodView {
            pod: Some(&ok),
            owned: false,
            pod_err: false
        })
        .is_none()
    );
}

#[test]
fn ready_table() {
    let none = ChildErrors::default();
    let ips = vec!["10.0.0.1".to_string()];
    let p = pod("Running", true, &["10.0.0.1"]);
    let c = ready_condition(owned(&p), input(&ips, &none, Some(true), true));
    assert_eq!(
        triple(&c),
        ("True", "DependenciesReady", "Pod is Ready; Service Exists")
    );
    let c = ready_condition(owned(&p), input(&ips, &none, Some(true), false));
    assert_eq!(
        triple(&c),
        (
            "False",
            "DependenciesNotReady",
            "Pod is Ready; Service does not exist"
        )
    );
    let c = ready_condition(owned(&p), input(&ips, &none, None, false));
    assert_eq!(triple(&c), ("True", "DependenciesReady", "Pod is Ready"));
    let c = ready_condition(owned(&p), input(&ips, &none, None, true));
    assert_eq!(
        triple(&c),
        ("True", "DependenciesReady", "Pod is Ready; Service Exists")
    );
    let c = ready_condition(owned(&p), input(&[], &none, Some(false), false));
    assert_eq!(
        triple(&c),
        (
            "False",
            "DependenciesNotReady",
            "Pod is Ready but has no podIPs yet"
        )
    );
    let nr = pod("Running", false, &[]);
    let c = ready_condition(owned(&nr), input(&[], &none, None, false));
    assert_eq!(
        triple(&c),
        (
            "False",
            "DependenciesNotReady",
            "Pod is Running but not Ready"
        )
    );
    let pending = pod("Pending", false, &[]);
    let c = ready_condition(owned(&pending), input(&[], &none, None, false));
    assert_eq!(c.message, "Pod exists with phase: Pending");
    let mut empty = pending.clone();
    empty.status = None;
    assert_eq!(
        ready_condition(owned(&empty), input(&[], &none, None, false)).message,
        "Pod exists with phase: "
    );
    let c = ready_condition(NONE, input(&[], &none, Some(true), false));
    assert_eq!(
        triple(&c),
        (
            "False",
            "DependenciesNotReady",
            "Pod does not exist; Service does not exist"
        )
    );
    let ok = pod("Succeeded", false, &[]);
    assert_eq!(
        triple(&ready_condition(owned(&ok), input(&[], &none, None, false))),
        ("False", "PodSucceeded", "Pod completed successfully")
    );
    let failed = pod("Failed", false, &[]);
    assert_eq!(
        ready_condition(owned(&failed), input(&[], &none, None, false)).reason,
        "PodFailed"
    );
}

#[test]
fn ready_errors_and_suspension_take_precedence() {
    let p = pod("Running", true, &["1.2.3.4"]);
    let errs = ChildErrors {
        multiple_pods: None,
        others: vec!["a".into(), "b".into()],
    };
    let c = ready_condition(owned(&p), input(&[], &errs, None, false));
    assert_eq!(triple(&c), ("False", "ReconcilerError", "Error seen: a\nb"));
    let errs = ChildErrors {
        multiple_pods: Some("multiple Pods (2)".into()),
        others: vec!["x".into()],
    };
    let c = ready_condition(owned(&p), input(&[], &errs, None, false));
    assert_eq!(triple(&c), ("False", "MultiplePods", "multiple Pods (2)"));
    let none = ChildErrors::default();
    let mut i = input(&[], &none, None, false);
    i.mode = OperatingMode::Suspended;
    assert_eq!(
        triple(&ready_condition(owned(&p), i)),
        ("False", "SandboxSuspended", "Sandbox is suspending")
    );
    assert_eq!(
        triple(&ready_condition(NONE, i)),
        ("False", "SandboxSuspended", "Sandbox is suspended")
    );
}

#[test]
fn apply_conditions_orders_and_removes() {
    let none = ChildErrors::default();
    let ips = vec!["1.1.1.1".to_string()];
    let p = pod("Running", true, &["1.1.1.1"]);
    let mut st = SandboxStatus::default();
    apply_conditions(
        &mut st,
        Some(1),
        owned(&p),
        input(&ips, &none, None, false),
        &at(10),
    );
    let types: Vec<_> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Suspended", "PodScheduled", "Ready"]);
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    // Suspend with the pod gone: PodScheduled removed, Suspended flips (LTT advances).
    let mut i = input(&[], &none, None, false);
    i.mode = OperatingMode::Suspended;
    apply_conditions(&mut st, Some(2), NONE, i, &at(20));
    let types: Vec<_> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Suspended", "Ready"]);
    assert_eq!(st.conditions[0].last_transition_time, at(20));
    // Finished appears for a succeeded pod.
    let ok = pod("Succeeded", false, &[]);
    apply_conditions(
        &mut st,
        Some(2),
        owned(&ok),
        input(&[], &none, None, false),
        &at(30),
    );
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Finished" && c.reason == "PodSucceeded")
    );
}

#[test]
fn suspended_ltt_unchanged_false_to_false() {
    let none = ChildErrors::default();
    let p = pod("Running", true, &["1.1.1.1"]);
    let mut st = SandboxStatus::default();
    apply_conditions(
        &mut st,
        Some(1),
        owned(&p),
        input(&[], &none, None, false),
        &at(10),
    );
    let mut i = input(&[], &none, None, false);
    i.mode = OperatingMode::Suspended;
    apply_conditions(&mut st, Some(2), owned(&p), i, &at(20));
    let s = &st.conditions[0];
    assert_eq!(
        (s.reason.as_str(), s.last_transition_time.clone()),
        ("PodTerminating", at(10))
    );
}

#[test]
fn expiry_rules() {
    assert!(!is_expired(None, &at(5)));
    assert!(is_expired(Some(&at(5)), &at(5)));
    assert!(!is_expired(Some(&at(6)), &at(5)));
    assert_eq!(
        requeue_until_shutdown(Some(&at(100)), &at(10)),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        requeue_until_shutdown(Some(&at(11)), &at(10)),
        Some(Duration::from_secs(2))
    );
    assert_eq!(requeue_until_shutdown(None, &at(10)), None);

    let mut st = SandboxStatus {
        service: "s".into(),
        service_fqdn: "s.ns.svc.cluster.local".into(),
        label_selector: "x".into(),
        pod_ips: vec!["1.1.1.1".into()],
        node_name: "n".into(),
        ..Default::default()
    };
    let none = ChildErrors::default();
    let ok = pod("Succeeded", false, &[]);
    apply_conditions(
        &mut st,
        Some(1),
        owned(&ok),
        input(&[], &none, None, true),
        &at(1),
    );
    assert!(!is_marked_expired(Some(&st)));
    mark_expired(&mut st, Some(2), &at(2));
    assert!(is_marked_expired(Some(&st)));
    assert!(!st.conditions.iter().any(|c| c.type_ == "PodScheduled"));
    let r = retained_expiry_status(&st, Some(2), &at(3));
    assert_eq!(
        (
            r.service.as_str(),
            r.service_fqdn.as_str(),
            r.label_selector.as_str()
        ),
        ("", "", "")
    );
    assert!(r.pod_ips.is_empty() && r.node_name.is_empty());
    assert!(
        r.conditions
            .iter()
            .any(|c| c.type_ == "Finished" && c.reason == "PodSucceeded")
    );
    let ready = r.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("SandboxExpired", "Sandbox has expired")
    );
}

#[test]
fn status_write_rules() {
    let none = ChildErrors::default();
    let p = pod("Running", false, &[]);
    let mut old = SandboxStatus::default();
    apply_conditions(
        &mut old,
        Some(1),
        owned(&p),
        input(&[], &none, None, false),
        &at(1),
    );
    let same = old.clone();
    assert!(!should_write_status(&old, &same));
    let mut node_only = old.clone();
    node_only.node_name = "node-a".into();
    assert!(
        !should_write_status(&old, &node_only),
        "nodeName alone rides along while not Ready"
    );
    let mut ips = node_only.clone();
    ips.pod_ips = vec!["1.1.1.1".into()];
    assert!(should_write_status(&old, &ips));
    // Ready=True: a nodeName-only change is written.
    let rp = pod("Running", true, &["1.1.1.1"]);
    let ipv = vec!["1.1.1.1".to_string()];
    let mut ready = SandboxStatus {
        pod_ips: ipv.clone(),
        ..Default::default()
    };
    apply_conditions(
        &mut ready,
        Some(1),
        owned(&rp),
        input(&ipv, &none, None, false),
        &at(1),
    );
    let mut ready_node = ready.clone();
    ready_node.node_name = "node-a".into();
    assert!(should_write_status(&ready, &ready_node));
}

fn cport(port: i32, proto: Option<&str>, name: Option<&str>) -> ContainerPort {
    ContainerPort {
        container_port: port,
        protocol: proto.map(String::from),
        name: name.map(String::from),
        ..Default::default()
    }
}

fn names(ports: &[ServicePort]) -> Vec<(String, i32, String)> {
    ports
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap()))
        .collect()
}

#[test]
fn service_ports_table() {
    let spec = PodSpec {
        containers: vec![
            Container {
                name: "a".into(),
                ports: Some(vec![
                    cport(8080, None, None),
                    cport(53, Some("UDP"), Some("dns")),
                    cport(0, None, Some("zero")),
                    cport(8080, Some("TCP"), Some("http")),
                ]),
                ..Default::default()
            },
            Container {
                name: "b".into(),
                ports: Some(vec![
                    cport(53, Some("TCP"), Some("dns")),
                    cport(9000, None, Some("p-22-tcp")),
                ]),
                ..Default::default()
            },
        ],
        init_containers: Some(vec![
            Container {
                name: "sidecar".into(),
                restart_policy: Some("Always".into()),
                ports: Some(vec![cport(22, None, None)]),
                ..Default::default()
            },
            Container {
                name: "init".into(),
                ports: Some(vec![cport(7777, None, None)]),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let ports = service_ports(&spec).unwrap();
    assert_eq!(
        names(&ports),
        vec![
            ("p-22-tcp-2".to_string(), 22, "TCP".to_string()),
            ("p-53-tcp".into(), 53, "TCP".into()),
            ("dns".into(), 53, "UDP".into()),
            ("http".into(), 8080, "TCP".into()),
            ("p-22-tcp".into(), 9000, "TCP".into()),
        ]
    );
    assert!(
        ports
            .iter()
            .all(|p| p.target_port == Some(IntOrString::Int(p.port)))
    );
    assert!(service_ports(&PodSpec::default()).is_none());
}

fn sandbox_with(labels_: &[(&str, &str)], annos: &[(&str, &str)]) -> Sandbox {
    let mut sb = Sandbox::new("sb", SandboxSpec::default());
    sb.spec.pod_template.metadata.labels = labels_
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sb.spec.pod_template.metadata.annotations = annos
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sb
}

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pool_owned(sb: &mut Sandbox, kind: &str) {
    sb.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "extensions.agents.x-k8s.io/v1beta1".into(),
        kind: kind.into(),
        name: "owner".into(),
        uid: "u1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
}

#[test]
fn new_pod_metadata_filters_system_keys() {
    let mut sb = sandbox_with(
        &[
            ("team", "a"),
            (labels::SANDBOX_NAME_HASH, "forged"),
            (labels::WARM_POOL_SANDBOX, "x"),
        ],
        &[
            ("note", "n"),
            (annotations::TRACE_CONTEXT, "{}"),
            ("agents.x-k8s.io/x", "y"),
        ],
    );
    sb.metadata.labels = Some(map(&[
        (labels::WARM_POOL_SANDBOX, "poolhash"),
        (labels::SANDBOX_TEMPLATE_REF_HASH, "tplhash"),
        (labels::CREATED_BY, "kubectl"),
    ]));
    let (l, a) = new_pod_metadata(&sb);
    assert_eq!(
        l,
        map(&[
            ("team", "a"),
            (labels::SANDBOX_NAME_HASH, &name_hash("sb")),
            (labels::CREATED_BY, "unknown")
        ])
    );
    assert_eq!(
        a,
        map(&[
            ("note", "n"),
            (annotations::PROPAGATED_LABELS, "team"),
            (annotations::PROPAGATED_ANNOTATIONS, "note")
        ])
    );
    pool_owned(&mut sb, "SandboxWarmPool");
    let (l, _) = new_pod_metadata(&sb);
    assert_eq!(
        l.get(labels::WARM_POOL_SANDBOX).map(String::as_str),
        Some("poolhash")
    );
    assert_eq!(
        l.get(labels::SANDBOX_TEMPLATE_REF_HASH).map(String::as_str),
        Some("tplhash")
    );
    pool_owned(&mut sb, "SandboxClaim");
    let (l, _) = new_pod_metadata(&sb);
    assert!(!l.contains_key(labels::WARM_POOL_SANDBOX));
    assert_eq!(
        l.get(labels::SANDBOX_TEMPLATE_REF_HASH).map(String::as_str),
        Some("tplhash")
    );
    // Without labels or annotations in the template, no tracking annotations.
    let bare = sandbox_with(&[], &[]);
    let (_, a) = new_pod_metadata(&bare);
    assert!(a.is_empty());
}

#[test]
fn propagation_updates_prunes_and_scrubs() {
    let mut sb = sandbox_with(&[("team", "b"), ("new", "1")], &[("note", "n2")]);
    sb.metadata.labels = Some(map(&[(labels::SANDBOX_TEMPLATE_REF_HASH, "tplhash")]));
    pool_owned(&mut sb, "SandboxClaim");
    let pod_labels = map(&[
        ("team", "a"),
        ("old", "x"),
        ("webhook", "keep"),
        (labels::WARM_POOL_SANDBOX, "poolhash"),
        ("agents.x-k8s.io/forged", "1"),
        (labels::CREATED_BY, "controller"),
    ]);
    let pod_annos = map(&[
        ("note", "n1"),
        ("gone", "g"),
        ("istio", "keep"),
        (annotations::SAFE_TO_EVICT, "true"),
        (
            annotations::PROPAGATED_LABELS,
            "agents.x-k8s.io/forged,old,team",
        ),
        (
            annotations::PROPAGATED_ANNOTATIONS,
            "cluster-autoscaler.kubernetes.io/safe-to-evict,gone,note",
        ),
    ]);
    let (l, a) = propagate_pod_metadata(&sb, &pod_labels, &pod_annos);
    assert_eq!(
        l,
        map(&[
            ("team", "b"),
            ("new", "1"),
            ("webhook", "keep"),
            (labels::SANDBOX_NAME_HASH, &name_hash("sb")),
            (labels::SANDBOX_TEMPLATE_REF_HASH, "tplhash"),
        ])
    );
    assert_eq!(
        a,
        map(&[
            ("note", "n2"),
            ("istio", "keep"),
            (annotations::PROPAGATED_LABELS, "new,team"),
            (annotations::PROPAGATED_ANNOTATIONS, "note"),
        ])
    );
    // Idempotent: a second pass changes nothing.
    let (l2, a2) = propagate_pod_metadata(&sb, &l, &a);
    assert_eq!((l2, a2), (l, a));
}

#[test]
fn empty_tracking_lists_cause_no_write() {
    let sb = sandbox_with(&[], &[]);
    let pod_labels = map(&[(labels::SANDBOX_NAME_HASH, &name_hash("sb"))]);
    let (l, a) = propagate_pod_metadata(&sb, &pod_labels, &BTreeMap::new());
    assert_eq!(l, pod_labels);
    assert!(a.is_empty());
}

#[test]
fn vct_volumes_replace_template_volumes() {
    let mut sb = sandbox_with(&[], &[]);
    sb.spec.pod_template.spec.volumes = Some(vec![
        Volume {
            name: "data".into(),
            ..Default::default()
        },
        Volume {
            name: "cache".into(),
            ..Default::default()
        },
    ]);
    let mut vct = PersistentVolumeClaimTemplate::default();
    vct.metadata.name = "data".into();
    let mut vct2 = PersistentVolumeClaimTemplate::default();
    vct2.metadata.name = "logs".into();
    sb.spec.volume_claim_templates = vec![vct, vct2];
    let spec = new_pod_spec(&sb);
    let vols = spec.volumes.unwrap();
    let summary: Vec<_> = vols
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.persistent_volume_claim
                    .as_ref()
                    .map(|p| p.claim_name.as_str()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("cache", None),
            ("data", Some("data-sb")),
            ("logs", Some("logs-sb"))
        ]
    );
}

#[test]
fn pod_status_fields() {
    let p = pod("Running", true, &["10.1.1.1", "fd00::1"]);
    let mut st = SandboxStatus::default();
    apply_pod_to_status(&mut st, "sb", owned(&p));
    assert_eq!(
        st.label_selector,
        format!("agents.x-k8s.io/sandbox-name-hash={}", name_hash("sb"))
    );
    assert_eq!(st.pod_ips, ["10.1.1.1", "fd00::1"]);
    apply_pod_to_status(
        &mut st,
        "sb",
        PodView {
            pod: Some(&p),
            owned: false,
            pod_err: false,
        },
    );
    assert!(st.pod_ips.is_empty());
    apply_pod_to_status(&mut st, "sb", NONE);
    assert!(!st.label_selector.is_empty(), "the selector is sticky");
}

fn with_pod_paused(mut p: Pod, status_: &str, reason: &str, message: &str) -> Pod {
    p.status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(PodCondition {
            type_: ext::condition_types::POD_PAUSED.into(),
            status: status_.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        });
    p
}

#[test]
fn paused_condition_table() {
    let running = pod("Running", true, &["10.0.0.1"]);
    let frozen = with_pod_paused(running.clone(), "True", ext::pod_reasons::PAUSED, "frozen");
    let thawed = with_pod_paused(running.clone(), "False", ext::pod_reasons::RUNNING, "runs");
    let failed = with_pod_paused(
        running.clone(),
        "False",
        ext::pod_reasons::PAUSE_FAILED,
        "pausing pod ns/sb failed: boom",
    );
    let done = pod("Succeeded", false, &[]);
    let run = OperatingMode::Running;
    let yes = Some("true");
    let t = |c: Option<NewCondition>| c.map(|c| (c.status, c.reason, c.message));
    let row = |st: &str, r: &str, m: &str| Some((st.to_string(), r.to_string(), m.to_string()));

    // Never asked: absent, so upstream's status is unchanged.
    assert_eq!(t(paused_condition(run, owned(&running), None, false)), None);
    // Asked, not frozen yet; frozen.
    assert_eq!(
        t(paused_condition(run, owned(&running), yes, false)),
        row(
            "False",
            ext::reasons::SANDBOX_PAUSING,
            ext::messages::SANDBOX_PAUSING
        )
    );
    assert_eq!(
        t(paused_condition(run, owned(&frozen), yes, true)),
        row(
            "True",
            ext::reasons::SANDBOX_PAUSED,
            "Sandbox is paused: its processes are frozen and keep their memory"
        )
    );
    // Unpause asked, the node has not thawed yet: still True.
    assert_eq!(
        t(paused_condition(run, owned(&frozen), None, true)),
        row(
            "True",
            ext::reasons::SANDBOX_UNPAUSING,
            ext::messages::SANDBOX_UNPAUSING
        )
    );
    // Thawed: False, and it stays present.
    assert_eq!(
        t(paused_condition(run, owned(&thawed), None, true)),
        row(
            "False",
            ext::reasons::SANDBOX_RUNNING,
            ext::messages::SANDBOX_RUNNING
        )
    );
    assert_eq!(
        t(paused_condition(run, owned(&running), None, true)),
        row(
            "False",
            ext::reasons::SANDBOX_RUNNING,
            ext::messages::SANDBOX_RUNNING
        )
    );
    // A value other than "true" means running, and says so.
    let (st, reason, msg) = paused_condition(run, owned(&running), Some("yes"), false)
        .map(|c| (c.status, c.reason, c.message))
        .unwrap();
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", ext::reasons::SANDBOX_RUNNING)
    );
    assert!(
        msg.contains("\"yes\"") && msg.contains("only \"true\" pauses"),
        "{msg}"
    );
    // No Pod to pause: suspended, not created, finished, or a Pod of someone else.
    assert_eq!(
        t(paused_condition(OperatingMode::Suspended, NONE, yes, false)),
        row(
            "False",
            ext::reasons::NO_POD_TO_PAUSE,
            ext::messages::SUSPENDED_NO_POD
        )
    );
    assert_eq!(
        t(paused_condition(run, NONE, yes, false)),
        row(
            "False",
            ext::reasons::NO_POD_TO_PAUSE,
            ext::messages::NO_POD
        )
    );
    let foreign = PodView {
        pod: Some(&frozen),
        owned: false,
        pod_err: false,
    };
    assert_eq!(
        t(paused_condition(run, foreign, yes, false)),
        row(
            "False",
            ext::reasons::NO_POD_TO_PAUSE,
            ext::messages::NO_POD
        )
    );
    assert_eq!(
        t(paused_condition(run, owned(&done), yes, false)),
        row(
            "False",
            ext::reasons::NO_POD_TO_PAUSE,
            "Sandbox has nothing to pause: its Pod has finished with phase Succeeded"
        )
    );
    // The node's failure is passed on.
    assert_eq!(
        t(paused_condition(run, owned(&failed), yes, false)),
        row(
            "False",
            ext::reasons::PAUSE_FAILED,
            "pausing pod ns/sb failed: boom"
        )
    );
}

#[test]
fn a_frozen_pod_makes_ready_false_and_apply_keeps_paused() {
    let running = pod("Running", true, &["10.0.0.1"]);
    let frozen = with_pod_paused(running.clone(), "True", ext::pod_reasons::PAUSED, "frozen");
    let ips = vec!["10.0.0.1".to_string()];
    let errors = ChildErrors::default();
    let mut inp = input(&ips, &errors, None, false);
    assert_eq!(
        triple(&ready_condition(owned(&frozen), inp)),
        (
            "False",
            ext::reasons::SANDBOX_PAUSED,
            ext::messages::READY_PAUSED
        )
    );
    assert_eq!(
        triple(&ready_condition(owned(&running), inp)).0,
        "True",
        "asked but not frozen yet: still Ready"
    );

    let mut st = SandboxStatus::default();
    inp.paused_annotation = Some("true");
    apply_conditions(&mut st, Some(1), owned(&frozen), inp, &at(10));
    let paused = st
        .conditions
        .iter()
        .find(|c| c.type_ == ext::condition_types::PAUSED)
        .unwrap();
    assert_eq!(
        (paused.status.as_str(), paused.reason.as_str()),
        ("True", ext::reasons::SANDBOX_PAUSED)
    );
    // Unpaused and thawed: the condition flips to False with a new transition time and stays.
    inp.paused_annotation = None;
    apply_conditions(&mut st, Some(1), owned(&running), inp, &at(20));
    let paused = st
        .conditions
        .iter()
        .find(|c| c.type_ == ext::condition_types::PAUSED)
        .unwrap();
    assert_eq!(
        (paused.status.as_str(), paused.reason.as_str()),
        ("False", ext::reasons::SANDBOX_RUNNING)
    );
    assert_eq!(paused.last_transition_time, at(20));
    let ready = st.conditions.iter().find(|c| c.type_ == ct::READY).unwrap();
    assert_eq!(ready.status, "True");
    // A Sandbox never paused gets no Paused condition.
    let mut fresh = SandboxStatus::default();
    apply_conditions(&mut fresh, Some(1), owned(&running), inp, &at(30));
    assert!(
        !fresh
            .conditions
            .iter()
            .any(|c| c.type_ == ext::condition_types::PAUSED)
    );
}

#[test]
fn the_paused_annotation_follows_the_sandbox_onto_the_pod() {
    // A pod template's copy of the key does not decide: the Sandbox's own annotation does.
    let mut sb = sandbox_with(&[], &[(ext::annotations::PAUSED, "true"), ("note", "n")]);
    let (_, a) = new_pod_metadata(&sb);
    assert!(!a.contains_key(ext::annotations::PAUSED));
    sb.metadata.annotations = Some(map(&[(ext::annotations::PAUSED, "true")]));
    let (_, a) = new_pod_metadata(&sb);
    assert_eq!(a[ext::annotations::PAUSED], "true");
    let (_, a) = propagate_pod_metadata(&sb, &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(a[ext::annotations::PAUSED], "true");
    // Removed, or another value: the Pod loses the key.
    for v in [None, Some("yes"), Some("True")] {
        sb.metadata.annotations = v.map(|v| map(&[(ext::annotations::PAUSED, v)]));
        let (_, a) = propagate_pod_metadata(&sb, &BTreeMap::new(), &a.clone());
        assert!(!a.contains_key(ext::annotations::PAUSED), "{v:?}");
    }
}
