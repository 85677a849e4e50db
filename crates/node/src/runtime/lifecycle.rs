//! The lifecycle of a sandbox's container as one transition function: which operations are
//! legal in which [`Phase`], the phase they lead to, and the runtime effects that get it there,
//! in order. The engine asks [`transition`] before it acts and executes the [`Effect`]s it
//! returns; an illegal operation is an [`InvalidTransition`], never a runtime call.
//!
//! ```text
//!            start               pause
//!  Created ─────────► Running ◄────────► Paused
//!     │                  │      resume      │
//!     │ stop (delete)    │ stop, exit       │ stop (thaw, signal)
//!     ▼                  ▼                  ▼
//!   Exited ◄──────────────────────────────────
//! ```
//! `remove` is legal in every phase and ends with the runtime's `delete`.

use serde::{Deserialize, Serialize};

/// Lifecycle phase of a sandbox (its main container) or of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Container created, process not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The process exited (code in [`crate::SandboxState::exit_code`]).
    Exited,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl From<crate::runtime::ContainerStatus> for Phase {
    /// The phase of a container as the runtime's `state` reports it.
    fn from(s: crate::runtime::ContainerStatus) -> Self {
        use crate::runtime::ContainerStatus;
        match s {
            ContainerStatus::Creating | ContainerStatus::Created => Phase::Created,
            ContainerStatus::Running => Phase::Running,
            ContainerStatus::Paused => Phase::Paused,
            ContainerStatus::Stopped => Phase::Exited,
        }
    }
}

/// An operation on a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start a created container's process.
    Start,
    /// Freeze a running container.
    Pause,
    /// Thaw a paused container.
    Resume,
    /// Stop the process: with `graceful`, SIGTERM first and SIGKILL after the grace period.
    Stop {
        /// Whether there is a grace period (SIGTERM before SIGKILL).
        graceful: bool,
    },
    /// Remove the container from the runtime, whatever it is doing.
    Remove,
}

impl Op {
    /// The verb used in errors ("cannot pause sandbox x: it is Exited").
    pub fn verb(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Stop { .. } => "stop",
            Op::Remove => "remove",
        }
    }
}

/// One runtime effect of a transition, executed in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The runtime's `start`.
    Start,
    /// The runtime's `pause` (cgroup freezer), then wait until every process is frozen.
    Freeze,
    /// The runtime's `resume`.
    Thaw,
    /// SIGTERM, then wait up to the grace period for the process to exit; when it exits, the
    /// effects after this one are skipped.
    Terminate,
    /// SIGKILL, then wait for the process to exit.
    Kill,
    /// The runtime's `delete` (ends a created container's init).
    Delete,
}

/// What a legal operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The phase after the effects.
    pub to: Phase,
    /// The runtime effects, in order.
    pub effects: Vec<Effect>,
}

/// An operation that is not legal in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTransition {
    /// The phase the container is in.
    pub from: Phase,
    /// The refused operation.
    pub op: Op,
}

impl InvalidTransition {
    /// The state as errors name it: "already started" for a second start, else the phase.
    pub fn state(&self) -> String {
        match (self.op, self.from) {
            (Op::Start, Phase::Running | Phase::Paused | Phase::Exited) => "already started".into(),
            _ => self.from.to_string(),
        }
    }
}

impl std::fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot {} a container that is {}",
            self.op.verb(),
            self.state()
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// The one transition function of the lifecycle (see the module documentation).
pub fn transition(from: Phase, op: Op) -> Result<Transition, InvalidTransition> {
    use Effect::*;
    use Phase::*;
    let (to, effects) = match (from, op) {
        (Created, Op::Start) => (Running, vec![Start]),
        (Running, Op::Pause) => (Paused, vec![Freeze]),
        (Paused, Op::Resume) => (Running, vec![Thaw]),
        (Exited, Op::Stop { .. }) => (Exited, vec![]),
        // Never started: nothing to terminate gracefully, and runsc cannot signal a created
        // container. Deleting it ends its init.
        (Created, Op::Stop { .. }) => (Exited, vec![Delete]),
        (Running, Op::Stop { graceful: true }) => (Exited, vec![Terminate, Kill]),
        (Running, Op::Stop { graceful: false }) => (Exited, vec![Kill]),
        // A frozen process cannot act on a signal: thaw first.
        (Paused, Op::Stop { graceful: true }) => (Exited, vec![Thaw, Terminate, Kill]),
        (Paused, Op::Stop { graceful: false }) => (Exited, vec![Thaw, Kill]),
        (Created | Exited, Op::Remove) => (Exited, vec![Delete]),
        (Running, Op::Remove) => (Exited, vec![Kill, Delete]),
        (Paused, Op::Remove) => (Exited, vec![Thaw, Kill, Delete]),
        (_, op) => return Err(InvalidTransition { from, op }),
    };
    Ok(Transition { to, effects })
}

