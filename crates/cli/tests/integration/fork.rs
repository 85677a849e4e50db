//! Forks and rollbacks end to end through `up`: ten forks of one snapshot run independently
//! (their own addresses, the snapshot's files in their writable layers and volumes, writes that
//! stay their own), and a sandbox rolled back to a snapshot has its files and its volume's data
//! as they were; bad snapshot names get errors that say what to do.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::e2e::{IMAGE, Up, wait_until};

const SOURCE: &str = "apiVersion: agents.x-k8s.io/v1beta1
kind: Sandbox
metadata: {name: src, labels: {team: rl}}
spec:
  podTemplate:
    spec:
      containers:
      - name: main
        image: IMAGE
        imagePullPolicy: IfNotPresent
        volumeMounts: [{name: workspace, mountPath: /workspace}]
  volumeClaimTemplates:
  - metadata: {name: workspace}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
";

#[test]
fn forks_run_independently_and_a_rollback_restores_files_and_volumes() {
    let up = Up::start("asbxfork", "10.79.0.0/16");
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(manifest.path(), SOURCE.replace("IMAGE", IMAGE)).unwrap();
    up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
    wait_until("src is Ready", Duration::from_secs(90), || {
        up.ok(&["get", "sandboxes", "src"]).contains("True")
    });
    let write = |sandbox: &str, value: &str| {
        up.ok(&[
            "exec",
            sandbox,
            "-c",
            &format!(
                "mkdir -p /opt/s && echo {value} > /opt/s/layer && echo {value} > /workspace/volume"
            ),
        ]);
    };
    let read =
        |sandbox: &str| up.ok(&["exec", sandbox, "-c", "cat /opt/s/layer /workspace/volume"]);
    write("src", "v1");
    up.ok(&["snapshot", "create", "src", "--name", "s1", "--wait"]);
    write("src", "v2");

    // Bad names: nothing is created.
    let err = up.fails(&["fork", "src", "--snapshot", "nope", "--timeout", "5"]);
    assert!(err.contains("nope not found"), "{err}");
    let err = up.fails(&["restore", "src", "nope", "--timeout", "5"]);
    assert!(err.contains("nope not found"), "{err}");
    let err = up.fails(&["fork", "missing", "--snapshot", "s1"]);
    assert!(err.contains("missing"), "{err}");

    // Ten forks of one snapshot.
    let out = up.ok(&["fork", "src", "--snapshot", "s1", "--count", "10"]);
    let forks: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (n, ip) = l.split_once('\t').unwrap();
            (n.to_owned(), ip.to_owned())
        })
        .collect();
    assert_eq!(forks.len(), 10, "{out}");
    let names: BTreeSet<_> = forks.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 10);
    assert!(
        names.contains("s1-1") && names.contains("s1-10"),
        "{names:?}"
    );
    let ips: BTreeSet<_> = forks.iter().map(|(_, ip)| ip.clone()).collect();
    assert_eq!(ips.len(), 10, "each fork has its own address: {out}");
    for (n, _) in &forks {
        assert_eq!(read(n), "v1\nv1\n", "fork {n} starts from the snapshot");
    }
    let fork: serde_json::Value =
        serde_json::from_str(&up.kubectl(&["get", "sandbox", "s1-3", "-o", "json"])).unwrap();
    assert_eq!(fork["metadata"]["labels"]["team"], "rl");
    assert_eq!(
        fork["metadata"]["annotations"]["agent-sandbox-rs.github.io/forked-from"],
        "src/s1"
    );
    // Independent: a fork's writes are its own.
    write("s1-1", "mine");
    assert_eq!(read("s1-1"), "mine\nmine\n");
    assert_eq!(read("s1-2"), "v1\nv1\n");
    assert_eq!(read("src"), "v2\nv2\n");
    // A second fork of the same snapshot needs its own names.
    let err = up.fails(&["fork", "src", "--snapshot", "s1", "--timeout", "5"]);
    assert!(err.contains("pass --name"), "{err}");

    // Rollback: the layer and the volume's data as they were at the snapshot.
    up.ok(&["restore", "src", "s1"]);
    assert_eq!(read("src"), "v1\nv1\n");
    let src: serde_json::Value =
        serde_json::from_str(&up.kubectl(&["get", "sandbox", "src", "-o", "json"])).unwrap();
    let ann = &src["metadata"]["annotations"];
    assert!(
        ann.get("agent-sandbox-rs.github.io/restore-from").is_none(),
        "the rollback happens once: {ann}"
    );
    assert_eq!(src["spec"]["operatingMode"], "Running");
}
