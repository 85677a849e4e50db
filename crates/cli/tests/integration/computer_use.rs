//! Computer use end to end: the `desktop` and `browser` images built from this machine's Debian
//! packages, their templates and warm pools, the desktop API (screenshots, clicks, keys, bad
//! input, a dead X server) and the browser's DevTools endpoint through the router, driven by
//! playwright-core and by a plain CDP WebSocket client. Needs what e2e.rs needs, plus Debian's
//! chromium, xvfb, xdotool, matchbox-window-manager and xterm, and `npm ci` in
//! crates/cli/tests/cdp (scripts/test.sh does all of it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::e2e::{Up, claim_sandbox, dechunk_bytes, repo, wait_until};

/// The desktop image's screen.
const SCREEN: (u32, u32) = (1280, 800);

/// A page that is one big blue button; a click turns it red and sets `#out`.
const PAGE: &str = r#"<!doctype html><html><head><title>computer use</title><style>
html, body { margin: 0; height: 100%; }
#go { position: fixed; inset: 0; width: 100%; height: 100%; border: 0; background: rgb(0, 0, 255); }
#go.done { background: rgb(255, 0, 0); }
#out { position: fixed; left: 0; top: 0; }
</style></head><body><button id="go" onclick="this.className='done'; document.getElementById('out').textContent='clicked'"></button><span id="out">waiting</span></body></html>"#;

/// An HTTP/1.1 answer: status, head (lower-case) and body bytes.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request through the router to `port` of `sandbox`.
fn call(up: &Up, sandbox: &str, port: u16, method: &str, path: &str, body: &str) -> Answer {
    let addr = up.router.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nX-Sandbox-ID: {sandbox}\r\nX-Sandbox-Port: {port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        up.token(),
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk_bytes(&body);
    }
    Answer { status, head, body }
}

/// A decoded screenshot: width, height, RGB.
fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Share of the pixels of exactly this colour.
fn share(rgb: &[u8], colour: [u8; 3]) -> f64 {
    let n = rgb.chunks_exact(3).filter(|p| *p == colour).count();
    n as f64 / (rgb.len() / 3) as f64
}

fn screenshot(up: &Up, sandbox: &str) -> (u32, u32, Vec<u8>) {
    let a = call(up, sandbox, 8080, "GET", "/v2/desktop/screenshot", "");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.head.contains("content-type: image/png"), "{}", a.head);
    decode(&a.body)
}

/// Starts a web server on port 8000 inside the sandbox, serving [`PAGE`] as its index.
fn serve_page(up: &Up, claim: &str) {
    let script = format!(
        "mkdir -p /srv && cat > /srv/index.html <<'EOF'\n{PAGE}\nEOF\ncd /srv && python3 -m http.server 8000 >/dev/null 2>&1 &"
    );
    up.ok(&["exec", claim, "-c", &script]);
    let check = "python3 -c \"import urllib.request as u; print(len(u.urlopen('http://127.0.0.1:8000/').read()))\"";
    wait_until("the page is served", Duration::from_secs(20), || {
        up.cli(&["exec", claim, "-c", check]).status.success()
    });
}

