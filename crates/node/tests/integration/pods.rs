//! The node agent as kubelet, through the embedded API server with real runtimes: probes
//! (startup, readiness, liveness; exec, httpGet, tcpSocket) driving `Ready` and restarts, init
//! containers in order with their failure policies, native sidecars, events, refused and
//! ignored fields, DNS and hosts files, termination messages, `activeDeadlineSeconds`, and
//! `hostPort` through the portmap plugin. Traffic goes only to loopback and to addresses of
//! namespaces this test made; every wait is bounded.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::{Duration, Instant};

use agent_sandbox_node::HandlerKind;
use common::{AgentEnv, BridgeGuard, have_cni, need, test_network};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

const IMAGE: &str = "localhost/test/busybox:1";

fn pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["terminationGracePeriodSeconds"] = json!(1);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn c(name: &str, script: &str) -> Value {
    json!({"name": name, "image": IMAGE, "imagePullPolicy": "Never",
           "command": ["/bin/sh", "-c", script]})
}

fn cond(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

fn cstatus<'a>(
    p: &'a Pod,
    init: bool,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    let st = p.status.as_ref()?;
    let list = if init {
        st.init_container_statuses.as_ref()?
    } else {
        st.container_statuses.as_ref()?
    };
    list.iter().find(|c| c.name == name)
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

async fn events(a: &AgentEnv, uid: &str) -> Vec<(String, String)> {
    a.events_of(uid).await
}

async fn wait_events(a: &AgentEnv, uid: &str, want: &[&str]) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = events(a, uid).await;
        if want.iter().all(|w| ev.iter().any(|(r, _)| r == w)) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "missing events {want:?} in {ev:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn env(kind: HandlerKind) -> Option<AgentEnv> {
    if need(Some(kind)) {
        return None;
    }
    let a = AgentEnv::new(&[kind], None).await;
    a.env.busybox(IMAGE).await;
    Some(a)
}

