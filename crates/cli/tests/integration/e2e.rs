//! End to end, as a user meets it: `agent-sandbox up` with the example image built from this
//! machine's Debian packages, the example template and warm pool, and the CLI verbs, the router
//! and sandboxd inside real sandboxes. Needs root, an OCI runtime, the CNI plugins, busybox-static
//! and Debian's python3 (scripts/test.sh installs them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, unreachable_kubeconfig};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_agent-sandbox");
pub(crate) const IMAGE: &str = "localhost/agent-sandbox/python:latest";

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `agent-sandbox up` on its own data directory, ports, bridge and subnet.
pub(crate) struct Up {
    child: Child,
    pub(crate) data: tempfile::TempDir,
    _run: tempfile::TempDir,
    pub(crate) router: String,
    pub(crate) metrics: String,
    kubeconfig: PathBuf,
    bridge: String,
}

impl Up {
    /// A bridge and subnet of this test's own (tests run in parallel).
    pub(crate) fn start(bridge: &str, subnet: &str) -> Up {
        Up::launch(bridge, subnet, &[], &[])
    }

    /// [`Up::start`] with more flags for `up`.
    pub(crate) fn start_with(bridge: &str, subnet: &str, flags: &[&str]) -> Up {
        Up::launch(bridge, subnet, flags, &[])
    }

    /// As [`Up::start`], with more images built by examples/image/build_gui.py (`browser`,
    /// `desktop`), imported as `localhost/agent-sandbox/<kind>:latest`.
    pub(crate) fn start_with_gui(bridge: &str, subnet: &str, gui: &[&str]) -> Up {
        Up::launch(bridge, subnet, &[], gui)
    }

