//! Bad input: huge headers, uploads larger than the free space or the size limit, abrupt
//! client disconnects. Each gets a clean error, leaves no partial file, and the daemon keeps
//! serving.

use crate::common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{Daemon, expect_error, http};

async fn still_serving(d: &Daemon) {
    let r = http().get(d.url("/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn visible_entries(dir: &std::path::Path) -> Vec<String> {
    fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn huge_headers_get_431() {
    let d = Daemon::start(&[]);
    let addr = d.rest.trim_start_matches("http://").to_string();
    let status = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = "x".repeat(2 << 20);
        let req = format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let _ = s.write_all(req.as_bytes());
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");
    still_serving(&d).await;
}

#[tokio::test]
async fn upload_limit_flag_refuses_without_partial_file() {
    let d = Daemon::start(&["--max-upload-bytes", "1024"]);
    let c = http();
    let r = c
        .put(d.url("/v1/files/big.bin"))
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 413, "RESOURCE_EXHAUSTED").await;
    assert!(msg.contains("big.bin") && msg.contains("1024"), "{msg}");
    assert!(
        visible_entries(&d.root).is_empty(),
        "no partial or temp file"
    );
    let r = c
        .put(d.url("/v1/files/small.bin"))
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    still_serving(&d).await;
}

#[tokio::test]
async fn upload_larger_than_free_space() {
    let base = std::env::temp_dir().join(format!("sandboxd-tmpfs-{}", std::process::id()));
    let root = base.join("root");
    fs_err::create_dir_all(&root).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "sandboxd-test"])
        .arg(&root)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        let _ = fs_err::remove_dir_all(&base);
        // Without the privilege to mount, the --max-upload-bytes test covers the refusal.
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(root.clone());
    let d = Daemon::start_with_root(base.clone(), root.clone(), &[]);
    let c = http();
    fs_err::write(root.join("existing.bin"), b"keep me").unwrap();
    let r = c
        .put(d.url("/v1/files/existing.bin"))
        .body(vec![1u8; 4 << 20])
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 500, "INTERNAL").await;
    assert!(msg.contains("no space left"), "{msg}");
    assert_eq!(
        fs_err::read(root.join("existing.bin")).unwrap(),
        b"keep me",
        "the old file is intact"
    );
    assert_eq!(
        visible_entries(&root),
        ["existing.bin"],
        "no temp file is left"
    );
    // Legacy upload: same clean failure.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8; 4 << 20]).file_name("legacy.bin"),
    );
    let r = c
        .post(d.lurl("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(visible_entries(&root), ["existing.bin"]);
    // And a write that fits still works.
    let r = c
        .put(d.url("/v1/files/fits.bin"))
        .body(vec![1u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    still_serving(&d).await;
}

#[tokio::test]
async fn aborted_upload_leaves_nothing() {
    let d = Daemon::start(&[]);
    let addr = d.rest.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head =
            "PUT /v1/files/partial.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[0u8; 5000]).unwrap();
        // Dropped mid-body.
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        visible_entries(&d.root).is_empty(),
        "{:?}",
        visible_entries(&d.root)
    );
    still_serving(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_reports_unavailable_and_stops_children() {
    let mut d = Daemon::start(&[]);
    let mut c = d.grpc_client().await;
    use agent_sandbox_sandboxd::pb::{ProcessConfig, StartRequest};
    let s = c
        .start(StartRequest {
            config: Some(ProcessConfig {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $$ > pid; exec sleep 60".into(),
                ],
                ..Default::default()
            }),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid: i32 = fs_err::read_to_string(d.root.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = tokio::task::block_in_place(|| d.terminate());
    assert!(status.is_some(), "sandboxd exits on SIGTERM");
    drop(s);
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || fs_err::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true);
    assert!(gone, "children are terminated on shutdown");
}
