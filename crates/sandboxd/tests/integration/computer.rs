//! Computer use without a display or a browser: managed services are restarted when they
//! exit, the desktop API says when there is no desktop, and the DevTools front rewrites `Host`,
//! drops `Origin` and names the client's address in DevTools URLs (against a stand-in for the
//! browser's endpoint). The real X server and Chromium are tested end to end in the CLI crate.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::{Daemon, http};

#[tokio::test]
async fn services_are_restarted_and_listed() {
    let d = Daemon::start(&["--service", "blink=sleep 0.1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: serde_json::Value = http()
            .get(d.url("/v2/services"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s = &v["services"][0];
        assert_eq!(s["name"], "blink", "{v}");
        if s["restarts"].as_u64().unwrap() >= 2 {
            assert_eq!(s["last_exit"], "exited with code 0", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "two restarts within 10 s: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn desktop_calls_without_a_desktop_are_404() {
    let d = Daemon::start(&[]);
    let r = http()
        .get(d.url("/v2/desktop/screenshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("--desktop-display"));
}

#[tokio::test]
async fn unknown_display_is_503() {
    let d = Daemon::start(&["--desktop-display", ":987"]);
    let r = http()
        .post(d.url("/v2/desktop/mouse/click"))
        .json(&serde_json::json!({"x": 1, "y": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("X server of display :987"));
}

/// A stand-in for Chromium's DevTools endpoint: answers one request with a `/json/version`
/// naming itself, and reports the `Host` and `Origin` it was sent.
fn fake_devtools() -> (String, std::sync::mpsc::Receiver<(String, Option<String>)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let me = addr.clone();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let (mut host, mut origin) = (String::new(), None);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(": ") {
                match k.to_ascii_lowercase().as_str() {
                    "host" => host = v.to_string(),
                    "origin" => origin = Some(v.to_string()),
                    _ => {}
                }
            }
        }
        let body = format!(r#"{{"webSocketDebuggerUrl": "ws://{me}/devtools/browser/abc"}}"#);
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        tx.send((host, origin)).unwrap();
    });
    (addr, rx)
}

#[tokio::test]
async fn devtools_front_rewrites_host_origin_and_urls() {
    let (upstream, seen) = fake_devtools();
    let base = std::env::temp_dir().join(format!("sandboxd-cdp-{}", std::process::id()));
    let root = base.join("root");
    fs_err::create_dir_all(&root).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let d = Daemon::start_with_root(
        base,
        root,
        &["--cdp-port", &port.to_string(), "--cdp-upstream", &upstream],
    );
    let r = http()
        .get(format!("http://127.0.0.1:{port}/json/version"))
        .header("Host", "router.example:8080")
        .header("X-Forwarded-Host", "router.example:8080")
        .header("Origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["webSocketDebuggerUrl"],
        "ws://router.example:8080/devtools/browser/abc"
    );
    let (host, origin) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(host, upstream);
    assert_eq!(origin, None);
    drop(d);
}
