//! gRPC `process.v1.ProcessService` through the generated tonic client: every RPC, its status
//! codes, PTY, stdin, signals to the process group, deadlines, cancellation and reflection.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use agent_sandbox_sandboxd::pb::process_service_client::ProcessServiceClient;
use agent_sandbox_sandboxd::pb::{
    self, ExecuteRequest, ProcessConfig, ResizeTtyRequest, SendSignalRequest, StartRequest,
    WriteStdinRequest, start_response::Event, write_stdin_request::Payload,
};
use common::Daemon;
use tonic::Code;

/// An HTTP/2 connection used as a gRPC channel without a client-side deadline. tonic's own
/// channel enforces `grpc-timeout` itself and, its timer starting first, reports its own
/// `CANCELLED` before the server answers; through this one every status is the server's.
#[derive(Clone)]
struct ServerDeadlines(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for ServerDeadlines {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn server_deadline_client(d: &Daemon) -> ProcessServiceClient<ServerDeadlines> {
    let addr = d.grpc.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    ProcessServiceClient::with_origin(ServerDeadlines(send), d.grpc.parse().unwrap())
}

fn cfg(cmd: &[&str]) -> Option<ProcessConfig> {
    Some(ProcessConfig {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        env_vars: HashMap::new(),
        cwd: None,
    })
}

fn alive(pid: i32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

async fn wait_dead(pid: i32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits (at most 2 s) until `pid`, a child of sandboxd, is dead and reaped.
async fn wait_reaped(d: &Daemon, pid: i32) -> bool {
    let parent = d.pid().to_string();
    for _ in 0..100 {
        let gone = match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
            // The pid may be reused: what runs there now is not sandboxd's child.
            Ok(stat) => {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .nth(1)
                    != Some(parent.as_str())
            }
            Err(_) => true,
        };
        if gone {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads the pid a command wrote into `name` under the root (waiting up to 5 s for it).
async fn read_pid(d: &Daemon, name: &str) -> i32 {
    for _ in 0..250 {
        if let Ok(text) = fs_err::read_to_string(d.root.join(name))
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pid in {name}")
}

#[tokio::test]
async fn execute_basics() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let r = c
        .execute(ExecuteRequest {
            config: cfg(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.exit_code, 3,
        "a non-zero exit is a response, not an error"
    );
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");

    // No shell: the argument is passed literally.
    let r = c
        .execute(ExecuteRequest {
            config: cfg(&["echo", "$HOME", "|", "x"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stdout, b"$HOME | x\n");

    // env_vars override the daemon's environment; the default cwd is the root.
    let mut config = cfg(&["sh", "-c", "echo $SANDBOX_TEST_VISIBLE $EXTRA; pwd"]).unwrap();
    config
        .env_vars
        .insert("SANDBOX_TEST_VISIBLE".into(), "overridden".into());
    config.env_vars.insert("EXTRA".into(), "added".into());
    let r = c
        .execute(ExecuteRequest {
            config: Some(config),
        })
        .await
        .unwrap()
        .into_inner();
    let root = fs_err::canonicalize(&d.root).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("overridden added\n{}\n", root.display())
    );

    fs_err::create_dir_all(d.root.join("sub")).unwrap();
    let mut config = cfg(&["pwd"]).unwrap();
    config.cwd = Some("sub".into());
    let r = c
        .execute(ExecuteRequest {
            config: Some(config),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("{}/sub\n", root.display())
    );
}

#[tokio::test]
async fn execute_errors() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let e = c
        .execute(ExecuteRequest { config: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "command is required");
    let e = c
        .execute(ExecuteRequest { config: cfg(&[]) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .execute(ExecuteRequest {
            config: cfg(&["/no/such/binary"]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().starts_with(
            "failed to execute command: command or path not found: \"/no/such/binary\""
        ),
        "{e:?}"
    );
    let e = c
        .execute(ExecuteRequest {
            config: cfg(&["no-such-command-xyz"]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .start(StartRequest {
            config: cfg(&["no-such-command-xyz"]),
            pty: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message()
            .starts_with("failed to start command: command or path not found:"),
        "{e:?}"
    );
    fs_err::write(d.root.join("noexec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let script = d.root.join("noexec.sh").display().to_string();
    let e = c
        .execute(ExecuteRequest {
            config: cfg(&[&script]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .starts_with("failed to execute command: permission denied:"),
        "{e:?}"
    );
    let mut config = cfg(&["pwd"]).unwrap();
    config.cwd = Some("../..".into());
    let e = c
        .execute(ExecuteRequest {
            config: Some(config),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut config = cfg(&["pwd"]).unwrap();
    config.cwd = Some("missing-dir".into());
    let e = c
        .execute(ExecuteRequest {
            config: Some(config),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A parent of the cwd that is a file: upstream fails resolving it, INTERNAL.
    fs_err::write(d.root.join("plain"), "x").unwrap();
    let mut config = cfg(&["pwd"]).unwrap();
    config.cwd = Some("plain/sub".into());
    let e = c
        .execute(ExecuteRequest {
            config: Some(config),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
}

#[tokio::test]
async fn execute_deadline_is_deadline_exceeded_and_kills_the_process() {
    let d = Daemon::start(&[]);
    let mut c = server_deadline_client(&d).await;
    let mut req = tonic::Request::new(ExecuteRequest {
        config: cfg(&["sh", "-c", "echo $$ > pid; exec sleep 30"]),
    });
    req.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let e = c.execute(req).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(e.message(), "context deadline exceeded");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    let pid = read_pid(&d, "pid").await;
    assert!(
        wait_reaped(&d, pid).await,
        "the process of a timed-out Execute is killed and reaped"
    );

    // A deadline that has already passed never starts the command.
    let mut req = tonic::Request::new(ExecuteRequest {
        config: cfg(&["sh", "-c", "touch started"]),
    });
    req.metadata_mut()
        .insert("grpc-timeout", "0n".parse().unwrap());
    let e = c.execute(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!d.root.join("started").exists());

    // A deadline that is not reached changes nothing.
    let mut req = tonic::Request::new(ExecuteRequest {
        config: cfg(&["echo", "in time"]),
    });
    req.set_timeout(Duration::from_secs(30));
    let r = c.execute(req).await.unwrap().into_inner();
    assert_eq!(r.stdout, b"in time\n");
}

#[tokio::test]
async fn malformed_grpc_timeout_is_internal() {
    let d = Daemon::start(&[]);
    let mut c = server_deadline_client(&d).await;
    for (value, why) in [
        ("1x", "transport: timeout unit is not recognized: \"1x\""),
        ("S", "transport: timeout string is too short: \"S\""),
        (
            "123456789S",
            "transport: timeout string is too long: \"123456789S\"",
        ),
        ("1.5S", "strconv.ParseUint: parsing \"1.5\": invalid syntax"),
    ] {
        let mut req = tonic::Request::new(ExecuteRequest {
            config: cfg(&["sh", "-c", "touch ran"]),
        });
        req.metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        let e = c.execute(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{value}: {e:?}");
        assert_eq!(e.message(), format!("malformed grpc-timeout: {why}"));
    }
    assert!(
        !d.root.join("ran").exists(),
        "a call with a malformed deadline never runs"
    );
}

#[tokio::test]
async fn execute_dropped_by_the_client_kills_the_process() {
    let d = Daemon::start(&[]);
    let c = d.grpc_client().await;
    let call = tokio::spawn({
        let mut c = c.clone();
        async move {
            c.execute(ExecuteRequest {
                config: cfg(&["sh", "-c", "echo $$ > pid; exec sleep 30"]),
            })
            .await
        }
    });
    let pid = read_pid(&d, "pid").await;
    assert!(alive(pid));
    // Dropping the call resets the HTTP/2 stream (the client's CANCELLED).
    call.abort();
    assert!(
        wait_reaped(&d, pid).await,
        "a cancelled Execute's process is killed and reaped"
    );
}

#[tokio::test]
async fn execute_with_output_held_open_fails_as_upstream() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    // The command succeeds at once, but a background child keeps its stdout open past the
    // 10 s wait delay: upstream (Go's exec.Cmd) answers INTERNAL.
    // A failing command in the same situation reports its exit code.
    let started = std::time::Instant::now();
    let mut c2 = c.clone();
    let (ok, failed) = tokio::join!(
        c.execute(ExecuteRequest {
            config: cfg(&["sh", "-c", "sleep 30 & echo $! > bg; echo hi"]),
        }),
        c2.execute(ExecuteRequest {
            config: cfg(&["sh", "-c", "sleep 30 & echo $! > bg2; exit 4"]),
        })
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    let e = ok.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(
        e.message()
            .starts_with("failed to execute command: WaitDelay expired before I/O complete"),
        "{e:?}"
    );
    assert_eq!(failed.unwrap().into_inner().exit_code, 4);
    let _ = kill_leftover(read_pid(&d, "bg").await);
    let _ = kill_leftover(read_pid(&d, "bg2").await);
}

/// Kills a leftover background process of a test.
fn kill_leftover(pid: i32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
}

async fn collect(
    mut stream: tonic::Streaming<pb::StartResponse>,
) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    let mut events = 0;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        events += 1;
        match msg.event.unwrap() {
            Event::Init(_) => assert_eq!(events, 1, "InitEvent only first"),
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(e) => exit = Some(e.exit_code),
        }
    }
    (out, err, exit)
}

#[tokio::test]
async fn start_streams_and_stdin() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let mut s = c
        .start(StartRequest {
            config: cfg(&["sh", "-c", "echo a; echo b >&2; exit 7"]),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let Some(Event::Init(init)) = first.event else {
        panic!("InitEvent first, got {first:?}")
    };
    assert!(init.process_id > 0);
    let (out, err, exit) = collect(s).await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), exit),
        (&b"a\n"[..], &b"b\n"[..], Some(7))
    );

    // stdin: write, then EOF.
    let mut s = c
        .start(StartRequest {
            config: cfg(&["cat"]),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!()
    };
    let id = init.process_id;
    c.write_stdin(WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Input(b"hello ".to_vec())),
    })
    .await
    .unwrap();
    c.write_stdin(WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Input(b"stdin".to_vec())),
    })
    .await
    .unwrap();
    c.write_stdin(WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Eof(())),
    })
    .await
    .unwrap();
    // After the close: writing or closing again is INTERNAL, as upstream (its pipe is closed);
    // NOT_FOUND once the process is gone. An empty write is accepted.
    for payload in [Payload::Input(b"late".to_vec()), Payload::Eof(())] {
        let e = c
            .write_stdin(WriteStdinRequest {
                process_id: id,
                payload: Some(payload),
            })
            .await
            .unwrap_err();
        assert!(matches!(e.code(), Code::Internal | Code::NotFound), "{e:?}");
    }
    let (out, _, exit) = collect(s).await;
    assert_eq!(out, b"hello stdin");
    assert_eq!(exit, Some(0));
}

#[tokio::test]
async fn unknown_ids_and_bad_signals() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let e = c
        .write_stdin(WriteStdinRequest {
            process_id: 999,
            payload: Some(Payload::Input(b"x".to_vec())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "process 999 not found");
    let e = c
        .send_signal(SendSignalRequest {
            process_id: 999,
            signal: pb::Signal::Sigterm as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .resize_tty(ResizeTtyRequest {
            process_id: 999,
            cols: 80,
            rows: 24,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut s = c
        .start(StartRequest {
            config: cfg(&["sleep", "30"]),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!()
    };
    let id = init.process_id;
    for (bad, name) in [(0, "SIGNAL_UNSPECIFIED"), (1, "1"), (5, "5"), (99, "99")] {
        let e = c
            .send_signal(SendSignalRequest {
                process_id: id,
                signal: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "signal {bad}");
        assert!(
            e.message()
                .starts_with(&format!("unsupported or unspecified signal: {name};")),
            "{e:?}"
        );
    }
    let e = c
        .resize_tty(ResizeTtyRequest {
            process_id: id,
            cols: 80,
            rows: 24,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "no PTY");

    // stdin after EOF (sleep does not exit on it): empty writes are accepted; writing or
    // closing again is INTERNAL, as upstream (its pipe is closed).
    let write = |payload| WriteStdinRequest {
        process_id: id,
        payload,
    };
    c.write_stdin(write(Some(Payload::Eof(())))).await.unwrap();
    c.write_stdin(write(None)).await.unwrap();
    c.write_stdin(write(Some(Payload::Input(Vec::new()))))
        .await
        .unwrap();
    let e = c
        .write_stdin(write(Some(Payload::Input(b"x".to_vec()))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().starts_with("failed to write stdin"), "{e:?}");
    let e = c
        .write_stdin(write(Some(Payload::Eof(()))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().starts_with("failed to close stdin"), "{e:?}");
    c.send_signal(SendSignalRequest {
        process_id: id,
        signal: pb::Signal::Sigkill as i32,
    })
    .await
    .unwrap();
    let (_, _, exit) = collect(s).await;
    assert_eq!(
        exit,
        Some(-1),
        "killed by a signal reports -1 like upstream"
    );
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let mut s = c
        .start(StartRequest {
            config: cfg(&["sh", "-c", "sleep 30 & echo $! > bg; echo ready; wait"]),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!()
    };
    let Some(Event::Stdout(ready)) = s.message().await.unwrap().unwrap().event else {
        panic!()
    };
    assert_eq!(ready, b"ready\n");
    let bg: i32 = fs_err::read_to_string(d.root.join("bg"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(bg));
    c.send_signal(SendSignalRequest {
        process_id: init.process_id,
        signal: pb::Signal::Sigterm as i32,
    })
    .await
    .unwrap();
    let (_, _, exit) = collect(s).await;
    assert!(exit.is_some());
    assert!(
        wait_dead(bg).await,
        "the background child got the signal too"
    );
}

#[tokio::test]
async fn client_disconnect_kills_the_process() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let mut s = c
        .start(StartRequest {
            config: cfg(&["sh", "-c", "echo $$ > me; echo go; exec sleep 30"]),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap();
    s.message().await.unwrap();
    let pid: i32 = fs_err::read_to_string(d.root.join("me"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(s);
    drop(c);
    assert!(
        wait_dead(pid).await,
        "dropping the Start stream kills the process"
    );
}

#[tokio::test]
async fn start_deadline_ends_the_stream_and_kills_the_process() {
    let d = Daemon::start(&[]);
    let mut c = server_deadline_client(&d).await;
    let mut req = tonic::Request::new(StartRequest {
        config: cfg(&["sh", "-c", "echo $$ > me; echo go; exec sleep 30"]),
        pty: None,
    });
    req.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let mut s = c.start(req).await.unwrap().into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!("InitEvent first")
    };
    let Some(Event::Stdout(go)) = s.message().await.unwrap().unwrap().event else {
        panic!("stdout next")
    };
    assert_eq!(go, b"go\n");
    let e = s.message().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(e.message(), "context deadline exceeded");
    assert!(took < Duration::from_millis(1500), "ended after {took:?}");
    let pid = read_pid(&d, "me").await;
    assert!(
        wait_reaped(&d, pid).await,
        "the process is killed and reaped"
    );
    // The process leaves the registry.
    let mut removed = false;
    for _ in 0..100 {
        let e = c
            .send_signal(SendSignalRequest {
                process_id: init.process_id,
                signal: pb::Signal::Sigterm as i32,
            })
            .await;
        if let Err(e) = e {
            assert_eq!(e.code(), Code::NotFound);
            assert_eq!(
                e.message(),
                format!("process {} not found", init.process_id)
            );
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(removed, "process {} is still registered", init.process_id);

    // A PTY process too.
    let mut req = tonic::Request::new(StartRequest {
        config: cfg(&["sh", "-c", "echo $$ > pty; exec sleep 30"]),
        pty: Some(pb::Pty { cols: 80, rows: 24 }),
    });
    req.set_timeout(Duration::from_millis(500));
    let mut s = c.start(req).await.unwrap().into_inner();
    let code = loop {
        match s.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(e) => break e.code(),
        }
    };
    assert_eq!(code, Code::DeadlineExceeded);
    let pid = read_pid(&d, "pty").await;
    assert!(wait_reaped(&d, pid).await);
}

#[tokio::test]
async fn pty_size_resize_and_merge() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let mut s = c
        .start(StartRequest {
            config: cfg(&[
                "sh",
                "-c",
                "stty size; echo to-stderr >&2; read line; stty size; echo got:$line",
            ]),
            pty: Some(pb::Pty { cols: 80, rows: 24 }),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!()
    };
    let id = init.process_id;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("to-stderr") {
        match tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .event
        {
            Some(Event::Stdout(b)) => seen.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("24 80"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    c.resize_tty(ResizeTtyRequest {
        process_id: id,
        cols: 100,
        rows: 40,
    })
    .await
    .unwrap();
    c.write_stdin(WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Input(b"hi\n".to_vec())),
    })
    .await
    .unwrap();
    let (out, err, exit) = collect(s).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("40 100"), "{text:?}");
    assert!(text.contains("got:hi"), "{text:?}");
    assert!(err.is_empty(), "a PTY merges stderr into stdout");
    assert_eq!(exit, Some(0));
    let e = c
        .resize_tty(ResizeTtyRequest {
            process_id: id,
            cols: 1,
            rows: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        e.code(),
        Code::NotFound | Code::FailedPrecondition
    ));
}

#[tokio::test]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let d = Daemon::start(&[]);
    let channel = tonic::transport::Endpoint::from_shared(d.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"process.v1.ProcessService".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn no_zombies_are_left() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    for _ in 0..20 {
        c.execute(ExecuteRequest {
            config: cfg(&["true"]),
        })
        .await
        .unwrap();
    }
    for _ in 0..5 {
        let s = c
            .start(StartRequest {
                config: cfg(&["true"]),
                pty: None,
            })
            .await
            .unwrap()
            .into_inner();
        collect(s).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let me = d.pid().to_string();
    let mut zombies = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs_err::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.len() > 1 && fields[1] == me && fields[0] == "Z" {
            zombies.push(entry.file_name());
        }
    }
    assert!(
        zombies.is_empty(),
        "zombie children of sandboxd: {zombies:?}"
    );
}
