//! `/v2` exec over HTTP (NDJSON, SSE, JSON), timeouts, output limits, stdin, the process list
//! and the WebSocket PTY.

use crate::common;

use common::{Daemon, expect_error, get_json, http};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

async fn ndjson(d: &Daemon, body: Value) -> Vec<Value> {
    let r = http()
        .post(d.url("/v2/exec"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn exec_streams_ndjson() {
    let d = Daemon::start(&[]);
    let events = ndjson(&d, json!({"command": "echo out; echo err >&2; exit 3"})).await;
    assert_eq!(events[0]["type"], "start");
    assert!(events[0]["pid"].as_i64().unwrap() > 0);
    let out: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    let err: String = events
        .iter()
        .filter(|e| e["type"] == "stderr")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    let exit = events.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["timed_out"], false);

    // argv form, env, cwd, stdin.
    fs_err::create_dir_all(d.root.join("w")).unwrap();
    let events = ndjson(
        &d,
        json!({"command": ["sh", "-c", "echo $FOO; pwd; cat"], "env": {"FOO": "bar"}, "cwd": "w", "stdin": "from stdin"}),
    )
    .await;
    let out: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    let root = fs_err::canonicalize(&d.root).unwrap();
    assert_eq!(out, format!("bar\n{}/w\nfrom stdin", root.display()));
}

#[tokio::test]
async fn exec_sse_and_json() {
    let d = Daemon::start(&[]);
    let r = http()
        .post(d.url("/v2/exec"))
        .header("accept", "text/event-stream")
        .json(&json!({"command": ["printf", "héllo"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(text.contains("event: start\ndata: "), "{text}");
    assert!(
        text.contains("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"héllo\"}"),
        "{text}"
    );
    assert!(text.contains("event: exit\n"), "{text}");

    let r = http()
        .post(d.url("/v2/exec"))
        .header("accept", "application/json")
        .json(&json!({"command": "echo hi; sleep 5", "timeout": 0.3}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["timed_out"], true);
    assert_eq!(v["signal"], 9);
    assert_eq!(v["exit_code"], 137);
    assert!(v["duration_ms"].as_f64().unwrap() < 3000.0);

    let r = http()
        .post(d.url("/v2/exec"))
        .header("accept", "application/json")
        .json(
            &json!({"command": "head -c 100000 /dev/zero | tr '\\0' x", "max_output_bytes": 1000}),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(v["truncated"], true);
}

#[tokio::test]
async fn exec_errors() {
    let d = Daemon::start(&[]);
    let c = http();
    for body in [json!({}), json!({"command": []}), json!({"command": "  "})] {
        let r = c.post(d.url("/v2/exec")).json(&body).send().await.unwrap();
        let msg = expect_error(r, 400, "INVALID_ARGUMENT").await;
        assert!(msg.contains("command is required"), "{msg}");
    }
    let r = c
        .post(d.url("/v2/exec"))
        .json(&json!({"command": ["no-such-binary-zz"]}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c
        .post(d.url("/v2/exec"))
        .json(&json!({"command": "true", "cwd": "../.."}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = c
        .post(d.url("/v2/exec"))
        .json(&json!({"command": "true", "timeout": -1}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let r = c
        .post(d.url("/v2/exec"))
        .json(&json!({"command": "true", "bogus": 1}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let r = c
        .post(d.url("/v2/processes/4242/signal"))
        .json(&json!({"signal": "SIGTERM"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn process_list_and_signal() {
    let d = Daemon::start(&[]);
    let c = http();
    let resp = c
        .post(d.url("/v2/exec"))
        .json(&json!({"command": ["sleep", "30"]}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let start: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = start["process_id"].as_i64().unwrap();
    let v: Value = c
        .get(d.url("/v2/processes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(p["command"], json!(["sleep", "30"]));
    assert_eq!(p["running"], true);
    let r = c
        .post(d.url(&format!("/v2/processes/{id}/signal")))
        .json(&json!({"signal": "BOGUS"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let r = c
        .post(d.url(&format!("/v2/processes/{id}/signal")))
        .json(&json!({"signal": "SIGTERM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let last: Value = serde_json::from_slice(
        rest.split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["signal"], 15);
}

#[tokio::test]
async fn websocket_pty() {
    let d = Daemon::start(&[]);
    let url = format!(
        "{}/v2/pty?command=stty%20size%3B%20read%20x%3B%20echo%20got%3A%24x&cols=90&rows=30",
        d.rest.replace("http", "ws")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use tokio_tungstenite::tungstenite::Message;
    let mut screen = String::new();
    let mut exit = Value::Null;
    let mut sent = false;
    while let Some(msg) = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        match msg.unwrap() {
            Message::Binary(b) => {
                screen.push_str(&String::from_utf8_lossy(&b));
                if !sent && screen.contains("30 90") {
                    ws.send(Message::Text(
                        json!({"type": "resize", "cols": 100, "rows": 40})
                            .to_string()
                            .into(),
                    ))
                    .await
                    .unwrap();
                    ws.send(Message::Binary(b"typed\n".to_vec().into()))
                        .await
                        .unwrap();
                    sent = true;
                }
            }
            Message::Text(t) => exit = serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(screen.contains("got:typed"), "{screen:?}");
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], 0);
}

#[tokio::test]
async fn a_client_that_goes_away_kills_the_command_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&[]);
    let r = http()
        .post(d.url("/v2/exec"))
        .json(&json!({"command": "sleep 30", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let start: Value =
        serde_json::from_slice(first.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(start["type"], "start");
    drop(body);
    // The daemon answers at once, and the command is killed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let health = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            http().get(d.url("/v1/health")).send(),
        )
        .await
        .expect("sandboxd answers while the abandoned command is killed")
        .unwrap();
        assert_eq!(health.status(), 200);
        let list = get_json(&d.url("/v2/processes")).await;
        let running = list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == start["pid"] && p["running"] == true);
        if !running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command is killed: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_json_client_that_goes_away_kills_the_command_and_unregisters_it() {
    let d = Daemon::start(&[]);
    let url = d.url("/v2/exec");
    let request = tokio::spawn(async move {
        http()
            .post(url)
            .header("accept", "application/json")
            .json(&json!({"command": ["sleep", "30"], "timeout": 60}))
            .send()
            .await
    });
    let listed = |list: &Value| {
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["command"] == json!(["sleep", "30"]))
            .cloned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let pid = loop {
        let list = get_json(&d.url("/v2/processes")).await;
        if let Some(p) = listed(&list) {
            break p["pid"].as_i64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the command starts");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    request.abort();
    let _ = request.await;
    // The command is killed and leaves the process list.
    loop {
        let list = get_json(&d.url("/v2/processes")).await;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !fs_err::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        if listed(&list).is_none() && !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(5),
            "the abandoned command is killed and unregistered: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
