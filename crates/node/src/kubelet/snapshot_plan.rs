//! The decisions about a `SandboxSnapshot`, as a pure function of what the node observed: the
//! snapshot, its Sandbox and that Sandbox's Pod, and the snapshots this node is taking. The
//! executor (`agent/snapshot.rs`) observes, asks [`snapshot_action`], and carries out the answer.
//!
//! A node takes the snapshots of the Sandboxes whose Pod it runs, one at a time per Sandbox (a
//! second waits, Pending, naming the first). It refuses at once, Failed with a message naming
//! the Sandbox and what to do, a snapshot whose Sandbox does not exist, is being deleted, is
//! suspended or has a Pod that finished. Deleting a snapshot cancels it if it is being taken,
//! then its files are removed and the node's finalizer with them.

use agent_sandbox_api::constants::extensions::snapshot_reasons as reasons;
use agent_sandbox_api::extension::SnapshotPhase;

/// What the node saw of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    /// Its phase.
    pub phase: SnapshotPhase,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The node's finalizer is on it.
    pub finalized: bool,
    /// `status.node` (empty: none yet).
    pub node: String,
    /// `spec.sandboxRef.name`.
    pub sandbox: String,
}

/// What the node saw of the Sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxView {
    /// There is no such Sandbox.
    Missing,
    /// It is being deleted.
    Deleting,
    /// `operatingMode: Suspended`: it has no Pod.
    Suspended,
    /// It wants a Pod; what of its Pod.
    Running(PodView),
}

/// What the node saw of the Sandbox's Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodView {
    /// No Pod (yet).
    Missing,
    /// Bound to another node (or to none yet): that node decides.
    Elsewhere,
    /// On this node; its phase (Pending, Running, Succeeded, Failed) and whether it is being
    /// deleted.
    Here {
        /// The Pod's uid (the sandbox's id on the node).
        uid: String,
        /// `status.phase`.
        phase: String,
        /// `metadata.deletionTimestamp` is set.
        deleting: bool,
    },
}

/// What the node does with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Nothing: finished, another node's, or gone.
    Nothing,
    /// Write Pending with this message and look again later.
    Wait(String),
    /// Write Failed with this reason and message (nothing is on the node).
    Fail(&'static str, String),
    /// Add the finalizer, write InProgress, take it.
    Take,
    /// Cancel it if it is being taken, delete its files, remove the finalizer.
    Cleanup,
}

