//! The idle policy of a sandbox (this project's extension): how long without traffic before it is
//! paused or suspended, read from its Pod's annotations, and the checks admission runs on them.
//!
//! The policy is set where Pod metadata is set — a SandboxTemplate's or a Sandbox's
//! `podTemplate.metadata.annotations`, or a claim's `additionalPodMetadata.annotations` — so the
//! router, which watches Pods, knows it without another read:
//!
//! - [`IDLE_TIMEOUT`]: after this long without a request, the sandbox is paused (frozen, memory
//!   kept) and the next request unpauses it;
//! - [`IDLE_SUSPEND_AFTER`]: after this long without a request, it is suspended
//!   (`operatingMode: Suspended`, upstream's meaning: the Pod is deleted, volumes kept) and the
//!   next request resumes it. Longer than the idle timeout when both are set.
//! - [`IDLE_DELETE_AFTER`]: after this long without a request, the sandbox is deleted (its
//!   claim, when a claim owns it). Longer than the idle timeout; not with a suspension (a
//!   suspended sandbox has no Pod whose traffic the router would count).
//!
//! Durations are Go's (`90s`, `5m`, `1h30m`) or whole seconds (`300`), at least one second.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::constants::extensions::annotations::{
    IDLE_DELETE_AFTER, IDLE_PAUSED, IDLE_SUSPEND_AFTER, IDLE_SUSPENDED, IDLE_TIMEOUT,
};

/// What a sandbox does when nobody uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Pause after this long without traffic.
    pub pause_after: Option<Duration>,
    /// Suspend after this long without traffic.
    pub suspend_after: Option<Duration>,
    /// Delete after this long without traffic.
    pub delete_after: Option<Duration>,
}

/// What to do with an idle sandbox now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleAction {
    /// Freeze it (the pause extension); the next request thaws it.
    Pause,
    /// Suspend it (`operatingMode: Suspended`); the next request resumes it.
    Suspend,
    /// Delete it (its claim, when a claim owns it).
    Delete,
}

impl IdlePolicy {
    /// The policy in `annotations`: `Ok(None)` when it sets none, an error naming the
    /// annotation and what to write when a value does not parse.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Self>, String> {
        let Some(a) = annotations else {
            return Ok(None);
        };
        let read = |key: &str| {
            a.get(key)
                .map(|v| parse_duration(v).map_err(|e| format!("annotation {key}: {e}")))
                .transpose()
        };
        let policy = Self {
            pause_after: read(IDLE_TIMEOUT)?,
            suspend_after: read(IDLE_SUSPEND_AFTER)?,
            delete_after: read(IDLE_DELETE_AFTER)?,
        };
        if policy.delete_after.is_some() && policy.suspend_after.is_some() {
            return Err(format!(
                "annotations {IDLE_DELETE_AFTER} and {IDLE_SUSPEND_AFTER} cannot be combined: a suspended sandbox has no Pod whose traffic is counted; pause it first ({IDLE_TIMEOUT}) and delete it later, or suspend it"
            ));
        }
        if let (Some(p), Some(d)) = (policy.pause_after, policy.delete_after)
            && d <= p
        {
            return Err(format!(
                "annotation {IDLE_DELETE_AFTER} ({d:?}) must be longer than {IDLE_TIMEOUT} ({p:?}): a sandbox is paused first and deleted later; remove one of them or make the deletion later"
            ));
        }
        if let (Some(p), Some(s)) = (policy.pause_after, policy.suspend_after)
            && s <= p
        {
            return Err(format!(
                "annotation {IDLE_SUSPEND_AFTER} ({s:?}) must be longer than {IDLE_TIMEOUT} ({p:?}): a sandbox is paused first and suspended later; remove one of them or make the suspension later"
            ));
        }
        Ok((policy != Self::default()).then_some(policy))
    }

    /// The action due for a sandbox idle for `idle`: `paused` when it is paused already (it
    /// can then only be suspended or deleted).
    pub fn due(&self, idle: Duration, paused: bool) -> Option<IdleAction> {
        if self.delete_after.is_some_and(|d| idle >= d) {
            return Some(IdleAction::Delete);
        }
        if self.suspend_after.is_some_and(|s| idle >= s) {
            return Some(IdleAction::Suspend);
        }
        if !paused && self.pause_after.is_some_and(|p| idle >= p) {
            return Some(IdleAction::Pause);
        }
        None
    }
}

