//! SandboxSnapshots end to end through `agent-sandbox up`: a filesystem snapshot under the
//! default handler (runc or crun) with its files on the node, a memory snapshot under runsc,
//! and the bad inputs: a missing sandbox, an empty sandboxRef, a suspended sandbox, one over
//! the size limit, two at once, deleting one in progress, a paused sandbox staying paused.

use std::path::PathBuf;
use std::time::Duration;

use crate::e2e::{IMAGE, Up, wait_until};

/// A Sandbox `name` whose main container sleeps, with an emptyDir at /data.
fn sandbox(up: &Up, name: &str, runtime_class: Option<&str>) {
    sandbox_from(up, name, runtime_class, None);
}

/// [`sandbox`], started from snapshot `from` when given.
fn sandbox_from(up: &Up, name: &str, runtime_class: Option<&str>, from: Option<&str>) {
    let restore = from
        .map(|s| format!(", agent-sandbox-rs.github.io/restore-from: {s}"))
        .unwrap_or_default();
    let manifest = tempfile::NamedTempFile::new().unwrap();
    let class = runtime_class
        .map(|c| format!("      runtimeClassName: {c}\n"))
        .unwrap_or_default();
    fs_err::write(
        manifest.path(),
        format!(
            "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: {name}}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox/sandboxd: \"true\"{restore}}}\n    spec:\n{class}      containers:\n      - name: main\n        image: \"{IMAGE}\"\n        imagePullPolicy: IfNotPresent\n        command: [sh, -c, 'echo layer > /var/in-layer; while true; do sleep 1; done']\n        volumeMounts: [{{name: scratch, mountPath: /data}}]\n        readinessProbe: {{httpGet: {{path: /v1/health, port: 8080}}, periodSeconds: 1}}\n      volumes: [{{name: scratch, emptyDir: {{}}}}]\n"
        ),
    )
    .unwrap();
    up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
    wait_until(&format!("{name} is Ready"), Duration::from_secs(90), || {
        up.ok(&["get", "sandboxes", name]).contains("True")
    });
}

fn snapshot_json(up: &Up, name: &str) -> serde_json::Value {
    serde_json::from_str(&up.kubectl(&["get", "sandboxsnapshot", name, "-o", "json"]))
        .unwrap_or_default()
}

/// The directory of snapshot `name` on the node.
fn files(up: &Up, name: &str) -> PathBuf {
    let uid = snapshot_json(up, name)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    up.data
        .path()
        .join("node/snapshots/default")
        .join(format!("{name}-{uid}"))
}

fn apply_snapshot(up: &Up, name: &str, sandbox: &str) -> std::process::Output {
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(
        manifest.path(),
        format!("apiVersion: agent-sandbox-rs.github.io/v1alpha1\nkind: SandboxSnapshot\nmetadata: {{name: {name}}}\nspec: {{sandboxRef: {{name: \"{sandbox}\"}}}}\n"),
    )
    .unwrap();
    std::process::Command::new("kubectl")
        .args(["apply", "-f", manifest.path().to_str().unwrap()])
        .env("KUBECONFIG", up.data.path().join("kubeconfig"))
        .output()
        .unwrap()
}

fn phase_and_message(up: &Up, name: &str) -> (String, String) {
    let v = snapshot_json(up, name);
    let msg = v["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (
        v["status"]["phase"].as_str().unwrap_or_default().to_owned(),
        msg,
    )
}

fn wait_final(up: &Up, name: &str) -> (String, String) {
    let mut got = Default::default();
    wait_until(
        &format!("snapshot {name} is final"),
        Duration::from_secs(60),
        || {
            got = phase_and_message(up, name);
            got.0 == "Ready" || got.0 == "Failed"
        },
    );
    got
}