/// The engine's error for a refused operation on `sandbox` (`<id>` or `<id>/<container>`).
pub fn refused(sandbox: impl Into<String>, e: InvalidTransition) -> crate::error::NodeError {
    crate::error::NodeError::InvalidState {
        sandbox: sandbox.into(),
        op: e.op.verb(),
        state: e.state(),
    }
}

/// Whether `op` is legal in `from`.
pub fn can(from: Phase, op: Op) -> bool {
    transition(from, op).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;
    use Phase::*;

    const ALL: [Phase; 4] = [Created, Running, Paused, Exited];
    const OPS: [Op; 6] = [
        Op::Start,
        Op::Pause,
        Op::Resume,
        Op::Stop { graceful: true },
        Op::Stop { graceful: false },
        Op::Remove,
    ];

    #[test]
    fn legal_operations_per_phase() {
        let legal = |p| OPS.iter().filter(|&&o| can(p, o)).count();
        // start, stop x2, remove
        assert_eq!(legal(Created), 4);
        // pause, stop x2, remove
        assert_eq!(legal(Running), 4);
        // resume, stop x2, remove
        assert_eq!(legal(Paused), 4);
        // stop x2 (a no-op), remove
        assert_eq!(legal(Exited), 3);
        assert!(!can(Running, Op::Start));
        assert!(!can(Paused, Op::Pause));
        assert!(!can(Running, Op::Resume));
        assert!(!can(Exited, Op::Pause));
    }

    #[test]
    fn targets() {
        assert_eq!(transition(Created, Op::Start).unwrap().to, Running);
        assert_eq!(transition(Running, Op::Pause).unwrap().to, Paused);
        assert_eq!(transition(Paused, Op::Resume).unwrap().to, Running);
        for p in ALL {
            assert_eq!(transition(p, Op::Remove).unwrap().to, Exited);
            assert_eq!(
                transition(p, Op::Stop { graceful: true }).unwrap().to,
                Exited
            );
        }
    }

    #[test]
    fn stop_effects() {
        let fx = |p, graceful| transition(p, Op::Stop { graceful }).unwrap().effects;
        assert_eq!(fx(Exited, true), []);
        assert_eq!(fx(Created, true), [Delete]);
        assert_eq!(fx(Running, true), [Terminate, Kill]);
        assert_eq!(fx(Running, false), [Kill]);
        assert_eq!(fx(Paused, true), [Thaw, Terminate, Kill]);
        assert_eq!(fx(Paused, false), [Thaw, Kill]);
    }

    #[test]
    fn remove_always_ends_with_delete_and_kills_what_runs() {
        for p in ALL {
            let fx = transition(p, Op::Remove).unwrap().effects;
            assert_eq!(fx.last(), Some(&Delete));
            assert_eq!(fx.contains(&Kill), matches!(p, Running | Paused));
            assert_eq!(fx.first() == Some(&Thaw), p == Paused);
        }
    }

    #[test]
    fn refusals_name_the_state() {
        let e = transition(Exited, Op::Pause).unwrap_err();
        assert_eq!(e.state(), "Exited");
        assert_eq!(e.to_string(), "cannot pause a container that is Exited");
        assert_eq!(
            transition(Running, Op::Start).unwrap_err().state(),
            "already started"
        );
        assert_eq!(
            transition(Created, Op::Resume).unwrap_err().state(),
            "Created"
        );
    }
}