/// Admission of the idle annotations of one Pod metadata object: `(field path, message)` for
/// each value that does not parse. `path` is where the annotations sit (for the message).
pub fn validate(
    annotations: Option<&BTreeMap<String, String>>,
    path: &str,
) -> Vec<(String, String)> {
    match IdlePolicy::from_annotations(annotations) {
        Ok(_) => Vec::new(),
        Err(e) => vec![(path.to_owned(), e)],
    }
}

/// A Go duration (`1h2m3s`, `250ms`, `1.5h`) or whole seconds, at least one second.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let total = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => crate::duration::parse_go_duration(s).map_err(|_| {
            format!(
                "{text:?} is not a duration; write one such as \"90s\", \"5m\" or \"1h30m\" (or whole seconds, \"300\")"
            )
        })?,
    };
    if total < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than one second; idle periods are whole seconds or more"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn durations_parse_as_go_writes_them_or_as_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "soon", "5 minutes", "10x", "m", "-5s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.contains("is not a duration") && e.contains("\"5m\""),
                "{bad}: {e}"
            );
        }
        assert!(
            parse_duration("500ms")
                .unwrap_err()
                .contains("shorter than one second")
        );
    }

    #[test]
    fn the_policy_is_read_from_annotations_and_checked() {
        assert_eq!(IdlePolicy::from_annotations(None), Ok(None));
        assert_eq!(
            IdlePolicy::from_annotations(Some(&ann(&[("other", "1")]))),
            Ok(None)
        );
        let both = ann(&[(IDLE_TIMEOUT, "30s"), (IDLE_SUSPEND_AFTER, "10m")]);
        assert_eq!(
            IdlePolicy::from_annotations(Some(&both)),
            Ok(Some(IdlePolicy {
                pause_after: Some(Duration::from_secs(30)),
                suspend_after: Some(Duration::from_secs(600)),
                delete_after: None,
            }))
        );
        let e = IdlePolicy::from_annotations(Some(&ann(&[(IDLE_TIMEOUT, "soon")]))).unwrap_err();
        assert!(
            e.starts_with(
                "annotation agent-sandbox-rs.github.io/idle-timeout: \"soon\" is not a duration"
            ),
            "{e}"
        );
        let e = IdlePolicy::from_annotations(Some(&ann(&[
            (IDLE_TIMEOUT, "5m"),
            (IDLE_SUSPEND_AFTER, "1m"),
        ])))
        .unwrap_err();
        assert!(e.contains("must be longer than"), "{e}");
        let e = IdlePolicy::from_annotations(Some(&ann(&[
            (IDLE_SUSPEND_AFTER, "5m"),
            (IDLE_DELETE_AFTER, "1h"),
        ])))
        .unwrap_err();
        assert!(e.contains("cannot be combined"), "{e}");
        let errs = validate(
            Some(&ann(&[(IDLE_SUSPEND_AFTER, "x")])),
            "spec.podTemplate.metadata.annotations",
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "spec.podTemplate.metadata.annotations");
    }

    #[test]
    fn a_running_sandbox_is_paused_then_suspended() {
        let p = IdlePolicy {
            pause_after: Some(Duration::from_secs(30)),
            suspend_after: Some(Duration::from_secs(600)),
            delete_after: None,
        };
        let s = Duration::from_secs;
        assert_eq!(p.due(s(29), false), None);
        assert_eq!(p.due(s(30), false), Some(IdleAction::Pause));
        assert_eq!(p.due(s(30), true), None);
        assert_eq!(p.due(s(600), true), Some(IdleAction::Suspend));
        assert_eq!(p.due(s(900), false), Some(IdleAction::Suspend));
        let suspend_only = IdlePolicy {
            pause_after: None,
            suspend_after: Some(s(60)),
            delete_after: None,
        };
        assert_eq!(suspend_only.due(s(59), false), None);
        assert_eq!(suspend_only.due(s(60), false), Some(IdleAction::Suspend));
        // A user's pause is never escalated by a pause-only policy.
        let pause_only = IdlePolicy {
            pause_after: Some(s(5)),
            suspend_after: None,
            delete_after: None,
        };
        assert_eq!(pause_only.due(s(3600), true), None);
        let pause_then_delete = IdlePolicy {
            pause_after: Some(s(5)),
            suspend_after: None,
            delete_after: Some(s(60)),
        };
        assert_eq!(pause_then_delete.due(s(5), false), Some(IdleAction::Pause));
        assert_eq!(pause_then_delete.due(s(60), true), Some(IdleAction::Delete));
    }
}
