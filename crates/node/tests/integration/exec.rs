//! `kubectl exec` on the embedded node with real sandboxes (busybox; crun, runc and runsc): the node's
//! exec (stdin through `cat`, stdout and stderr apart, exit codes, a terminal that is a
//! `/dev/pts` device and follows resizes, the command killed with what it started when the
//! client goes away), then the real kubectl over HTTPS against an API server whose `pods/exec`
//! provider runs them (exit code, separated streams, `-i`, `-it` under `script`, `kubectl cp`
//! both ways, a killed kubectl). Every wait is bounded.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_node::exec::{self, ExecOptions, ExecSession};
use agent_sandbox_node::{HandlerKind, SandboxEngine};
use common::{AgentEnv, Env, NODE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "localhost/test/busybox:1";

fn sleeper(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"]}]}})
}

fn running(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn opts(command: &[&str], stdin: bool) -> ExecOptions {
    ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
        size: None,
    }
}

async fn read_all(r: Option<exec::ExecReader>) -> String {
    let mut out = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut out).await.unwrap();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Run to completion: (stdout, stderr, exit code), bounded.
async fn run(
    engine: &SandboxEngine,
    uid: &str,
    command: &[&str],
    input: Option<&str>,
) -> (String, String, i32) {
    let s = exec::start(engine, uid, "main", &opts(command, input.is_some()))
        .await
        .unwrap();
    let ExecSession {
        stdin,
        stdout,
        stderr,
        mut process,
        ..
    } = s;
    let feed = async {
        if let (Some(mut w), Some(data)) = (stdin, input) {
            w.write_all(data.as_bytes()).await.unwrap();
        }
    };
    let all = async {
        let (_, out, err) = tokio::join!(feed, read_all(stdout), read_all(stderr));
        let code = process.wait().await.unwrap();
        (out, err, code)
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or_else(|_| panic!("exec {command:?} did not end within 30 s"))
}

/// The process list of the sandbox (`ps` inside it).
async fn ps(engine: &SandboxEngine, uid: &str) -> String {
    run(engine, uid, &["ps", "-o", "pid,args"], None).await.0
}

/// Wait (bounded) until the sandbox's process list satisfies `pred`.
async fn wait_ps(engine: &SandboxEngine, uid: &str, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = ps(engine, uid).await;
        if pred(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; processes:\n{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_crun() {
    exec_in(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runc() {
    exec_in(HandlerKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runsc() {
    exec_in(HandlerKind::Runsc).await;
}

/// Pipes, exit codes, a terminal and no leftovers with one runtime.
async fn exec_in(kind: HandlerKind) {
    if common::need(Some(kind)) {
        return;
    }
    let a = AgentEnv::new(&[kind], None).await;
    a.env.busybox(IMAGE).await;
    a.create_pod(sleeper("shell")).await;
    let pod = a
        .wait_pod("default", "shell", Duration::from_secs(60), running)
        .await;
    let uid = pod.metadata.uid.clone().unwrap();
    let engine = a.engine();

    // kubelet's refusal for a container that does not run.
    assert_eq!(
        exec::check(engine, &pod, "nope").unwrap_err(),
        "container not found (\"nope\")"
    );
    exec::check(engine, &pod, "main").unwrap();

    // stdin through cat, to its end of file.
    let (out, err, code) = run(engine, &uid, &["cat"], Some("hello\nworld\n")).await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("hello\nworld\n", "", 0)
    );

    // stdout and stderr apart, and the exit code.
    let (out, err, code) = run(
        engine,
        &uid,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    )
    .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 3));

    // An exec'd process is as confined as the container's own: no_new_privileges and the same
    // capabilities (gVisor's /proc reports neither).
    if kind != HandlerKind::Runsc {
        let status = |out: &str, key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("{key} missing in {out}"))
        };
        let (own, _, _) = run(engine, &uid, &["cat", "/proc/1/status"], None).await;
        let (out, _, code) = run(engine, &uid, &["cat", "/proc/self/status"], None).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            status(&out, "NoNewPrivs:"),
            "1",
            "{kind}: exec without no_new_privs"
        );
        assert_eq!(status(&out, "CapEff:"), status(&own, "CapEff:"), "{kind}");
        assert_eq!(status(&out, "CapBnd:"), status(&own, "CapBnd:"), "{kind}");
    }

    // A command that is not there: the runtime says so and the exit code is not 0.
    let (_, err, code) = run(engine, &uid, &["/no/such/program"], None).await;
    assert_ne!(code, 0, "{err}");
    println!("{kind}: a missing program: exit {code}, {err:?}");

    let tty = ExecOptions {
        command: vec!["sh".into()],
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
        size: Some((80, 24)),
    };
    if kind == HandlerKind::Runsc {
        // gVisor gives no terminal to a command in a sandbox that started without one.
        let e = exec::start(engine, &uid, "main", &tty).await.err().unwrap();
        assert!(e.to_string().contains("without -t"), "{e}");
    } else {
        terminal_session(engine, &uid, &tty).await;
    }

    // The client goes away: the command and what it started in the background are killed.
    let s = exec::start(
        engine,
        &uid,
        "main",
        &opts(&["sh", "-c", "sleep 1001 & sleep 1002; echo never"], false),
    )
    .await
    .unwrap();
    wait_ps(engine, &uid, "the exec's processes did not show", |l| {
        l.contains("sleep 1001") && l.contains("sleep 1002")
    })
    .await;
    drop(s);
    wait_ps(engine, &uid, "the exec's processes outlived it", |l| {
        !l.contains("sleep 100")
    })
    .await;
    // The container itself is untouched.
    a.wait_pod("default", "shell", Duration::from_secs(5), running)
        .await;
}

/// A shell on a terminal: a /dev/pts device of the size it started with, resized while the
/// shell runs, its exit code.
async fn terminal_session(engine: &SandboxEngine, uid: &str, tty: &ExecOptions) {
    let s = exec::start(engine, uid, "main", tty).await.unwrap();
    let terminal = s.terminal.clone().expect("a terminal");
    assert!(s.stderr.is_none());
    let mut input = s.stdin.unwrap();
    let mut output = s.stdout.unwrap();
    let mut process = s.process;
    let mut seen = Vec::new();
    let session = async {
        input.write_all(b"tty; stty size\n").await.unwrap();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("24 80") {
            let n = output.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        terminal.resize(132, 43).unwrap();
        // A resize reaches the terminal inside asynchronously (under runc through the node's
        // relay): ask until the new size shows, a bounded number of times.
        for _ in 0..50 {
            input.write_all(b"stty size\n").await.unwrap();
            let n = tokio::time::timeout(Duration::from_millis(200), output.read(&mut buf)).await;
            if let Ok(n) = n {
                let n = n.unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            if String::from_utf8_lossy(&seen).contains("43 132") {
                break;
            }
        }
        input.write_all(b"exit 7\n").await.unwrap();
        loop {
            let n = output.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        process.wait().await.unwrap()
    };
    let code = tokio::time::timeout(Duration::from_secs(30), session).await;
    let screen = String::from_utf8_lossy(&seen).into_owned();
    let code =
        code.unwrap_or_else(|_| panic!("the terminal session did not end within 30 s: {screen:?}"));
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("43 132"), "{screen}");
    assert_eq!(code, 7, "{screen}");
}

/// The same as `up` registers (crates/cli/src/commands/up.rs `EngineExec`).
struct EngineExec(Arc<SandboxEngine>);

impl agent_sandbox_apiserver::PodExec for EngineExec {
    fn check(&self, pod: &serde_json::Value, container: &str) -> Result<(), String> {
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
        exec::check(&self.0, &pod, container)
    }

    fn exec(
        &self,
        pod: &serde_json::Value,
        container: &str,
        request: &agent_sandbox_apiserver::ExecRequest,
    ) -> futures::future::BoxFuture<'static, Result<agent_sandbox_apiserver::ExecStreams, String>>
    {
        let engine = Arc::clone(&self.0);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let container = container.to_string();
        let opts = ExecOptions {
            command: request.command.clone(),
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
            size: request.size,
        };
        Box::pin(async move {
            let s = exec::start(&engine, &uid, &container, &opts)
                .await
                .map_err(|e| e.to_string())?;
            let mut process = s.process;
            Ok(agent_sandbox_apiserver::ExecStreams {
                stdin: s.stdin,
                stdout: s.stdout,
                stderr: s.stderr,
                resize: s.terminal.map(|t| {
                    Box::new(move |cols, rows| {
                        let _ = t.resize(cols, rows);
                    }) as Box<dyn Fn(u16, u16) + Send + Sync>
                }),
                exit: Box::pin(async move { process.wait().await.map_err(|e| e.to_string()) }),
            })
        })
    }
}

/// An API server on a loopback HTTPS port (with the kubeconfig kubectl reads), an engine and a
/// node agent, with the exec provider registered. Drop removes the sandboxes.
struct KubectlEnv {
    env: Env,
    server: agent_sandbox_apiserver::RunningApiServer,
    agent: Arc<agent_sandbox_node::agent::NodeAgent>,
    task: tokio::task::JoinHandle<()>,
    _api_dir: tempfile::TempDir,
}

impl KubectlEnv {
    async fn new(kind: agent_sandbox_node::HandlerKind) -> KubectlEnv {
        let env = Env::new(&[kind], None).await;
        let api_dir = tempfile::Builder::new()
            .prefix("asbx-api-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cfg = agent_sandbox_apiserver::Config::new(api_dir.path());
        cfg.tcp_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.node_name = NODE.into();
        let server = agent_sandbox_apiserver::ApiServer::start(cfg)
            .await
            .unwrap();
        let engine = Arc::clone(env.engine.as_ref().unwrap());
        server.set_pod_exec(Arc::new(EngineExec(Arc::clone(&engine))));
        let agent = agent_sandbox_node::agent::NodeAgent::with_config(
            server.client(),
            engine,
            NODE,
            Default::default(),
        );
        agent.register().await.unwrap();
        let task = tokio::spawn(Arc::clone(&agent).run());
        KubectlEnv {
            env,
            server,
            agent,
            task,
            _api_dir: api_dir,
        }
    }

    fn kubeconfig(&self) -> &Path {
        self.server.kubeconfig_path()
    }
}

impl Drop for KubectlEnv {
    fn drop(&mut self) {
        self.agent.stop();
        self.task.abort();
        if !self.agent.wait_idle_blocking(Duration::from_secs(60)) {
            eprintln!("the node agent was still busy after 60 s");
        }
        if let Some(engine) = self.env.engine.take() {
            common::cleanup(
                engine,
                self.env.dir.path().to_path_buf(),
                self.env.config.cgroup_parent.clone(),
                None,
            );
        }
    }
}

fn kubectl_bin() -> Option<PathBuf> {
    std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .or_else(|| agent_sandbox_node::runtime::find_binary("kubectl"))
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run kubectl with the kubeconfig, optional stdin, bounded by 60 s.
async fn kubectl(kc: &Path, args: &[&str], input: Option<&[u8]>) -> Out {
    let mut cmd = tokio::process::Command::new(kubectl_bin().unwrap());
    cmd.arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let (Some(mut w), Some(data)) = (child.stdin.take(), input) {
        w.write_all(data).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not end within 60 s"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_crun() {
    kubectl_exec_and_cp(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_runc() {
    kubectl_exec_and_cp(HandlerKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_runsc() {
    kubectl_exec_and_cp(HandlerKind::Runsc).await;
}

/// The real kubectl against sandboxes of one runtime.
async fn kubectl_exec_and_cp(kind: HandlerKind) {
    if common::need(Some(kind))
        || common::skip_unless(kubectl_bin().is_some(), "kubectl is not installed")
    {
        return;
    }
    let k = KubectlEnv::new(kind).await;
    k.env.busybox(IMAGE).await;
    let client = k.server.client();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(sleeper("k")).unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let uid = loop {
        let p = pods.get("k").await.unwrap();
        if running(&p) {
            break p.metadata.uid.unwrap();
        }
        assert!(Instant::now() < deadline, "{:?}", p.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kc = k.kubeconfig().to_path_buf();
    let version = kubectl(&kc, &["version", "--client"], None).await;
    println!("{}", version.stdout.trim());

    // The exit code comes back; stdout and stderr stay apart. kubectl's SPDY fallback gets a
    // 400 from this server, so a working exec went over WebSocket.
    let o = kubectl(
        &kc,
        &[
            "exec",
            "k",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 3, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "out\n");
    assert!(o.stderr.starts_with("err\n"), "{}", o.stderr);
    assert!(
        o.stderr.contains("command terminated with exit code 3"),
        "{}",
        o.stderr
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let o = kubectl(&kc, &["exec", "k", "--", "true"], None).await;
        times.push(t.elapsed());
        assert_eq!((o.code, o.stdout.as_str()), (0, ""), "{}", o.stderr);
    }
    times.sort();
    println!(
        "{kind}: kubectl exec k -- true, median of 5: {:?}",
        times[2]
    );

    // stdin, to its end (v5 closes the stdin channel).
    let o = kubectl(&kc, &["exec", "-i", "k", "--", "cat"], Some(b"hi\n")).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{}", o.stderr);

    // kube-apiserver's and kubelet's refusals.
    let o = kubectl(&kc, &["exec", "k", "-c", "nope", "--", "true"], None).await;
    assert!(
        o.code != 0 && o.stderr.contains("container nope is not valid for pod k"),
        "{}",
        o.stderr
    );

    // kubectl cp in and out (exec with tar).
    let local = k.env.dir.path().join("note.txt");
    let content = "a small file\nwith two lines\n";
    fs_err::write(&local, content).unwrap();
    let o = kubectl(
        &kc,
        &["cp", local.to_str().unwrap(), "k:/tmp/note.txt"],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let o = kubectl(&kc, &["exec", "k", "--", "cat", "/tmp/note.txt"], None).await;
    assert_eq!(o.stdout, content, "{}", o.stderr);
    let back = k.env.dir.path().join("back.txt");
    let o = kubectl(
        &kc,
        &["cp", "k:/tmp/note.txt", back.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(fs_err::read_to_string(&back).unwrap(), content);

    // A terminal (kubectl under `script`, whose terminal is 100x30): a /dev/pts device of the
    // size kubectl sends.
    if agent_sandbox_node::runtime::find_binary("script").is_some() {
        let line = format!(
            "stty cols 100 rows 30; {} --kubeconfig {} exec -it k -- sh -c 'tty; stty size; exit 5'",
            kubectl_bin().unwrap().display(),
            kc.display()
        );
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("script")
                .args(["-qec", &line, "/dev/null"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kubectl exec -it ended within 60 s")
        .unwrap();
        let screen = String::from_utf8_lossy(&out.stdout);
        if kind == HandlerKind::Runsc {
            // No terminal in gVisor sandboxes: kubectl says why and what to do.
            assert!(screen.contains("without -t"), "{screen}");
            assert_eq!(out.status.code(), Some(1), "{screen}");
        } else {
            assert!(screen.contains("/dev/pts/"), "{screen}");
            assert!(screen.contains("30 100"), "{screen}");
            assert_eq!(out.status.code(), Some(5), "{screen}");
        }
    } else {
        println!("SKIP part: `script` (util-linux) is not installed, kubectl exec -it not run");
    }

    // kubectl goes away: the command it ran is killed.
    let mut held = tokio::process::Command::new(kubectl_bin().unwrap())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["exec", "k", "--", "sh", "-c", "sleep 1003"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let engine = k.env.engine();
    wait_ps(engine, &uid, "kubectl's command did not show", |l| {
        l.contains("sleep 1003")
    })
    .await;
    held.kill().await.unwrap();
    wait_ps(engine, &uid, "kubectl's command outlived kubectl", |l| {
        !l.contains("sleep 1003")
    })
    .await;
}
