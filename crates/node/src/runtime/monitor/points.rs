//! Which gVisor trace points the node enables, and the runsc configuration that enables them
//! (`--pod-init-config` at create, `runsc trace create` on re-adoption).

use std::path::Path;

use serde_json::{Value, json};

/// The name of the session (runsc allows one, named `Default`, at pod creation).
pub const SESSION: &str = "Default";

/// Context fields collected with every point: who did it, where, when.
const CONTEXT: [&str; 9] = [
    "time",
    "thread_id",
    "task_start_time",
    "group_id",
    "thread_group_start_time",
    "container_id",
    "credentials",
    "cwd",
    "process_name",
];

/// Process and container points (no optional fields: environments may hold secrets).
const SENTRY_POINTS: [&str; 5] = [
    "container/start",
    "sentry/clone",
    "sentry/execve",
    "sentry/exit_notify_parent",
    "sentry/task_exit",
];

/// The syscalls traced, with their numbers on this architecture. Files opened, programs run,
/// network endpoints, identity and directory changes, new processes: what threat detection
/// looks at. Reads, writes and closes are left out (their volume would dominate).
#[cfg(target_arch = "x86_64")]
pub const SYSCALLS: &[(&str, u64)] = &[
    ("open", 2),
    ("openat", 257),
    ("creat", 85),
    ("execve", 59),
    ("execveat", 322),
    ("connect", 42),
    ("socket", 41),
    ("bind", 49),
    ("accept", 43),
    ("accept4", 288),
    ("chdir", 80),
    ("fchdir", 81),
    ("chroot", 161),
    ("setuid", 105),
    ("setgid", 106),
    ("setsid", 112),
    ("setresuid", 117),
    ("setresgid", 119),
    ("clone", 56),
    ("fork", 57),
    ("vfork", 58),
];

/// The syscalls traced, with their numbers on this architecture (see the x86_64 list).
#[cfg(target_arch = "aarch64")]
pub const SYSCALLS: &[(&str, u64)] = &[
    ("openat", 56),
    ("execve", 221),
    ("execveat", 281),
    ("connect", 203),
    ("socket", 198),
    ("bind", 200),
    ("accept", 202),
    ("accept4", 242),
    ("chdir", 49),
    ("fchdir", 50),
    ("chroot", 51),
    ("setuid", 146),
    ("setgid", 144),
    ("setsid", 157),
    ("setresuid", 147),
    ("setresgid", 149),
    ("clone", 220),
];

/// The syscalls traced (none on architectures gVisor does not run on).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const SYSCALLS: &[(&str, u64)] = &[];

/// Syscalls whose points have the optional `fd_path` field (the path of the fd argument).
const WITH_FD_PATH: [&str; 8] = [
    "openat", "creat", "execveat", "connect", "bind", "accept", "accept4", "fchdir",
];

/// The trace points, each with its fields. Syscalls are traced at exit (arguments and result
/// in one event); with `enter` also at entry, which Falco's syscall parsers expect.
pub fn points(enter: bool) -> Vec<Value> {
    let mut v: Vec<Value> = SENTRY_POINTS
        .iter()
        .map(|p| json!({"name": p, "context_fields": CONTEXT}))
        .collect();
    for (name, _) in SYSCALLS {
        let optional: Vec<&str> = if WITH_FD_PATH.contains(name) {
            vec!["fd_path"]
        } else {
            Vec::new()
        };
        let phases: &[&str] = if enter { &["enter", "exit"] } else { &["exit"] };
        for phase in phases {
            let mut p =
                json!({"name": format!("syscall/{name}/{phase}"), "context_fields": CONTEXT});
            if !optional.is_empty() {
                p["optional_fields"] = json!(optional);
            }
            v.push(p);
        }
    }
    v
}

/// The trace session: the points, sent to the node's socket at `endpoint`. A sink that
/// cannot be set up fails the container's create (monitoring was asked for; the sandbox does
/// not run without it). The sentry never blocks on the node: a write that would block is
/// retried 3 times within about 0.2 ms, then the point is dropped and counted.
pub fn session(endpoint: &Path, enter: bool) -> Value {
    json!({
        "name": SESSION,
        "points": points(enter),
        "sinks": [{
            "name": "remote",
            "config": {
                "endpoint": endpoint.to_string_lossy(),
                "retries": 3,
            },
        }],
    })
}

/// The `--pod-init-config` file's content: the session, started with the sandbox.
pub fn pod_init_config(endpoint: &Path, enter: bool) -> Value {
    json!({ "trace_session": session(endpoint, enter) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_cover_processes_and_the_chosen_syscalls() {
        let exit_only = points(false);
        let names: Vec<&str> = exit_only
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"sentry/execve"));
        assert!(names.contains(&"syscall/openat/exit"));
        assert!(names.contains(&"syscall/connect/exit"));
        assert!(!names.iter().any(|n| n.ends_with("/enter")));
        assert_eq!(points(true).len(), exit_only.len() + SYSCALLS.len());
        let openat = exit_only
            .iter()
            .find(|p| p["name"] == "syscall/openat/exit")
            .unwrap();
        assert_eq!(openat["optional_fields"], json!(["fd_path"]));
        let cfg = pod_init_config(Path::new("/run/x.sock"), false);
        assert_eq!(
            cfg["trace_session"]["sinks"][0]["config"]["endpoint"],
            "/run/x.sock"
        );
    }
}