#[test]
fn filesystem_snapshots_and_bad_input() {
    let up = Up::start_with(
        "asbxsnap1",
        "10.71.0.0/16",
        &["--snapshot-size-limit", "20Mi"],
    );
    sandbox(&up, "sn", None);
    up.ok(&[
        "exec",
        "sn",
        "--",
        "sh",
        "-c",
        "echo extra > /var/extra; echo volume > /data/kept; dd if=/dev/zero of=/data/blob bs=1024 count=1024 2>/dev/null",
    ]);

    let out = up.cli(&["snapshot", "create", "sn", "--name", "s1", "--wait"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("snapshot default/s1: Ready in") && said.contains("Filesystem"),
        "{said}"
    );
    let v = snapshot_json(&up, "s1");
    assert_eq!(v["status"]["kind"], "Filesystem");
    assert!(v["status"]["sizeBytes"].as_i64().unwrap() > 1 << 20);
    assert!(v["status"]["completedAt"].is_string() && v["status"]["node"].is_string());
    assert_eq!(
        v["metadata"]["finalizers"][0],
        "agent-sandbox-rs.github.io/snapshot-files"
    );
    let dir = files(&up, "s1");
    assert_eq!(
        fs_err::read_to_string(dir.join("volumes/scratch/kept")).unwrap(),
        "volume\n"
    );
    assert_eq!(
        fs_err::read_to_string(dir.join("containers/main/upper/var/in-layer")).unwrap(),
        "layer\n"
    );
    assert!(dir.join("snapshot.json").is_file());
    // A new Sandbox starts from it: the layer and the volume as they were.
    sandbox_from(&up, "back", None, Some("s1"));
    assert_eq!(
        up.ok(&["exec", "back", "--", "cat", "/data/kept"]),
        "volume\n"
    );
    assert_eq!(
        up.ok(&["exec", "back", "--", "cat", "/var/extra"]),
        "extra\n"
    );
    up.ok(&["delete", "back"]);
    // From a snapshot that does not exist: the Pod waits, saying which and what to do.
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(
        manifest.path(),
        format!("apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: nowhere}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox-rs.github.io/restore-from: missing}}\n    spec:\n      containers: [{{name: main, image: \"{IMAGE}\", imagePullPolicy: IfNotPresent}}]\n"),
    )
    .unwrap();
    up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
    wait_until("the Pod says why it waits", Duration::from_secs(30), || {
        up.kubectl(&["get", "pod", "nowhere", "-o", "json"])
            .contains("SandboxSnapshot default/missing (annotation agent-sandbox-rs.github.io/restore-from) not found")
    });
    up.ok(&["delete", "nowhere"]);
    // The sandbox was thawed after the copy.
    up.ok(&["exec", "sn", "--", "true"]);
    let list = up.ok(&["snapshot", "list"]);
    assert!(list.starts_with("NAME"), "{list}");
    let row = list.lines().find(|l| l.starts_with("s1 ")).unwrap();
    for cell in ["sn", "Ready", "Filesystem", "Mi"] {
        assert!(row.contains(cell), "{row}");
    }
    let table = up.kubectl(&["get", "sandboxsnapshots"]);
    assert!(
        table.contains("SANDBOX") && table.contains("PHASE") && table.contains("KIND"),
        "{table}"
    );

    // A paused sandbox stays paused.
    up.ok(&["pause", "sn"]);
    up.ok(&["snapshot", "create", "sn", "--name", "paused", "--wait"]);
    assert!(up.fails(&["exec", "sn", "--", "true"]).contains("paused"));
    up.ok(&["unpause", "sn"]);

    // Two at once: one after the other, both Ready.
    for n in ["two-a", "two-b"] {
        up.ok(&["snapshot", "create", "sn", "--name", n]);
    }
    assert_eq!(wait_final(&up, "two-a").0, "Ready");
    assert_eq!(wait_final(&up, "two-b").0, "Ready");

    // Over the limit: Failed naming the limit and the flag; nothing left on the node.
    up.ok(&[
        "exec",
        "sn",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=1048576 count=24 2>/dev/null",
    ]);
    let err = up.fails(&["snapshot", "create", "sn", "--name", "big", "--wait"]);
    assert!(
        err.contains("exceeds the node's limit of 20971520 bytes")
            && err.contains("--snapshot-size-limit"),
        "{err}"
    );
    assert_eq!(
        snapshot_json(&up, "big")["status"]["conditions"][0]["reason"],
        "SnapshotTooLarge"
    );
    let left: Vec<_> = fs_err::read_dir(up.data.path().join("node/snapshots/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("big-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    up.ok(&["exec", "sn", "--", "rm", "/data/big"]);

    // Deleting one in progress: it goes, and its files with it.
    up.ok(&["snapshot", "create", "sn", "--name", "gone"]);
    up.ok(&["snapshot", "delete", "gone"]);
    assert!(up.kubectl(&["get", "sandboxsnapshot", "gone"]).is_empty());
    let left: Vec<_> = fs_err::read_dir(up.data.path().join("node/snapshots/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("gone-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A Sandbox that does not exist: Failed, naming it and what to do.
    let out = apply_snapshot(&up, "ghost", "nobody");
    assert!(out.status.success(), "{out:?}");
    let (phase, msg) = wait_final(&up, "ghost");
    assert_eq!(phase, "Failed");
    assert!(
        msg.contains("Sandbox \"nobody\" not found") && msg.contains("spec.sandboxRef.name"),
        "{msg}"
    );
    // An empty sandboxRef: refused by admission as kube-apiserver does.
    let out = apply_snapshot(&up, "empty", "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.sandboxRef.name") && err.contains("should be at least 1 chars long"),
        "{err}"
    );
    // The CLI refuses a sandbox that does not exist before creating anything.
    assert!(
        up.fails(&["snapshot", "create", "nobody"])
            .contains("no claim or sandbox named nobody")
    );

    // A suspended Sandbox has no Pod: Failed, saying to resume it.
    up.ok(&["suspend", "sn"]);
    let err = up.fails(&["snapshot", "create", "sn", "--name", "asleep", "--wait"]);
    assert!(
        err.contains("suspended") && err.contains("resume it"),
        "{err}"
    );

    // Deleting a Ready snapshot deletes its files.
    let dir = files(&up, "s1");
    up.ok(&["snapshot", "delete", "s1"]);
    assert!(!dir.exists());
}

#[test]
fn runsc_snapshot_holds_memory() {
    if agent_sandbox_node::runtime::find_binary("runsc").is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP runsc_snapshot_holds_memory: runsc is not installed"
        );
        return;
    }
    let up = Up::start("asbxsnap2", "10.72.0.0/16");
    sandbox(&up, "gv", Some("runsc"));
    let out = up.cli(&["snapshot", "create", "gv", "--name", "m1", "--wait"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let v = snapshot_json(&up, "m1");
    assert_eq!(v["status"]["handler"], "runsc");
    let dir = files(&up, "m1");
    assert!(dir.join("containers/main/upper/var/in-layer").is_file());
    if v["status"]["kind"] == "Memory+Filesystem" {
        let image = fs_err::read_dir(dir.join("containers/main/memory"))
            .unwrap()
            .count();
        assert!(image > 0, "the checkpoint image is there");
    } else {
        // runsc refuses to checkpoint a sandbox on the host network stack (how this node runs
        // runsc): the filesystem is taken, and the status says why memory is not.
        assert_eq!(v["status"]["kind"], "Filesystem");
        let msg = v["status"]["conditions"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains("memory not included") && msg.contains("hostinet"),
            "{msg}"
        );
    }
    // The sandbox runs on after its snapshot.
    up.ok(&["exec", "gv", "--", "true"]);
    // A second one does not ask runsc again.
    up.ok(&["snapshot", "create", "gv", "--name", "m2", "--wait"]);
    assert_eq!(
        snapshot_json(&up, "m2")["status"]["kind"],
        v["status"]["kind"]
    );
}
