//! The data-plane verbs: `exec`, `cp`, `ls`. They reach sandboxd inside the sandbox through the
//! router (`X-Sandbox-*` headers, sandboxd's REST port), using `/v1/files` and `/v2` (see
//! docs/runtime-api.md).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use agent_sandbox_api::constants::labels;
use agent_sandbox_api::v1beta1::OperatingMode;
use anyhow::Context;
use futures::StreamExt;
use kube::ResourceExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::connect::Connection;
use crate::args::{ConnectArgs, CpArgs, ExecArgs, LsArgs};

/// sandboxd's REST port, which serves `/v1` and `/v2`.
const SANDBOXD_REST_PORT: &str = "8080";

/// Requests to one sandbox's sandboxd through the router.
pub(crate) struct SandboxdClient {
    http: reqwest::Client,
    router: String,
    token: Option<String>,
    sandbox: String,
    namespace: String,
}

impl SandboxdClient {
    async fn connect(args: &ConnectArgs, name: &str) -> anyhow::Result<SandboxdClient> {
        let conn = Connection::open(args).await?;
        Self::for_sandbox(&conn, name).await
    }

    /// The client of the sandbox a user means by `name` (a claim or a Sandbox), refusing one
    /// the router cannot reach with what to do about it.
    pub(crate) async fn for_sandbox(conn: &Connection, name: &str) -> anyhow::Result<Self> {
        let (router, token) = conn.router()?;
        let (router, token) = (router.to_owned(), token.map(str::to_owned));
        let sandbox = conn.resolve_sandbox(name).await?;
        let sandbox_name = sandbox.name_any();
        if sandbox.spec.operating_mode() == OperatingMode::Suspended {
            anyhow::bail!(
                "sandbox {sandbox_name} is suspended; resume it with `agent-sandbox resume {name}`"
            );
        }
        if agent_sandbox_api::constants::extensions::asks_paused(
            sandbox.metadata.annotations.as_ref(),
        ) {
            anyhow::bail!(
                "sandbox {sandbox_name} is paused; unpause it with `agent-sandbox unpause {name}`"
            );
        }
        // The router does not route names to warm-pool members no claim has adopted.
        if sandbox.labels().contains_key(labels::WARM_POOL_SANDBOX) {
            anyhow::bail!(
                "sandbox {sandbox_name} is a warm-pool member no claim has adopted, which the router does not reach; claim one with `agent-sandbox claim --pool <pool>` and use the claim's name"
            );
        }
        Ok(SandboxdClient {
            http: reqwest::Client::new(),
            router,
            token,
            sandbox: sandbox_name,
            namespace: conn.namespace.clone(),
        })
    }

    pub(crate) fn request(&self, method: Method, path_and_query: &str) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.router))
            .header("X-Sandbox-ID", &self.sandbox)
            .header("X-Sandbox-Namespace", &self.namespace)
            .header("X-Sandbox-Port", SANDBOXD_REST_PORT);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// Sends a request; a non-success answer becomes an error naming the sandbox and what the
    /// router or sandboxd said.
    pub(crate) async fn send(&self, req: RequestBuilder, what: &str) -> anyhow::Result<Response> {
        let resp = self.send_unchecked(req, what).await?;
        self.check(resp, what).await
    }

    pub(crate) async fn send_unchecked(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> anyhow::Result<Response> {
        req.send().await.with_context(|| {
            format!(
                "{what}: the router at {} does not answer; is `agent-sandbox up` running?",
                self.router
            )
        })
    }

    pub(crate) async fn check(&self, resp: Response, what: &str) -> anyhow::Result<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let said = body["message"]
            .as_str()
            .or(body["detail"].as_str())
            .unwrap_or("no details")
            .to_owned();
        let hint = match status {
            StatusCode::UNAUTHORIZED => {
                "; the router refused the token (pass --router-token, or run as the user of `agent-sandbox up`)"
            }
            StatusCode::BAD_GATEWAY | StatusCode::NOT_FOUND if body["detail"].is_string() => {
                "; is the sandbox Ready? (`agent-sandbox get sandboxes`)"
            }
            StatusCode::GATEWAY_TIMEOUT => "; the sandbox did not answer in time",
            _ => "",
        };
        anyhow::bail!("{what} in sandbox {}: {status}: {said}{hint}", self.sandbox)
    }
}

/// `/v1/files/<path>` with each segment percent-encoded; an absolute path keeps its leading
/// slash (encoded), so that it names what it says.
pub(crate) fn files_url(path: &str) -> String {
    let mut url = String::from("/v1/files/");
    if path.starts_with('/') {
        url.push_str("%2F");
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encode(s, false))
        .collect();
    url.push_str(&segments.join("/"));
    url
}

pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) async fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let client = SandboxdClient::connect(&args.connect, &args.name).await?;
    let command = match &args.shell {
        Some(script) => Value::String(script.clone()),
        None => serde_json::to_value(&args.command)?,
    };
    let mut body = serde_json::json!({ "command": command });
    if !args.env.is_empty() {
        let mut env = serde_json::Map::new();
        for pair in &args.env {
            let (k, v) = super::split_pair(pair, "--env")?;
            env.insert(k, Value::String(v));
        }
        body["env"] = Value::Object(env);
    }
    if let Some(dir) = &args.workdir {
        body["cwd"] = Value::String(dir.clone());
    }
    if let Some(t) = args.timeout {
        body["timeout"] = serde_json::json!(t);
    }
    if args.stdin {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .context("reading stdin (it must be UTF-8 text)")?;
        body["stdin"] = Value::String(input);
    }
    // Never retried: a command may have effects.
    let resp = client
        .send(
            client
                .request(Method::POST, "/v2/exec")
                .header("Accept", "application/x-ndjson")
                .json(&body),
            "exec",
        )
        .await?;
    let mut stream = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut exit: Option<Value> = None;
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("reading the command's output")?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)
                .with_context(|| format!("sandboxd sent {:?}", String::from_utf8_lossy(&line)))?;
            match event["type"].as_str() {
                Some("stdout") => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(event["data"].as_str().unwrap_or_default().as_bytes())?;
                    out.flush()?;
                }
                Some("stderr") => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(event["data"].as_str().unwrap_or_default().as_bytes())?;
                    err.flush()?;
                }
                Some("exit") => exit = Some(event),
                _ => {}
            }
        }
    }
    let exit = exit.context("the connection closed before the command's exit status arrived")?;
    if exit["timed_out"].as_bool() == Some(true) {
        eprintln!("agent-sandbox: the command timed out and was killed");
    }
    if exit["truncated"].as_bool() == Some(true) {
        eprintln!("agent-sandbox: output beyond the limit was dropped");
    }
    let code = exit["exit_code"].as_i64().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `SANDBOX:PATH` → (sandbox, path); a local path (which may contain `:` after a `/`) → None.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (name, path) = spec.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

pub(crate) async fn cp(args: &CpArgs) -> anyhow::Result<ExitCode> {
    match (remote(&args.source), remote(&args.destination)) {
        (Some(_), Some(_)) => anyhow::bail!(
            "both {} and {} are in sandboxes; copy through a local file",
            args.source,
            args.destination
        ),
        (None, None) => anyhow::bail!(
            "neither {} nor {} names a sandbox; write SANDBOX:PATH on one side",
            args.source,
            args.destination
        ),
        (Some((name, path)), None) => download(args, name, path, &args.destination).await,
        (None, Some((name, path))) => upload(args, &args.source, name, path).await,
    }
}

