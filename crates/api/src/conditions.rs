//! Condition helpers with apimachinery `meta.SetStatusCondition` semantics (upstream-core §17.1).
//!
//! Rules, in the order they apply:
//! 1. A condition of a new type is appended at the end; its lastTransitionTime is the one given,
//!    or `now`.
//! 2. When the status of an existing condition changes, lastTransitionTime becomes the one given,
//!    or `now`.
//! 3. Reason, message and observedGeneration are updated without touching lastTransitionTime.
//! 4. [`remove_status_condition`] deletes by type.
//!
//! The clock is a parameter so that the helpers stay pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set. `last_transition_time: None` means "zero" in apimachinery terms: the
/// helper uses `now` when the time must change.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCondition {
    /// Condition type, e.g. `Ready`.
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// The generation the condition was computed from.
    pub observed_generation: Option<i64>,
    /// An explicit transition time (used when mirroring another object's condition).
    pub last_transition_time: Option<Time>,
}

impl NewCondition {
    /// A condition without an explicit transition time or generation.
    pub fn new(type_: &str, status: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: None,
        }
    }

    /// Sets `observedGeneration`.
    pub fn generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    /// Copies a condition, keeping its transition time (as the claim does when it mirrors the
    /// Sandbox's Ready and Finished conditions).
    pub fn from_condition(c: &Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: c.observed_generation,
            last_transition_time: Some(c.last_transition_time.clone()),
        }
    }
}

/// Status values of a condition.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Unknown.
    pub const UNKNOWN: &str = "Unknown";
}

/// Sets `new` in `conditions` with `SetStatusCondition` semantics. Returns whether anything
/// changed.
pub fn set_status_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition,
    now: &Time,
) -> bool {
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) else {
        conditions.push(Condition {
            last_transition_time: new.last_transition_time.unwrap_or_else(|| now.clone()),
            message: new.message,
            observed_generation: new.observed_generation,
            reason: new.reason,
            status: new.status,
            type_: new.type_,
        });
        return true;
    };
    let mut changed = false;
    if existing.status != new.status {
        existing.status = new.status;
        existing.last_transition_time = new.last_transition_time.unwrap_or_else(|| now.clone());
        changed = true;
    }
    if existing.reason != new.reason {
        existing.reason = new.reason;
        changed = true;
    }
    if existing.message != new.message {
        existing.message = new.message;
        changed = true;
    }
    if existing.observed_generation != new.observed_generation {
        existing.observed_generation = new.observed_generation;
        changed = true;
    }
    changed
}

/// Removes the condition of `type_`. Returns whether one was removed.
pub fn remove_status_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of `type_`, if present.
pub fn find_status_condition<'a>(
    conditions: &'a [Condition],
    type_: &str,
) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_status_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_status_condition(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: &str, reason: &str) -> NewCondition {
        NewCondition::new("Ready", status, reason, "msg").generation(Some(1))
    }

    #[test]
    fn new_condition_gets_now_and_is_appended_last() {
        let mut conds = Vec::new();
        assert!(set_status_condition(
            &mut conds,
            NewCondition::new("Suspended", "False", "NotSuspended", ""),
            &at(10)
        ));
        assert!(set_status_condition(
            &mut conds,
            ready("False", "DependenciesNotReady"),
            &at(20)
        ));
        assert_eq!(
            conds.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Suspended", "Ready"]
        );
        assert_eq!(conds[1].last_transition_time, at(20));
    }

    #[test]
    fn new_condition_keeps_a_provided_transition_time() {
        let mut conds = Vec::new();
        let mut c = ready("True", "DependenciesReady");
        c.last_transition_time = Some(at(5));
        set_status_condition(&mut conds, c, &at(99));
        assert_eq!(conds[0].last_transition_time, at(5));
    }

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("False", "DependenciesNotReady"), &at(10));
        // Reason, message and generation change; status does not.
        let mut next = ready("False", "SandboxSuspended");
        next.message = "Sandbox is suspending".into();
        next.observed_generation = Some(2);
        assert!(set_status_condition(&mut conds, next, &at(20)));
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, "SandboxSuspended");
        assert_eq!(conds[0].message, "Sandbox is suspending");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_set_on_flip_both_ways() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("False", "DependenciesNotReady"), &at(10));
        set_status_condition(&mut conds, ready("True", "DependenciesReady"), &at(20));
        assert_eq!(conds[0].last_transition_time, at(20));
        set_status_condition(&mut conds, ready("False", "DependenciesNotReady"), &at(30));
        assert_eq!(conds[0].last_transition_time, at(30));
    }

    #[test]
    fn flip_with_provided_time_uses_it() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("False", "x"), &at(10));
        let mut c = ready("True", "x");
        c.last_transition_time = Some(at(15));
        set_status_condition(&mut conds, c, &at(20));
        assert_eq!(conds[0].last_transition_time, at(15));
    }

    #[test]
    fn provided_time_ignored_when_status_unchanged() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("True", "x"), &at(10));
        let mut c = ready("True", "x");
        c.last_transition_time = Some(at(15));
        assert!(!set_status_condition(&mut conds, c, &at(20)));
        assert_eq!(conds[0].last_transition_time, at(10));
    }

    #[test]
    fn identical_condition_is_not_a_change() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("True", "DependenciesReady"), &at(10));
        assert!(!set_status_condition(
            &mut conds,
            ready("True", "DependenciesReady"),
            &at(20)
        ));
    }

    #[test]
    fn remove_and_find() {
        let mut conds = Vec::new();
        set_status_condition(&mut conds, ready("True", "r"), &at(1));
        set_status_condition(
            &mut conds,
            NewCondition::new("Finished", "True", "PodSucceeded", ""),
            &at(1),
        );
        assert!(is_status_condition_true(&conds, "Ready"));
        assert!(remove_status_condition(&mut conds, "Ready"));
        assert!(!remove_status_condition(&mut conds, "Ready"));
        assert!(find_status_condition(&conds, "Ready").is_none());
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn mirrored_condition_keeps_transition_time() {
        let source = Condition {
            last_transition_time: at(7),
            message: "Pod is Ready".into(),
            observed_generation: Some(3),
            reason: "DependenciesReady".into(),
            status: "True".into(),
            type_: "Ready".into(),
        };
        let mut conds = Vec::new();
        set_status_condition(&mut conds, NewCondition::from_condition(&source), &at(100));
        assert_eq!(conds[0], source);
    }
}
