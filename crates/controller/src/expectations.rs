//! Per-pool creation and deletion expectations (upstream-core §8.5): the read-after-write guard
//! that stops a pool from acting on a cache that has not seen its own writes yet.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long unobserved expectations block a pool before they are dropped.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Record {
    pending_creations: i64,
    pending_deletions: HashSet<String>,
    raised_at: Instant,
}

/// Expectations keyed by `<namespace>/<pool>`.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Record>>,
}

impl Record {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.raised_at) > EXPECTATIONS_TIMEOUT
    }
    fn empty(&self) -> bool {
        self.pending_creations <= 0 && self.pending_deletions.is_empty()
    }
}

impl Expectations {
    /// Whether every earlier create and delete has been observed (or the record timed out).
    pub fn satisfied(&self, pool: &str, now: Instant) -> bool {
        let mut map = self.inner.lock();
        match map.get(pool) {
            None => true,
            Some(r) if r.expired(now) => {
                map.remove(pool);
                true
            }
            Some(r) => r.empty(),
        }
    }

    /// Atomically: if satisfied, record `n` pending creations and return true.
    pub fn try_expect_creations(&self, pool: &str, n: i64, now: Instant) -> bool {
        if n <= 0 {
            return false;
        }
        let mut map = self.inner.lock();
        if let Some(r) = map.get(pool)
            && !r.expired(now)
            && !r.empty()
        {
            return false;
        }
        map.insert(
            pool.to_string(),
            Record {
                pending_creations: n,
                pending_deletions: HashSet::new(),
                raised_at: now,
            },
        );
        true
    }

    /// One create was observed in the cache (or did not happen).
    pub fn creation_observed(&self, pool: &str) {
        self.lower_creations(pool, 1);
    }

    /// `n` creates were observed or failed.
    pub fn lower_creations(&self, pool: &str, n: i64) {
        if let Some(r) = self.inner.lock().get_mut(pool) {
            r.pending_creations = (r.pending_creations - n).max(0);
        }
    }

    /// Records a deletion before it is issued. Empty UIDs are ignored.
    pub fn expect_deletion(&self, pool: &str, uid: &str, now: Instant) {
        if uid.is_empty() {
            return;
        }
        let mut map = self.inner.lock();
        let r = map.entry(pool.to_string()).or_insert_with(|| Record {
            pending_creations: 0,
            pending_deletions: HashSet::new(),
            raised_at: now,
        });
        if r.empty() {
            r.raised_at = now;
        }
        r.pending_deletions.insert(uid.to_string());
    }

    /// A deletion was observed (or failed).
    pub fn deletion_observed(&self, pool: &str, uid: &str) {
        if let Some(r) = self.inner.lock().get_mut(pool) {
            r.pending_deletions.remove(uid);
        }
    }

    /// Whether a deletion of `uid` is still pending (false after the timeout).
    pub fn is_pending_deletion(&self, pool: &str, uid: &str, now: Instant) -> bool {
        self.inner
            .lock()
            .get(pool)
            .is_some_and(|r| !r.expired(now) && r.pending_deletions.contains(uid))
    }

    /// Drops a pool's record.
    pub fn forget(&self, pool: &str) {
        self.inner.lock().remove(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_gate_until_observed() {
        let e = Expectations::default();
        let t = Instant::now();
        assert!(e.satisfied("p", t));
        assert!(!e.try_expect_creations("p", 0, t));
        assert!(e.try_expect_creations("p", 2, t));
        assert!(!e.satisfied("p", t));
        assert!(
            !e.try_expect_creations("p", 1, t),
            "a stale cache must not over-create"
        );
        e.creation_observed("p");
        assert!(!e.satisfied("p", t));
        e.lower_creations("p", 1);
        assert!(e.satisfied("p", t));
        assert!(e.try_expect_creations("p", 1, t));
    }

    #[test]
    fn deletions_and_timeout() {
        let e = Expectations::default();
        let t = Instant::now();
        e.expect_deletion("p", "", t);
        assert!(e.satisfied("p", t));
        e.expect_deletion("p", "u1", t);
        assert!(e.is_pending_deletion("p", "u1", t));
        assert!(!e.satisfied("p", t));
        let later = t + EXPECTATIONS_TIMEOUT + Duration::from_secs(1);
        assert!(!e.is_pending_deletion("p", "u1", later));
        assert!(e.satisfied("p", later));
        e.expect_deletion("p", "u2", t);
        e.deletion_observed("p", "u2");
        assert!(e.satisfied("p", t));
        e.expect_deletion("p", "u3", t);
        e.forget("p");
        assert!(e.satisfied("p", t));
    }
}
