//! The per-pool in-memory queue of warm Sandboxes that claims adopt from, and the smart
//! candidate pick (upstream-core §10.1–§10.2): FIFO, de-duplicated by name, spread across nodes.

use std::collections::HashMap;

use parking_lot::Mutex;

/// A queued pool Sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `status.nodeName` when last seen ("" when unscheduled).
    pub node_name: String,
}

/// Queues keyed `<namespace>/<pool name>`.
#[derive(Debug, Default)]
pub struct WarmQueue {
    inner: Mutex<HashMap<String, Vec<SandboxKey>>>,
}

/// The queue key of a pool.
pub fn pool_key(namespace: &str, pool: &str) -> String {
    format!("{namespace}/{pool}")
}

impl WarmQueue {
    /// Appends `key`; for a key already queued, only its node name is updated in place.
    pub fn add(&self, pool: &str, key: SandboxKey) {
        let mut q = self.inner.lock();
        let list = q.entry(pool.to_string()).or_default();
        match list
            .iter_mut()
            .find(|k| k.namespace == key.namespace && k.name == key.name)
        {
            Some(existing) => existing.node_name = key.node_name,
            None => list.push(key),
        }
    }

    /// Picks and removes one key atomically with `pick`, which sees the queue in order.
    pub fn pop_with(
        &self,
        pool: &str,
        pick: impl Fn(&[SandboxKey]) -> Option<usize>,
    ) -> Option<SandboxKey> {
        let mut q = self.inner.lock();
        let list = q.get_mut(pool)?;
        let i = pick(list)?;
        (i < list.len()).then(|| list.remove(i))
    }

    /// Removes one key from a pool's queue.
    pub fn remove_item(&self, pool: &str, namespace: &str, name: &str) {
        if let Some(list) = self.inner.lock().get_mut(pool) {
            list.retain(|k| !(k.namespace == namespace && k.name == name));
        }
    }

    /// Drops a pool's queue.
    pub fn remove_queue(&self, pool: &str) {
        self.inner.lock().remove(pool);
    }

    /// Number of keys queued for a pool.
    pub fn len(&self, pool: &str) -> usize {
        self.inner.lock().get(pool).map_or(0, Vec::len)
    }

    /// Whether a pool's queue is empty.
    pub fn is_empty(&self, pool: &str) -> bool {
        self.len(pool) == 0
    }
}

/// The smart pick: with scheduled keys, the earliest key on the node holding the most queued
/// keys (spreading adoptions across nodes); otherwise the first key (FIFO).
pub fn pick_smart(keys: &[SandboxKey]) -> Option<usize> {
    match keys.len() {
        0 => return None,
        1 => return Some(0),
        _ => {}
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for k in keys.iter().filter(|k| !k.node_name.is_empty()) {
        *counts.entry(k.node_name.as_str()).or_default() += 1;
    }
    let Some(max) = counts.values().copied().max() else {
        return Some(0);
    };
    keys.iter()
        .position(|k| !k.node_name.is_empty() && counts[k.node_name.as_str()] == max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str, node: &str) -> SandboxKey {
        SandboxKey {
            namespace: "ns".into(),
            name: name.into(),
            node_name: node.into(),
        }
    }

    #[test]
    fn fifo_and_dedupe() {
        let q = WarmQueue::default();
        q.add("ns/p", k("a", ""));
        q.add("ns/p", k("b", ""));
        q.add("ns/p", k("a", "n1"));
        assert_eq!(q.len("ns/p"), 2);
        assert_eq!(q.pop_with("ns/p", |_| Some(0)), Some(k("a", "n1")));
        q.remove_item("ns/p", "ns", "b");
        assert!(q.is_empty("ns/p"));
        q.add("ns/p", k("c", ""));
        q.remove_queue("ns/p");
        assert_eq!(q.pop_with("ns/p", pick_smart), None);
    }

    #[test]
    fn smart_pick_spreads_and_falls_back_to_fifo() {
        assert_eq!(pick_smart(&[]), None);
        assert_eq!(pick_smart(&[k("a", "n1")]), Some(0));
        assert_eq!(pick_smart(&[k("a", ""), k("b", "")]), Some(0));
        // Node n2 holds the most keys; its earliest key wins.
        let keys = [k("a", ""), k("b", "n1"), k("c", "n2"), k("d", "n2")];
        assert_eq!(pick_smart(&keys), Some(2));
        // Tie: the earliest key on any max node.
        let keys = [k("a", "n2"), k("b", "n1")];
        assert_eq!(pick_smart(&keys), Some(0));
    }
}
