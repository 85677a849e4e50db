//! gVisor runtime monitoring: which sandboxes are traced and where their events go, the
//! node's per-sandbox remote-sink sockets, and the counters on the metrics endpoint.
//!
//! A sandbox that asks for monitoring (`agent-sandbox-rs.github.io/runtime-monitoring` on its
//! Pod, or the node's default) runs under runsc with a trace session whose only sink is the
//! node: `<sandbox dir>/monitor.sock`, served by [`server`]. The node decodes each message
//! ([`wire`]) into `<sandbox dir>/runtime-events.jsonl` and forwards it, as sent, to Falco's
//! socket when asked. See `docs/runtime-monitoring.md`.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the setting, the per-sandbox listeners, the metrics |
//! | `points.rs` | the trace points and the runsc session configuration |
//! | `server.rs` | the sockets: sentries in, Falco out, the JSON log |
//! | `wire.rs` | the remote protocol's header, handshake and payloads |

pub mod points;
pub mod server;
pub mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use server::Counters;

/// Where a monitored sandbox's events go (at least one of the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeMonitoring {
    /// Decoded into the sandbox's JSON event log.
    pub log: bool,
    /// Forwarded to the node's Falco socket.
    pub falco: bool,
}

/// What to write in the annotation, for error messages.
pub const VALUES: &str = "`log`, `falco`, `log,falco`, or `off`";

impl RuntimeMonitoring {
    /// Parse a setting: a comma-separated list of sinks (`log`, `falco`), or `off`/`none`
    /// (`None`: not monitored). The error says what is wrong and what to write.
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        let mut m = RuntimeMonitoring {
            log: false,
            falco: false,
        };
        let v = value.trim();
        if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        for part in v.split(',').map(str::trim) {
            match part.to_ascii_lowercase().as_str() {
                "log" => m.log = true,
                "falco" => m.falco = true,
                "" => return Err(format!("{value:?} names no sink; write {VALUES}")),
                other => {
                    return Err(format!(
                        "unknown sink {other:?} in {value:?}; write {VALUES}"
                    ));
                }
            }
        }
        Ok(Some(m))
    }

    /// The setting as written (`log`, `falco` or `log,falco`).
    pub fn as_value(&self) -> &'static str {
        match (self.log, self.falco) {
            (true, true) => "log,falco",
            (false, true) => "falco",
            _ => "log",
        }
    }
}

/// The node-wide runtime-monitoring settings.
#[derive(Debug, Clone)]
pub struct MonitoringConfig {
    /// Falco's gVisor socket (`falco --gvisor-config`'s endpoint); `None`: sandboxes asking
    /// for `falco` are refused.
    pub falco_socket: Option<PathBuf>,
    /// Size at which a sandbox's event log is rotated (one older file is kept).
    pub log_max_bytes: u64,
}

/// The default of [`MonitoringConfig::log_max_bytes`]: 32 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 32 << 20;

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            falco_socket: None,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

/// The socket of a sandbox in its directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("monitor.sock")
}

/// The runsc trace configuration of a sandbox in its directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("pod-init.json")
}

/// The JSON event log of a sandbox in its directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("runtime-events.jsonl")
}

/// The node's listeners and counters.
pub struct Monitoring {
    config: MonitoringConfig,
    counters: Arc<Counters>,
    listeners: Mutex<HashMap<String, server::Listener>>,
}

