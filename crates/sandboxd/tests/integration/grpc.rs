//! gRPC `process.v1.ProcessService` through the generated tonic client: every RPC, its status
//! codes, PTY, stdin, signals to the process group, cancellation and reflection.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use agent_sandbox_sandboxd::pb::{
    self, ExecuteRequest, ProcessConfig, ResizeTtyRequest, SendSignalRequest, StartRequest,
    WriteStdinRequest, start_response::Event, write_stdin_request::Payload,
};
use common::Daemon;
use tonic::Code;

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
    let e = c
        .execute(ExecuteRequest {
            config: cfg(&["no-such-command-xyz"]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    fs_err::write(d.root.join("noexec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let script = d.root.join("noexec.sh").display().to_string();
    let e = c
        .execute(ExecuteRequest {
            config: cfg(&[&script]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
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
}

#[tokio::test]
async fn execute_deadline_kills_the_process() {
    let d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    let mut req = tonic::Request::new(ExecuteRequest {
        config: cfg(&["sh", "-c", "echo $$ > pid; exec sleep 30"]),
    });
    req.set_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let e = c.execute(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid: i32 = fs_err::read_to_string(d.root.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_dead(pid).await,
        "the process of a timed-out Execute is killed"
    );
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
    let e = c
        .write_stdin(WriteStdinRequest {
            process_id: id,
            payload: Some(Payload::Input(b"late".to_vec())),
        })
        .await;
    if let Err(e) = e {
        assert!(
            matches!(e.code(), Code::FailedPrecondition | Code::NotFound),
            "{e:?}"
        );
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
    for bad in [0, 1, 5, 99] {
        let e = c
            .send_signal(SendSignalRequest {
                process_id: id,
                signal: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "signal {bad}");
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
