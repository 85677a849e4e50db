//! A Pod's configuration through the embedded API server and a real runtime, as kubelet gives
//! it: environment from ConfigMaps and Secrets (`envFrom`, `configMapKeyRef`, `secretKeyRef`),
//! the downward API (`fieldRef`, `resourceFieldRef`, `downwardAPI` volumes), `$(VAR)` in env,
//! command and args; `configMap`, `secret` and `projected` volumes, read-only, updated in the
//! running sandbox when their source changes; a missing ConfigMap holds the container back with
//! kubelet's reason and message until it is created. Every wait is bounded.

use crate::common;

use std::time::Duration;

use agent_sandbox_node::HandlerKind;
use common::{AgentEnv, BridgeGuard, have_cni, need, test_network};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const IMAGE: &str = "localhost/test/busybox:1";

fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = p.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .clone()?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_volumes_from_configmaps_secrets_and_the_downward_api() {
    let kind = HandlerKind::Crun;
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
    {
        return;
    }
    let (net, _) = test_network(23).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let a = AgentEnv::new(&[kind], Some(net)).await;
    a.env.busybox(IMAGE).await;
    let cms: Api<ConfigMap> = Api::namespaced(a.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(a.client.clone(), "default");
    let cm = |name: &str, data: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
    };
    cms.create(
        &PostParams::default(),
        &cm(
            "settings",
            json!({"MODE": "fast", "LEVEL": "3", "app.conf": "v1"}),
        ),
    )
    .await
    .unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "creds"},
        "stringData": {"token": "s3cr3t", "password": "hunter2"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    // The Pod names a ConfigMap that does not exist yet: it waits, as with kubelet.
    let script = "echo \"env MODE=$MODE LEVEL=$LEVEL S_token=$S_token TOKEN=$TOKEN NAME=$NAME \
                  APP=$APP IP=$IP MEM=$MEM GREETING=$GREETING LATE=$LATE\"; \
                  echo \"args $0 $1\"; \
                  echo \"files $(cat /cfg/app.conf) $(cat /cfg/..data/app.conf) $(cat /sec/pw) \
                  $(cat /info/name) $(cat /info/labels) $(cat /all/token)\"; \
                  stat -c 'mode %a' /sec/..data/pw; \
                  touch /cfg/new 2>/dev/null || echo read-only; \
                  i=0; while [ $i -lt 600 ]; do \
                    if [ \"$(cat /cfg/app.conf)\" = v2 ]; then echo updated v2; fi; \
                    sleep 0.2; i=$((i+1)); done";
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "configured", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script, "$(MODE)"],
                "args": ["$$(MODE)-$(LEVEL)"],
                "resources": {"limits": {"memory": "48Mi"}},
                "envFrom": [{"configMapRef": {"name": "settings"}},
                            {"secretRef": {"name": "creds"}, "prefix": "S_"}],
                "env": [
                    {"name": "GREETING", "value": "hello $(NAME) at level $(LEVEL)"},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "LATE", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "v"}}}
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "sec", "mountPath": "/sec"},
                    {"name": "info", "mountPath": "/info"},
                    {"name": "all", "mountPath": "/all"}
                ]
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400,
                    "items": [{"key": "password", "path": "pw"}]}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "settings", "items": [{"key": "MODE", "path": "mode"}]}},
                    {"secret": {"name": "creds", "items": [{"key": "token", "path": "token"}]}}]}}
            ]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = a
        .wait_pod("default", "configured", Duration::from_secs(30), |p| {
            waiting(p).is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await;
    let (_, message) = waiting(&p).unwrap();
    assert_eq!(message, "configmap \"late\" not found");
    let uid = p.metadata.uid.clone().unwrap();
    let ev = a.events_of(&uid).await;
    assert!(
        ev.iter()
            .any(|(r, n)| r == "Failed" && n == "Error: configmap \"late\" not found"),
        "{ev:?}"
    );

    // Once it exists, the container starts with everything resolved.
    cms.create(&PostParams::default(), &cm("late", json!({"v": "here"})))
        .await
        .unwrap();
    let (uid2, ip) = a.wait_running("default", "configured").await;
    assert_eq!(uid, uid2);
    let log = a
        .wait_log(&uid, &["read-only"], Duration::from_secs(30))
        .await;
    let want_env = format!(
        "env MODE=fast LEVEL=3 S_token=s3cr3t TOKEN=s3cr3t NAME=configured APP=web IP={ip} \
         MEM=48 GREETING=hello $(NAME) at level 3 LATE=here"
    );
    assert!(log.contains(&want_env), "{log}\nwanted: {want_env}");
    assert!(log.contains("args fast $(MODE)-3"), "{log}");
    assert!(
        log.contains("files v1 v1 hunter2 configured app=\"web\" s3cr3t"),
        "{log}"
    );
    assert!(log.contains("mode 400"), "{log}");
    // On the host, the volume's files are in memory (a tmpfs per volume) ...
    let sec = a.engine().projected_dir(&uid, "sec");
    assert!(
        agent_sandbox_node::host::is_mounted(&sec),
        "{}",
        sec.display()
    );
    // ... under directories only root can enter.
    for d in ["sandboxes", "volumes"] {
        use std::os::unix::fs::PermissionsExt;
        let path = a.engine().config().root.join(d);
        let mode = fs_err::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", path.display());
    }
    assert!(log.contains("read-only"), "{log}");

    // A change of the ConfigMap reaches the running sandbox's volume.
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"app.conf": "v2"}})),
    )
    .await
    .unwrap();
    a.wait_log(&uid, &["updated v2"], Duration::from_secs(20))
        .await;
    // Deleting the Pod removes the sandbox and unmounts its volumes.
    pods.delete("configured", &Default::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.engine().contains(&uid) || agent_sandbox_node::host::is_mounted(&sec) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox of the deleted Pod is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A volume whose ConfigMap is missing holds the Pod in ContainerCreating with kubelet's
    // FailedMount event, until the ConfigMap exists.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mounts-later", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "cat /v/x; exec sleep 600"],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
            "volumes": [{"name": "v", "configMap": {"name": "later"}}]
        }
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let want = "MountVolume.SetUp failed for volume \"v\" : configmap \"later\" not found";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !a
        .events_of(&uid)
        .await
        .iter()
        .any(|(r, n)| r == "FailedMount" && n == want)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no FailedMount event: {:?}",
            a.events_of(&uid).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = pods.get("mounts-later").await.unwrap();
    assert_eq!(
        waiting(&p).map(|(r, _)| r).as_deref(),
        Some("ContainerCreating")
    );
    cms.create(
        &PostParams::default(),
        &cm("later", json!({"x": "mounted-now"})),
    )
    .await
    .unwrap();
    a.wait_running("default", "mounts-later").await;
    a.wait_log(&uid, &["mounted-now"], Duration::from_secs(20))
        .await;
}

