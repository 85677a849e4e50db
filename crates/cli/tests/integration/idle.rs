//! Idle sandboxes end to end through `up`: traffic keeps one awake, the router pauses it when
//! idle and the next request wakes it with its memory; a person's pause is not undone by
//! traffic; a suspend-after policy suspends and the next request resumes; a delete-after policy
//! deletes; a pause-at time pauses; bad values are refused at admission.

use std::time::Duration;

use crate::e2e::{IMAGE, Up, http, router_request, wait_until};

fn sandbox(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: {name}}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox/sandboxd: \"true\", {annotations}}}\n    spec:\n      containers:\n      - name: main\n        image: \"{IMAGE}\"\n        imagePullPolicy: IfNotPresent\n        command: [sh, -c, 'echo $$$$ > /tmp/pid; i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.05; done']\n        readinessProbe: {{httpGet: {{path: /v1/health, port: 8080}}, periodSeconds: 1}}\n"
    )
}

fn apply(up: &Up, manifest: &str) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(file.path(), manifest).unwrap();
    up.cli(&["apply", "-f", file.path().to_str().unwrap()])
}

fn json(up: &Up, name: &str) -> serde_json::Value {
    serde_json::from_str(&up.kubectl(&["get", "sandbox", name, "-o", "json"])).unwrap()
}