impl Monitoring {
    /// No sandbox monitored yet.
    pub fn new(config: MonitoringConfig) -> Self {
        Monitoring {
            config,
            counters: Arc::new(Counters::default()),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MonitoringConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Serve sandbox `id` (directory `dir`) and write its runsc configuration; returns the
    /// configuration's path. A sandbox already served keeps its listener.
    pub fn start(&self, id: &str, dir: &Path, m: RuntimeMonitoring) -> std::io::Result<PathBuf> {
        let config = config_path(dir);
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if listeners.contains_key(id) {
            return Ok(config);
        }
        let socket = socket_path(dir);
        // Falco's parsers pair syscall entries with exits: both are traced when forwarding.
        let json = points::pod_init_config(&socket, m.falco);
        fs_err::write(
            &config,
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        )?;
        let fanout = server::Fanout {
            log: m.log.then(|| {
                Arc::new(Mutex::new(server::EventLog::new(
                    log_path(dir),
                    self.config.log_max_bytes,
                )))
            }),
            falco: if m.falco {
                self.config.falco_socket.clone()
            } else {
                None
            },
        };
        let l = server::listen_at(&socket, id, fanout, Arc::clone(&self.counters))?;
        listeners.insert(id.to_string(), l);
        Ok(config)
    }

    /// Stop serving sandbox `id` (its sockets close; the event log stays with the sandbox
    /// directory).
    pub fn stop(&self, id: &str) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The counters in OpenMetrics text (no `# EOF`), for the node's metrics endpoint.
    pub fn metrics_text(&self) -> String {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str("# TYPE agent_sandbox_runtime_monitoring_events counter\n");
        s.push_str(
            "# HELP agent_sandbox_runtime_monitoring_events Trace-point messages the node received from gVisor sentries.\n",
        );
        s.push_str(&format!(
            "agent_sandbox_runtime_monitoring_events_total {}\n",
            get(&c.received)
        ));
        s.push_str("# TYPE agent_sandbox_runtime_monitoring_events_logged counter\n");
        s.push_str(
            "# HELP agent_sandbox_runtime_monitoring_events_logged Events written to sandboxes' JSON event logs.\n",
        );
        s.push_str(&format!(
            "agent_sandbox_runtime_monitoring_events_logged_total {}\n",
            get(&c.logged)
        ));
        s.push_str("# TYPE agent_sandbox_runtime_monitoring_events_forwarded counter\n");
        s.push_str(
            "# HELP agent_sandbox_runtime_monitoring_events_forwarded Messages forwarded to Falco.\n",
        );
        s.push_str(&format!(
            "agent_sandbox_runtime_monitoring_events_forwarded_total {}\n",
            get(&c.forwarded)
        ));
        s.push_str("# TYPE agent_sandbox_runtime_monitoring_events_dropped counter\n");
        s.push_str(
            "# HELP agent_sandbox_runtime_monitoring_events_dropped Events lost, by where: falco (its socket absent, refusing or full), log (a write failed), sentry (gVisor could not hand them to the node), undecodable (malformed, too large or of an unknown type).\n",
        );
        for (sink, n) in [
            ("falco", get(&c.dropped_falco)),
            ("log", get(&c.dropped_log)),
            ("sentry", get(&c.dropped_sentry)),
            ("undecodable", get(&c.undecoded)),
        ] {
            s.push_str(&format!(
                "agent_sandbox_runtime_monitoring_events_dropped_total{{sink=\"{sink}\"}} {n}\n"
            ));
        }
        s.push_str("# TYPE agent_sandbox_runtime_monitoring_connections gauge\n");
        s.push_str(
            "# HELP agent_sandbox_runtime_monitoring_connections gVisor sentries connected to the node now.\n",
        );
        s.push_str(&format!(
            "agent_sandbox_runtime_monitoring_connections {}\n",
            c.connections.load(Ordering::Relaxed)
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        let both = Some(RuntimeMonitoring {
            log: true,
            falco: true,
        });
        assert_eq!(RuntimeMonitoring::parse("log, falco"), Ok(both));
        assert_eq!(RuntimeMonitoring::parse("FALCO,log"), Ok(both));
        assert_eq!(RuntimeMonitoring::parse("off"), Ok(None));
        assert_eq!(
            RuntimeMonitoring::parse("log").unwrap().unwrap().as_value(),
            "log"
        );
        let e = RuntimeMonitoring::parse("yes").unwrap_err();
        assert!(
            e.contains("unknown sink \"yes\"") && e.contains("`log,falco`"),
            "{e}"
        );
        assert!(RuntimeMonitoring::parse("").is_err());
        assert!(RuntimeMonitoring::parse("log,").is_err());
    }

    #[test]
    fn metrics_name_every_drop_reason() {
        let m = Monitoring::new(MonitoringConfig::default());
        m.counters().dropped_falco.fetch_add(2, Ordering::Relaxed);
        let t = m.metrics_text();
        assert!(
            t.contains("agent_sandbox_runtime_monitoring_events_dropped_total{sink=\"falco\"} 2")
        );
        assert!(t.contains("agent_sandbox_runtime_monitoring_events_total 0"));
    }
}
