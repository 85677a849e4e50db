//! The work queue that runs one reconciler: requests deduplicated per object, one reconcile of
//! an object at a time, a limit on concurrent reconciles, and requeues on timers.
//!
//! It does what controller-runtime's workqueue does for a Go controller, with one difference
//! that matters for latency: a request to reconcile now goes straight to a worker. (kube-runtime's
//! scheduler passes every request, even an immediate one, through a delay queue whose deadlines
//! are rounded up to its next millisecond tick; a warm claim crosses three such hops.)
//!
//! The rules, per object key:
//! - a request while the object waits in the queue is merged into the waiting one;
//! - a request while the object is being reconciled marks it dirty; it runs once more as soon as
//!   the current reconcile ends (and that run's own requeue decides what follows);
//! - a request now replaces a pending timer; of two timers, the earlier one stays;
//! - an object that is no longer in the cache when its turn comes is dropped (its deletion
//!   already was, or will be, seen by the watch).
//!
//! It reports client-go's `workqueue_*` metrics through [`QueueMetrics`], with client-go's
//! meaning: an add is a request for an object not already waiting, the depth counts the objects
//! waiting (including a running object asked for again), the queue duration runs from the add
//! to a worker taking the object, the work duration from there to the end of its reconcile.

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;

use crate::metrics::QueueMetrics;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `duration` unless a change comes first.
    #[must_use]
    pub const fn requeue(duration: Duration) -> Self {
        Self {
            requeue_after: Some(duration),
        }
    }

    /// Reconcile again only when a change is seen.
    #[must_use]
    pub const fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// The delay before the next reconcile, if one is asked for.
    pub const fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// Delay after a reconcile that panicked (the panic is logged; the object is retried).
const PANIC_RETRY: Duration = Duration::from_secs(5);

/// A timer for one object; ordered by deadline only.
struct Timer<K: Resource> {
    at: Instant,
    key: ObjectRef<K>,
}

impl<K: Resource> PartialEq for Timer<K> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl<K: Resource> Eq for Timer<K> {}
impl<K: Resource> PartialOrd for Timer<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Resource> Ord for Timer<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// The queue's bookkeeping, without the I/O (so the rules above are tested on their own).
struct Queue<K: Resource<DynamicType = ()>> {
    /// Objects waiting for a worker, in request order.
    ready: VecDeque<ObjectRef<K>>,
    /// The members of `ready`.
    queued: HashSet<ObjectRef<K>>,
    /// Objects being reconciled.
    running: HashSet<ObjectRef<K>>,
    /// Running objects asked for again.
    dirty: HashSet<ObjectRef<K>>,
    /// The current deadline per object; the heap may hold stale entries, skipped when popped.
    deadlines: HashMap<ObjectRef<K>, Instant>,
    timers: BinaryHeap<Reverse<Timer<K>>>,
    /// When each waiting object was added, and when each running one was taken.
    added: HashMap<ObjectRef<K>, Instant>,
    taken: HashMap<ObjectRef<K>, Instant>,
    metrics: QueueMetrics,
}

