//! Decision tables of the SandboxClaim reconciler.

use super::*;
use agent_sandbox_api::v1beta1::{
    ClaimShutdownPolicy, Lifecycle, SandboxClaimSpec, SandboxStatus, SandboxTemplateSpec,
    SandboxWarmPoolRef,
};
use k8s_openapi::api::core::v1::{Container, EnvFromSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn allowed() -> Vec<String> {
    vec!["sandbox.users.io".into()]
}

fn meta(l: &[(&str, &str)], a: &[(&str, &str)]) -> PodMetadata {
    PodMetadata {
        labels: l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: a
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn invalid(m: PodMetadata) -> String {
    match validate_additional_pod_metadata(&m, &allowed()) {
        Err(ClaimError::InvalidMetadata(s)) => s,
        other => panic!("expected InvalidMetadata, got {other:?}"),
    }
}

#[test]
fn metadata_validation_messages() {
    assert!(
        validate_additional_pod_metadata(
            &meta(
                &[
                    ("sandbox.users.io/team", "a"),
                    ("x.sandbox.users.io/b", "c")
                ],
                &[
                    ("note", "x"),
                    ("cluster-autoscaler.kubernetes.io/safe-to-evict", "true")
                ]
            ),
            &allowed()
        )
        .is_ok()
    );
    assert_eq!(
        invalid(meta(&[("team", "a")], &[])),
        "invalid additionalPodMetadata: failed to validate label \"team\": label \"team\" must have a domain prefix (e.g. 'sandbox.users.io/my-label') to prevent opting into unintended policy domains"
    );
    assert_eq!(
        invalid(meta(&[("App", "Sandbox-Router")], &[])),
        "invalid additionalPodMetadata: failed to validate label \"App\": restricted system label value: \"App\"=\"Sandbox-Router\" is not allowed in AdditionalPodMetadata"
    );
    assert_eq!(
        invalid(meta(&[("agents.x-k8s.io/sandbox-name-hash", "x")], &[])),
        "invalid additionalPodMetadata: failed to validate label \"agents.x-k8s.io/sandbox-name-hash\": label domain \"agents.x-k8s.io\" is not in the allowlist"
    );
    assert_eq!(
        invalid(meta(&[], &[("node.kubernetes.io/x", "y")])),
        "invalid additionalPodMetadata: failed to validate annotation \"node.kubernetes.io/x\": restricted system domain: \"node.kubernetes.io/x\" is not allowed in AdditionalPodMetadata"
    );
    assert!(
        invalid(meta(&[], &[("agents.x-k8s.io/pod-name", "y")]))
            .contains("restricted system domain")
    );
    let m = invalid(meta(&[("sandbox.users.io/bad key", "v")], &[]));
    assert!(m.starts_with("invalid additionalPodMetadata: failed to validate label \"sandbox.users.io/bad key\": invalid label key: \"sandbox.users.io/bad key\": name part must consist of"), "{m}");
    let m = invalid(meta(&[("sandbox.users.io/k", "bad value!")], &[]));
    assert!(m.contains("invalid label value: \"bad value!\" does not match allowed pattern: a valid label must be"), "{m}");
    let long = "x".repeat(64);
    assert!(
        invalid(meta(&[("sandbox.users.io/k", &long)], &[]))
            .contains("must be no more than 63 bytes")
    );
}

#[test]
fn qualified_names() {
    assert!(label_key_errors("a/b").is_empty());
    assert!(label_key_errors("example.com/My_Name.1").is_empty());
    assert_eq!(label_key_errors("a/b/c").len(), 1);
    assert_eq!(label_key_errors("/b"), ["prefix part must be non-empty"]);
    assert!(
        label_key_errors("Example.com/b")[0]
            .starts_with("prefix part a lowercase RFC 1123 subdomain")
    );
    // apimachinery reports an empty name part twice: empty, and not matching the pattern.
    assert_eq!(label_key_errors("a/")[0], "name part must be non-empty");
    assert_eq!(label_key_errors("a/").len(), 2);
}

#[test]
fn merge_rejects_conflicting_overrides() {
    let mut base = meta(&[("sandbox.users.io/a", "1")], &[("n", "1")]);
    merge_pod_metadata(
        &mut base,
        &meta(
            &[("sandbox.users.io/a", "1"), ("sandbox.users.io/b", "2")],
            &[],
        ),
    )
    .unwrap();
    assert_eq!(base.labels.len(), 2);
    let err =
        merge_pod_metadata(&mut base, &meta(&[("sandbox.users.io/a", "9")], &[])).unwrap_err();
    assert_eq!(
        err.text(),
        "metadata override conflict: label \"sandbox.users.io/a\" is defined in template with value \"1\", but claim requests \"9\""
    );
    let err = merge_pod_metadata(&mut base, &meta(&[], &[("n", "2")])).unwrap_err();
    assert!(
        err.text()
            .starts_with("metadata override conflict: annotation \"n\"")
    );
    assert!(!err.suppressed());
}

fn spec_with(containers: &[&str]) -> PodSpec {
    PodSpec {
        containers: containers
            .iter()
            .map(|n| Container {
                name: (*n).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn env(name: &str, value: &str, container: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: value.into(),
        container_name: container.into(),
    }
}

#[test]
fn env_injection_policies() {
    let mut s = spec_with(&["main", "side"]);
    let e = inject_env(InjectionPolicy::Disallowed, &mut s, &[env("A", "1", "")]).unwrap_err();
    assert_eq!(
        e,
        ClaimError::EnvRejected("environment variable injection rejected: environment variable injection is not allowed by the template policy".into())
    );
    inject_env(
        InjectionPolicy::Allowed,
        &mut s,
        &[env("A", "1", ""), env("B", "2", "side")],
    )
    .unwrap();
    assert_eq!(s.containers[0].env.as_ref().unwrap()[0].name, "A");
    assert_eq!(s.containers[1].env.as_ref().unwrap()[0].name, "B");
    let e = inject_env(InjectionPolicy::Allowed, &mut s, &[env("A", "3", "")]).unwrap_err();
    assert_eq!(
        e.text(),
        "environment variable override is not allowed by the template policy for variable \"A\""
    );
    assert!(!e.suppressed());
    inject_env(InjectionPolicy::Overrides, &mut s, &[env("A", "3", "")]).unwrap();
    assert_eq!(
        s.containers[0].env.as_ref().unwrap()[0].value.as_deref(),
        Some("3")
    );
    let e = inject_env(InjectionPolicy::Allowed, &mut s, &[env("C", "1", "nope")]).unwrap_err();
    assert_eq!(
        e.text(),
        "target container \"nope\" not found in template for environment variable \"C\""
    );
    s.containers[0].env_from = Some(vec![EnvFromSource::default()]);
    let e = inject_env(InjectionPolicy::Allowed, &mut s, &[env("D", "1", "")]).unwrap_err();
    assert_eq!(
        e.text(),
        "environment variable injection rejected: container \"main\" uses EnvFrom sources; Allowed policy cannot safely prevent overriding EnvFrom-provided variables"
    );
    assert!(e.suppressed());
}

fn vct(name: &str, size: &str) -> PersistentVolumeClaimTemplate {
    let mut v = PersistentVolumeClaimTemplate::default();
    v.metadata.name = name.into();
    v.spec.resources = Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
        requests: Some(BTreeMap::from([(
            "storage".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
        )])),
        limits: None,
    });
    v
}

fn names(v: &[PersistentVolumeClaimTemplate]) -> Vec<&str> {
    v.iter().map(|x| x.metadata.name.as_str()).collect()
}

#[test]
fn vct_policies() {
    let tpl = [vct("workspace", "1Gi")];
    assert_eq!(
        names(&merge_vcts(InjectionPolicy::Disallowed, &tpl, &[]).unwrap()),
        ["workspace"]
    );
    let e = merge_vcts(
        InjectionPolicy::Disallowed,
        &tpl,
        &[vct("custom-data", "2Gi")],
    )
    .unwrap_err();
    assert_eq!(e, ClaimError::Vct("failed to merge volume claim templates: volume claim templates are disallowed by the template".into()));
    let ok = merge_vcts(InjectionPolicy::Allowed, &tpl, &[vct("custom-data", "2Gi")]).unwrap();
    assert_eq!(names(&ok), ["workspace", "custom-data"]);
    let e = merge_vcts(InjectionPolicy::Allowed, &tpl, &[vct("workspace", "3Gi")]).unwrap_err();
    assert_eq!(
        e.text(),
        "failed to merge volume claim templates: overriding volume claim templates is forbidden by the template: cannot override template volume \"workspace\""
    );
    let ov = merge_vcts(InjectionPolicy::Overrides, &tpl, &[vct("workspace", "3Gi")]).unwrap();
    assert_eq!(names(&ov), ["workspace"]);
    assert_eq!(ov[0], vct("workspace", "3Gi"));
    let ov = merge_vcts(InjectionPolicy::Overrides, &tpl, &[vct("x", "1Gi")]).unwrap();
    assert_eq!(names(&ov), ["workspace", "x"]);
    let e = merge_vcts(InjectionPolicy::Allowed, &tpl, &[vct("", "1Gi")]).unwrap_err();
    assert_eq!(
        e.text(),
        "failed to merge volume claim templates: invalid volume claim templates: name at index 0 is empty"
    );
    let e = merge_vcts(
        InjectionPolicy::Allowed,
        &tpl,
        &[vct("a", "1Gi"), vct("a", "1Gi")],
    )
    .unwrap_err();
    assert_eq!(
        e.text(),
        "failed to merge volume claim templates: invalid volume claim templates: duplicate name \"a\""
    );
    let e = merge_vcts(
        InjectionPolicy::Allowed,
        &[vct("a", "1"), vct("a", "1")],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.text(),
        "invalid volume claim templates in template: duplicate name \"a\""
    );
    assert!(e.suppressed());
}

fn claim(name: &str) -> SandboxClaim {
    let mut c = SandboxClaim::new(
        name,
        SandboxClaimSpec {
            warm_pool_ref: SandboxWarmPoolRef {
                name: "pool".into(),
            },
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("ns".into());
    c.metadata.uid = Some("claim-uid".into());
    c.metadata.generation = Some(3);
    c
}

fn template() -> SandboxTemplate {
    let mut t = SandboxTemplate::new("tpl", SandboxTemplateSpec::default());
    t.spec.pod_template.spec = spec_with(&["main"]);
    t.spec
        .pod_template
        .metadata
        .labels
        .insert("team".into(), "a".into());
    t
}

#[test]
fn cold_sandbox_shape() {
    let mut c = claim("my-claim");
    c.labels_mut()
        .insert(labels::CREATED_BY.into(), "python-client".into());
    c.spec.additional_pod_metadata = meta(&[("sandbox.users.io/x", "1")], &[]);
    let sb = build_cold_sandbox(&c, &template()).unwrap();
    assert_eq!(sb.metadata.name.as_deref(), Some("my-claim"));
    let l = sb.metadata.labels.unwrap();
    assert_eq!(l[labels::CLAIM_UID], "claim-uid");
    assert_eq!(l[labels::LAUNCH_TYPE], "cold");
    assert_eq!(l[labels::CREATED_BY], "python-client");
    assert_eq!(l[labels::SANDBOX_TEMPLATE_REF_HASH], name_hash("tpl"));
    assert_eq!(
        sb.metadata.annotations.unwrap()[annotations::SANDBOX_TEMPLATE_REF],
        "tpl"
    );
    let owner = &sb.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("SandboxClaim", "claim-uid")
    );
    let pm = &sb.spec.pod_template.metadata.labels;
    assert_eq!(pm["team"], "a");
    assert_eq!(pm["sandbox.users.io/x"], "1");
    assert_eq!(pm[labels::CLAIM_UID], "claim-uid");
    assert_eq!(
        sb.spec.pod_template.spec.automount_service_account_token,
        Some(false)
    );
}

#[test]
fn expiry_is_the_earlier_of_shutdown_and_ttl() {
    let mut c = claim("c");
    assert_eq!(expire_at(&c), None);
    c.spec.lifecycle = Some(Lifecycle {
        shutdown_time: Some(at(100)),
        ttl_seconds_after_finished: Some(120),
        shutdown_policy: Some(ClaimShutdownPolicy::Delete),
    });
    assert_eq!(expire_at(&c), Some(at(100)));
    c.status = Some(SandboxClaimStatus {
        conditions: vec![Condition {
            type_: "Finished".into(),
            status: "True".into(),
            reason: "PodSucceeded".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(10),
        }],
        ..Default::default()
    });
    assert_eq!(expire_at(&c), Some(at(100)));
    c.spec
        .lifecycle
        .as_mut()
        .unwrap()
        .ttl_seconds_after_finished = Some(5);
    assert_eq!(expire_at(&c), Some(at(15)));
    c.spec.lifecycle.as_mut().unwrap().shutdown_time = None;
    c.spec
        .lifecycle
        .as_mut()
        .unwrap()
        .ttl_seconds_after_finished = None;
    assert_eq!(expire_at(&c), None, "finished without TTL is retained");
}

fn sandbox_with_ready(reason: &str, st: &str) -> Sandbox {
    let mut sb = Sandbox::new("sb", SandboxSpec::default());
    sb.status = Some(SandboxStatus {
        pod_ips: vec!["10.0.0.9".into()],
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: st.into(),
            reason: reason.into(),
            message: "Pod is Ready".into(),
            observed_generation: Some(1),
            last_transition_time: at(7),
        }],
        ..Default::default()
    });
    sb
}

#[test]
fn ready_table() {
    let t = |c: NewCondition| (c.status, c.reason, c.message);
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::WarmPoolNotFound("p".into())),
            false
        )),
        (
            "False".into(),
            "WarmPoolNotFound".into(),
            "SandboxWarmPool \"p\" not found".into()
        )
    );
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::TemplateNotFound("t".into())),
            false
        )),
        (
            "False".into(),
            "TemplateNotFound".into(),
            "SandboxTemplate \"t\" not found".into()
        )
    );
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::AdoptionConflict("lost".into())),
            false
        ))
        .2,
        "lost; the next pass retries from a converged view"
    );
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::CreatePending),
            false
        ))
        .1,
        "SandboxCreatePending"
    );
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::SandboxNotOwned("x".into())),
            true
        )),
        (
            "False".into(),
            "ClaimExpired".into(),
            "Claim expired. x; deletion skipped.".into()
        )
    );
    assert_eq!(
        t(ready_condition(
            None,
            Some(&ClaimError::Other("boom".into())),
            false
        ))
        .2,
        "Error seen: boom"
    );
    assert_eq!(
        t(ready_condition(None, None, true)).2,
        "Claim expired. Sandbox cleanup initiated."
    );
    assert_eq!(t(ready_condition(None, None, false)).1, "SandboxMissing");
    let exp = sandbox_with_ready("SandboxExpired", "False");
    assert_eq!(
        t(ready_condition(Some(&exp), None, false)).2,
        "Underlying Sandbox resource has expired independently of the Claim."
    );
    let r = sandbox_with_ready("DependenciesReady", "True");
    let c = ready_condition(Some(&r), None, false);
    assert_eq!(
        (
            c.status.as_str(),
            c.reason.as_str(),
            c.last_transition_time.clone()
        ),
        ("True", "DependenciesReady", Some(at(7)))
    );
    let none = Sandbox::new("sb", SandboxSpec::default());
    assert_eq!(
        t(ready_condition(Some(&none), None, false)).1,
        "SandboxNotReady"
    );
}