async fn probes(kind: HandlerKind) {
    let Some(a) = env(kind).await else { return };
    let mut main = c(
        "main",
        "sleep 2; touch /tmp/ready; mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www; \
         i=0; while [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done",
    );
    main["ports"] = json!([{"name": "http", "containerPort": 8080}]);
    main["readinessProbe"] = json!({"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1});
    main["startupProbe"] =
        json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30});
    main["livenessProbe"] = json!({"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1, "failureThreshold": 2});
    let t0 = Instant::now();
    a.create_pod(pod("probed", json!({"containers": [main]})))
        .await;
    let p = a
        .wait_pod("default", "probed", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    // Not ready before the startup probe passed and the readiness file exists.
    assert_ne!(cond(&p, "Ready").as_deref(), Some("True"));
    let p = a
        .wait_pod("default", "probed", Duration::from_secs(30), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    println!("{kind}: ready after {:?}", t0.elapsed());
    let cs = cstatus(&p, false, "main").unwrap();
    assert!(cs.ready && cs.started == Some(true), "{cs:?}");
    assert_eq!(cond(&p, "ContainersReady").as_deref(), Some("True"));

    // Readiness follows the probe both ways.
    let e = a.engine();
    let run = |argv: &[&str]| argv.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = Instant::now();
    let out = e
        .exec(
            &uid,
            "main",
            &run(&["rm", "/tmp/ready"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    println!("{kind}: exec round trip {:?}", t.elapsed());
    assert_eq!(out.code, 0);
    a.wait_pod("default", "probed", Duration::from_secs(15), |p| {
        cond(p, "Ready").as_deref() == Some("False")
    })
    .await;
    e.exec(
        &uid,
        "main",
        &run(&["touch", "/tmp/ready"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    a.wait_pod("default", "probed", Duration::from_secs(15), |p| {
        cond(p, "Ready").as_deref() == Some("True")
    })
    .await;

    // A failing liveness probe restarts the container and counts it.
    e.exec(
        &uid,
        "main",
        &run(&["killall", "httpd"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let p = a
        .wait_pod("default", "probed", Duration::from_secs(40), |p| {
            cstatus(p, false, "main").is_some_and(|c| c.restart_count >= 1 && c.ready)
        })
        .await;
    let cs = cstatus(&p, false, "main").unwrap();
    assert!(
        cs.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some(),
        "{cs:?}"
    );
    let ev = wait_events(
        &a,
        &uid,
        &["Pulled", "Created", "Started", "Unhealthy", "Killing"],
    )
    .await;
    assert!(
        ev.iter()
            .any(|(r, n)| r == "Killing" && n.contains("failed liveness probe")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(r, n)| r == "Unhealthy" && n.starts_with("Readiness probe failed")),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_crun() {
    probes(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_runsc() {
    probes(HandlerKind::Runsc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order() {
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    let mount = json!([{"name": "shared", "mountPath": "/shared"}]);
    let mut i1 = c("one", "sleep 1; echo one >> /shared/log");
    let mut i2 = c("two", "echo two >> /shared/log");
    let mut main = c("main", "cat /shared/log; echo main-ran; exec sleep 600");
    for x in [&mut i1, &mut i2, &mut main] {
        x["volumeMounts"] = mount.clone();
    }
    a.create_pod(pod(
        "inits",
        json!({"volumes": [{"name": "shared", "emptyDir": {}}],
               "initContainers": [i1, i2], "containers": [main]}),
    ))
    .await;
    // While the first init container runs: Pending, not initialized.
    let p = a
        .wait_pod("default", "inits", Duration::from_secs(30), |p| {
            cstatus(p, true, "one")
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    assert_eq!(cond(&p, "Initialized").as_deref(), Some("False"));
    let p = a
        .wait_pod("default", "inits", Duration::from_secs(30), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    assert_eq!(cond(&p, "Initialized").as_deref(), Some("True"));
    for n in ["one", "two"] {
        let t = cstatus(&p, true, n)
            .and_then(|c| c.state.as_ref()?.terminated.clone())
            .unwrap_or_else(|| panic!("{n} not terminated: {p:?}"));
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    }
    let log_path = a.engine().container_log_path(&uid, "main");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs_err::read_to_string(&log_path).unwrap_or_default();
        if log.contains("main-ran") {
            assert!(log.contains("one\ntwo\nmain-ran"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With one start at a time, pods created together (each an init container and a main
/// container, so a pod takes several turns) all run, and no two starts ever overlapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_take_turns_and_every_pod_runs() {
    if need(Some(HandlerKind::Crun)) {
        return;
    }
    let config = agent_sandbox_node::agent::AgentConfig {
        max_parallel_starts: 1,
        ..Default::default()
    };
    let a = AgentEnv::with_config(&[HandlerKind::Crun], None, config).await;
    a.env.busybox(IMAGE).await;
    let names: Vec<String> = (0..4).map(|i| format!("turns-{i}")).collect();
    futures::future::join_all(names.iter().map(|n| {
        a.create_pod(pod(
            n,
            json!({"initContainers": [c("init", "true")],
                   "containers": [c("main", "exec sleep 600")]}),
        ))
    }))
    .await;
    for n in &names {
        a.wait_pod("default", n, Duration::from_secs(60), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    }
    assert_eq!(a.agent.peak_parallel_starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failures_follow_restart_policy() {
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    // Never: the Pod fails and the main container never runs.
    a.create_pod(pod(
        "init-never",
        json!({"restartPolicy": "Never", "initContainers": [c("bad", "exit 3")],
               "containers": [c("main", "echo should-not-run")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "init-never", Duration::from_secs(30), |p| {
            phase(p) == "Failed"
        })
        .await;
    let t = cstatus(&p, true, "bad")
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    let main = cstatus(&p, false, "main").unwrap();
    assert!(
        main.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some(),
        "{main:?}"
    );

    // OnFailure: the init container is retried (counted) until it succeeds.
    let mut flaky = c(
        "flaky",
        "if [ -f /shared/tried ]; then exit 0; fi; touch /shared/tried; exit 1",
    );
    flaky["volumeMounts"] = json!([{"name": "shared", "mountPath": "/shared"}]);
    a.create_pod(pod(
        "init-retry",
        json!({"restartPolicy": "OnFailure", "volumes": [{"name": "shared", "emptyDir": {}}],
               "initContainers": [flaky], "containers": [c("main", "exec sleep 600")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "init-retry", Duration::from_secs(30), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let f = cstatus(&p, true, "flaky").unwrap();
    assert_eq!(f.restart_count, 1, "{f:?}");
    let ev = wait_events(&a, p.metadata.uid.as_deref().unwrap(), &["BackOff"]).await;
    assert!(
        ev.iter()
            .any(|(r, n)| r == "BackOff" && n.contains("flaky")),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sidecar_runs_beside_the_main_container() {
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    let mut side = c(
        "side",
        "mkdir -p /www; echo from-sidecar > /www/index.html; sleep 1; exec httpd -f -p 8081 -h /www",
    );
    side["restartPolicy"] = json!("Always");
    side["startupProbe"] =
        json!({"tcpSocket": {"port": 8081}, "periodSeconds": 1, "failureThreshold": 30});
    a.create_pod(pod(
        "sidecar",
        json!({"restartPolicy": "Never", "initContainers": [side],
               "containers": [c("main", "wget -q -O - http://127.0.0.1:8081/ && echo main-done; sleep 1")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "sidecar", Duration::from_secs(40), |p| {
            phase(p) == "Succeeded"
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    let log = fs_err::read_to_string(a.engine().container_log_path(&uid, "main")).unwrap();
    assert!(
        log.contains("from-sidecar") && log.contains("main-done"),
        "{log}"
    );
    // Once the main container is done the sidecar is stopped.
    let p = a
        .wait_pod("default", "sidecar", Duration::from_secs(20), |p| {
            cstatus(p, true, "side")
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
        })
        .await;
    assert_eq!(cond(&p, "Ready").as_deref(), Some("False"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_ignored_fields_dns_hosts_and_messages() {
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    // Refused: the Pod does not start, the status and an event name the field.
    a.create_pod(pod(
        "hostnet",
        json!({"hostNetwork": true, "containers": [c("main", "true")]}),
    ))
    .await;
    let mut grpc = c("main", "sleep 100");
    grpc["livenessProbe"] = json!({"grpc": {"port": 9000}});
    a.create_pod(pod("grpc", json!({"containers": [grpc]})))
        .await;
    for (name, field) in [
        ("hostnet", "spec.hostNetwork"),
        ("grpc", "spec.containers[0].livenessProbe.grpc"),
    ] {
        let p = a
            .wait_pod("default", name, Duration::from_secs(20), |p| {
                cstatus(p, false, "main")
                    .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
                    .is_some_and(|m| m.contains(field))
            })
            .await;
        let w = cstatus(&p, false, "main")
            .and_then(|c| c.state.clone()?.waiting)
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
        let ev = wait_events(&a, p.metadata.uid.as_deref().unwrap(), &["Failed"]).await;
        assert!(ev.iter().any(|(_, n)| n.contains(field)), "{ev:?}");
    }

    // Ignored fields: the Pod runs with a condition naming them. DNS, hosts and termination
    // message files are the node's.
    let mut main = c(
        "main",
        "cat /etc/resolv.conf /etc/hosts; echo bye-message > /dev/termination-log; exit 2",
    );
    main["stdin"] = json!(true);
    a.create_pod(pod(
        "files",
        json!({"restartPolicy": "Never", "imagePullSecrets": [{"name": "regcred"}],
               "dnsPolicy": "None",
               "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["example.test"], "options": [{"name": "ndots", "value": "2"}]},
               "hostAliases": [{"ip": "192.0.2.7", "hostnames": ["alias.example.test"]}],
               "containers": [main]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "files", Duration::from_secs(30), |p| {
            phase(p) == "Failed"
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    let ignored = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == agent_sandbox_node::audit::IGNORED_FIELDS_CONDITION)
        })
        .cloned()
        .expect("ignored-fields condition");
    let msg = ignored.message.unwrap_or_default();
    assert!(
        !msg.contains("spec.imagePullSecrets") && msg.contains("stdin"),
        "{msg}"
    );
    let t = cstatus(&p, false, "main")
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .unwrap();
    assert_eq!(t.exit_code, 2);
    assert_eq!(t.message.as_deref(), Some("bye-message"));
    let log = fs_err::read_to_string(a.engine().log_path(&uid)).unwrap();
    assert!(log.contains("nameserver 192.0.2.53"), "{log}");
    assert!(log.contains("search example.test"), "{log}");
    assert!(log.contains("options ndots:2"), "{log}");
    assert!(log.contains("192.0.2.7\talias.example.test"), "{log}");

    // activeDeadlineSeconds fails a running Pod.
    a.create_pod(pod(
        "deadline",
        json!({"activeDeadlineSeconds": 2, "containers": [c("main", "exec sleep 600")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "deadline", Duration::from_secs(30), |p| {
            phase(p) == "Failed"
        })
        .await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("DeadlineExceeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_maps_to_the_sandbox() {
    let kind = HandlerKind::Crun;
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
        || common::skip_unless(
            std::path::Path::new("/usr/lib/cni/portmap").is_file(),
            "the portmap plugin is not installed",
        )
    {
        return;
    }
    let (net, _) = test_network(21).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let a = AgentEnv::new(&[kind], Some(net)).await;
    a.env.busybox(IMAGE).await;
    let port = common::free_port();
    let mut main = c(
        "main",
        "mkdir -p /www; echo via-host-port > /www/index.html; exec httpd -f -p 8080 -h /www",
    );
    main["ports"] = json!([{"containerPort": 8080, "hostPort": port}]);
    a.create_pod(pod("hostport", json!({"containers": [main]})))
        .await;
    a.wait_running("default", "hostport").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let r = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match r {
            Ok(b) if b.contains("via-host-port") => break b,
            other => {
                assert!(Instant::now() < deadline, "hostPort {port}: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(body.contains("200"), "{body}");
    // Deleting the Pod removes the mapping.
    let api: kube::Api<Pod> = kube::Api::namespaced(a.client.clone(), "default");
    api.delete("hostport", &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt("hostport").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "pod not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server may finish the deletion (grace period over) before the sandbox is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        if !out.contains(&format!("--dport {port} ")) {
            break;
        }
        assert!(Instant::now() < deadline, "DNAT rule left for {port}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_class_maps_to_a_handler() {
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    let rcs: kube::Api<k8s_openapi::api::node::v1::RuntimeClass> = kube::Api::all(a.client.clone());
    rcs.create(
        &Default::default(),
        &serde_json::from_value(
            json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "fast"}, "handler": "crun"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    a.create_pod(pod(
        "classy",
        json!({"runtimeClassName": "fast", "containers": [c("main", "exec sleep 600")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "classy", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let uid = p.metadata.uid.unwrap();
    assert_eq!(
        a.engine().state(&uid).await.unwrap().handler,
        HandlerKind::Crun
    );
    a.create_pod(pod(
        "classless",
        json!({"runtimeClassName": "nope", "containers": [c("main", "true")]}),
    ))
    .await;
    a.wait_pod("default", "classless", Duration::from_secs(20), |p| {
        cstatus(p, false, "main")
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
            .is_some_and(|m| m.contains("RuntimeClass \"nope\" not found"))
    })
    .await;
}

/// Create → Running through the API server and the agent, observed by a watch (printed; the
/// bound is generous: the machine is shared): without a network, with the bridge network, and
/// with the bridge network and a NetworkPolicy selecting every pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_through_the_agent() {
    let kind = HandlerKind::Crun;
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
    {
        return;
    }
    let (net, _) = test_network(22).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let mut report = Vec::new();
    for (label, network, policy) in [
        ("no network", None, false),
        ("bridge network", Some(net.clone()), false),
        ("bridge network + NetworkPolicy", Some(net.clone()), true),
    ] {
        let a = AgentEnv::new(&[kind], network).await;
        a.env.busybox(IMAGE).await;
        let (times, timelines) = cold_starts(&a, policy, 10).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        report.push(format!(
            "{label}: p50 {:.1} ms, p90 {:.1} ms",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10])
        ));
        println!(
            "{label}, median step begin-end (ms): {}",
            median_steps(&timelines)
        );
        assert!(times[times.len() / 2] < Duration::from_secs(5), "{times:?}");
    }
    println!("create -> Running (crun): {}", report.join("; "));
}

/// The median begin and end of each step over the timelines, ordered by end.
fn median_steps(timelines: &[Vec<agent_sandbox_node::timeline::StepTime>]) -> String {
    let mut names: Vec<&'static str> = Vec::new();
    for s in timelines.iter().flatten() {
        if !names.contains(&s.name) {
            names.push(s.name);
        }
    }
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let mut rows: Vec<(f64, f64, &str)> = names
        .into_iter()
        .map(|n| {
            let (b, e): (Vec<Duration>, Vec<Duration>) = timelines
                .iter()
                .filter_map(|t| t.iter().find(|s| s.name == n))
                .map(|s| (s.begin, s.end))
                .unzip();
            (med(b), med(e), n)
        })
        .collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    rows.iter()
        .map(|(b, e, n)| format!("{n} {b:.1}-{e:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn cold_starts(
    a: &AgentEnv,
    policy: bool,
    n: usize,
) -> (
    Vec<Duration>,
    Vec<Vec<agent_sandbox_node::timeline::StepTime>>,
) {
    use futures::StreamExt;
    if policy {
        let nps: kube::Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            kube::Api::namespaced(a.client.clone(), "default");
        nps.create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny-private", "namespace": "default"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}},
                                            "podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}],
                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]}}]}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let networked = a.engine().network().is_some();
    let api: kube::Api<Pod> = kube::Api::namespaced(a.client.clone(), "default");
    let mut times = Vec::new();
    let mut timelines = Vec::new();
    for i in 0..n {
        let name = format!("cold-{i}");
        let mut stream = kube::runtime::watcher::watcher(
            api.clone(),
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .boxed();
        // Let the watch start before the create.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        let t = Instant::now();
        a.create_pod(pod(
            &name,
            json!({"containers": [c("main", "exec sleep 600")]}),
        ))
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let uid = loop {
            let ev = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                stream.next(),
            )
            .await
            .expect("pod did not run in 30 s");
            if let Some(Ok(
                kube::runtime::watcher::Event::Apply(p)
                | kube::runtime::watcher::Event::InitApply(p),
            )) = ev
                && phase(&p) == "Running"
                && (!networked || p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
            {
                break p.metadata.uid.unwrap_or_default();
            }
        };
        times.push(t.elapsed());
        // The agent records its status write once the API server answered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        timelines.push(a.engine().timeline(&uid).unwrap_or_default());
    }
    times.sort();
    (times, timelines)
}

/// A restart of the agent (and of the engine object) re-adopts running sandboxes: no container
/// restarts, restart counts and init progress come back, probes run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_readopts_pods() {
    let Some(mut a) = env(HandlerKind::Crun).await else {
        return;
    };
    let mut main = c("main", "touch /tmp/ready; exec sleep 600");
    main["readinessProbe"] = json!({"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1});
    a.create_pod(pod(
        "survivor",
        json!({"initContainers": [c("init", "true")], "containers": [main]}),
    ))
    .await;
    // A Pod without probes is Ready as soon as its container runs, before and after.
    a.create_pod(pod(
        "unprobed",
        json!({"containers": [c("main", "exec sleep 600")]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "survivor", Duration::from_secs(30), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let before = a
        .wait_pod("default", "unprobed", Duration::from_secs(30), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    let pid = a.engine().container_state(&uid, "main").await.unwrap().pid;
    a.restart_agent().await;
    assert_eq!(
        a.engine().container_state(&uid, "main").await.unwrap().pid,
        pid
    );
    // The new agent's view of the re-adopted Pod, after a few of its syncs (every 2 s): still
    // Ready, same image, no restart.
    let image_id = |p: &Pod| cstatus(p, false, "main").map(|c| c.image_id.clone());
    tokio::time::sleep(3 * agent_sandbox_node::agent::RESYNC / 2).await;
    let after = a
        .wait_pod("default", "unprobed", Duration::from_secs(1), |_| true)
        .await;
    assert_eq!(
        cond(&after, "Ready").as_deref(),
        Some("True"),
        "{:?}",
        after.status
    );
    assert_eq!(image_id(&after), image_id(&before));
    assert_eq!(cstatus(&after, false, "main").unwrap().restart_count, 0);
    // Probes run again: breaking readiness is noticed by the new agent.
    let run = |argv: &[&str]| argv.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    a.engine()
        .exec(
            &uid,
            "main",
            &run(&["rm", "/tmp/ready"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let p = a
        .wait_pod("default", "survivor", Duration::from_secs(20), |p| {
            cond(p, "Ready").as_deref() == Some("False")
        })
        .await;
    let cs = cstatus(&p, false, "main").unwrap();
    assert_eq!(cs.restart_count, 0, "{cs:?}");
    assert_eq!(phase(&p), "Running");
    assert_eq!(cond(&p, "Initialized").as_deref(), Some("True"));
    assert_eq!(
        a.engine().container_state(&uid, "main").await.unwrap().pid,
        pid
    );
}

/// Pulls through the agent: `Pulling`/`Pulled` events for an image from a registry, and a
/// missing image gives `ErrImagePull`, then `ImagePullBackOff`, with `Failed` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_report_events_and_back_off() {
    if common::skip_unless(
        common::Registry::binary().is_some(),
        "docker-registry is not installed",
    ) {
        return;
    }
    let Some(a) = env(HandlerKind::Crun).await else {
        return;
    };
    let reg = common::Registry::start();
    let reference = format!("{}/test/busybox:1", reg.addr);
    common::TestImage::busybox().push(&reference).await;
    let mut main = c("main", "exec sleep 600");
    main["image"] = json!(reference);
    main["imagePullPolicy"] = json!("IfNotPresent");
    a.create_pod(pod("pulled", json!({"containers": [main]})))
        .await;
    let p = a
        .wait_pod("default", "pulled", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let cs = cstatus(&p, false, "main").unwrap();
    assert!(cs.image_id.contains("@sha256:"), "{cs:?}");
    let ev = wait_events(
        &a,
        p.metadata.uid.as_deref().unwrap(),
        &["Pulling", "Pulled"],
    )
    .await;
    assert!(
        ev.iter()
            .any(|(r, n)| r == "Pulled" && n.starts_with("Successfully pulled image")),
        "{ev:?}"
    );

    let mut missing = c("main", "true");
    missing["image"] = json!(format!("{}/test/absent:1", reg.addr));
    missing["imagePullPolicy"] = json!("IfNotPresent");
    a.create_pod(pod("unpullable", json!({"containers": [missing]})))
        .await;
    // ErrImagePull is shown only until the back-off starts, which can be quicker than a poll:
    // the status is checked for the back-off, the failed pull itself through its event.
    let p = a
        .wait_pod("default", "unpullable", Duration::from_secs(30), |p| {
            cstatus(p, false, "main")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .as_deref()
                == Some("ImagePullBackOff")
        })
        .await;
    let uid = p.metadata.uid.as_deref().unwrap();
    wait_events(&a, uid, &["Pulling", "Failed"]).await;
    let failed = |ev: &[(String, String)], what: &str| {
        ev.iter().any(|(r, n)| r == "Failed" && n.contains(what))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = events(&a, uid).await;
        if failed(&ev, "Failed to pull image") && failed(&ev, "Error: ErrImagePull") {
            break;
        }
        assert!(Instant::now() < deadline, "missing Failed events in {ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn two_containers(kind: HandlerKind) {
    let Some(a) = env(kind).await else { return };
    let mount = json!([{"name": "shared", "mountPath": "/shared"}]);
    let mut web = c(
        "web",
        "mkdir -p /www; echo from-web > /www/index.html; exec httpd -f -p 8081 -h /www",
    );
    let mut client = c(
        "client",
        "i=0; while [ $i -lt 100 ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 8081 > /shared/got; \
         grep -q from-web /shared/got && break; i=$((i+1)); sleep 0.2; done; cat /shared/got; exec sleep 600",
    );
    web["volumeMounts"] = mount.clone();
    client["volumeMounts"] = mount;
    a.create_pod(pod(
        "pair",
        json!({"volumes": [{"name": "shared", "emptyDir": {}}], "containers": [web, client]}),
    ))
    .await;
    let p = a
        .wait_pod("default", "pair", Duration::from_secs(40), |p| {
            cond(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        p.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()
            .len(),
        2
    );
    let uid = p.metadata.uid.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = fs_err::read_to_string(a.engine().container_log_path(&uid, "client"))
            .unwrap_or_default();
        if log.contains("from-web") {
            break;
        }
        assert!(Instant::now() < deadline, "{kind}: client log: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The file written by one container is visible to the other through the emptyDir.
    let run = |argv: &[&str]| argv.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = a
        .engine()
        .exec(
            &uid,
            "web",
            &run(&["cat", "/shared/got"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-web"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_network_and_volumes_crun() {
    two_containers(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_network_and_volumes_runsc() {
    two_containers(HandlerKind::Runsc).await;
}

/// A claim a Pod uses is bound to a PersistentVolume the node reports (the default
/// StorageClass filled in by admission), and a deleted claim takes its volume and directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_bound_to_volumes_and_reclaimed() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::api::{Api, DeleteParams, PostParams};
    let Some(a) = env(common::default_kind()).await else {
        return;
    };
    agent_sandbox_node::storage::ensure_default_class(&a.client)
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(a.client.clone());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "work"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
    }))
    .unwrap();
    let claim = claims.create(&PostParams::default(), &claim).await.unwrap();
    let spec = claim.spec.clone().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "nothing is bound before a Pod uses it (WaitForFirstConsumer)"
    );
    let mut main = c(
        "main",
        "echo kept > /data/f; i=0; while [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done",
    );
    main["volumeMounts"] = json!([{"name": "d", "mountPath": "/data"}]);
    a.create_pod(pod(
        "with-claim",
        json!({"containers": [main],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "work"}}]}),
    ))
    .await;
    a.wait_pod("default", "with-claim", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    })
    .await;
    let uid = claim.metadata.uid.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let bound = loop {
        let c = claims.get("work").await.unwrap();
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            break c;
        }
        assert!(Instant::now() < deadline, "the claim was not bound: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let name = format!("pvc-{uid}");
    assert_eq!(
        bound.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(name.as_str())
    );
    let status = bound.status.unwrap();
    assert_eq!(
        status.capacity.unwrap()["storage"].0,
        "2Gi",
        "the capacity reported is the request"
    );
    let pv = volumes.get(&name).await.unwrap();
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
    let pv_spec = pv.spec.unwrap();
    assert_eq!(
        pv_spec.claim_ref.unwrap().uid.as_deref(),
        Some(uid.as_str())
    );
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some("local-path"));
    let dir = a.engine().pvc_dir("default", "work");
    assert_eq!(fs_err::read_to_string(dir.join("f")).unwrap(), "kept\n");

    // Deleted while the Pod still runs: the volume goes at once, the directory once the Pod
    // is gone.
    claims
        .delete("work", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while volumes.get_opt(&name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the volume outlived its claim");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir.is_dir(), "the directory stays while a sandbox uses it");
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), "default");
    pods.delete("with-claim", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the directory outlived its claim"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