/// The decision for `snap`. `taking_here` is whether this node is taking it now, or took it
/// since its agent started (a stale copy of a finished one must not start it again);
/// `other_in_progress` names another snapshot of the same Sandbox that this node is taking.
pub fn snapshot_action(
    snap: &SnapshotView,
    sandbox: &SandboxView,
    my_node: &str,
    taking_here: bool,
    other_in_progress: Option<&str>,
) -> SnapshotAction {
    let mine = snap.node.is_empty() || snap.node == my_node;
    if snap.deleting {
        return if snap.finalized && mine {
            SnapshotAction::Cleanup
        } else {
            SnapshotAction::Nothing
        };
    }
    if snap.phase.is_final() || !mine || taking_here {
        return SnapshotAction::Nothing;
    }
    let name = &snap.sandbox;
    if snap.phase == SnapshotPhase::InProgress {
        // This node was taking it and is not any more: it restarted meanwhile.
        return SnapshotAction::Fail(
            reasons::FAILED,
            format!(
                "the node {my_node} restarted while taking the snapshot of Sandbox {name:?}; nothing was kept: create the snapshot again"
            ),
        );
    }
    let pod = match sandbox {
        SandboxView::Missing => {
            return SnapshotAction::Fail(
                reasons::SANDBOX_NOT_FOUND,
                format!(
                    "Sandbox {name:?} not found in the snapshot's namespace; set spec.sandboxRef.name to an existing Sandbox and create the snapshot again"
                ),
            );
        }
        SandboxView::Deleting => {
            return SnapshotAction::Fail(
                reasons::SANDBOX_DELETING,
                format!("Sandbox {name:?} is being deleted; there is nothing left to snapshot"),
            );
        }
        SandboxView::Suspended => {
            return SnapshotAction::Fail(
                reasons::SANDBOX_NOT_RUNNING,
                format!(
                    "Sandbox {name:?} is suspended and has no Pod to snapshot; resume it (operatingMode: Running), wait until it is Ready and create the snapshot again"
                ),
            );
        }
        SandboxView::Running(pod) => pod,
    };
    match pod {
        PodView::Elsewhere => SnapshotAction::Nothing,
        PodView::Missing => SnapshotAction::Wait(format!(
            "waiting for the Pod of Sandbox {name:?} to be created"
        )),
        PodView::Here { deleting: true, .. } => SnapshotAction::Fail(
            reasons::SANDBOX_NOT_RUNNING,
            format!(
                "the Pod of Sandbox {name:?} is being deleted; there is nothing left to snapshot"
            ),
        ),
        PodView::Here { phase, .. } if phase == "Succeeded" || phase == "Failed" => {
            SnapshotAction::Fail(
                reasons::SANDBOX_NOT_RUNNING,
                format!(
                    "the Pod of Sandbox {name:?} has finished (phase {phase}); only a running or paused Sandbox can be snapshotted"
                ),
            )
        }
        PodView::Here { phase, .. } if phase != "Running" => SnapshotAction::Wait(format!(
            "waiting for the Pod of Sandbox {name:?} to run (phase {phase})"
        )),
        PodView::Here { .. } => match other_in_progress {
            Some(other) => SnapshotAction::Wait(format!(
                "waiting for snapshot {other:?} of Sandbox {name:?} to finish (one snapshot of a Sandbox at a time)"
            )),
            None => SnapshotAction::Take,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(phase: SnapshotPhase) -> SnapshotView {
        SnapshotView {
            phase,
            deleting: false,
            finalized: false,
            node: String::new(),
            sandbox: "sb".into(),
        }
    }

    fn here(phase: &str) -> SandboxView {
        SandboxView::Running(PodView::Here {
            uid: "u".into(),
            phase: phase.into(),
            deleting: false,
        })
    }

    fn act(s: &SnapshotView, sb: &SandboxView) -> SnapshotAction {
        snapshot_action(s, sb, "n1", false, None)
    }

    #[test]
    fn a_running_pod_on_this_node_is_snapshotted() {
        assert_eq!(
            act(&snap(SnapshotPhase::Pending), &here("Running")),
            SnapshotAction::Take
        );
    }

    #[test]
    fn bad_sandboxes_fail_at_once_naming_the_sandbox_and_what_to_do() {
        let s = snap(SnapshotPhase::Pending);
        for (sb, reason, says) in [
            (
                SandboxView::Missing,
                reasons::SANDBOX_NOT_FOUND,
                "set spec.sandboxRef.name",
            ),
            (
                SandboxView::Deleting,
                reasons::SANDBOX_DELETING,
                "being deleted",
            ),
            (
                SandboxView::Suspended,
                reasons::SANDBOX_NOT_RUNNING,
                "resume it",
            ),
            (
                here("Succeeded"),
                reasons::SANDBOX_NOT_RUNNING,
                "has finished",
            ),
            (
                SandboxView::Running(PodView::Here {
                    uid: "u".into(),
                    phase: "Running".into(),
                    deleting: true,
                }),
                reasons::SANDBOX_NOT_RUNNING,
                "being deleted",
            ),
        ] {
            match act(&s, &sb) {
                SnapshotAction::Fail(r, m) => {
                    assert_eq!(r, reason, "{sb:?}");
                    assert!(m.contains("\"sb\"") && m.contains(says), "{sb:?}: {m}");
                }
                other => panic!("{sb:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_starting_pod_or_another_snapshot_in_progress_makes_it_wait() {
        let s = snap(SnapshotPhase::Pending);
        assert!(
            matches!(act(&s, &here("Pending")), SnapshotAction::Wait(m) if m.contains("to run"))
        );
        assert!(matches!(
            act(&s, &SandboxView::Running(PodView::Missing)),
            SnapshotAction::Wait(_)
        ));
        assert!(matches!(
            snapshot_action(&s, &here("Running"), "n1", false, Some("first")),
            SnapshotAction::Wait(m) if m.contains("\"first\"") && m.contains("one snapshot of a Sandbox at a time")
        ));
    }

    #[test]
    fn other_nodes_finished_and_running_snapshots_are_left_alone() {
        let mut s = snap(SnapshotPhase::Pending);
        assert_eq!(
            act(&s, &SandboxView::Running(PodView::Elsewhere)),
            SnapshotAction::Nothing
        );
        s.node = "n2".into();
        assert_eq!(act(&s, &here("Running")), SnapshotAction::Nothing);
        for phase in [SnapshotPhase::Ready, SnapshotPhase::Failed] {
            assert_eq!(act(&snap(phase), &here("Running")), SnapshotAction::Nothing);
        }
        let s = snap(SnapshotPhase::InProgress);
        assert_eq!(
            snapshot_action(&s, &here("Running"), "n1", true, None),
            SnapshotAction::Nothing
        );
    }

    #[test]
    fn in_progress_without_the_node_taking_it_fails_after_a_restart() {
        let mut s = snap(SnapshotPhase::InProgress);
        s.node = "n1".into();
        assert!(matches!(
            act(&s, &here("Running")),
            SnapshotAction::Fail(r, m) if r == reasons::FAILED && m.contains("restarted")
        ));
    }

    #[test]
    fn deletion_cleans_up_what_this_node_holds() {
        let mut s = snap(SnapshotPhase::Ready);
        s.deleting = true;
        assert_eq!(
            act(&s, &here("Running")),
            SnapshotAction::Nothing,
            "no finalizer"
        );
        s.finalized = true;
        s.node = "n1".into();
        assert_eq!(act(&s, &SandboxView::Missing), SnapshotAction::Cleanup);
        s.phase = SnapshotPhase::InProgress;
        assert_eq!(
            snapshot_action(&s, &here("Running"), "n1", true, None),
            SnapshotAction::Cleanup,
            "deleting one in progress cancels it"
        );
        s.node = "n2".into();
        assert_eq!(act(&s, &here("Running")), SnapshotAction::Nothing);
    }
}
