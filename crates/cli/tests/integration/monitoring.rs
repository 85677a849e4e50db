//! gVisor runtime monitoring end to end through `agent-sandbox up --runtime-monitoring`: a
//! command run with `agent-sandbox exec` in a runsc Sandbox appears in
//! `agent-sandbox logs --runtime-events`, and with Falco's socket down the sandbox works on and
//! the node's metrics count the drops.

use std::time::Duration;

use crate::e2e::{IMAGE, Up, wait_until};

/// The dropped-for-Falco counter on the metrics endpoint.
fn dropped_for_falco(up: &Up) -> u64 {
    let text = up.metrics_text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("agent_sandbox_runtime_monitoring_events_dropped_total{sink=\"falco\"} ")
        })
        .unwrap_or_else(|| panic!("no Falco drop counter in /metrics: {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn runtime_events_through_up() {
    if agent_sandbox_node::runtime::find_binary("runsc").is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP runtime_events_through_up: runsc is not installed"
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let falco = scratch.path().join("falco.sock");
    let up = Up::start_with(
        "asbxgv",
        "10.74.0.0/16",
        &[
            "--runtime-monitoring",
            "log,falco",
            "--runtime-monitoring-falco-socket",
            falco.to_str().unwrap(),
        ],
    );
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(
        manifest.path(),
        format!(
            "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: watched}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox/sandboxd: \"true\"}}\n    spec:\n      runtimeClassName: gvisor\n      containers:\n      - name: main\n        image: \"{IMAGE}\"\n        imagePullPolicy: IfNotPresent\n        command: [sleep, '3600']\n"
        ),
    )
    .unwrap();
    up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
    wait_until("watched is Ready", Duration::from_secs(90), || {
        up.ok(&["get", "sandboxes", "watched"]).contains("True")
    });
    let before = dropped_for_falco(&up);
    let said = up.ok(&[
        "exec",
        "watched",
        "--",
        "python3",
        "-c",
        "import socket; print(open('/etc/hostname').read().strip()); s = socket.socket(); s.settimeout(1); print(s.connect_ex(('127.0.0.1', 9)))",
    ]);
    assert!(said.contains("watched"), "{said}");
    let mut events = String::new();
    wait_until(
        "the exec's events are in the log",
        Duration::from_secs(20),
        || {
            events = up.ok(&["logs", "watched", "--runtime-events"]);
            events.contains("\"path\":\"/etc/hostname\"")
                && events.contains("\"address\":\"127.0.0.1:9\"")
        },
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"event\":\"sentry/execve\"") && l.contains("\"python3\"")),
        "{events}"
    );
    let tail = up.ok(&["logs", "watched", "--runtime-events", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // Falco is not listening: the sandbox answered, the node counted what Falco missed.
    assert!(dropped_for_falco(&up) > before);
    up.ok(&["exec", "watched", "--", "true"]);
    // A sandbox without monitoring has no event log, and the error says how to get one.
    let err = up.fails(&["logs", "nosuch", "--runtime-events"]);
    assert!(err.contains("nosuch"), "{err}");
}

/// `up` refuses a runtime-monitoring setting it cannot honour before it starts anything.
#[test]
fn bad_runtime_monitoring_flags() {
    let data = tempfile::tempdir().unwrap();
    let up = |flags: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sandbox"))
            .arg("up")
            .arg("--data-dir")
            .arg(data.path())
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "up {flags:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = up(&["--runtime-monitoring", "yes"]);
    assert!(
        err.contains("unknown sink \"yes\"") && err.contains("`log,falco`"),
        "{err}"
    );
    let err = up(&["--runtime-monitoring", "falco"]);
    assert!(
        err.contains("--runtime-monitoring-falco-socket PATH"),
        "{err}"
    );
    assert!(
        fs_err::read_dir(data.path()).unwrap().next().is_none(),
        "nothing was made"
    );
}
