//! run_code: persistent python, javascript and bash contexts, results, errors, timeouts,
//! interrupts and context management.

use crate::common;

use common::{Daemon, expect_error, http};
use serde_json::{Value, json};

async fn run(d: &Daemon, body: Value) -> Value {
    let r = http()
        .post(d.url("/v2/code/run"))
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn python_state_results_and_errors() {
    let d = Daemon::start(&[]);
    let v = run(&d, json!({"code": "x = 40\nprint('hello')\nx + 2"})).await;
    assert_eq!(v["stdout"], "hello\n");
    assert_eq!(v["results"][0]["text"], "42");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["execution_count"], 1);
    let v = run(&d, json!({"code": "import os, sys\nos.system('echo from-subprocess')\nprint('e', file=sys.stderr)\nx * 2"})).await;
    assert_eq!(
        v["results"][0]["text"], "80",
        "variables survive between calls"
    );
    assert!(v["stdout"].as_str().unwrap().contains("from-subprocess"));
    assert_eq!(v["stderr"], "e\n");
    let v = run(&d, json!({"code": "def f():\n    return 1/0\nf()"})).await;
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["name"], "ZeroDivisionError");
    let tb = v["error"]["traceback"].as_str().unwrap();
    assert!(
        tb.contains("File \"<cell>\", line 3") && tb.contains("line 2, in f"),
        "{tb}"
    );
    assert!(
        !tb.contains("python.py") && !tb.contains("_run"),
        "driver frames are hidden: {tb}"
    );
    let v = run(
        &d,
        json!({"code": "class H:\n    def _repr_html_(self): return '<b>x</b>'\nH()"}),
    )
    .await;
    assert_eq!(v["results"][0]["data"]["text/html"], "<b>x</b>");
    let v = run(&d, json!({"code": "input()"})).await;
    assert_eq!(
        v["error"]["name"], "EOFError",
        "stdin of a cell is empty, not the protocol"
    );
}

#[tokio::test]
async fn streaming_timeout_and_interrupt() {
    let d = Daemon::start(&[]);
    let r = http()
        .post(d.url("/v2/code/run"))
        .json(&json!({"code": "for i in range(3): print(i)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let events: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["type"], "end");

    run(&d, json!({"code": "kept = 'still here'"})).await;
    let started = std::time::Instant::now();
    let v = run(
        &d,
        json!({"code": "import time\nwhile True:\n    time.sleep(0.05)", "timeout": 0.5}),
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(v["status"], "timeout");
    assert_eq!(v["error"]["name"], "KeyboardInterrupt");
    let v = run(&d, json!({"code": "kept"})).await;
    assert_eq!(
        v["results"][0]["text"], "'still here'",
        "an interrupt keeps the context"
    );

    // A cell that ignores SIGINT gets its kernel killed after the grace; the next run restarts it.
    let v = run(&d, json!({"code": "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)", "timeout": 0.3})).await;
    assert_eq!(v["status"], "timeout");
    let v = run(&d, json!({"code": "1 + 1"})).await;
    assert_eq!(v["results"][0]["text"], "2");

    // Interrupt endpoint.
    let c = http();
    let url = d.url("/v2/code/run");
    let slow = tokio::spawn(async move {
        c.post(url)
            .header("accept", "application/json")
            .json(&json!({"code": "import time\ntime.sleep(30)"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = http()
        .post(d.url("/v2/code/contexts/default-python/interrupt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let v = slow.await.unwrap();
    assert_eq!(v["error"]["name"], "KeyboardInterrupt");

    let v = run(&d, json!({"code": "import os\nos._exit(3)"})).await;
    assert_eq!(v["status"], "died");
    let v = run(&d, json!({"code": "2 + 2"})).await;
    assert_eq!(v["results"][0]["text"], "4");
}

#[tokio::test]
async fn javascript_and_bash() {
    let d = Daemon::start(&[]);
    let v = run(&d, json!({"language": "javascript", "code": "let a = 20; var b = 1; console.log('js', a); a * 2 + b"})).await;
    assert_eq!(v["stdout"], "js 20\n");
    assert_eq!(v["results"][0]["text"], "41");
    let v = run(&d, json!({"language": "js", "code": "a + b"})).await;
    assert_eq!(v["results"][0]["text"], "21");
    let v = run(&d, json!({"language": "javascript", "code": "await new Promise(r => setTimeout(() => r(5), 10))"})).await;
    assert_eq!(v["results"][0]["text"], "5");
    let v = run(&d, json!({"language": "javascript", "code": "null.x"})).await;
    assert_eq!(v["error"]["name"], "TypeError");

    let v = run(
        &d,
        json!({"language": "bash", "code": "V=7\nf() { echo fn $1; }\ncd /tmp"}),
    )
    .await;
    assert_eq!(v["status"], "ok");
    let v = run(&d, json!({"language": "bash", "code": "f $V; pwd; false"})).await;
    assert_eq!(v["stdout"], "fn 7\n/tmp\n");
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["name"], "ExitCode");
}

#[tokio::test]
async fn named_contexts() {
    let d = Daemon::start(&[]);
    let c = http();
    let r = c
        .post(d.url("/v2/code/contexts"))
        .json(&json!({"language": "python", "id": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["id"], "a");
    let r = c
        .post(d.url("/v2/code/contexts"))
        .json(&json!({"language": "python", "id": "a"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = c
        .post(d.url("/v2/code/contexts"))
        .json(&json!({"language": "cobol"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let b: Value = c
        .post(d.url("/v2/code/contexts"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b_id = b["id"].as_str().unwrap().to_string();

    run(&d, json!({"context": "a", "code": "n = 'in a'"})).await;
    let v = run(&d, json!({"context": b_id, "code": "n"})).await;
    assert_eq!(v["error"]["name"], "NameError", "contexts are isolated");
    let v = run(&d, json!({"context": "a", "code": "n"})).await;
    assert_eq!(v["results"][0]["text"], "'in a'");
    let r = c
        .post(d.url("/v2/code/run"))
        .json(&json!({"context": "a", "language": "bash", "code": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let r = c
        .post(d.url("/v2/code/run"))
        .json(&json!({"context": "nope", "code": "1"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c
        .post(d.url("/v2/code/run"))
        .json(&json!({"language": "python"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;

    let list: Value = c
        .get(d.url("/v2/code/contexts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["contexts"].as_array().unwrap().len(), 2);
    let r = c
        .post(d.url("/v2/code/contexts/a/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let v = run(&d, json!({"context": "a", "code": "n"})).await;
    assert_eq!(v["error"]["name"], "NameError", "restart drops the state");
    let r = c.delete(d.url("/v2/code/contexts/a")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.delete(d.url("/v2/code/contexts/a")).send().await.unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
}