/// The bcrypt hash (cost 4) of `pull-me`, for the registry's htpasswd file.
const PULL_PASSWORD_HASH: &str = "$2b$04$c6FTeSyVWS0H.4HNsxCUWOlQxsyAAIkubyq8llJskOmm4al73bjPa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_secrets_authenticate_to_a_private_registry() {
    use base64::Engine;
    if need(Some(HandlerKind::Crun))
        || common::skip_unless(
            common::Registry::binary().is_some(),
            "docker-registry is not installed",
        )
    {
        return;
    }
    let reg = common::Registry::start_with_auth("puller", PULL_PASSWORD_HASH);
    let auth = oci_client::secrets::RegistryAuth::Basic("puller".into(), "pull-me".into());
    let a = AgentEnv::new(&[HandlerKind::Crun], None).await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), "default");
    let pod = |name: &str, tag: &str, secrets: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "imagePullSecrets": secrets,
                "containers": [{"name": "main", "image": format!("{}/private/busybox:{tag}", reg.addr),
                    "imagePullPolicy": "IfNotPresent", "command": ["/bin/sh", "-c", "exec sleep 600"]}]}
        }))
        .unwrap()
    };
    for tag in ["1", "2"] {
        common::TestImage::busybox()
            .push_as(&format!("{}/private/busybox:{tag}", reg.addr), &auth)
            .await;
    }

    // Without credentials the registry refuses the pull; a named Secret that does not exist is
    // reported and the pull goes on without it.
    pods.create(
        &PostParams::default(),
        &pod("anonymous", "1", json!([{"name": "not-there"}])),
    )
    .await
    .unwrap();
    let p = a
        .wait_pod("default", "anonymous", Duration::from_secs(30), |p| {
            waiting(p).is_some_and(|(r, _)| r == "ImagePullBackOff" || r == "ErrImagePull")
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = a.events_of(&uid).await;
        let refused = ev.iter().any(|(r, n)| {
            r == "Failed" && n.contains("Failed to pull image") && n.contains("Not authorized")
        });
        let reported = ev
            .iter()
            .any(|(r, n)| r == "FailedToRetrieveImagePullSecret" && n.contains("(not-there)"));
        if refused && reported {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // With a kubernetes.io/dockerconfigjson Secret the pull authenticates.
    let config = json!({"auths": {reg.addr.clone(): {
        "auth": base64::engine::general_purpose::STANDARD.encode("puller:pull-me")}}});
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()}}))
    .unwrap();
    Api::<Secret>::namespaced(a.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("authenticated", "2", json!([{"name": "regcred"}])),
    )
    .await
    .unwrap();
    let p = a
        .wait_pod("default", "authenticated", Duration::from_secs(60), |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let ignored = p
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == agent_sandbox_node::audit::IGNORED_FIELDS_CONDITION);
    assert!(ignored.is_none_or(|c| !c.message.unwrap_or_default().contains("imagePullSecrets")));
}
