//! Durable object storage on SQLite with a single writer thread (group commit), the committed
//! in-memory view every read is served from, the per-resource watch cache (a ring of recent
//! events with a retained window), and the ownership indexes the garbage collector uses.
//!
//! Durability: the database runs in WAL mode; a request is acknowledged only after the commit
//! that contains it, and many requests share one transaction (group commit: the writer takes
//! every request queued while it was committing the previous batch). Readers never see a write
//! before it is committed: the in-memory view is updated after the commit. What a commit
//! survives is [`Durability`]: by default a power loss or a kernel crash too (`synchronous=FULL`:
//! SQLite fsyncs the WAL once at every commit, so one fsync covers every write of the batch), or,
//! with [`Durability::ProcessCrash`], only a crash or `kill -9` of the process
//! (`synchronous=NORMAL`: the WAL is in the kernel's page cache when the writer replies and
//! reaches the disk at the next checkpoint or kernel writeback). An fsync costs about 0.2 ms on
//! an idle disk and several milliseconds on a busy one.
//!
//! Checkpoints stay in the writer (SQLite's automatic checkpoint at commit): a checkpointer on
//! another thread never catches the WAL's end under a steady stream of commits, so the WAL would
//! never restart and would grow without bound, slowing every later read and commit.
//!
//! The watch cache keeps, per resource, the changes of the last [`StoreConfig::watch_window_time`]
//! (2.5 minutes; at least [`WATCH_WINDOW_MIN`] changes, at most [`StoreConfig::watch_window`]).
//! Each change holds a full version of its object, so a count alone made memory grow with the
//! write rate: an hour of churning sandboxes kept 20 000 versions of each kind. A watch resumes
//! from a recent resourceVersion (clients reconnect within seconds, or every few minutes when the
//! server ends a watch); an older one gets 410 Gone and relists, as kube-apiserver answers once
//! its watch cache (about 75 s) has moved on.
//!
//! Deleted objects leave a tombstone row so that after a restart a watch can resume from a
//! resourceVersion taken before the restart. History is kept compacted: after a restart each
//! object is replayed once, at its latest version (etcd after a compaction behaves the same way
//! for versions older than the compaction, except that it answers 410; we replay instead).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use tokio::sync::{oneshot, watch};

/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

/// Storage errors (mapped to Kubernetes `Status` by the handlers, which know the resource).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found")]
    NotFound,
    /// The object exists already.
    #[error("object already exists")]
    AlreadyExists,
    /// The expected resourceVersion does not match.
    #[error("resourceVersion conflict")]
    Conflict,
    /// A uid precondition failed.
    #[error("uid precondition failed: expected {expected}, stored {actual}")]
    UidMismatch {
        /// The precondition.
        expected: String,
        /// The stored uid.
        actual: String,
    },
    /// Storage failed; the message names the database and what to do.
    #[error("{0}")]
    Internal(String),
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite failed.
    #[error(
        "opening the database {path}: {source}; check that the data directory is writable and not used by another server"
    )]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A stored row is not valid JSON.
    #[error("database {path}: stored object {res}/{ns}/{name} is not valid JSON: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Resource key.
        res: String,
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the storage writer thread: {0}")]
    Thread(std::io::Error),
}

/// A stored object at one version.
#[derive(Debug)]
pub struct Stored {
    /// Its resourceVersion.
    pub rv: u64,
    /// The resourceVersion that created it.
    pub created_rv: u64,
    /// The object, with `metadata.resourceVersion` set.
    pub obj: Arc<Value>,
    /// The object serialised once, shared by the write's response, reads and every watcher
    /// that needs the stored form.
    json: std::sync::OnceLock<bytes::Bytes>,
}

impl Stored {
    /// The object `obj` at `rv`, created at `created_rv`.
    pub fn new(rv: u64, created_rv: u64, obj: Arc<Value>) -> Self {
        Stored {
            rv,
            created_rv,
            obj,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The object as JSON (serialised on first use).
    pub fn json(&self) -> &bytes::Bytes {
        self.json
            .get_or_init(|| bytes::Bytes::from(serde_json::to_vec(&*self.obj).unwrap_or_default()))
    }
}

/// The kind of a watch-cache event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted (the object is its last state, at the delete's resourceVersion).
    Deleted,
    /// Replayed from disk after a restart: the latest state of an object, or its tombstone.
    Compacted {
        /// When the object was created.
        created_rv: u64,
        /// Whether this is a tombstone.
        deleted: bool,
    },
}

/// Changes kept in each resource's watch cache however old they are.
pub const WATCH_WINDOW_MIN: usize = 100;

/// One watch-cache event.
#[derive(Debug)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When it entered the watch cache.
    pub at: std::time::Instant,
    /// The object after the change at the change's resourceVersion (for deletes, the last
    /// state); its JSON is shared with the write's response.
    pub stored: Arc<Stored>,
    /// The object before the change (updates only).
    pub prev: Option<Arc<Value>>,
}

