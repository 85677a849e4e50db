//! Container logs as the API's `pods/log` serves them (`kubectl logs`): the current instance of
//! a container or the previous one (the engine keeps one generation, rotated when it creates
//! the container again), `tailLines`, `limitBytes`, and `follow` until the instance stops, with
//! kubelet's refusals for containers that have not started. A container writes straight into
//! its log file, so lines carry no times: `timestamps`, `sinceSeconds` and `sinceTime` are
//! refused with a message rather than ignored.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::AsyncReadExt;

use crate::engine::SandboxEngine;

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The options of one log request (the `pods/log` query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance (`previous=true`).
    pub previous: bool,
    /// Keep streaming until the instance stops (`follow=true`).
    pub follow: bool,
    /// Only the last lines (`tailLines`).
    pub tail_lines: Option<u64>,
    /// At most this many bytes (`limitBytes`).
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Read from the request's query; options the node cannot honour are an error that says so.
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, String> {
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
        let number = |k: &str| -> Result<Option<u64>, String> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .ok()
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| format!("{k} must be a number of at least 0, not {v:?}"))
                })
                .transpose()
        };
        if flag("timestamps") {
            return Err(
                "timestamps are not available: the embedded node does not record when log lines were written"
                    .into(),
            );
        }
        for k in ["sinceSeconds", "sinceTime"] {
            if q.contains_key(k) {
                return Err(format!(
                    "{k} is not supported: the embedded node does not record when log lines were written; use tailLines or limitBytes"
                ));
            }
        }
        let limit_bytes = number("limitBytes")?;
        if limit_bytes == Some(0) {
            return Err("limitBytes must be greater than 0".into());
        }
        Ok(LogOptions {
            previous: flag("previous"),
            follow: flag("follow"),
            tail_lines: number("tailLines")?,
            limit_bytes,
        })
    }
}

/// Whether the Pod's status lets the log of `container` be read, with kubelet's messages: a
/// container that never ran is "waiting to start"; a previous instance must have terminated.
pub fn check_status(pod: &Pod, container: &str, previous: bool) -> Result<(), String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let known = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == container);
    if !known {
        return Err(format!(
            "container {container} is not valid for pod {pod_name}"
        ));
    }
    let status = pod.status.clone().unwrap_or_default();
    let cs = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == container);
    let terminated_before = cs
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .is_some();
    if previous {
        if !terminated_before {
            return Err(format!(
                "previous terminated container {container:?} in pod {pod_name:?} not found"
            ));
        }
        return Ok(());
    }
    let waiting = cs
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref());
    match (cs, waiting) {
        (None, _) => Err(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: ContainerCreating"
        )),
        (Some(_), Some(w)) if !terminated_before => Err(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {}",
            w.reason.as_deref().unwrap_or("ContainerCreating")
        )),
        _ => Ok(()),
    }
}

/// Where the log starts so that it holds the last `n` lines (a last line without a newline
/// counts).
fn tail_offset(file: &mut std::fs::File, n: u64) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut seen = 0u64;
    let mut skip_final_newline = true;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let part = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        for i in (0..part.len()).rev() {
            if part[i] != b'\n' {
                skip_final_newline = false;
                continue;
            }
            if skip_final_newline {
                skip_final_newline = false;
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// A log being streamed.
struct Tail {
    file: tokio::fs::File,
    path: PathBuf,
    inode: u64,
    left: Option<u64>,
    follow: bool,
    engine: Arc<SandboxEngine>,
    id: String,
    container: String,
    /// The instance stopped: read what is left, then end.
    draining: bool,
}

impl Tail {
    /// Whether the followed instance stopped: it exited, was removed, or its log was rotated
    /// because a new instance was created.
    fn instance_stopped(&self) -> bool {
        let rotated = fs_err::metadata(&self.path).map_or(true, |m| m.ino() != self.inode);
        rotated
            || !matches!(
                self.engine.container_exit(&self.id, &self.container),
                Ok(None)
            )
    }

    async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.left == Some(0) {
                return None;
            }
            let want = self
                .left
                .map_or(buf.len(), |l| l.min(buf.len() as u64) as usize);
            match self.file.read(&mut buf[..want]).await {
                Ok(0) if !self.follow || self.draining => return None,
                Ok(0) => {
                    if self.instance_stopped() {
                        self.draining = true;
                    } else {
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                }
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(l) = &mut self.left {
                        *l -= n as u64;
                    }
                    return Some(Ok(buf));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The log of `container` in sandbox `id` as a stream of chunks. A container that has no log
/// yet reads as empty.
pub fn stream(
    engine: Arc<SandboxEngine>,
    id: &str,
    container: &str,
    opts: &LogOptions,
) -> std::io::Result<BoxStream<'static, std::io::Result<Vec<u8>>>> {
    let path = if opts.previous {
        engine.previous_log_path(id, container)
    } else {
        engine.container_log_path(id, container)
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Box::pin(futures::stream::empty()));
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading the log {}: {e}", path.display()),
            ));
        }
    };
    let inode = file.metadata()?.ino();
    let start = match opts.tail_lines {
        Some(n) => tail_offset(&mut file, n)?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    let tail = Tail {
        file: tokio::fs::File::from_std(file),
        path,
        inode,
        left: opts.limit_bytes,
        // The previous instance has stopped: there is nothing to follow.
        follow: opts.follow && !opts.previous,
        engine,
        id: id.to_string(),
        container: container.to_string(),
        draining: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        tail,
        |mut t| async move { t.next().await.map(|item| (item, t)) },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tail_of(content: &str, n: u64) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log");
        fs_err::write(&p, content).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let at = tail_offset(&mut f, n).unwrap() as usize;
        content[at..].to_string()
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_of("a\nb\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        let long: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&long, 2), "line 49998\nline 49999\n");
    }

    #[test]
    fn options_refuse_what_the_node_cannot_do() {
        let q = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = LogOptions::from_query(&q(&[
            ("follow", "true"),
            ("tailLines", "10"),
            ("limitBytes", "5"),
        ]))
        .unwrap();
        assert!(o.follow && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(10), Some(5)));
        for bad in [
            ("timestamps", "true"),
            ("sinceSeconds", "10"),
            ("tailLines", "-1"),
            ("limitBytes", "0"),
        ] {
            let err = LogOptions::from_query(&q(&[bad])).unwrap_err();
            assert!(err.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn status_checks_follow_kubelet() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "main", "image": "i"}]},
                "status": status
            }))
            .unwrap()
        };
        let waiting = pod(json!({"containerStatuses": [{"name": "main", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull"}}}]}));
        assert_eq!(
            check_status(&waiting, "main", false).unwrap_err(),
            "container \"main\" in pod \"p\" is waiting to start: ErrImagePull"
        );
        assert_eq!(
            check_status(&waiting, "main", true).unwrap_err(),
            "previous terminated container \"main\" in pod \"p\" not found"
        );
        assert_eq!(
            check_status(&waiting, "other", false).unwrap_err(),
            "container other is not valid for pod p"
        );
        let restarted = pod(json!({"containerStatuses": [{"name": "main", "image": "i",
            "imageID": "", "ready": false, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1}}}]}));
        assert!(check_status(&restarted, "main", false).is_ok());
        assert!(check_status(&restarted, "main", true).is_ok());
    }
}