impl<K: Resource<DynamicType = ()>> Default for Queue<K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            dirty: HashSet::new(),
            deadlines: HashMap::new(),
            timers: BinaryHeap::new(),
            added: HashMap::new(),
            taken: HashMap::new(),
            metrics: QueueMetrics::default(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Queue<K> {
    /// A queue that reports to `metrics`.
    fn with_metrics(metrics: QueueMetrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// A request to reconcile `key` now.
    fn request(&mut self, key: ObjectRef<K>, now: Instant) {
        self.deadlines.remove(&key);
        let added = if self.running.contains(&key) {
            self.dirty.insert(key.clone())
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key.clone());
            true
        } else {
            false
        };
        if added {
            self.added.insert(key, now);
            self.metrics.adds.inc();
            self.report_depth();
        }
    }

    fn report_depth(&self) {
        let depth = self.queued.len() + self.dirty.len();
        self.metrics
            .depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A request to reconcile `key` at `at` (the earlier of two deadlines wins; a waiting or
    /// running object is not delayed by it).
    fn schedule(&mut self, key: ObjectRef<K>, at: Instant) {
        if self.queued.contains(&key) || self.dirty.contains(&key) {
            return;
        }
        match self.deadlines.entry(key.clone()) {
            Entry::Occupied(mut e) if at < *e.get() => {
                e.insert(at);
            }
            Entry::Occupied(_) => return,
            Entry::Vacant(e) => {
                e.insert(at);
            }
        }
        self.timers.push(Reverse(Timer { at, key }));
    }

    /// The next deadline (stale heap entries are dropped on the way).
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(t)) = self.timers.peek() {
            if self.deadlines.get(&t.key) == Some(&t.at) {
                return Some(t.at);
            }
            self.timers.pop();
        }
        None
    }

    /// Turns every timer due at `now` into a request.
    fn fire_due(&mut self, now: Instant) {
        while let Some(at) = self.next_deadline() {
            if at > now {
                break;
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            self.request(t.key, now);
        }
    }

    /// The next object a worker may take, if any.
    fn take(&mut self, now: Instant) -> Option<ObjectRef<K>> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        if let Some(at) = self.added.remove(&key) {
            self.metrics
                .queue_duration
                .observe(now.saturating_duration_since(at).as_secs_f64());
        }
        self.report_depth();
        self.running.insert(key.clone());
        self.taken.insert(key.clone(), now);
        Some(key)
    }

    /// A reconcile of `key` ended; `requeue` is what it asked for.
    fn done(&mut self, key: ObjectRef<K>, requeue: Option<Duration>, now: Instant) {
        self.running.remove(&key);
        if let Some(at) = self.taken.remove(&key) {
            self.metrics
                .work_duration
                .observe(now.saturating_duration_since(at).as_secs_f64());
        }
        if self.dirty.remove(&key) {
            // Asked for while running: it waits again, counted (and timed) from that request.
            self.queued.insert(key.clone());
            self.ready.push_back(key);
        } else if let Some(d) = requeue {
            self.schedule(key, now + d);
        }
    }
}

/// Runs `reconcile` over the objects `requests` names until the stream ends (then waits for the
/// reconciles in flight). `reconcile` gets the cached object and answers when to come back;
/// at most `workers` reconciles run at once, each on its own task.
pub async fn run<K, R, F, Fut>(
    store: Store<K>,
    requests: R,
    workers: usize,
    metrics: QueueMetrics,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    R: Stream<Item = ObjectRef<K>> + Send,
    F: Fn(Arc<K>) -> Fut,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    let workers = workers.max(1);
    let mut requests = std::pin::pin!(requests.fuse());
    let mut open = true;
    let mut queue = Queue::<K>::with_metrics(metrics);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < workers {
            let Some(key) = queue.take(Instant::now()) else {
                break;
            };
            let Some(obj) = store.get(&key) else {
                queue.done(key, None, Instant::now());
                continue;
            };
            let task = tokio::spawn(reconcile(obj));
            in_flight.push(task.map(move |r| (key, r)));
        }
        if !open && in_flight.is_empty() {
            return;
        }
        let deadline = queue.next_deadline();
        tokio::select! {
            biased;
            Some((key, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let requeue = result.unwrap_or_else(|e| {
                    tracing::error!(object = %key, error = %e, "reconcile panicked");
                    Some(PANIC_RETRY)
                });
                queue.done(key, requeue, Instant::now());
            }
            request = requests.next(), if open => match request {
                Some(key) => queue.request(key, Instant::now()),
                None => open = false,
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                queue.fire_due(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn key(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::new(name).within("ns")
    }

    fn drain(q: &mut Queue<ConfigMap>) -> Vec<String> {
        let now = Instant::now();
        std::iter::from_fn(|| q.take(now)).map(|k| k.name).collect()
    }

    #[test]
    fn requests_for_a_waiting_object_merge() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.request(key("a"), now);
        q.request(key("b"), now);
        q.request(key("a"), now);
        assert_eq!(drain(&mut q), ["a", "b"]);
        assert!(q.take(now).is_none());
    }

    #[test]
    fn a_request_during_a_reconcile_runs_once_after_it() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.request(key("a"), now);
        let a = q.take(now).unwrap();
        q.request(key("a"), now);
        q.request(key("a"), now);
        assert!(
            q.take(now).is_none(),
            "one reconcile of an object at a time"
        );
        // The run asked for a requeue in an hour; the dirty mark wins and runs it now.
        q.done(a, Some(Duration::from_secs(3600)), now);
        assert_eq!(drain(&mut q), ["a"]);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn the_earlier_timer_wins_and_a_request_now_replaces_it() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.schedule(key("a"), now + Duration::from_secs(10));
        q.schedule(key("a"), now + Duration::from_secs(5));
        q.schedule(key("a"), now + Duration::from_secs(20));
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(5)));
        q.fire_due(now + Duration::from_secs(4));
        assert!(q.take(now).is_none());
        q.fire_due(now + Duration::from_secs(5));
        assert_eq!(drain(&mut q), ["a"]);
        assert_eq!(q.next_deadline(), None, "the later, stale timers are gone");

        q.done(key("a"), Some(Duration::from_secs(30)), now);
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(30)));
        q.request(key("a"), now);
        assert_eq!(q.next_deadline(), None);
        assert_eq!(drain(&mut q), ["a"]);
    }

    #[test]
    fn a_timer_does_not_delay_a_waiting_object() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.request(key("a"), now);
        q.schedule(key("a"), now + Duration::from_secs(1));
        assert_eq!(q.next_deadline(), None);
        assert_eq!(drain(&mut q), ["a"]);
    }

    #[test]
    fn timers_fire_in_deadline_order() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.schedule(key("late"), now + Duration::from_millis(30));
        q.schedule(key("early"), now + Duration::from_millis(10));
        q.schedule(key("middle"), now + Duration::from_millis(20));
        q.fire_due(now + Duration::from_millis(25));
        assert_eq!(drain(&mut q), ["early", "middle"]);
        q.fire_due(now + Duration::from_millis(30));
        assert_eq!(drain(&mut q), ["late"]);
    }

    #[test]
    fn metrics_count_adds_depth_and_durations_as_client_go() {
        let metrics = crate::metrics::Metrics::new();
        let mut q = Queue::with_metrics(metrics.work_queue("sandbox"));
        let t0 = Instant::now();
        q.request(key("a"), t0);
        q.request(key("a"), t0); // merged: not an add
        q.request(key("b"), t0);
        let a = q.take(t0 + Duration::from_millis(3)).unwrap();
        q.request(key("a"), t0); // asked for while running: an add, waiting again
        q.done(a, None, t0 + Duration::from_millis(10));
        let text = metrics.render(&[]);
        let has = |line: &str| assert!(text.contains(line), "{line} missing from:\n{text}");
        has(r#"workqueue_adds_total{name="sandbox",controller="sandbox"} 3"#);
        has(r#"workqueue_depth{name="sandbox",controller="sandbox"} 2"#);
        has(r#"workqueue_queue_duration_seconds_count{name="sandbox",controller="sandbox"} 1"#);
        has(r#"workqueue_work_duration_seconds_count{name="sandbox",controller="sandbox"} 1"#);
        has(r#"workqueue_work_duration_seconds_sum{name="sandbox",controller="sandbox"} 0.007"#);
        assert_eq!(drain(&mut q), ["b", "a"]);
        let text = metrics.render(&[]);
        assert!(text.contains(r#"workqueue_depth{name="sandbox",controller="sandbox"} 0"#));
    }

    fn store_with(names: &[&str]) -> Store<ConfigMap> {
        let (reader, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        for n in names {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some((*n).into());
            cm.metadata.namespace = Some("ns".into());
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cm));
        }
        reader
    }

    /// The whole loop: no two reconciles of one object overlap, the worker limit holds, a
    /// missing object is skipped, and a requeue comes back on its timer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_keeps_its_promises() {
        use parking_lot::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

        let store = store_with(&["a", "b", "c"]);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let running = Arc::new(Mutex::new(HashSet::<String>::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let (r2, p2, n2) = (running.clone(), peak.clone(), runs.clone());
        let reconcile = move |cm: Arc<ConfigMap>| {
            let (running, peak, runs) = (r2.clone(), p2.clone(), n2.clone());
            async move {
                let name = cm.metadata.name.clone().unwrap();
                {
                    let mut r = running.lock();
                    assert!(r.insert(name.clone()), "{name} reconciled twice at once");
                    peak.fetch_max(r.len(), SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.lock().remove(&name);
                let mut runs = runs.lock();
                let n = runs.entry(name.clone()).or_default();
                *n += 1;
                // "c" asks to come back 10 ms later until it has run four times.
                (name == "c" && *n < 4).then_some(Duration::from_millis(10))
            }
        };
        let task = tokio::spawn(run(store, rx, 2, QueueMetrics::default(), reconcile));
        for _ in 0..5 {
            for n in ["a", "b", "c", "gone"] {
                tx.unbounded_send(key(n)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Wait (bounded) for c's requeues to bring it to four runs, then close the requests.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.lock().get("c").copied().unwrap_or(0) < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends when its requests end")
            .unwrap();
        assert!(peak.load(SeqCst) <= 2, "never more than the two workers");
        let runs = runs.lock();
        assert!(!runs.contains_key("gone"));
        // Requests merge: never more runs than requests sent (five each).
        for n in ["a", "b"] {
            assert!((1..=5).contains(&runs[n]), "{n}: {} runs", runs[n]);
        }
        assert!(runs["c"] >= 4, "c's requeues ran: {} runs", runs["c"]);
    }
}