#[test]
fn status_mirrors_sandbox_and_sorts() {
    let c = claim("c");
    let mut sb = sandbox_with_ready("DependenciesReady", "True");
    sb.status.as_mut().unwrap().conditions.push(Condition {
        type_: "Finished".into(),
        status: "True".into(),
        reason: "PodSucceeded".into(),
        message: "Pod completed successfully".into(),
        observed_generation: Some(1),
        last_transition_time: at(8),
    });
    let st = compute_status(&c, Some(&sb), None, false, &at(20));
    let types: Vec<_> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Finished", "Ready"]);
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    assert_eq!(st.conditions[0].last_transition_time, at(8));
    assert_eq!(st.sandbox.name, "sb");
    assert_eq!(st.sandbox.pod_ips, ["10.0.0.9"]);
    // Expired without a sandbox keeps Finished and clears the identity.
    let mut c2 = c.clone();
    c2.status = Some(st.clone());
    let st2 = compute_status(&c2, None, None, true, &at(30));
    assert!(st2.conditions.iter().any(|c| c.type_ == "Finished"));
    assert!(st2.sandbox.name.is_empty());
    // A transient error keeps the identity.
    let st3 = compute_status(
        &c2,
        None,
        Some(&ClaimError::Other("x".into())),
        false,
        &at(30),
    );
    assert_eq!(st3.sandbox.name, "sb");
    assert!(!st3.conditions.iter().any(|c| c.type_ == "Finished"));
    // CreatePending leaves a status that already names a sandbox untouched.
    let st4 = compute_status(&c2, None, Some(&ClaimError::CreatePending), false, &at(30));
    assert_eq!(st4, st);
}
