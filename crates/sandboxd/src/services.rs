//! Managed services: long-running programs (an X server, a window manager, a browser) that
//! sandboxd starts with the sandbox, restarts with a backoff whenever they exit, and stops at
//! shutdown; their state is served on `GET /v2/services`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::App;
use crate::process::{SpawnSpec, Supervisor};

/// First delay before a restart; it doubles after each quick exit, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run at least this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// One service as configured: `NAME=COMMAND`, the command run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Short name, e.g. `xvfb`.
    pub name: String,
    /// Shell command line.
    pub command: String,
}

impl ServiceSpec {
    /// Parses `NAME=COMMAND`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, command) = text
            .split_once('=')
            .ok_or_else(|| format!("service {text:?}: write NAME=COMMAND, e.g. xvfb='Xvfb :99'"))?;
        let name = name.trim();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(format!(
                "service {text:?}: the name {name:?} must be letters, digits, '-' or '_'"
            ));
        }
        if command.trim().is_empty() {
            return Err(format!("service {name:?} has an empty command"));
        }
        Ok(ServiceSpec {
            name: name.to_string(),
            command: command.trim().to_string(),
        })
    }

    /// Services from `--service` flags and from `SANDBOXD_SERVICES` (one `NAME=COMMAND` per
    /// line; blank lines and lines starting with `#` are skipped).
    pub fn collect(flags: &[String], env: Option<&str>) -> Result<Vec<Self>, String> {
        let lines = env
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let mut all = Vec::new();
        for text in flags.iter().map(String::as_str).chain(lines) {
            let spec = Self::parse(text)?;
            if all.iter().any(|s: &ServiceSpec| s.name == spec.name) {
                return Err(format!("service {:?} is configured twice", spec.name));
            }
            all.push(spec);
        }
        Ok(all)
    }
}

#[derive(Debug, Default)]
struct Status {
    pid: Option<i32>,
    started_at: Option<SystemTime>,
    restarts: u64,
    last_exit: Option<String>,
}

/// A supervised service and its live state.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    status: Mutex<Status>,
}

impl Service {
    /// The running process id, if the service is up.
    pub fn pid(&self) -> Option<i32> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).pid
    }

    fn json(&self) -> Value {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "name": self.spec.name,
            "command": self.spec.command,
            "running": s.pid.is_some(),
            "pid": s.pid,
            "started_at": s.started_at.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            "restarts": s.restarts,
            "last_exit": s.last_exit,
        })
    }
}

/// All services of this sandboxd.
#[derive(Debug, Default)]
pub struct Services {
    list: Vec<Arc<Service>>,
    stopping: Arc<AtomicBool>,
}

impl Services {
    /// Services for these specs, not yet started.
    pub fn new(specs: Vec<ServiceSpec>) -> Self {
        Services {
            list: specs
                .into_iter()
                .map(|spec| {
                    Arc::new(Service {
                        spec,
                        status: Mutex::default(),
                    })
                })
                .collect(),
            stopping: Arc::default(),
        }
    }

    /// Looks a service up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.list.iter().find(|s| s.spec.name == name)
    }

    /// Starts every service and keeps it running until [`Services::stop`].
    pub fn start(&self, sup: &Arc<Supervisor>, cwd: std::path::PathBuf) {
        for service in &self.list {
            tokio::spawn(keep_running(
                service.clone(),
                sup.clone(),
                cwd.clone(),
                self.stopping.clone(),
            ));
        }
    }

    /// No more restarts; the processes themselves are signalled with every other child.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

async fn keep_running(
    service: Arc<Service>,
    sup: Arc<Supervisor>,
    cwd: std::path::PathBuf,
    stopping: Arc<AtomicBool>,
) {
    let name = service.spec.name.clone();
    let mut backoff = MIN_BACKOFF;
    while !stopping.load(Ordering::SeqCst) {
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            service.spec.command.clone(),
        ];
        let spec = SpawnSpec {
            argv: argv.clone(),
            cwd: cwd.clone(),
            inherit_stdio: true,
            ..SpawnSpec::default()
        };
        let started = Instant::now();
        let outcome = match sup.spawn(spec) {
            Ok(child) => {
                let managed = sup.register(child.pid, argv, "service", None, None);
                {
                    let mut s = service.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.pid = Some(child.pid);
                    s.started_at = Some(SystemTime::now());
                }
                tracing::info!(service = %name, pid = child.pid, "service started");
                let exit = child.exit.await;
                managed.done.store(true, Ordering::SeqCst);
                sup.remove(managed.id);
                match exit {
                    Ok(e) => format!("exited with code {}", e.shell_code()),
                    Err(_) => "ended".to_string(),
                }
            }
            Err(e) => format!("could not start: {e}"),
        };
        {
            let mut s = service.status.lock().unwrap_or_else(|e| e.into_inner());
            s.pid = None;
            s.last_exit = Some(outcome.clone());
        }
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(service = %name, %outcome, ?backoff, "service ended; restarting it");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        service
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restarts += 1;
    }
}

/// `GET /v2/services`: every managed service with its state.
pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "services": app.services.list.iter().map(|s| s.json()).collect::<Vec<_>>()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject_bad_names() {
        let s = ServiceSpec::parse("xvfb=Xvfb :99 -screen 0 1280x800x24").unwrap();
        assert_eq!(s.name, "xvfb");
        assert_eq!(s.command, "Xvfb :99 -screen 0 1280x800x24");
        assert!(ServiceSpec::parse("no command").is_err());
        assert!(ServiceSpec::parse("bad name=x").is_err());
        assert!(ServiceSpec::parse("x=  ").is_err());
        let all =
            ServiceSpec::collect(&["a=true".into()], Some("# comment\n\nb=sleep 1\n")).unwrap();
        assert_eq!(all.len(), 2);
        assert!(ServiceSpec::collect(&["a=true".into()], Some("a=false")).is_err());
    }
}