async fn upload(args: &CpArgs, local: &str, name: &str, path: &str) -> anyhow::Result<ExitCode> {
    let client = SandboxdClient::connect(&args.connect, name).await?;
    let started = std::time::Instant::now();
    if local != "-" && Path::new(local).is_dir() {
        let dir = local.to_owned();
        let tar = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let mut builder = tar::Builder::new(Vec::new());
            builder.follow_symlinks(false);
            builder
                .append_dir_all(".", &dir)
                .with_context(|| format!("reading {dir}"))?;
            Ok(builder.into_inner()?)
        })
        .await??;
        let bytes = tar.len();
        let resp = client
            .send(
                client
                    .request(
                        Method::PUT,
                        &format!("/v2/files/tar?path={}", percent_encode(path, true)),
                    )
                    .header("Content-Type", "application/x-tar")
                    .body(tar),
                &format!("uploading {local} to {path}"),
            )
            .await?;
        let report: Value = resp.json().await.unwrap_or(Value::Null);
        eprintln!(
            "{local} -> {name}:{path}: {} files, {} directories, {bytes} bytes of tar in {:.0?}",
            report["files"],
            report["directories"],
            started.elapsed()
        );
        if let Some(skipped) = report["skipped"].as_array().filter(|s| !s.is_empty()) {
            eprintln!("skipped (links out of the tree, special files): {skipped:?}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let data = if local == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        buf
    } else {
        fs_err::read(local)?
    };
    let mode = if local == "-" {
        None
    } else {
        use std::os::unix::fs::PermissionsExt;
        Some(fs_err::metadata(local)?.permissions().mode() & 0o777)
    };
    // Copying into a directory keeps the file's name, as cp does.
    let mut target = path.to_owned();
    if path.ends_with('/') || is_remote_dir(&client, path).await? {
        let base = Path::new(local)
            .file_name()
            .with_context(|| format!("{local} has no file name; name the destination file"))?;
        target = format!("{}/{}", path.trim_end_matches('/'), base.to_string_lossy());
    }
    let mut url = files_url(&target);
    if let Some(m) = mode {
        url.push_str(&format!("?mode=0{m:03o}"));
    }
    let bytes = data.len();
    client
        .send(
            client.request(Method::PUT, &url).body(data),
            &format!("writing {target}"),
        )
        .await?;
    eprintln!(
        "{local} -> {name}:{target}: {bytes} bytes in {:.0?}",
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

async fn is_remote_dir(client: &SandboxdClient, path: &str) -> anyhow::Result<bool> {
    let what = format!("stat {path}");
    let url = format!("/v2/files/stat?path={}", percent_encode(path, true));
    let resp = client
        .send_unchecked(client.request(Method::GET, &url), &what)
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(false);
    }
    let stat: Value = client.check(resp, &what).await?.json().await?;
    Ok(stat["type"] == "directory"
        || (stat["type"] == "symlink" && stat["target_type"] == "directory"))
}

async fn download(args: &CpArgs, name: &str, path: &str, local: &str) -> anyhow::Result<ExitCode> {
    let client = SandboxdClient::connect(&args.connect, name).await?;
    let started = std::time::Instant::now();
    if is_remote_dir(&client, path).await? {
        if local == "-" {
            anyhow::bail!("{name}:{path} is a directory; copy it to a local directory");
        }
        let resp = client
            .send(
                client.request(
                    Method::GET,
                    &format!("/v2/files/tar?path={}", percent_encode(path, true)),
                ),
                &format!("reading directory {path}"),
            )
            .await?;
        let tar = resp.bytes().await?;
        let bytes = tar.len();
        let dest = local.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            fs_err::create_dir_all(&dest)?;
            tar::Archive::new(tar.as_ref())
                .unpack(&dest)
                .with_context(|| format!("unpacking into {dest}"))
        })
        .await??;
        eprintln!(
            "{name}:{path} -> {local}: {bytes} bytes of tar in {:.0?}",
            started.elapsed()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let resp = client
        .send(
            client.request(Method::GET, &files_url(path)),
            &format!("reading {path}"),
        )
        .await?;
    let mut stream = resp.bytes_stream();
    let mut bytes = 0usize;
    if local == "-" {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut target = std::path::PathBuf::from(local);
    if target.is_dir() {
        let base = Path::new(path)
            .file_name()
            .with_context(|| format!("{path} has no file name"))?;
        target.push(base);
    }
    // Written beside the target and renamed, so a failed copy leaves no partial file.
    let tmp = target.with_extension("agent-sandbox-partial");
    let mut file = fs_err::File::create(&tmp)?;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading from the sandbox")?;
            bytes += chunk.len();
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = fs_err::remove_file(&tmp);
        return Err(e);
    }
    fs_err::rename(&tmp, &target)?;
    eprintln!(
        "{name}:{path} -> {}: {bytes} bytes in {:.0?}",
        target.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn ls(args: &LsArgs) -> anyhow::Result<ExitCode> {
    let client = SandboxdClient::connect(&args.connect, &args.name).await?;
    let path = if args.path == "." { "" } else { &args.path };
    let resp = client
        .send(
            client
                .request(Method::GET, &files_url(path))
                .header("Accept", "application/json"),
            &format!("listing {}", args.path),
        )
        .await?;
    let is_listing = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_listing {
        // A file: show it as `stat` does.
        let stat: Value = client
            .send(
                client.request(
                    Method::GET,
                    &format!("/v2/files/stat?path={}", percent_encode(path, true)),
                ),
                &format!("stat {}", args.path),
            )
            .await?
            .json()
            .await?;
        println!(
            "{} {:>10} {} {}",
            stat["mode"].as_str().unwrap_or("?"),
            stat["size"],
            stat["modified_at"].as_str().unwrap_or("?"),
            stat["name"].as_str().unwrap_or(path)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let listing: Value = resp.json().await?;
    let mut out = std::io::stdout().lock();
    for entry in listing["entries"].as_array().into_iter().flatten() {
        let is_dir = entry["type"] == "directory";
        writeln!(
            out,
            "{}{} {:>10} {} {}{}",
            if is_dir { "d" } else { "-" },
            entry["mode"].as_str().unwrap_or("?"),
            entry["size"],
            entry["modified_at"].as_str().unwrap_or("?"),
            entry["name"].as_str().unwrap_or("?"),
            if is_dir { "/" } else { "" }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_keep_absolute_paths_and_encode_segments() {
        assert_eq!(files_url("a/b c.txt"), "/v1/files/a/b%20c.txt");
        assert_eq!(files_url("/etc/hosts"), "/v1/files/%2Fetc/hosts");
        assert_eq!(files_url(""), "/v1/files/");
        assert_eq!(percent_encode("/w s/x", true), "/w%20s/x");
    }

    #[test]
    fn remote_specs() {
        assert_eq!(remote("sb:/tmp/x"), Some(("sb", "/tmp/x")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("/tmp/a:b"), None);
        assert_eq!(remote("file.txt"), None);
    }
}