/// Applies `examples/manifests/<kind>.yaml` with one ready sandbox in its pool (CI has 2 cores).
fn apply_one(up: &Up, kind: &str, dir: &Path) {
    let text =
        fs_err::read_to_string(repo().join(format!("examples/manifests/{kind}.yaml"))).unwrap();
    let path = dir.join(format!("{kind}.yaml"));
    fs_err::write(&path, text.replace("replicas: 2", "replicas: 1")).unwrap();
    up.ok(&["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn desktop_and_browser_sandboxes() {
    let cdp = repo().join("crates/cli/tests/cdp");
    assert!(
        cdp.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing; run: PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix {}",
        cdp.display()
    );
    let up = Up::start_with_gui("asbxbrw1", "10.81.0.0/16", &["desktop", "browser"]);
    let tmp = tempfile::tempdir().unwrap();
    apply_one(&up, "desktop", tmp.path());
    apply_one(&up, "browser", tmp.path());
    wait_until("both pools are Ready", Duration::from_secs(120), || {
        let pools = up.ok(&["get", "pools"]);
        pools.lines().filter(|l| l.contains("1/1")).count() == 2
    });

    desktop(&up);
    browser(&up);
    python_sdk(&up, tmp.path());
}

/// Runs Debian's python3 on the Python SDK's sources against this instance.
fn python(up: &Up, args: &[&str]) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .args(args)
        .env("PYTHONPATH", repo().join("sdk/python/src"))
        .env("AGENT_SANDBOX_DATA_DIR", up.data_dir())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// The Python SDK: `sandbox.computer` with its typed errors, `sandbox.browser`, and the example
/// agent loop (observe by screenshot, act by clicks and keys, steps recorded).
fn python_sdk(up: &Up, dir: &Path) {
    let script = r#"
import asyncio
from agent_sandbox_sdk import InvalidActionError, SandboxClient
with SandboxClient() as client:
    sb = client.create_sandbox(warmpool="browser-pool", sandbox_ready_timeout=120)
    v = sb.browser.version()
    assert v["webSocketDebuggerUrl"].startswith("ws://"), v
    assert sb.browser.cdp_headers()["X-Sandbox-Port"] == "9222"
    sb.terminate()
    sb = client.create_sandbox(warmpool="desktop-pool", sandbox_ready_timeout=120)
    assert sb.computer.get_screen_size() == (1280, 800)
    sb.computer.move_mouse(10, 20)
    assert sb.computer.get_cursor_position() == (10, 20)
    for bad in (lambda: sb.computer.left_click(1280, 0), lambda: sb.computer.press("NoSuchKey")):
        try:
            bad()
            raise SystemExit("no InvalidActionError")
        except InvalidActionError as e:
            assert e.status_code == 400, e
    assert sb.computer.screenshot(scale=0.5)[1:4] == b"PNG"
    from agent_sandbox_sdk.async_client import AsyncSandbox
    assert asyncio.run(AsyncSandbox(sb).computer.get_cursor_position()) == (10, 20)
    sb.terminate()
print("sdk ok")
"#;
    let out = python(up, &["-c", script]);
    assert!(
        out.status.success(),
        "the Python SDK: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("agent-run");
    let example = repo().join("sdk/python/examples/computer_use_agent.py");
    let out = python(
        up,
        &[
            example.to_str().unwrap(),
            "desktop-pool",
            run.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "the agent loop: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = fs_err::read_to_string(run.join("steps.jsonl")).unwrap();
    assert!(steps.contains(r#""kind": "done""#), "{steps}");
    assert!(run.join("step-00.png").is_file());
}

fn desktop(up: &Up) {
    let claim = up
        .ok(&["claim", "--pool", "desktop-pool"])
        .trim()
        .to_owned();
    let sandbox = claim_sandbox(up, &claim);
    let (w, h, _) = screenshot(up, &sandbox);
    assert_eq!((w, h), SCREEN);
    let size = call(up, &sandbox, 8080, "GET", "/v2/desktop/screen", "");
    let size: serde_json::Value = serde_json::from_slice(&size.body).unwrap();
    assert_eq!(
        size,
        serde_json::json!({"width": SCREEN.0, "height": SCREEN.1})
    );

    // Open the page: the address bar, typed text and Return.
    serve_page(up, &claim);
    let press = |keys: &str| {
        call(
            up,
            &sandbox,
            8080,
            "POST",
            "/v2/desktop/keyboard/press",
            keys,
        )
    };
    assert_eq!(press(r#"{"keys": ["ctrl+l"]}"#).status, 200);
    let typed = call(
        up,
        &sandbox,
        8080,
        "POST",
        "/v2/desktop/keyboard/type",
        r#"{"text": "http://127.0.0.1:8000/"}"#,
    );
    assert_eq!(typed.status, 200, "{}", typed.text());
    assert_eq!(press(r#"{"keys": ["Return"]}"#).status, 200);
    let blue = [0, 0, 255];
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let (_, _, rgb) = screenshot(up, &sandbox);
        if share(&rgb, blue) > 0.5 {
            break rgb;
        }
        assert!(Instant::now() < deadline, "the page shows within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let windows = call(up, &sandbox, 8080, "GET", "/v2/desktop/windows", "");
    assert!(
        windows.text().contains("computer use"),
        "{}",
        windows.text()
    );

    // Click the button by coordinates; the next screenshots show the change.
    let (x, y) = (SCREEN.0 / 2, SCREEN.1 / 2 + 50);
    let click = call(
        up,
        &sandbox,
        8080,
        "POST",
        "/v2/desktop/mouse/click",
        &format!(r#"{{"x": {x}, "y": {y}}}"#),
    );
    assert_eq!(click.status, 200, "{}", click.text());
    let red = [255, 0, 0];
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, _, rgb) = screenshot(up, &sandbox);
        if share(&rgb, red) > 0.5 {
            break rgb;
        }
        assert!(Instant::now() < deadline, "the click turns the page red");
        std::thread::sleep(Duration::from_millis(100));
    };
    let changed = before
        .chunks_exact(3)
        .zip(after.chunks_exact(3))
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > (SCREEN.0 * SCREEN.1 / 2) as usize,
        "{changed} pixels changed"
    );
    let cursor = call(up, &sandbox, 8080, "GET", "/v2/desktop/cursor", "");
    let cursor: serde_json::Value = serde_json::from_slice(&cursor.body).unwrap();
    assert_eq!(cursor, serde_json::json!({"x": x, "y": y}));

    // Region and scale.
    let part = call(
        up,
        &sandbox,
        8080,
        "GET",
        "/v2/desktop/screenshot?x=600&y=400&width=100&height=50&scale=0.5",
        "",
    );
    let (pw, ph, prgb) = decode(&part.body);
    assert_eq!((pw, ph), (50, 25));
    assert!(share(&prgb, red) > 0.9);

    // Bad input: clear errors, and the sandbox keeps serving.
    let off = call(
        up,
        &sandbox,
        8080,
        "POST",
        "/v2/desktop/mouse/click",
        r#"{"x": 5000, "y": 10}"#,
    );
    assert_eq!(off.status, 400, "{}", off.text());
    assert!(
        off.text().contains("outside the 1280x800 screen"),
        "{}",
        off.text()
    );
    let key = press(r#"{"keys": ["NoSuchKeyAtAll"]}"#);
    assert_eq!(key.status, 400, "{}", key.text());
    assert!(key.text().contains("unknown key"), "{}", key.text());
    let region = call(
        up,
        &sandbox,
        8080,
        "GET",
        "/v2/desktop/screenshot?x=1200&width=200&height=10",
        "",
    );
    assert_eq!(region.status, 400, "{}", region.text());
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    call(
                        up,
                        &sandbox,
                        8080,
                        "GET",
                        "/v2/desktop/screenshot?scale=0.25",
                        "",
                    )
                })
            })
            .collect();
        for c in calls {
            let a = c.join().unwrap();
            assert_eq!(a.status, 200, "{}", a.text());
            assert_eq!(decode(&a.body).0, 320);
        }
    });

    // The X server dies (and, to see the error before sandboxd has it back within a fraction of
    // a second, cannot start for a moment): a clear error, then the desktop is back.
    up.ok(&[
        "exec",
        &claim,
        "-c",
        "mv /usr/bin/Xvfb /usr/bin/Xvfb.off && kill -9 $(pidof Xvfb) && \
         while pidof Xvfb >/dev/null; do sleep 0.05; done",
    ]);
    let dead = call(up, &sandbox, 8080, "GET", "/v2/desktop/screenshot", "");
    assert_eq!(dead.status, 503, "{}", dead.text());
    assert!(
        dead.text()
            .contains("X server of display :99 is not running"),
        "{}",
        dead.text()
    );
    up.ok(&["exec", &claim, "-c", "mv /usr/bin/Xvfb.off /usr/bin/Xvfb"]);
    wait_until(
        "sandboxd restarts the X server",
        Duration::from_secs(20),
        || call(up, &sandbox, 8080, "GET", "/v2/desktop/screenshot", "").status == 200,
    );
    let services = call(up, &sandbox, 8080, "GET", "/v2/services", "");
    let services: serde_json::Value = serde_json::from_slice(&services.body).unwrap();
    let xvfb = &services["services"][0];
    assert_eq!(xvfb["name"], "xvfb", "{services}");
    assert!(xvfb["restarts"].as_u64().unwrap() >= 1, "{services}");
    up.ok(&["delete", &claim]);
}

fn browser(up: &Up) {
    let claim = up
        .ok(&["claim", "--pool", "browser-pool"])
        .trim()
        .to_owned();
    let sandbox = claim_sandbox(up, &claim);
    serve_page(up, &claim);

    // /json/version names the router, not the sandbox's own address.
    let version = call(up, &sandbox, 9222, "GET", "/json/version", "");
    assert_eq!(version.status, 200, "{}", version.text());
    let router_host = up.router.trim_start_matches("http://");
    assert!(
        version
            .text()
            .contains(&format!("ws://{router_host}/devtools/browser/")),
        "{}",
        version.text()
    );

    // playwright-core's connectOverCDP through the router.
    let out = Command::new("node")
        .arg(repo().join("crates/cli/tests/cdp/connect.mjs"))
        .args([&up.router, &up.token(), &sandbox, "http://127.0.0.1:8000/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "connect.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["title"], "computer use", "{result}");
    assert_eq!(result["sum"], 10, "{result}");
    assert_eq!(result["after"], "clicked", "{result}");
    assert!(
        result["version"].as_str().unwrap().starts_with("1"),
        "{result}"
    );

    // A plain CDP WebSocket client; one that goes away mid-session harms nobody.
    let ws_path = {
        let v: serde_json::Value = serde_json::from_slice(&version.body).unwrap();
        let url = v["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        url.split_once(router_host).unwrap().1.to_owned()
    };
    let mut abandoned = ws_connect(up, &sandbox, &ws_path);
    ws_send(
        &mut abandoned,
        r#"{"id":1,"method":"Target.createTarget","params":{"url":"about:blank"}}"#,
    );
    drop(abandoned);
    let mut ws = ws_connect(up, &sandbox, &ws_path);
    ws_send(&mut ws, r#"{"id":7,"method":"Browser.getVersion"}"#);
    let reply = ws_reply(&mut ws, 7);
    assert!(
        reply.contains("HeadlessChrome") || reply.contains("Chrome/"),
        "{reply}"
    );
    let services = call(up, &sandbox, 8080, "GET", "/v2/services", "");
    assert!(
        services.text().contains(r#""restarts":0"#),
        "{}",
        services.text()
    );
    up.ok(&["delete", &claim]);
}

/// Opens a WebSocket through the router to the DevTools front of `sandbox`.
fn ws_connect(up: &Up, sandbox: &str, path: &str) -> TcpStream {
    let addr = up.router.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\nX-Sandbox-ID: {sandbox}\r\nX-Sandbox-Port: 9222\r\n\r\n",
        up.token()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Sends one masked text frame.
fn ws_send(s: &mut TcpStream, text: &str) {
    let mask = [7u8, 21, 99, 3];
    let mut frame = vec![0x81];
    let n = text.len();
    if n < 126 {
        frame.push(0x80 | n as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(n as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
}

/// Reads frames until the reply with `id`.
fn ws_reply(s: &mut TcpStream, id: u64) -> String {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let mut n = u64::from(h[1] & 0x7f);
        if n == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            n = u64::from(u16::from_be_bytes(b));
        } else if n == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            n = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; n as usize];
        s.read_exact(&mut payload).unwrap();
        let text = String::from_utf8_lossy(&payload).into_owned();
        if text.contains(&format!(r#""id":{id},"#)) || text.contains(&format!(r#""id":{id}}}"#)) {
            return text;
        }
    }
}
