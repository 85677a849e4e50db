//! Unit tests of the sandbox spec and its derivation from a Pod.

use super::*;

#[test]
fn quantities() {
    assert_eq!(parse_quantity_bytes("128Mi"), Some(128 << 20));
    assert_eq!(parse_quantity_bytes("1G"), Some(1_000_000_000));
    assert_eq!(parse_quantity_bytes("1e3"), Some(1000));
    assert_eq!(parse_quantity_bytes("x"), None);
    assert_eq!(parse_quantity_millis("500m"), Some(500));
    assert_eq!(parse_quantity_millis("1.5"), Some(1500));
}

#[test]
fn pull_policy_defaults() {
    assert_eq!(PullPolicy::for_image("busybox", None), PullPolicy::Always);
    assert_eq!(
        PullPolicy::for_image("busybox:latest", None),
        PullPolicy::Always
    );
    assert_eq!(
        PullPolicy::for_image("localhost:5000/b:1", None),
        PullPolicy::IfNotPresent
    );
    assert_eq!(
        PullPolicy::for_image("localhost:5000/b", None),
        PullPolicy::Always
    );
    assert_eq!(
        PullPolicy::for_image("b:1", Some("Never")),
        PullPolicy::Never
    );
}

#[test]
fn pod_conversion_refuses_privileged_and_names_field() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "img:1",
            "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let err = SandboxSpec::from_pod(&pod).unwrap_err().to_string();
    assert!(err.contains("securityContext.privileged"), "{err}");
    assert!(err.contains("ns/p"), "{err}");
}

#[test]
fn the_sandboxd_annotation_picks_a_container() {
    let pod = |value: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": {
                crate::sandboxd_kit::ANNOTATION: value,
                crate::sandboxd_kit::ARGS_ANNOTATION: "--no-legacy  --rest-port 8081"}},
            "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]}
        }))
        .unwrap()
    };
    let s = SandboxSpec::from_pod(&pod("true")).unwrap();
    assert_eq!(
        s.main.sandboxd.as_deref(),
        Some(
            &[
                "--no-legacy".to_string(),
                "--rest-port".into(),
                "8081".into()
            ][..]
        )
    );
    assert!(s.containers[0].sandboxd.is_none());
    let s = SandboxSpec::from_pod(&pod("b")).unwrap();
    assert!(s.main.sandboxd.is_none() && s.containers[0].sandboxd.is_some());
    let err = SandboxSpec::from_pod(&pod("c")).unwrap_err().to_string();
    assert!(err.contains(crate::sandboxd_kit::ANNOTATION), "{err}");
}

#[test]
fn pod_conversion_maps_fields() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "ABC-1"},
        "spec": {"runtimeClassName": "gvisor",
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "c", "image": "img:1", "command": ["/bin/sh"],
            "env": [{"name": "A", "value": "1"}],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
            "volumeMounts": [{"name": "d", "mountPath": "/data"}],
            "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}}]}
    }))
    .unwrap();
    let s = SandboxSpec::from_pod(&pod).unwrap();
    assert_eq!(s.id, "abc-1");
    assert_eq!(s.handler.as_deref(), Some("gvisor"));
    assert_eq!(s.main.resources.memory_limit, Some(64 << 20));
    assert_eq!(s.main.resources.cpu_limit_millis, Some(500));
    assert_eq!(s.main.security.run_as_user, Some(1000));
    assert!(s.main.security.read_only_root);
    assert_eq!(s.main.name, "c");
    assert_eq!(
        s.main.volumes[0].source,
        VolumeSource::Pvc {
            claim: "data".into()
        }
    );
}
