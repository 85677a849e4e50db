//! Performance figures of sandboxd beside same-run baselines:
//! - gRPC `Execute` and `POST /v2/exec` (one JSON answer) of `true` (p50/p99) vs fork+exec of
//!   `true` from Rust, and vs a gRPC round trip that starts no process (`SendSignal` to an
//!   unknown id, answered `NOT_FOUND`), back to back and after 1 ms of idling (an exec leaves
//!   the client and the daemon idle for about that long, and waking them costs more than a hot
//!   round trip);
//! - 100 MiB file PUT and GET over the REST API vs a raw loopback TCP copy.
//!
//! Run with `cargo bench -p agent-sandbox-sandboxd --bench perf`. It starts the real daemon on
//! loopback ephemeral ports; the root is a fresh temp directory (set SANDBOXD_BENCH_DIR to put
//! it elsewhere, e.g. on a tmpfs). SANDBOXD_BENCH_BIN runs another sandboxd binary instead of
//! the one built with the bench, to compare two builds under the same client.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_sandbox_sandboxd::pb::{
    ExecuteRequest, ProcessConfig, SendSignalRequest, process_service_client::ProcessServiceClient,
};

const EXEC_ROUNDS: usize = 1000;
const WARM_UP: usize = 50;
const FILE_BYTES: usize = 100 << 20;
const FILE_ROUNDS: usize = 5;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints one latency line: p50 and p99 of sorted samples, and the target if there is one.
fn latency_row(label: &str, sorted: &[Duration], target: &str) {
    let target = if target.is_empty() {
        String::new()
    } else {
        format!("   ({target})")
    };
    println!(
        "{label}p50 {}  p99 {}{target}",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99))
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn raw_tcp_copy() -> Duration {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0;
        while total < FILE_BYTES {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
    });
    let data = vec![7u8; 256 << 10];
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut sent = 0;
    while sent < FILE_BYTES {
        s.write_all(&data).unwrap();
        sent += data.len();
    }
    drop(s);
    reader.join().unwrap();
    started.elapsed()
}

fn main() {
    let base = std::env::var_os("SANDBOXD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("sandboxd-bench-{}", std::process::id()));
    let root = base.join("root");
    fs_err::create_dir_all(&root).unwrap();
    let bin = std::env::var_os("SANDBOXD_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sandboxd").into());
    let mut daemon = Command::new(bin)
        .args([
            "--listen-host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--rest-port",
            "0",
            "--no-legacy",
            "--root-dir",
        ])
        .arg(&root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sandboxd");
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs: serde_json::Value = serde_json::from_str(&line).unwrap();
    let grpc = format!("http://{}", addrs["grpc"].as_str().unwrap());
    let rest = format!("http://{}", addrs["rest"].as_str().unwrap());

    // Baseline: fork+exec of `true` from Rust.
    let mut base_times = Vec::with_capacity(EXEC_ROUNDS);
    for _ in 0..EXEC_ROUNDS {
        let t = Instant::now();
        Command::new("true").stdout(Stdio::null()).status().unwrap();
        base_times.push(t.elapsed());
    }
    base_times.sort();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rpc_hot, rpc_idle, exec_times, v2_times, put, get) = rt.block_on(async {
        let mut client = ProcessServiceClient::connect(grpc).await.unwrap();
        let req = || ExecuteRequest {
            config: Some(ProcessConfig {
                command: vec!["true".into()],
                ..Default::default()
            }),
        };
        let no_such_process = || SendSignalRequest {
            process_id: -1,
            signal: 9,
        };
        let mut rpc_hot = Vec::with_capacity(EXEC_ROUNDS);
        for i in 0..WARM_UP + EXEC_ROUNDS {
            let t = Instant::now();
            let r = client.send_signal(no_such_process()).await;
            if i >= WARM_UP {
                rpc_hot.push(t.elapsed());
            }
            assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
        }
        rpc_hot.sort();
        let mut rpc_idle = Vec::with_capacity(EXEC_ROUNDS);
        for _ in 0..EXEC_ROUNDS {
            // Blocks this thread on purpose: the client's runtime and the daemon go idle.
            std::thread::sleep(Duration::from_millis(1));
            let t = Instant::now();
            let r = client.send_signal(no_such_process()).await;
            rpc_idle.push(t.elapsed());
            assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
        }
        rpc_idle.sort();
        for _ in 0..WARM_UP {
            client.execute(req()).await.unwrap();
        }
        let mut times = Vec::with_capacity(EXEC_ROUNDS);
        for _ in 0..EXEC_ROUNDS {
            let t = Instant::now();
            let r = client.execute(req()).await.unwrap().into_inner();
            times.push(t.elapsed());
            assert_eq!(r.exit_code, 0);
        }
        times.sort();

        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let v2_exec = || {
            http.post(format!("{rest}/v2/exec"))
                .header("accept", "application/json")
                .json(&serde_json::json!({"command": ["true"]}))
                .send()
        };
        let mut v2 = Vec::with_capacity(EXEC_ROUNDS);
        for i in 0..WARM_UP + EXEC_ROUNDS {
            let t = Instant::now();
            let r = v2_exec().await.unwrap();
            assert_eq!(r.status(), 200);
            let answer: serde_json::Value = r.json().await.unwrap();
            if i >= WARM_UP {
                v2.push(t.elapsed());
            }
            assert_eq!(answer["exit_code"], 0, "{answer}");
        }
        v2.sort();
        let data = bytes::Bytes::from(vec![42u8; FILE_BYTES]);
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for _ in 0..FILE_ROUNDS {
            let t = Instant::now();
            let r = http
                .put(format!("{rest}/v1/files/big.bin"))
                .body(data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
            put.push(t.elapsed());
            let t = Instant::now();
            let mut r = http
                .get(format!("{rest}/v1/files/big.bin"))
                .send()
                .await
                .unwrap();
            let mut n = 0;
            while let Some(chunk) = r.chunk().await.unwrap() {
                n += chunk.len();
            }
            get.push(t.elapsed());
            assert_eq!(n, FILE_BYTES);
        }
        put.sort();
        get.sort();
        (rpc_hot, rpc_idle, times, v2, put, get)
    });
    let mut tcp: Vec<Duration> = (0..FILE_ROUNDS).map(|_| raw_tcp_copy()).collect();
    tcp.sort();

    println!(
        "sandboxd performance ({EXEC_ROUNDS} execs, {FILE_ROUNDS} x 100 MiB transfers, medians)"
    );
    latency_row("  baseline fork+exec `true` from Rust:   ", &base_times, "");
    latency_row("  baseline gRPC round trip, no process:  ", &rpc_hot, "");
    latency_row("    the same after 1 ms idle:            ", &rpc_idle, "");
    latency_row(
        "  gRPC Execute `true` (client to exit):  ",
        &exec_times,
        "target p50 <= 1 ms",
    );
    latency_row("  POST /v2/exec `true` (JSON answer):    ", &v2_times, "");
    println!(
        "  baseline raw loopback TCP copy:        {:.0} MiB/s",
        mib_s(FILE_BYTES, pct(&tcp, 0.5))
    );
    println!(
        "  PUT /v1/files 100 MiB (fdatasync):      {:.0} MiB/s   (target >= 500 MiB/s)",
        mib_s(FILE_BYTES, pct(&put, 0.5))
    );
    println!(
        "  GET /v1/files 100 MiB:                 {:.0} MiB/s   (target >= 500 MiB/s)",
        mib_s(FILE_BYTES, pct(&get, 0.5))
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = fs_err::remove_dir_all(&base);
}
