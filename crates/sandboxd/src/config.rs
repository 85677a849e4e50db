//! Daemon configuration: the command-line flags, with upstream sandboxd's names and defaults,
//! plus the flags of the extensions (legacy port, limits, orphan reaping).

use std::path::PathBuf;
use std::time::Duration;

/// Configuration of one sandboxd instance. It is also a `clap::Args` so that a wrapping binary
/// (the `agent-sandbox sandboxd` verb) can flatten it into its own command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Host interface the gRPC and HTTP listeners bind. Set 127.0.0.1 to restrict to loopback.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_host: String,
    /// Port of the gRPC `process.v1.ProcessService` (0 picks a free port).
    #[arg(long, default_value_t = 9090)]
    pub grpc_port: u16,
    /// Port of the REST files API `/v1` and the extensions under `/v2` (0 picks a free port).
    #[arg(long, default_value_t = 8080)]
    pub rest_port: u16,
    /// Port of the legacy python-runtime API (`/execute`, `/upload`, ...); 0 picks a free port,
    /// and `--no-legacy` turns it off.
    #[arg(long, default_value_t = 8888)]
    pub legacy_port: u16,
    /// Do not serve the legacy python-runtime API.
    #[arg(long)]
    pub no_legacy: bool,
    /// Sandbox root: file operations and working directories are confined to it. Created if
    /// missing.
    #[arg(long, default_value = "/workspace")]
    pub root_dir: PathBuf,
    /// Working directory beneath the root (created if missing): relative paths and processes
    /// without a cwd start here, while absolute paths name what they say under the root. The
    /// default is the root itself, as upstream. Sandbox images use `--root-dir / --work-dir
    /// /workspace`.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Only environment variables with this prefix are exposed on `GET /v1/metadata`.
    #[arg(long, default_value = "SANDBOX_")]
    pub metadata_env_prefix: String,
    /// Upper bound of the graceful shutdown (Go-style duration: 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Close idle HTTP keep-alive connections after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// Size in bytes of the stdout/stderr chunks of `Start` streams; 0 selects 4096.
    #[arg(long, default_value_t = 0)]
    pub stream_chunk_size: usize,
    /// Largest accepted file upload in bytes; 0 means no limit beyond the free space.
    #[arg(long, default_value_t = 0)]
    pub max_upload_bytes: u64,
    /// Default output limit per stream (bytes) for `/v2` exec and run_code; output beyond it is
    /// dropped and reported as truncated.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_output_bytes: usize,
    /// Timeout of legacy `POST /execute` calls in seconds (upstream reads
    /// SANDBOX_EXEC_TIMEOUT_SECONDS, default 300).
    #[arg(long, env = "SANDBOX_EXEC_TIMEOUT_SECONDS", default_value_t = 300.0)]
    pub legacy_exec_timeout: f64,
    /// Default timeout of `/v2` exec and run_code calls, when the request gives none.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub default_exec_timeout: Duration,
    /// Reap every child, including orphans re-parented to this process. On by default when
    /// sandboxd runs as PID 1; this flag also makes it a child subreaper.
    #[arg(long)]
    pub subreaper: bool,
    /// Python interpreter for run_code (default: /usr/bin/python3 when present, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Node.js interpreter for run_code.
    #[arg(long, default_value = "node")]
    pub node: PathBuf,
    /// A managed service, `NAME=COMMAND` (run by `/bin/sh -c`), started with sandboxd and
    /// restarted whenever it exits; repeatable. `SANDBOXD_SERVICES` adds one per line.
    #[arg(long = "service", value_name = "NAME=COMMAND")]
    pub services: Vec<String>,
    /// X display served by the desktop API under `/v2/desktop` (e.g. `:99`); without it those
    /// endpoints answer 404.
    #[arg(long, env = "SANDBOXD_DESKTOP_DISPLAY")]
    pub desktop_display: Option<String>,
    /// The X server's framebuffer file, read for screenshots (`Xvfb -fbdir DIR` writes
    /// `DIR/Xvfb_screen0`).
    #[arg(
        long,
        env = "SANDBOXD_DESKTOP_FRAMEBUFFER",
        default_value = "/tmp/.sandbox-desktop/Xvfb_screen0"
    )]
    pub desktop_framebuffer: PathBuf,
    /// Port of the browser's DevTools front: a proxy to `--cdp-upstream` that makes the
    /// DevTools endpoint usable from outside the sandbox (through the router). Off by default.
    #[arg(long, env = "SANDBOXD_CDP_PORT")]
    pub cdp_port: Option<u16>,
    /// Where the browser's own DevTools endpoint listens (`--remote-debugging-port`).
    #[arg(long, env = "SANDBOXD_CDP_UPSTREAM", default_value = "127.0.0.1:9223")]
    pub cdp_upstream: String,
    /// Workload to run as a child (entrypoint-wrapper mode), after `--`: it inherits sandboxd's
    /// stdio, and sandboxd shuts down and exits with its exit code when it ends.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Config {
    /// A configuration with the default values of every flag.
    pub fn with_defaults() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        <Wrapper as clap::Parser>::parse_from(["sandboxd"]).config
    }

    /// Output chunk size of `Start` streams.
    pub(crate) fn chunk_size(&self) -> usize {
        if self.stream_chunk_size == 0 {
            4096
        } else {
            self.stream_chunk_size
        }
    }
}

/// Parses a Go-style duration: a sequence of numbers with units `ns`, `us`, `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration; write e.g. 10s or 500ms".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit (ns, us, ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("duration {text:?}: {num:?} is not a number"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration {text:?}: unknown unit {other:?}")),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3x").is_err());
    }

    #[test]
    fn defaults_match_upstream() {
        let c = Config::with_defaults();
        assert_eq!(c.grpc_port, 9090);
        assert_eq!(c.rest_port, 8080);
        assert_eq!(c.legacy_port, 8888);
        assert_eq!(c.root_dir, PathBuf::from("/workspace"));
        assert_eq!(c.metadata_env_prefix, "SANDBOX_");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.chunk_size(), 4096);
    }
}
