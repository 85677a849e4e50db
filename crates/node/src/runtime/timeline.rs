//! Where a sandbox's start spent its time: each step of the engine (network namespace, CNI ADD,
//! firewall hook, rootfs, bundle, runtime create, start, ...) with when it began and ended,
//! relative to the moment the engine was asked for the sandbox. Steps that run concurrently
//! overlap. Kept in memory per sandbox (bounded), read with
//! [`crate::SandboxEngine::timeline`] by benchmarks and logged at `debug` level.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One timed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTime {
    /// What ran, e.g. `cni add`, `runtime create`.
    pub name: &'static str,
    /// When it began, from the start of the sandbox's creation.
    pub begin: Duration,
    /// When it ended, from the start of the sandbox's creation.
    pub end: Duration,
}

impl StepTime {
    /// How long it took.
    pub fn took(&self) -> Duration {
        self.end.saturating_sub(self.begin)
    }
}

/// The steps of one sandbox (cheap to clone; clones share the list).
#[derive(Debug, Clone)]
pub struct Timeline {
    t0: Instant,
    steps: Arc<Mutex<Vec<StepTime>>>,
}

/// Steps kept per sandbox: the first start is what matters; restarts stop adding.
const MAX_STEPS: usize = 64;

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Self {
        Timeline {
            t0: Instant::now(),
            steps: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Record the step `name` that began at `begin` and ends now.
    pub fn record(&self, name: &'static str, begin: Instant) {
        let now = Instant::now();
        let mut v = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < MAX_STEPS {
            v.push(StepTime {
                name,
                begin: begin.saturating_duration_since(self.t0),
                end: now.saturating_duration_since(self.t0),
            });
        }
    }

    /// Record the step `name` unless a step of that name is already there (steps repeated on
    /// every sync count the first time only).
    /// Returns whether it was recorded.
    pub fn record_once(&self, name: &'static str, begin: Instant) -> bool {
        let seen = self
            .steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s.name == name);
        if !seen {
            self.record(name, begin);
        }
        !seen
    }

    /// The steps recorded so far, in the order they ended.
    pub fn steps(&self) -> Vec<StepTime> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One line for logs (see [`summary`]).
    pub fn summary(&self) -> String {
        summary(&self.steps())
    }
}

/// One line for logs: `netns 0.0-1.2, cni add 1.2-19.8, ...` (milliseconds).
pub fn summary(steps: &[StepTime]) -> String {
    steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}-{:.1}",
                s.name,
                s.begin.as_secs_f64() * 1e3,
                s.end.as_secs_f64() * 1e3
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_bounded() {
        let t = Timeline::new();
        for _ in 0..(MAX_STEPS + 5) {
            t.record("x", Instant::now());
        }
        let steps = t.steps();
        assert_eq!(steps.len(), MAX_STEPS);
        assert!(steps.iter().all(|s| s.begin <= s.end));
        assert!(t.summary().starts_with("x "));
    }
}