    fn launch(bridge: &str, subnet: &str, flags: &[&str], gui: &[&str]) -> Up {
        let data = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        build_and_import(data.path(), &["examples/image/build.py"], IMAGE, true);
        for kind in gui {
            let image = format!("localhost/agent-sandbox/{kind}:latest");
            build_and_import(
                data.path(),
                &["examples/image/build_gui.py", kind],
                &image,
                false,
            );
        }

        let (api, router, metrics) = (free_port(), free_port(), free_port());
        let mut child = Command::new(BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(data.path())
            .arg("--run-dir")
            .arg(run.path())
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--router-listen", &format!("127.0.0.1:{router}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--pod-subnet", subnet, "--bridge", bridge])
            // Sandboxes end to end, not the disk: no fsync per API write (the SDK's tests run
            // `up` with its default, durable writes).
            .arg("--no-sync")
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready;") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("up reports ready within 60 s");
        Up {
            child,
            kubeconfig: data.path().join("kubeconfig"),
            data,
            _run: run,
            router: format!("http://127.0.0.1:{router}"),
            metrics: format!("127.0.0.1:{metrics}"),
            bridge: bridge.to_owned(),
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("AGENT_SANDBOX_DATA_DIR", self.data.path())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    }

    /// Runs a verb that must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "agent-sandbox {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a verb that must fail; returns its stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "agent-sandbox {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    /// The body of `GET /metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        let (status, body) = http(&self.metrics, "GET", "/metrics", &[], "");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The data directory, where clients find this instance.
    pub(crate) fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub(crate) fn token(&self) -> String {
        fs_err::read_to_string(self.data.path().join("router-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Builds an image layout with `script` (a path under the repository, then its arguments) and
/// this build as sandboxd, and imports it into the data directory `data` as `image`; the
/// layout is kept (as `data/image`) or removed.
fn build_and_import(data: &Path, script: &[&str], image: &str, keep: bool) {
    let layout = data.join(if keep { "image" } else { "layout" });
    let built = Command::new("python3")
        .arg(repo().join(script[0]))
        .args(&script[1..])
        .args(["--sandboxd", BIN, "--out"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(built.status.success(), "{script:?}: {built:?}");
    let imported = Command::new(BIN)
        .args(["image", "import"])
        .arg(&layout)
        .args(["--as", image, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "image import {image}: {imported:?}"
    );
    if !keep {
        let _ = fs_err::remove_dir_all(&layout);
    }
}

impl Drop for Up {
    /// Deletes every sandbox (stopping `up` leaves them running by design), then stops `up`.
    fn drop(&mut self) {
        let _ = self.kubectl(&[
            "delete",
            "sandboxsnapshots,sandboxclaims,sandboxwarmpools,sandboxtemplates,sandboxes",
            "--all",
            "--wait=false",
        ]);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The router's mirror Pod stands for `up` itself and stays while it runs.
        let sandbox_pods = ["get", "pods", "-o", "name", "-l", "app!=sandbox-router"];
        while Instant::now() < deadline && !self.kubectl(&sandbox_pods).is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix_kill(self.child.id());
        let _ = self.child.wait();
        // The bridge outlives `up` (as CNI bridges do); this test's own is removed.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .map(|_| ())
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request to the router; returns the status and body.
pub(crate) fn router_request(
    up: &Up,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http(
        up.router.trim_start_matches("http://"),
        method,
        path,
        headers,
        body,
    )
}

/// One HTTP/1.1 request; returns the status and body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(s: &str) -> String {
    String::from_utf8_lossy(&dechunk_bytes(s.as_bytes())).into_owned()
}

/// The body of a chunked transfer encoding.
pub(crate) fn dechunk_bytes(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&s[eol + 2..eol + 2 + n]);
        s = &s[eol + 2 + n + 2..];
    }
    out
}

#[test]
fn quickstart_through_cli_router_and_sandboxd() {
    let up = Up::start("asbxe2e1", "10.91.0.0/16");
    let manifests = repo().join("examples/manifests");
    let template = manifests.join("template.yaml");
    let pool = manifests.join("warmpool.yaml");
    let (template, pool) = (template.to_str().unwrap(), pool.to_str().unwrap());

    let applied = up.ok(&["apply", "-f", template, "-f", pool]);
    assert!(
        applied.contains("sandboxtemplate/python created"),
        "{applied}"
    );
    assert!(
        applied.contains("sandboxwarmpool/python-pool created"),
        "{applied}"
    );
    let again = up.ok(&["apply", "-f", template]);
    assert!(
        again.contains("sandboxtemplate/python unchanged"),
        "{again}"
    );

    wait_until("the pool is Ready", Duration::from_secs(90), || {
        up.ok(&["get", "pools"]).contains("3/3")
    });
    let claim = up.ok(&["claim", "--pool", "python-pool"]).trim().to_owned();
    assert!(claim.starts_with("python-pool-"), "{claim}");

    // exec: argv, a shell line, exit codes, env, cwd, stdin.
    let out = up.ok(&[
        "exec",
        &claim,
        "--",
        "python3",
        "-c",
        "import os; print(6*7, os.getcwd())",
    ]);
    assert_eq!(out, "42 /workspace\n");
    let out = up.cli(&["exec", &claim, "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    let out = up.ok(&[
        "exec",
        &claim,
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(out, "hi /tmp\n");

    // cp and ls: relative paths land in the working directory, absolute ones mean what they say.
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("hello.txt");
    fs_err::write(&file, "hello from the host\n").unwrap();
    up.ok(&[
        "cp",
        file.to_str().unwrap(),
        &format!("{claim}:notes/hello.txt"),
    ]);
    up.ok(&[
        "cp",
        file.to_str().unwrap(),
        &format!("{claim}:/tmp/abs.txt"),
    ]);
    assert_eq!(
        up.ok(&[
            "exec",
            &claim,
            "--",
            "cat",
            "/workspace/notes/hello.txt",
            "/tmp/abs.txt"
        ]),
        "hello from the host\nhello from the host\n"
    );
    assert_eq!(
        up.ok(&["cp", &format!("{claim}:/tmp/abs.txt"), "-"]),
        "hello from the host\n"
    );
    assert!(up.ok(&["ls", &claim]).contains("notes/"));
    assert!(up.ok(&["ls", &claim, "notes"]).contains("hello.txt"));
    let tree = local.path().join("tree");
    up.ok(&["cp", &format!("{claim}:/workspace"), tree.to_str().unwrap()]);
    assert_eq!(
        fs_err::read_to_string(tree.join("notes/hello.txt")).unwrap(),
        "hello from the host\n"
    );
    let err = up.fails(&["cp", &format!("{claim}:/nonexistent"), "-"]);
    assert!(err.contains("404"), "{err}");

    // The router with upstream's header contract, to the legacy API and run_code.
    let token = up.token();
    let auth = format!("Bearer {token}");
    let (status, body) = router_request(
        &up,
        "POST",
        "/execute",
        &[
            ("Authorization", &auth),
            ("X-Sandbox-ID", &claim_sandbox(&up, &claim)),
        ],
        r#"{"command": "python3 -c 'print(1+1)'"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""stdout":"2\n""#), "{body}");
    let (status, body) = router_request(&up, "POST", "/execute", &[("X-Sandbox-ID", "x")], "{}");
    assert_eq!(status, 401, "{body}");
    let (status, body) = router_request(&up, "POST", "/execute", &[("Authorization", &auth)], "{}");
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"detail":"X-Sandbox-ID header is required."}"#)
    );
    let sandbox = claim_sandbox(&up, &claim);
    let code = |src: &str| {
        router_request(
            &up,
            "POST",
            "/v2/code/run",
            &[("Authorization", &auth), ("X-Sandbox-ID", &sandbox)],
            &serde_json::json!({"code": src, "language": "python"}).to_string(),
        )
    };
    assert_eq!(code("x = 20").0, 200);
    let (status, body) = code("x + 22");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""text":"42""#),
        "state persists between cells: {body}"
    );

    assert!(up.ok(&["logs", &claim]).contains("sandboxd listening"));
    assert_eq!(up.ok(&["logs", &claim, "--tail", "1"]).lines().count(), 1);
    let err = up.fails(&["logs", &claim, "--previous"]);
    assert!(err.contains("previous terminated container"), "{err}");
    let (status, metrics) = http(&up.metrics, "GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    for family in [
        "sandbox_router_requests_total",
        "agent_sandbox_claim_creation_total",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics: {metrics}");
    }
    assert_eq!(
        metrics.matches("# EOF").count(),
        1,
        "one OpenMetrics document"
    );
    assert_eq!(http(&up.metrics, "GET", "/readyz", &[], "").0, 200);

    // Bad input: clear errors, nothing created.
    let err = up.fails(&["claim", "--pool", "nope"]);
    assert!(
        err.contains("no warm pool default/nope; pools in this namespace: python-pool"),
        "{err}"
    );
    let err = up.fails(&["exec", "nothing", "--", "true"]);
    assert!(err.contains("no claim or sandbox named nothing"), "{err}");
    let warm = up.ok(&["get", "sandboxes"]);
    let member = warm
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("sandbox/"))
        .find(|n| *n != sandbox)
        .unwrap()
        .to_owned();
    let err = up.fails(&["ls", &member]);
    assert!(err.contains("no claim has adopted"), "{err}");

    // Deleting the claim deletes its sandbox; the pool refills.
    up.ok(&["delete", &claim]);
    assert!(!up.ok(&["get", "sandboxes"]).contains(&sandbox));
    wait_until("the pool refills", Duration::from_secs(90), || {
        up.ok(&["get", "pools"]).contains("3/3")
    });
}

/// The sandbox a claim was given.
pub(crate) fn claim_sandbox(up: &Up, claim: &str) -> String {
    let out = up.ok(&["get", "claims", claim, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["status"]["sandbox"]["name"].as_str().unwrap().to_owned()
}

#[test]
fn volumes_survive_suspend_runsc_runs_sandboxd_and_any_image_gets_it() {
    let up = Up::start("asbxe2e2", "10.92.0.0/16");
    let sandbox = repo().join("examples/manifests/sandbox.yaml");
    up.ok(&["apply", "-f", sandbox.to_str().unwrap()]);
    wait_until("my-sandbox is Ready", Duration::from_secs(90), || {
        up.ok(&["get", "sandboxes", "my-sandbox"]).contains("True")
    });
    up.ok(&[
        "exec",
        "my-sandbox",
        "-c",
        "echo kept > /workspace/state.txt; echo lost > /tmp/scratch.txt",
    ]);
    up.ok(&["suspend", "my-sandbox"]);
    let listing = up.ok(&["get", "sandboxes", "my-sandbox"]);
    assert!(listing.contains("Suspended"), "{listing}");
    let err = up.fails(&["exec", "my-sandbox", "--", "true"]);
    assert!(
        err.contains("is suspended; resume it with `agent-sandbox resume my-sandbox`"),
        "{err}"
    );
    up.ok(&["resume", "my-sandbox"]);
    assert_eq!(
        up.ok(&["exec", "my-sandbox", "--", "cat", "/workspace/state.txt"]),
        "kept\n"
    );
    let out = up.cli(&["exec", "my-sandbox", "--", "cat", "/tmp/scratch.txt"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the root filesystem starts afresh"
    );
    up.ok(&["delete", "my-sandbox"]);

    // gVisor: sandboxd and threaded programs run under runsc.
    let gvisor = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(
        gvisor.path(),
        format!(
            "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: gvisor}}\nspec:\n  podTemplate:\n    spec:\n      runtimeClassName: runsc\n      containers: [{{name: s, image: \"{IMAGE}\", imagePullPolicy: IfNotPresent}}]\n"
        ),
    )
    .unwrap();
    up.ok(&["apply", "-f", gvisor.path().to_str().unwrap()]);
    wait_until(
        "the runsc sandbox is Ready",
        Duration::from_secs(90),
        || up.ok(&["get", "sandboxes", "gvisor"]).contains("True"),
    );
    let threads = "import threading; t = threading.Thread(target=print, args=('in a thread',)); t.start(); t.join()";
    assert_eq!(
        up.ok(&["exec", "gvisor", "--", "python3", "-c", threads]),
        "in a thread\n"
    );
    // gVisor presents its own kernel, never the host's.
    let host_kernel = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(up.ok(&["exec", "gvisor", "--", "uname", "-r"]), host_kernel);
    up.ok(&["delete", "gvisor"]);

    // sandboxd in an image that has none (a static busybox, no libc): the node's kit, under
    // the default handler and runsc.
    let layout = up.data.path().join("minimal");
    let built = Command::new("python3")
        .arg(repo().join("examples/image/build.py"))
        .args(["--minimal", "--out"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(built.status.success(), "build.py --minimal: {built:?}");
    up.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--as",
        "localhost/minimal:1",
    ]);
    for (name, class) in [("bare", "crun"), ("bare-gvisor", "runsc")] {
        let manifest = tempfile::NamedTempFile::new().unwrap();
        fs_err::write(
            manifest.path(),
            format!(
                "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: {name}}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox/sandboxd: \"true\", agent-sandbox/sandboxd-args: \"--no-legacy\"}}\n    spec:\n      runtimeClassName: {class}\n      containers:\n      - name: main\n        image: localhost/minimal:1\n        imagePullPolicy: IfNotPresent\n        readinessProbe: {{httpGet: {{path: /v1/health, port: 8080}}, periodSeconds: 1}}\n"
            ),
        )
        .unwrap();
        up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
        wait_until(
            &format!("the {class} sandbox of an image without sandboxd is Ready"),
            Duration::from_secs(90),
            || up.ok(&["get", "sandboxes", name]).contains("True"),
        );
        assert_eq!(
            up.ok(&[
                "exec",
                name,
                "-c",
                "echo $((6 * 7)); test -e /lib/libc.so.6 || echo no-libc"
            ]),
            "42\nno-libc\n"
        );
        let log = up.ok(&["logs", name]);
        assert!(log.contains("workload started"), "{log}");
        up.ok(&["delete", name]);
    }
    let err = up.fails(&["get", "sandboxes", "my-sandbox"]);
    assert!(err.contains("nothing named my-sandbox"), "{err}");
}

/// With no API server behind the kubeconfig, a verb says so once, in its own words, within
/// moments, and names the kubeconfig; kube's own per-request error line does not precede it.
#[test]
fn a_verb_without_a_server_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _) = unreachable_kubeconfig(dir.path());
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["get", "--kubeconfig"])
        .arg(&kubeconfig)
        .env_remove("AGENT_SANDBOX_LOG_LEVEL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("does not answer"), "{err}");
    assert!(err.contains(&kubeconfig.display().to_string()), "{err}");
    assert!(err.contains("agent-sandbox up"), "{err}");
    assert!(
        !err.contains("kube_client"),
        "kube's own error line is noise here:\n{err}"
    );
}

/// The pause extension end to end: `pause` freezes a running sandbox (its `Paused` condition
/// True with the reason, Ready False, the router and exec refuse it), `unpause` thaws it with
/// its process and memory as they were; and the bad inputs: another annotation value, pausing
/// twice, unpausing a running sandbox, pausing a suspended one, deleting a paused one.
#[test]
fn paused_sandbox_keeps_its_memory() {
    let up = Up::start("asbxe2e3", "10.93.0.0/16");
    // The workload counts in memory and writes the count out; sandboxd comes from the node.
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(
        manifest.path(),
        format!(
            "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {{name: pz}}\nspec:\n  podTemplate:\n    metadata:\n      annotations: {{agent-sandbox/sandboxd: \"true\"}}\n    spec:\n      containers:\n      - name: main\n        image: \"{IMAGE}\"\n        imagePullPolicy: IfNotPresent\n        command: [sh, -c, 'echo $$$$ > /tmp/pid; i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.05; done']\n        readinessProbe: {{httpGet: {{path: /v1/health, port: 8080}}, periodSeconds: 1}}\n        livenessProbe: {{httpGet: {{path: /v1/health, port: 8080}}, initialDelaySeconds: 5, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1}}\n"
        ),
    )
    .unwrap();
    up.ok(&["apply", "-f", manifest.path().to_str().unwrap()]);
    wait_until("pz is Ready", Duration::from_secs(90), || {
        up.ok(&["get", "sandboxes", "pz"]).contains("True")
    });
    let count = || -> u64 {
        up.ok(&["exec", "pz", "--", "cat", "/tmp/n"])
            .trim()
            .parse()
            .unwrap()
    };
    let pid = |up: &Up| {
        up.ok(&[
            "exec",
            "pz",
            "-c",
            "kill -0 $(cat /tmp/pid) && cat /tmp/pid",
        ])
    };
    let restarts = |up: &Up| -> serde_json::Value {
        let pod: serde_json::Value =
            serde_json::from_str(&up.kubectl(&["get", "pod", "pz", "-o", "json"])).unwrap();
        pod["status"]["containerStatuses"][0]["restartCount"].clone()
    };
    // Past the liveness probe's initial delay: from here on it runs every second.
    std::thread::sleep(Duration::from_secs(6));
    let restarts_before = restarts(&up);
    let pid_before = pid(&up);
    std::thread::sleep(Duration::from_millis(500));
    let before_pause = count();
    assert!(before_pause > 0);
    let sandbox_json = |up: &Up| -> serde_json::Value {
        serde_json::from_str(&up.kubectl(&["get", "sandbox", "pz", "-o", "json"])).unwrap()
    };
    let condition = |v: &serde_json::Value, t: &str| -> (String, String, String) {
        let c = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_default();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        (s("status"), s("reason"), s("message"))
    };
    // Never paused: no Paused condition (upstream's status unchanged); unpausing is a no-op.
    assert_eq!(condition(&sandbox_json(&up), "Paused").0, "");
    up.ok(&["unpause", "pz"]);

    let out = up.cli(&["pause", "pz"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("sandbox default/pz: paused in"), "{said}");
    let v = sandbox_json(&up);
    assert_eq!(
        condition(&v, "Paused"),
        (
            "True".into(),
            "SandboxPaused".into(),
            "Sandbox is paused: its processes are frozen and keep their memory".into()
        )
    );
    assert_eq!(condition(&v, "Ready").1, "SandboxPaused");
    up.ok(&["pause", "pz"]); // twice: no change
    let err = up.fails(&["exec", "pz", "--", "true"]);
    assert!(err.contains("pz is paused; unpause it"), "{err}");
    // The router refuses it at once, naming it.
    let token = up.token();
    let auth = format!("Bearer {token}");
    let (code, body) = router_request(
        &up,
        "GET",
        "/v1/health",
        &[
            ("X-Sandbox-ID", "pz"),
            ("X-Sandbox-Port", "8080"),
            ("Authorization", &auth),
        ],
        "",
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("Sandbox pz is paused") && body.contains("Unpause"),
        "{body}"
    );
    // The liveness probe does not run while frozen: no restart after several periods.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(restarts(&up), restarts_before);

    let out = up.cli(&["unpause", "pz"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("running in"));
    assert_eq!(condition(&sandbox_json(&up), "Paused").1, "SandboxRunning");
    wait_until("pz is Ready again", Duration::from_secs(30), || {
        up.ok(&["get", "sandboxes", "pz"]).contains("True")
    });
    // The same process, its count going on from where it was (in memory: a fresh process
    // would start from 1).
    assert_eq!(pid(&up), pid_before);
    let a = count();
    assert!(a >= before_pause, "{a} < {before_pause}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(count() > a);
    up.ok(&["unpause", "pz"]); // a running sandbox: no change

    // Another value means running, and the status says why.
    up.kubectl(&[
        "annotate",
        "sandbox",
        "pz",
        "agent-sandbox-rs.github.io/paused=yes",
    ]);
    wait_until(
        "the status explains the value",
        Duration::from_secs(10),
        || {
            condition(&sandbox_json(&up), "Paused")
                .2
                .contains("only \"true\" pauses")
        },
    );
    up.ok(&["exec", "pz", "--", "true"]);
    up.kubectl(&[
        "annotate",
        "sandbox",
        "pz",
        "agent-sandbox-rs.github.io/paused-",
    ]);

    // A suspended sandbox has no Pod to pause: the verb says so at once.
    up.ok(&["suspend", "pz"]);
    let err = up.fails(&["pause", "pz", "--timeout", "20"]);
    assert!(err.contains("suspended and has no Pod to pause"), "{err}");
    assert_eq!(condition(&sandbox_json(&up), "Paused").1, "NoPodToPause");
    // Resumed with the annotation still there: the new Pod is frozen once it runs and is ready.
    up.ok(&["resume", "pz", "--timeout", "0"]);
    wait_until(
        "the resumed sandbox is paused",
        Duration::from_secs(60),
        || condition(&sandbox_json(&up), "Paused").1 == "SandboxPaused",
    );

    // Deleting a paused sandbox is prompt.
    let t = Instant::now();
    up.ok(&["delete", "pz"]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "deleting a paused sandbox took {:?}",
        t.elapsed()
    );
}