/// A change published to the API server's controllers: deletions, objects with owners or
/// being deleted (the garbage collector), and every change of Pods and Services (the
/// EndpointSlice controller).
#[derive(Debug, Clone)]
pub struct Change {
    /// Resource key.
    pub res: String,
    /// Object key.
    pub key: ObjKey,
    /// Event kind.
    pub kind: EventKind,
    /// Object after.
    pub obj: Arc<Value>,
}

impl Change {
    /// Whether the garbage collector has anything to do with this change.
    pub fn concerns_gc(&self) -> bool {
        let m = &self.obj["metadata"];
        self.kind == EventKind::Deleted
            || m.get("ownerReferences").is_some()
            || m.get("deletionTimestamp").is_some()
    }
}

struct ResState {
    objects: BTreeMap<ObjKey, Arc<Stored>>,
    events: VecDeque<Arc<Event>>,
    window_start: u64,
    notify: watch::Sender<u64>,
}

impl ResState {
    fn new(window_start: u64) -> Self {
        ResState {
            objects: BTreeMap::new(),
            events: VecDeque::new(),
            window_start,
            notify: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    compacted: u64,
    res: HashMap<String, ResState>,
    uids: HashMap<String, (String, ObjKey)>,
    dependents: HashMap<String, BTreeSet<(String, ObjKey)>>,
}

/// A write operation (compare-and-swap semantics).
#[derive(Debug)]
pub enum Op {
    /// Create; fails with AlreadyExists.
    Create {
        /// Resource key.
        res: String,
        /// The object.
        obj: Value,
    },
    /// Replace; fails with NotFound, or Conflict when `expect_rv` differs.
    Update {
        /// Resource key.
        res: String,
        /// The object.
        obj: Value,
        /// Required current resourceVersion.
        expect_rv: Option<u64>,
    },
    /// Delete; fails with NotFound, Conflict or UidMismatch.
    Delete {
        /// Resource key.
        res: String,
        /// Object key.
        key: ObjKey,
        /// Required current resourceVersion.
        expect_rv: Option<u64>,
        /// Required uid.
        expect_uid: Option<String>,
    },
}

type Reply = oneshot::Sender<Result<Arc<Stored>, StoreError>>;

struct WriteReq {
    op: Op,
    data: Vec<u8>,
    reply: Reply,
}

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most events retained per resource in the watch cache (older versions get 410 Gone).
    pub watch_window: usize,
    /// Events older than this leave the watch cache (beyond the newest [`WATCH_WINDOW_MIN`]).
    pub watch_window_time: std::time::Duration,
    /// Tombstones retained on disk.
    pub tombstones: usize,
    /// What an acknowledged write survives.
    pub durability: Durability,
}

/// What an acknowledged write survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A crash or `kill -9` of the process only; the writes of the last half minute or so
    /// before a power loss or a kernel crash may be lost (SQLite `synchronous=NORMAL`: the WAL
    /// is fsynced at checkpoints, not at commits, and the kernel writes it back on its own).
    ProcessCrash,
    /// A power loss or a kernel crash too (the default): every commit fsyncs the WAL before its
    /// writes are acknowledged (`synchronous=FULL`); one fsync per group commit, not per write.
    #[default]
    PowerLoss,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            watch_window: 20_000,
            watch_window_time: std::time::Duration::from_secs(150),
            tombstones: 20_000,
            durability: Durability::default(),
        }
    }
}

struct Inner {
    state: RwLock<State>,
    tx: mpsc::Sender<WriteReq>,
    changes: tokio::sync::mpsc::UnboundedSender<Change>,
    path: PathBuf,
    failed: RwLock<Option<String>>,
}

/// The store handle (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn key_of(obj: &Value) -> ObjKey {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().unwrap_or("").to_string(),
    )
}

/// Serialises an object as stored on disk: everything but `metadata.resourceVersion`, which
/// the row's own column holds. Avoids copying the object to drop one field.
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(top) = self.0 else {
            return self.0.serialize(ser);
        };
        let mut out = ser.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match v {
                Value::Object(meta) if k == "metadata" => {
                    let fields = meta.iter().filter(|(f, _)| *f != "resourceVersion");
                    out.serialize_entry(k, &MapOf(fields))?;
                }
                _ => out.serialize_entry(k, v)?,
            }
        }
        out.end()
    }
}

