//! Conformance of the legacy python-runtime API (the port upstream's router defaults to, 8888).

use crate::common;

use common::{Daemon, http, quote};
use serde_json::Value;

async fn exec(d: &Daemon, body: Value) -> (u16, Value) {
    let r = http()
        .post(d.lurl("/execute"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn root_and_execute() {
    let d = Daemon::start(&["--legacy-exec-timeout", "0.5"]);
    let c = http();
    let v: Value = c
        .get(d.lurl("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": "ok", "message": "Sandbox Runtime is active."})
    );

    let (s, v) = exec(
        &d,
        serde_json::json!({"command": "echo 'hello world' \"x y\""}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        serde_json::json!({"stdout": "hello world x y\n", "stderr": "", "exit_code": 0})
    );
    // No shell: a pipe is an argument.
    let (_, v) = exec(&d, serde_json::json!({"command": "echo a | wc"})).await;
    assert_eq!(v["stdout"], "a | wc\n");
    let (_, v) = exec(
        &d,
        serde_json::json!({"command": "sh -c 'echo e >&2; exit 4'"}),
    )
    .await;
    assert_eq!(
        (v["stderr"].as_str(), v["exit_code"].as_i64()),
        (Some("e\n"), Some(4))
    );
    // cwd is the base directory; text mode turns \r\n into \n.
    let (_, v) = exec(&d, serde_json::json!({"command": "pwd"})).await;
    assert_eq!(
        v["stdout"],
        format!("{}\n", fs_err::canonicalize(&d.root).unwrap().display())
    );
    let (_, v) = exec(&d, serde_json::json!({"command": "printf 'a\\r\\nb'"})).await;
    assert_eq!(v["stdout"], "a\nb");

    // Failures are 200 with exit_code 1 and upstream's messages.
    let (s, v) = exec(&d, serde_json::json!({"command": "no-such-cmd arg"})).await;
    assert_eq!(s, 200);
    assert_eq!(v["exit_code"], 1);
    assert_eq!(
        v["stderr"],
        "Failed to execute command: [Errno 2] No such file or directory: 'no-such-cmd'"
    );
    let (_, v) = exec(&d, serde_json::json!({"command": "echo 'unclosed"})).await;
    assert_eq!(
        v["stderr"],
        "Failed to execute command: No closing quotation"
    );
    let (_, v) = exec(&d, serde_json::json!({"command": ""})).await;
    assert_eq!(v["exit_code"], 1);
    let started = std::time::Instant::now();
    let (_, v) = exec(&d, serde_json::json!({"command": "sleep 20"})).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        v["stderr"],
        "Failed to execute command: Command '['sleep', '20']' timed out after 0.5 seconds"
    );
    assert_eq!(v["exit_code"], 1);
    // The command's own limit (`timeout_seconds`, upstream's SDK's `command_timeout`).
    let started = std::time::Instant::now();
    let (_, v) = exec(
        &d,
        serde_json::json!({"command": "sleep 20", "timeout_seconds": 0.2}),
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        v,
        serde_json::json!({"stdout": "", "stderr": "Command timed out after 0.2 seconds",
            "exit_code": 124, "timed_out": true})
    );
    let (_, v) = exec(
        &d,
        serde_json::json!({"command": "echo fast", "timeout_seconds": 30}),
    )
    .await;
    assert_eq!(
        (v["stdout"].as_str(), v["exit_code"].as_i64()),
        (Some("fast\n"), Some(0))
    );
    for bad in [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!("1"),
    ] {
        let (s, v) = exec(
            &d,
            serde_json::json!({"command": "true", "timeout_seconds": bad}),
        )
        .await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(
            v["detail"][0]["loc"],
            serde_json::json!(["body", "timeout_seconds"])
        );
    }

    // Validation errors are FastAPI's 422.
    let (s, v) = exec(&d, serde_json::json!({"cmd": "ls"})).await;
    assert_eq!(s, 422);
    assert_eq!(v["detail"][0]["type"], "missing");
    assert_eq!(
        v["detail"][0]["loc"],
        serde_json::json!(["body", "command"])
    );
    let (s, _) = exec(&d, serde_json::json!({"command": 5})).await;
    assert_eq!(s, 422);
    let r = c
        .post(d.lurl("/execute"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c.get(d.lurl("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"detail": "Not Found"})
    );
}

#[tokio::test]
async fn files() {
    let d = Daemon::start(&[]);
    let c = http();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"csv,data\n".to_vec()).file_name("data/in.csv"),
    );
    let r = c
        .post(d.lurl("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "File 'data/in.csv' uploaded successfully."
    );
    assert_eq!(
        fs_err::read_to_string(d.root.join("data/in.csv")).unwrap(),
        "csv,data\n"
    );
    // A leading '/' is stripped: the path is relative to the base directory.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"abs".to_vec()).file_name("/home/user/x.txt"),
    );
    let r = c
        .post(d.lurl("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fs_err::read_to_string(d.root.join("home/user/x.txt")).unwrap(),
        "abs"
    );
    let r = c
        .post(d.lurl("/upload"))
        .multipart(reqwest::multipart::Form::new().text("x", "y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let r = c
        .get(d.lurl(&format!("/download/{}", quote("data/in.csv"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"data/in.csv\""
    );
    assert_eq!(r.text().await.unwrap(), "csv,data\n");
    // Double-decoded like upstream (%252F is '/').
    let r = c
        .get(d.lurl("/download/data%252Fin.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(d.lurl("/download/data/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"message": "File not found"})
    );
    let r = c.get(d.lurl("/download/data")).send().await.unwrap();
    assert_eq!(r.status(), 404, "a directory is not downloadable");

    let r = c.get(d.lurl("/list/data")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["name"], "in.csv");
    assert_eq!(v[0]["size"], 9);
    assert_eq!(v[0]["type"], "file");
    assert!(v[0]["mod_time"].as_f64().unwrap() > 1.0e9);
    let r = c.get(d.lurl("/list/data/in.csv")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"message": "Path is not a directory"})
    );

    let v: Value = c
        .get(d.lurl("/exists/data/in.csv"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"path": "data/in.csv", "exists": true})
    );
    let v: Value = c
        .get(d.lurl("/exists/nope"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({"path": "nope", "exists": false}));
}

#[tokio::test]
async fn escapes_are_denied() {
    let d = Daemon::start(&[]);
    let c = http();
    for path in [
        "/download/..%2F..%2Fetc%2Fpasswd",
        "/list/..%2F..",
        "/exists/..%2Fx",
        "/download/%252E%252E%252Fx",
    ] {
        let r = c.get(d.lurl(path)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            serde_json::json!({"message": "Access denied"})
        );
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("../escaped.txt"),
    );
    let r = c
        .post(d.lurl("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!d.base.join("escaped.txt").exists());
}