fn annotation(v: &serde_json::Value, key: &str) -> Option<String> {
    v["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn idle_sandboxes_are_paused_or_suspended_and_woken_by_traffic() {
    let up = Up::start("asbxidl", "10.77.0.0/16");
    let auth = format!("Bearer {}", up.token());
    let get = |name: &str, path: &str| {
        router_request(
            &up,
            "GET",
            path,
            &[
                ("X-Sandbox-ID", name),
                ("X-Sandbox-Port", "8080"),
                ("Authorization", &auth),
            ],
            "",
        )
    };

    // Bad values are refused at admission, naming the annotation and what to write.
    let out = apply(
        &up,
        &sandbox("bad", "agent-sandbox-rs.github.io/idle-timeout: soon"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("agent-sandbox-rs.github.io/idle-timeout") && err.contains("\"5m\""),
        "{err}"
    );
    let out = apply(
        &up,
        &sandbox(
            "bad",
            "agent-sandbox-rs.github.io/idle-timeout: 1m, agent-sandbox-rs.github.io/idle-suspend-after: 30s",
        ),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be longer than"));

    // A startup action: paused at a given time (refused when it is not a time).
    let at = |secs: i64| {
        (k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .to_string()
    };
    let later = |value: &str| {
        sandbox("later", "x: y").replace(
            "metadata: {name: later}",
            &format!("metadata: {{name: later, annotations: {{agent-sandbox-rs.github.io/pause-at: \"{value}\"}}}}"),
        )
    };
    let out = apply(&up, &later("soon"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pause-at") && err.contains("RFC 3339"),
        "{err}"
    );
    let out = apply(&up, &later(&at(6)));
    assert!(out.status.success(), "{out:?}");

    // Paused when idle, woken by the next request with its memory.
    let out = apply(
        &up,
        &sandbox("napper", "agent-sandbox-rs.github.io/idle-timeout: 3s"),
    );
    assert!(out.status.success(), "{out:?}");
    let out = apply(
        &up,
        &sandbox(
            "sleeper",
            "agent-sandbox-rs.github.io/idle-suspend-after: 3s",
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let out = apply(
        &up,
        &sandbox(
            "dropper",
            "agent-sandbox-rs.github.io/idle-timeout: 2s, agent-sandbox-rs.github.io/idle-delete-after: 5s",
        ),
    );
    assert!(out.status.success(), "{out:?}");
    wait_until(
        "napper and sleeper are Ready",
        Duration::from_secs(90),
        || {
            let list = up.ok(&["get", "sandboxes"]);
            list.lines()
                .filter(|l| (l.contains("napper") || l.contains("sleeper")) && l.contains("True"))
                .count()
                == 2
        },
    );
    // Traffic every second for longer than the idle timeout keeps it awake.
    for _ in 0..5 {
        let (code, body) = get("napper", "/v2/processes");
        assert_eq!(code, 200, "{body}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        annotation(&json(&up, "napper"), "agent-sandbox-rs.github.io/paused"),
        None
    );
    let count = || -> u64 {
        up.ok(&["exec", "napper", "--", "cat", "/tmp/n"])
            .trim()
            .parse()
            .unwrap()
    };
    let before = count();
    let pid_before = up.ok(&["exec", "napper", "--", "cat", "/tmp/pid"]);
    wait_until(
        "napper is paused when idle",
        Duration::from_secs(20),
        || {
            let v = json(&up, "napper");
            annotation(&v, "agent-sandbox-rs.github.io/paused").as_deref() == Some("true")
                && annotation(&v, "agent-sandbox-rs.github.io/idle-paused").is_some()
        },
    );
    // (Looked at through the API: a request through the router would wake it.)
    wait_until("napper's Pod is frozen", Duration::from_secs(20), || {
        json(&up, "napper")["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Paused" && c["status"] == "True")
            })
    });
    let (code, body) = get("napper", "/v2/processes");
    assert_eq!(code, 200, "the first request wakes it: {body}");
    let v = json(&up, "napper");
    assert_eq!(annotation(&v, "agent-sandbox-rs.github.io/paused"), None);
    assert_eq!(
        annotation(&v, "agent-sandbox-rs.github.io/idle-paused"),
        None
    );
    assert_eq!(
        up.ok(&["exec", "napper", "--", "cat", "/tmp/pid"]),
        pid_before
    );
    assert!(count() >= before, "the count went on in memory");

    // A person's pause is not undone by traffic.
    up.ok(&["pause", "napper"]);
    let (code, body) = get("napper", "/v2/processes");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("is paused"), "{body}");
    up.ok(&["unpause", "napper"]);

    // Suspended when idle (the Pod deleted), resumed by the next request.
    wait_until(
        "sleeper is suspended when idle",
        Duration::from_secs(30),
        || {
            let v = json(&up, "sleeper");
            v["spec"]["operatingMode"] == "Suspended"
                && annotation(&v, "agent-sandbox-rs.github.io/idle-suspended").is_some()
        },
    );
    wait_until("sleeper's Pod is gone", Duration::from_secs(30), || {
        !up.kubectl(&["get", "pods", "-o", "name"])
            .contains("pod/sleeper")
    });
    let (code, body) = get("sleeper", "/v2/processes");
    assert_eq!(code, 200, "the first request resumes it: {body}");
    let v = json(&up, "sleeper");
    assert_eq!(v["spec"]["operatingMode"], "Running");
    assert_eq!(
        annotation(&v, "agent-sandbox-rs.github.io/idle-suspended"),
        None
    );

    // Paused at its pause-at time, the key removed.
    wait_until(
        "later is paused at its time",
        Duration::from_secs(60),
        || {
            let v = json(&up, "later");
            annotation(&v, "agent-sandbox-rs.github.io/paused").as_deref() == Some("true")
                && annotation(&v, "agent-sandbox-rs.github.io/pause-at").is_none()
        },
    );

    // Paused, then deleted when idle longer.
    wait_until(
        "dropper is deleted when idle",
        Duration::from_secs(60),
        || !up.ok(&["get", "sandboxes"]).contains("dropper"),
    );

    // Both wakes are measured.
    let (code, metrics) = http(&up.metrics, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    for from in ["paused", "suspended"] {
        let line = format!("agent_sandbox_resume_latency_ms_count{{action=\"{from}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    for action in ["pause", "suspend", "delete"] {
        let line = format!("agent_sandbox_idle_actions_total{{action=\"{action}\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}
