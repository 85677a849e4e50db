//! Process lifecycle: entrypoint-wrapper mode (sandboxd runs the workload and exits with its
//! code) and orphan reaping as a subreaper.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_sandbox_sandboxd::pb::{ExecuteRequest, ProcessConfig};
use common::Daemon;

#[test]
fn entrypoint_wrapper_exits_with_the_workload_code() {
    let base = std::env::temp_dir().join(format!("sandboxd-wrap-{}", std::process::id()));
    fs_err::create_dir_all(&base).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args([
            "--listen-host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--rest-port",
            "0",
            "--legacy-port",
            "0",
        ])
        .arg("--root-dir")
        .arg(&base)
        .args(["--", "sh", "-c", "echo wrapped-output; pwd; exit 5"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "sandboxd did not exit after its workload"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(5), "{out}");
    assert!(
        out.contains("wrapped-output"),
        "the workload shares stdout: {out}"
    );
    assert!(
        out.contains(&fs_err::canonicalize(&base).unwrap().display().to_string()),
        "it runs in the root: {out}"
    );
    let _ = fs_err::remove_dir_all(&base);
}

fn zombie_children(ppid: u32) -> Vec<String> {
    let me = ppid.to_string();
    let mut out = Vec::new();
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
            out.push(stat);
        }
    }
    out
}

#[tokio::test]
async fn orphans_are_reaped_as_a_subreaper() {
    let d = Daemon::start(&["--subreaper"]);
    let mut c = d.grpc_client().await;
    for _ in 0..3 {
        let r = c
            .execute(ExecuteRequest {
                config: Some(ProcessConfig {
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "sleep 0.2 >/dev/null 2>&1 & exit 0".into(),
                    ],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.exit_code, 0);
    }
    // The orphaned sleeps are re-parented to sandboxd and must be reaped when they exit.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let zombies = zombie_children(d.pid());
    assert!(zombies.is_empty(), "unreaped orphans: {zombies:?}");
    // The daemon still serves.
    let r = c
        .execute(ExecuteRequest {
            config: Some(ProcessConfig {
                command: vec!["true".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().exit_code, 0);
}