/// Serialises the entries of an iterator as a JSON object.
struct MapOf<I>(I);

impl<'a, I> serde::Serialize for MapOf<I>
where
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.0.clone())
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn uid_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |source| OpenError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (or creates) `db_path` and starts the writer thread. Must be called inside a tokio
    /// runtime only for the change feed's receiver to be useful; the writer is a plain thread.
    pub fn open(
        db_path: &Path,
        cfg: StoreConfig,
    ) -> Result<(Store, tokio::sync::mpsc::UnboundedReceiver<Change>), OpenError> {
        let e = sqlite_err(db_path);
        let conn = Connection::open(db_path).map_err(&e)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&e)?;
        let synchronous = match cfg.durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(&e)?;
        conn.pragma_update(None, "busy_timeout", 5000).map_err(&e)?;
        // SQLite's default page cache (2 MB): every object is in memory above this layer and
        // SQLite is only written to, so a larger cache buys nothing, and SQLite walks its
        // page-cache hash table at the end of write transactions (with 64 MiB that walk was a
        // fifth of this thread's time once the database held an hour of Events).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (res TEXT NOT NULL, ns TEXT NOT NULL, \
               name TEXT NOT NULL, rv INTEGER NOT NULL, created_rv INTEGER NOT NULL, \
               data BLOB NOT NULL, PRIMARY KEY (res, ns, name)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tombstones (rv INTEGER PRIMARY KEY, res TEXT NOT NULL, \
               ns TEXT NOT NULL, name TEXT NOT NULL, created_rv INTEGER NOT NULL, \
               data BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(&e)?;
        let state = load(&conn, db_path, &cfg)?;
        let (tx, rx) = mpsc::channel::<WriteReq>();
        let (ctx, crx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            tx,
            changes: ctx,
            path: db_path.to_path_buf(),
            failed: RwLock::new(None),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("apiserver-store-writer".into())
            .spawn(move || writer(conn, rx, weak, cfg))
            .map_err(OpenError::Thread)?;
        Ok((Store { inner }, crx))
    }

    /// Submits one write and waits until it is durable.
    pub async fn write(&self, op: Op) -> Result<Arc<Stored>, StoreError> {
        if let Some(msg) = self.inner.failed.read().map(|g| g.clone()).unwrap_or(None) {
            return Err(StoreError::Internal(msg));
        }
        let data = match &op {
            Op::Create { obj, .. } | Op::Update { obj, .. } => {
                serde_json::to_vec(&WithoutResourceVersion(obj))
                    .map_err(|e| StoreError::Internal(e.to_string()))?
            }
            Op::Delete { .. } => vec![],
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriteReq { op, data, reply })
            .map_err(|_| {
                StoreError::Internal(format!(
                    "the storage writer for {} has stopped; restart the server",
                    self.inner.path.display()
                ))
            })?;
        rx.await.map_err(|_| {
            StoreError::Internal(format!(
                "the storage writer for {} stopped before committing; restart the server",
                self.inner.path.display()
            ))
        })?
    }

    /// Whether the store is healthy (the last commit succeeded).
    pub fn health(&self) -> Result<(), String> {
        match self.inner.failed.read().map(|g| g.clone()).unwrap_or(None) {
            Some(m) => Err(m),
            None => Ok(()),
        }
    }

    /// The latest committed resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.inner.state.read().map(|s| s.rv).unwrap_or(0)
    }

    /// Reads one object.
    pub fn get(&self, res: &str, ns: &str, name: &str) -> Option<Arc<Stored>> {
        let st = self.inner.state.read().ok()?;
        st.res
            .get(res)?
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Lists objects of a resource, optionally in one namespace, starting after `after`
    /// (exclusive), up to `limit` that pass `filter`. Returns (items, current rv, has_more,
    /// remaining count estimate).
    pub fn list(
        &self,
        res: &str,
        ns: Option<&str>,
        after: Option<&ObjKey>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> (Vec<Arc<Stored>>, u64, Option<ObjKey>) {
        let Ok(st) = self.inner.state.read() else {
            return (vec![], 0, None);
        };
        let rv = st.rv;
        let Some(rs) = st.res.get(res) else {
            return (vec![], rv, None);
        };
        let mut out = vec![];
        let start = match (after, ns) {
            (Some(k), _) => std::ops::Bound::Excluded(k.clone()),
            (None, Some(ns)) => std::ops::Bound::Included((ns.to_string(), String::new())),
            (None, None) => std::ops::Bound::Unbounded,
        };
        let mut next = None;
        for (k, v) in rs.objects.range((start, std::ops::Bound::Unbounded)) {
            if let Some(ns) = ns
                && k.0 != ns
            {
                break;
            }
            if !filter(&v.obj) {
                continue;
            }
            if let Some(l) = limit
                && out.len() >= l
            {
                next = out.last().map(|s: &Arc<Stored>| key_of(&s.obj));
                break;
            }
            out.push(v.clone());
        }
        (out, rv, next)
    }

    /// Names of every resource with stored objects in a namespace.
    pub fn namespace_contents(&self, ns: &str) -> Vec<(String, ObjKey)> {
        let Ok(st) = self.inner.state.read() else {
            return vec![];
        };
        let mut out = vec![];
        for (res, rs) in &st.res {
            for k in rs.objects.range((ns.to_string(), String::new())..) {
                if k.0.0 != ns {
                    break;
                }
                out.push((res.clone(), k.0.clone()));
            }
        }
        out
    }

    /// Looks an object up by uid.
    pub fn by_uid(&self, uid: &str) -> Option<(String, Arc<Stored>)> {
        let st = self.inner.state.read().ok()?;
        let (res, key) = st.uids.get(uid)?;
        Some((res.clone(), st.res.get(res)?.objects.get(key)?.clone()))
    }

    /// Objects whose ownerReferences name `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<(String, Arc<Stored>)> {
        let Ok(st) = self.inner.state.read() else {
            return vec![];
        };
        st.dependents
            .get(uid)
            .map(|set| {
                set.iter()
                    .filter_map(|(res, key)| {
                        Some((res.clone(), st.res.get(res)?.objects.get(key)?.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every object that has ownerReferences or a deletionTimestamp (GC start-up scan).
    pub fn gc_candidates(&self) -> Vec<(String, Arc<Stored>)> {
        let Ok(st) = self.inner.state.read() else {
            return vec![];
        };
        let mut out = vec![];
        for (res, rs) in &st.res {
            for s in rs.objects.values() {
                let m = &s.obj["metadata"];
                if m.get("ownerReferences").is_some() || m.get("deletionTimestamp").is_some() {
                    out.push((res.clone(), s.clone()));
                }
            }
        }
        out
    }

    /// A snapshot for a watch that starts with the current state: the objects passing `filter`
    /// and the resourceVersion to continue from.
    pub fn snapshot(&self, res: &str, filter: &dyn Fn(&Value) -> bool) -> (Vec<Arc<Stored>>, u64) {
        let Ok(st) = self.inner.state.read() else {
            return (vec![], 0);
        };
        let items = st
            .res
            .get(res)
            .map(|rs| {
                rs.objects
                    .values()
                    .filter(|s| filter(&s.obj))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (items, st.rv)
    }

    /// Events of a resource after `rv`, and the rv up to which the result is complete.
    /// `Err(window_start)` when `rv` is older than the retained window.
    pub fn events_since(&self, res: &str, rv: u64) -> Result<(Vec<Arc<Event>>, u64), u64> {
        let Ok(st) = self.inner.state.read() else {
            return Ok((vec![], rv));
        };
        let Some(rs) = st.res.get(res) else {
            return if rv < st.compacted {
                Err(st.compacted)
            } else {
                Ok((vec![], st.rv))
            };
        };
        if rv < rs.window_start {
            return Err(rs.window_start);
        }
        let idx = rs.events.partition_point(|e| e.stored.rv <= rv);
        Ok((rs.events.range(idx..).cloned().collect(), st.rv.max(rv)))
    }

    /// A receiver that changes whenever the resource changes.
    pub fn subscribe(&self, res: &str) -> watch::Receiver<u64> {
        let mut st = match self.inner.state.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let ws = st.compacted;
        st.res
            .entry(res.to_string())
            .or_insert_with(|| ResState::new(ws))
            .notify
            .subscribe()
    }

    /// The publisher of GC changes (for the GC's own re-queues).
    pub fn change_sender(&self) -> tokio::sync::mpsc::UnboundedSender<Change> {
        self.inner.changes.clone()
    }
}

/// (rv, created_rv, deleted, object) of one stored row.
type HistoryRow = (u64, u64, bool, Arc<Value>);

fn load(conn: &Connection, path: &Path, cfg: &StoreConfig) -> Result<State, OpenError> {
    let e = sqlite_err(path);
    let meta = |k: &str| -> Result<u64, OpenError> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(&e)?
            .unwrap_or(0) as u64)
    };
    let mut st = State {
        rv: meta("rv")?,
        compacted: meta("compacted")?,
        ..Default::default()
    };
    // (res) -> Vec<(rv, created_rv, deleted, obj)>
    let mut history: HashMap<String, Vec<HistoryRow>> = HashMap::new();
    let parse = |res: &str, ns: &str, name: &str, data: &[u8], rv: u64| {
        let mut v: Value = serde_json::from_slice(data).map_err(|source| OpenError::Corrupt {
            path: path.to_path_buf(),
            res: res.into(),
            ns: ns.into(),
            name: name.into(),
            source,
        })?;
        set_rv(&mut v, rv);
        Ok::<_, OpenError>(Arc::new(v))
    };
    {
        let mut q = conn
            .prepare("SELECT res, ns, name, rv, created_rv, data FROM objects")
            .map_err(&e)?;
        let mut rows = q.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let (res, ns, name): (String, String, String) = (
                r.get(0).map_err(&e)?,
                r.get(1).map_err(&e)?,
                r.get(2).map_err(&e)?,
            );
            let rv = r.get::<_, i64>(3).map_err(&e)? as u64;
            let created_rv = r.get::<_, i64>(4).map_err(&e)? as u64;
            let data: Vec<u8> = r.get(5).map_err(&e)?;
            let obj = parse(&res, &ns, &name, &data, rv)?;
            st.rv = st.rv.max(rv);
            history
                .entry(res.clone())
                .or_default()
                .push((rv, created_rv, false, obj.clone()));
            index_add(&mut st, &res, &(ns.clone(), name.clone()), &obj);
            let rs = st.res.entry(res).or_insert_with(|| ResState::new(0));
            rs.objects
                .insert((ns, name), Arc::new(Stored::new(rv, created_rv, obj)));
        }
        let mut q = conn
            .prepare("SELECT res, ns, name, rv, created_rv, data FROM tombstones")
            .map_err(&e)?;
        let mut rows = q.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let (res, ns, name): (String, String, String) = (
                r.get(0).map_err(&e)?,
                r.get(1).map_err(&e)?,
                r.get(2).map_err(&e)?,
            );
            let rv = r.get::<_, i64>(3).map_err(&e)? as u64;
            let created_rv = r.get::<_, i64>(4).map_err(&e)? as u64;
            let data: Vec<u8> = r.get(5).map_err(&e)?;
            let obj = parse(&res, &ns, &name, &data, rv)?;
            st.rv = st.rv.max(rv);
            history
                .entry(res)
                .or_default()
                .push((rv, created_rv, true, obj));
        }
    }
    let compacted = st.compacted;
    for (res, mut h) in history {
        h.sort_by_key(|x| x.0);
        let rs = st.res.entry(res).or_insert_with(|| ResState::new(0));
        let skip = h.len().saturating_sub(cfg.watch_window);
        rs.window_start = if skip > 0 {
            h[skip - 1].0.max(compacted)
        } else {
            compacted
        };
        for (rv, created_rv, deleted, obj) in h.into_iter().skip(skip) {
            rs.events.push_back(Arc::new(Event {
                at: std::time::Instant::now(),
                kind: EventKind::Compacted {
                    created_rv,
                    deleted,
                },
                stored: Arc::new(Stored::new(rv, created_rv, obj)),
                prev: None,
            }));
        }
    }
    for rs in st.res.values_mut() {
        rs.window_start = rs.window_start.max(compacted);
    }
    Ok(st)
}

fn index_add(st: &mut State, res: &str, key: &ObjKey, obj: &Value) {
    if let Some(uid) = uid_of(obj) {
        st.uids
            .insert(uid.to_string(), (res.to_string(), key.clone()));
    }
    for o in owner_uids(obj) {
        st.dependents
            .entry(o)
            .or_default()
            .insert((res.to_string(), key.clone()));
    }
}

fn index_remove(st: &mut State, res: &str, key: &ObjKey, obj: &Value) {
    if let Some(uid) = uid_of(obj)
        && st.uids.get(uid).is_some_and(|(r, k)| r == res && k == key)
    {
        st.uids.remove(uid);
    }
    for o in owner_uids(obj) {
        if let Some(set) = st.dependents.get_mut(&o) {
            set.remove(&(res.to_string(), key.clone()));
            if set.is_empty() {
                st.dependents.remove(&o);
            }
        }
    }
}

/// One change computed by the writer, applied to SQLite and then to memory.
struct Planned {
    res: String,
    key: ObjKey,
    kind: EventKind,
    stored: Arc<Stored>,
    prev: Option<Arc<Stored>>,
    data: Vec<u8>,
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteReq>,
    inner: std::sync::Weak<Inner>,
    cfg: StoreConfig,
) {
    let mut tombstones: usize = conn
        .query_row("SELECT COUNT(*) FROM tombstones", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(0) as usize;
    while let Ok(first) = rx.recv() {
        let started = std::time::Instant::now();
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        // Plan against the committed state plus this batch's earlier changes.
        let mut results: Vec<Result<usize, StoreError>> = Vec::with_capacity(batch.len());
        let mut planned: Vec<Planned> = vec![];
        {
            let st = match inner.state.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let mut overlay: HashMap<(String, ObjKey), Option<Arc<Stored>>> = HashMap::new();
            let mut rv = st.rv;
            for req in &mut batch {
                let data = std::mem::take(&mut req.data);
                let (res, key) = match &req.op {
                    Op::Create { res, obj } | Op::Update { res, obj, .. } => {
                        (res.clone(), key_of(obj))
                    }
                    Op::Delete { res, key, .. } => (res.clone(), key.clone()),
                };
                let ok = (res.clone(), key.clone());
                let current: Option<Arc<Stored>> = match overlay.get(&ok) {
                    Some(v) => v.clone(),
                    None => st.res.get(&res).and_then(|r| r.objects.get(&key)).cloned(),
                };
                let outcome = match &mut req.op {
                    Op::Create { obj, .. } => {
                        if current.is_some() {
                            Err(StoreError::AlreadyExists)
                        } else {
                            rv += 1;
                            let mut o = std::mem::take(obj);
                            set_rv(&mut o, rv);
                            Ok((EventKind::Added, Stored::new(rv, rv, Arc::new(o))))
                        }
                    }
                    Op::Update { obj, expect_rv, .. } => match &current {
                        None => Err(StoreError::NotFound),
                        Some(c) if expect_rv.is_some_and(|e| e != c.rv) => {
                            Err(StoreError::Conflict)
                        }
                        Some(c) => {
                            rv += 1;
                            let mut o = std::mem::take(obj);
                            set_rv(&mut o, rv);
                            Ok((
                                EventKind::Modified,
                                Stored::new(rv, c.created_rv, Arc::new(o)),
                            ))
                        }
                    },
                    Op::Delete {
                        expect_rv,
                        expect_uid,
                        ..
                    } => match &current {
                        None => Err(StoreError::NotFound),
                        Some(c) if expect_rv.is_some_and(|e| e != c.rv) => {
                            Err(StoreError::Conflict)
                        }
                        Some(c)
                            if expect_uid
                                .as_deref()
                                .is_some_and(|u| Some(u) != uid_of(&c.obj)) =>
                        {
                            Err(StoreError::UidMismatch {
                                expected: expect_uid.clone().unwrap_or_default(),
                                actual: uid_of(&c.obj).unwrap_or("").to_string(),
                            })
                        }
                        Some(c) => {
                            rv += 1;
                            let mut o = (*c.obj).clone();
                            set_rv(&mut o, rv);
                            Ok((
                                EventKind::Deleted,
                                Stored::new(rv, c.created_rv, Arc::new(o)),
                            ))
                        }
                    },
                };
                match outcome {
                    Err(e) => results.push(Err(e)),
                    Ok((kind, stored)) => {
                        let stored = Arc::new(stored);
                        overlay.insert(
                            ok,
                            if kind == EventKind::Deleted {
                                None
                            } else {
                                Some(stored.clone())
                            },
                        );
                        let data = if kind == EventKind::Deleted {
                            let mut o = (*stored.obj).clone();
                            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                                m.remove("resourceVersion");
                            }
                            serde_json::to_vec(&o).unwrap_or_default()
                        } else {
                            data
                        };
                        results.push(Ok(planned.len()));
                        planned.push(Planned {
                            res,
                            key,
                            kind,
                            stored,
                            prev: current,
                            data,
                        });
                    }
                }
            }
        }
        // Commit.
        let planned_at = started.elapsed();
        let mut purged = None;
        if !planned.is_empty() {
            let commit = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                {
                    let mut up = tx.prepare_cached(
                        "INSERT INTO objects (res, ns, name, rv, created_rv, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (res, ns, name) DO UPDATE \
                         SET rv = excluded.rv, created_rv = excluded.created_rv, \
                         data = excluded.data",
                    )?;
                    let mut del = tx.prepare_cached(
                        "DELETE FROM objects WHERE res = ?1 AND ns = ?2 AND name = ?3",
                    )?;
                    let mut tomb = tx.prepare_cached(
                        "INSERT INTO tombstones (rv, res, ns, name, created_rv, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for p in &planned {
                        let (rv, crv) = (p.stored.rv as i64, p.stored.created_rv as i64);
                        if p.kind == EventKind::Deleted {
                            del.execute(params![p.res, p.key.0, p.key.1])?;
                            tomb.execute(params![rv, p.res, p.key.0, p.key.1, crv, p.data])?;
                            tombstones += 1;
                        } else {
                            up.execute(params![p.res, p.key.0, p.key.1, rv, crv, p.data])?;
                        }
                    }
                }
                let last = planned.last().map(|p| p.stored.rv).unwrap_or(0) as i64;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('rv', ?1) ON CONFLICT (key) \
                     DO UPDATE SET value = excluded.value",
                    [last],
                )?;
                if tombstones > cfg.tombstones + cfg.tombstones / 4 {
                    let drop = (tombstones - cfg.tombstones) as i64;
                    let cut: Option<i64> = tx
                        .query_row(
                            "SELECT rv FROM tombstones ORDER BY rv LIMIT 1 OFFSET ?1",
                            [drop - 1],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(cut) = cut {
                        tx.execute("DELETE FROM tombstones WHERE rv <= ?1", [cut])?;
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('compacted', ?1) ON CONFLICT \
                             (key) DO UPDATE SET value = excluded.value",
                            [cut],
                        )?;
                        purged = Some(cut as u64);
                        tombstones = cfg.tombstones;
                    }
                }
                tx.commit()
            })();
            if let Err(err) = commit {
                let msg = format!(
                    "committing to {} failed: {err}; the server stopped accepting writes, check \
                     the disk and restart it",
                    inner.path.display()
                );
                tracing::error!("{msg}");
                if let Ok(mut f) = inner.failed.write() {
                    *f = Some(msg.clone());
                }
                for req in batch {
                    let _ = req.reply.send(Err(StoreError::Internal(msg.clone())));
                }
                continue;
            }
        }
        let committed_at = started.elapsed();
        // Publish to memory, the watch cache and the GC.
        {
            let mut st = match inner.state.write() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            if let Some(c) = purged {
                st.compacted = c;
            }
            let mut touched: Vec<String> = vec![];
            let now = std::time::Instant::now();
            for p in &planned {
                st.rv = st.rv.max(p.stored.rv);
                if let Some(prev) = &p.prev {
                    index_remove(&mut st, &p.res, &p.key, &prev.obj);
                }
                if p.kind != EventKind::Deleted {
                    index_add(&mut st, &p.res, &p.key, &p.stored.obj);
                }
                let compacted = st.compacted;
                let rs = st
                    .res
                    .entry(p.res.clone())
                    .or_insert_with(|| ResState::new(compacted));
                if p.kind == EventKind::Deleted {
                    rs.objects.remove(&p.key);
                } else {
                    rs.objects.insert(p.key.clone(), p.stored.clone());
                }
                rs.events.push_back(Arc::new(Event {
                    at: now,
                    kind: p.kind,
                    stored: p.stored.clone(),
                    prev: p.prev.as_ref().map(|s| s.obj.clone()),
                }));
                while rs.events.len() > cfg.watch_window
                    || (rs.events.len() > WATCH_WINDOW_MIN
                        && rs.events.front().is_some_and(|e| {
                            now.saturating_duration_since(e.at) > cfg.watch_window_time
                        }))
                {
                    if let Some(old) = rs.events.pop_front() {
                        rs.window_start = old.stored.rv;
                    }
                }
                if !touched.contains(&p.res) {
                    touched.push(p.res.clone());
                }
            }
            let rv = st.rv;
            for res in touched {
                if let Some(rs) = st.res.get(&res) {
                    rs.notify.send_replace(rv);
                }
            }
        }
        for p in &planned {
            let m = &p.stored.obj["metadata"];
            if p.kind == EventKind::Deleted
                || m.get("ownerReferences").is_some()
                || m.get("deletionTimestamp").is_some()
                || matches!(p.res.as_str(), "pods" | "services")
            {
                let _ = inner.changes.send(Change {
                    res: p.res.clone(),
                    key: p.key.clone(),
                    kind: p.kind,
                    obj: p.stored.obj.clone(),
                });
            }
        }
        tracing::debug!(
            target: "apiserver::commit",
            writes = batch.len(),
            plan_micros = planned_at.as_micros() as u64,
            commit_micros = (committed_at - planned_at).as_micros() as u64,
            publish_micros = (started.elapsed() - committed_at).as_micros() as u64,
            "commit"
        );
        for (req, r) in batch.into_iter().zip(results) {
            let _ = req.reply.send(r.map(|i| planned[i].stored.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "uid": name}})
    }

    #[test]
    fn stored_form_drops_only_the_resource_version_and_keeps_key_order() {
        let o = json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "a", "resourceVersion": "7", "labels": {"resourceVersion": "x"}},
            "spec": {"metadata": {"resourceVersion": "kept"}}});
        let got =
            String::from_utf8(serde_json::to_vec(&WithoutResourceVersion(&o)).unwrap()).unwrap();
        assert_eq!(
            got,
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","labels":{"resourceVersion":"x"}},"spec":{"metadata":{"resourceVersion":"kept"}}}"#
        );
        let scalar = json!("x");
        assert_eq!(
            serde_json::to_vec(&WithoutResourceVersion(&scalar)).unwrap(),
            b"\"x\""
        );
    }

    fn test_config(watch_window: usize, durability: Durability) -> StoreConfig {
        StoreConfig {
            watch_window,
            watch_window_time: std::time::Duration::from_secs(3600),
            tombstones: 10,
            durability,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_write_ahead_log_stays_bounded_under_a_steady_stream_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let (s, _c) = Store::open(&db, test_config(16, Durability::ProcessCrash)).unwrap();
        let s = Arc::new(s);
        let payload = "x".repeat(4096);
        // Eight writers, each updating its own object 500 times (about 16 MB of rows).
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    let name = format!("o{w}");
                    let mut o = obj(&name);
                    o["data"] = json!(payload);
                    s.write(Op::Create {
                        res: "pods".into(),
                        obj: o.clone(),
                    })
                    .await
                    .unwrap();
                    for i in 0..500 {
                        o["n"] = json!(i);
                        s.write(Op::Update {
                            res: "pods".into(),
                            obj: o.clone(),
                            expect_rv: None,
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("db.sqlite-wal")).map_or(0, |m| m.len());
        // SQLite checkpoints every 1000 pages (about 4 MB); a batch may run past that.
        assert!(wal < 12 << 20, "the WAL grew to {wal} bytes");
    }

    #[tokio::test]
    async fn crud_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let cfg = test_config(3, Durability::PowerLoss);
        let (s, _c) = Store::open(&db, cfg.clone()).unwrap();
        let a = s
            .write(Op::Create {
                res: "pods".into(),
                obj: obj("a"),
            })
            .await
            .unwrap();
        assert_eq!(a.rv, 1);
        assert_eq!(
            s.write(Op::Create {
                res: "pods".into(),
                obj: obj("a")
            })
            .await
            .unwrap_err(),
            StoreError::AlreadyExists
        );
        let b = s
            .write(Op::Update {
                res: "pods".into(),
                obj: obj("a"),
                expect_rv: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(b.rv, 2);
        assert_eq!(
            s.write(Op::Update {
                res: "pods".into(),
                obj: obj("a"),
                expect_rv: Some(1)
            })
            .await
            .unwrap_err(),
            StoreError::Conflict
        );
        s.write(Op::Create {
            res: "pods".into(),
            obj: obj("b"),
        })
        .await
        .unwrap();
        s.write(Op::Delete {
            res: "pods".into(),
            key: ("default".into(), "b".into()),
            expect_rv: None,
            expect_uid: None,
        })
        .await
        .unwrap();
        let (ev, _) = s.events_since("pods", 1).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.stored.rv).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(s.events_since("pods", 0).unwrap_err(), 1);
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (s, _c) = Store::open(&db, cfg).unwrap();
        assert_eq!(s.current_rv(), 4);
        assert_eq!(s.get("pods", "default", "a").unwrap().rv, 2);
        assert!(s.get("pods", "default", "b").is_none());
        let (ev, _) = s.events_since("pods", 0).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(matches!(
            ev[1].kind,
            EventKind::Compacted { deleted: true, .. }
        ));
    }

    /// Changes older than the window's time leave the watch cache, down to the newest
    /// `WATCH_WINDOW_MIN`; a watch from before them gets 410, one from after them resumes.
    #[tokio::test]
    async fn the_watch_cache_keeps_recent_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            watch_window_time: std::time::Duration::from_secs(2),
            ..test_config(10_000, Durability::ProcessCrash)
        };
        let (s, _c) = Store::open(&dir.path().join("db.sqlite"), cfg).unwrap();
        let create = |name: String| {
            s.write(Op::Create {
                res: "pods".into(),
                obj: obj(&name),
            })
        };
        for i in 0..150 {
            create(format!("old-{i}")).await.unwrap();
        }
        // Within the time (150 writes take well under 2 s), every change stays.
        assert_eq!(s.events_since("pods", 0).unwrap().0.len(), 150);
        tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
        create("new".into()).await.unwrap();
        // The 51 oldest went; the newest WATCH_WINDOW_MIN stay, old as they are.
        assert_eq!(s.events_since("pods", 0).unwrap_err(), 51);
        let (kept, _) = s.events_since("pods", 51).unwrap();
        assert_eq!(kept.len(), WATCH_WINDOW_MIN);
        assert_eq!(kept.last().unwrap().stored.rv, 151);
        // The objects themselves are all there.
        assert_eq!(s.list("pods", None, None, None, &|_| true).0.len(), 151);
    }
}
