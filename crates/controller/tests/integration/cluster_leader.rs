//! Leader election against the embedded API server's Leases: one of two candidates leads, a
//! released lease passes at once, a vanished leader's lease passes after it expires, and a leader
//! whose renewals fail stops its work and reports the loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig, RunningApiServer};
use agent_sandbox_controller::leader::{
    LEADER_ELECTION_ID, LeaderElectionConfig, LeaderElector, LeaderError, Outcome,
};
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::client::Body;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NS: &str = "default";

async fn server(dir: &std::path::Path) -> RunningApiServer {
    let mut cfg = ServerConfig::new(dir);
    cfg.tcp_addr = None;
    cfg.socket_path = None;
    cfg.node_name = "test-node".into();
    ApiServer::start(cfg).await.expect("start the API server")
}

fn config(identity: &str) -> LeaderElectionConfig {
    let mut c = LeaderElectionConfig::new(NS, identity);
    c.lease_duration = Duration::from_secs(2);
    c.renew_deadline = Duration::from_millis(1000);
    c.retry_period = Duration::from_millis(200);
    c
}

/// A candidate running `run` in a task; `working` is true while its work future is alive.
struct Candidate {
    identity: String,
    working: Arc<AtomicBool>,
    cancel: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Outcome, LeaderError>>,
    status: agent_sandbox_controller::leader::LeaderStatus,
}

/// Marks `working` false when the work future is dropped.
struct WorkGuard(Arc<AtomicBool>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn candidate(client: kube::Client, identity: &str) -> Candidate {
    let elector = LeaderElector::new(client, config(identity)).expect("valid config");
    let status = elector.status();
    let working = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel::<()>();
    let w = working.clone();
    let task = tokio::spawn(async move {
        let work = async move {
            w.store(true, Ordering::SeqCst);
            let _guard = WorkGuard(w);
            futures::future::pending::<()>().await;
        };
        elector
            .run(work, async {
                let _ = rx.await;
            })
            .await
    });
    Candidate {
        identity: identity.to_owned(),
        working,
        cancel: Some(tx),
        task,
        status,
    }
}

impl Candidate {
    fn working(&self) -> bool {
        self.working.load(Ordering::SeqCst)
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt(LEADER_ELECTION_ID)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Waits until exactly one of the two works; returns (leader, standby).
async fn elect(a: Candidate, b: Candidate) -> (Candidate, Candidate) {
    wait_for("a leader", Duration::from_secs(10), || {
        a.working() || b.working()
    })
    .await;
    // Give a wrong second leader time to show up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.working() != b.working(), "exactly one candidate works");
    if a.working() { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn one_of_two_candidates_leads_and_a_released_lease_passes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = server.client();
    let a = candidate(client.clone(), "a");
    let b = candidate(client.clone(), "b");
    let (mut leader, standby) = elect(a, b).await;
    assert!(leader.status.is_leader() && !standby.status.is_leader());
    assert_eq!(
        holder(&client).await.as_deref(),
        Some(leader.identity.as_str())
    );
    // Stays that way across several renewals.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(leader.working() && !standby.working());
    }

    // Cancel: the work stops, the lease is released, the standby takes over well before the
    // 2 s lease would have expired.
    let _ = leader.cancel.take().unwrap().send(());
    let outcome = (&mut leader.task).await.unwrap().unwrap();
    assert_eq!(outcome, Outcome::CancelledWhileLeading);
    assert!(!leader.working() && !leader.status.is_leader());
    let took = wait_for("the standby to lead", Duration::from_secs(5), || {
        standby.working()
    })
    .await;
    assert!(
        took < Duration::from_millis(1500),
        "takeover after release took {took:?}"
    );
    assert_eq!(
        holder(&client).await.as_deref(),
        Some(standby.identity.as_str())
    );
    let lease = Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEADER_ELECTION_ID)
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}

#[tokio::test]
async fn a_vanished_leaders_lease_passes_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = server.client();
    let a = candidate(client.clone(), "a");
    let b = candidate(client.clone(), "b");
    let (leader, standby) = elect(a, b).await;
    // The leader's process dies: no release.
    leader.task.abort();
    let _ = leader.task.await;
    let took = wait_for("the standby to lead", Duration::from_secs(10), || {
        standby.working()
    })
    .await;
    // Not before the 2 s lease has run out (as the standby observed it), not much after.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "takeover after expiry took {took:?}"
    );
    assert_eq!(
        holder(&client).await.as_deref(),
        Some(standby.identity.as_str())
    );
}

/// A client whose requests fail while `failing` is set.
#[derive(Clone)]
struct Flaky {
    inner: kube::Client,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl tower::Service<http::Request<Body>> for Flaky {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, kube::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self.failing.load(Ordering::SeqCst);
        let inner = self.inner.clone();
        Box::pin(async move {
            if failing {
                return Err(kube::Error::Service("injected network failure".into()));
            }
            inner.send(req).await
        })
    }
}

#[tokio::test]
async fn a_leader_whose_renewals_fail_stops_its_work_and_reports_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = server.client();
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = kube::Client::new(
        Flaky {
            inner: client.clone(),
            failing: failing.clone(),
            calls: calls.clone(),
        },
        NS,
    );
    let mut leader = candidate(flaky, "flaky");
    wait_for(
        "the flaky candidate to lead",
        Duration::from_secs(5),
        || leader.working(),
    )
    .await;
    let standby = candidate(client.clone(), "standby");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(leader.working() && !standby.working());

    failing.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let before = calls.load(Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(5), &mut leader.task)
        .await
        .expect("the leader gives up within its renew deadline")
        .unwrap();
    let gave_up = cut.elapsed();
    let err = result.expect_err("losing the lease is an error");
    let text = err.to_string();
    assert!(
        text.contains("lost leadership of Lease default/a3317529.agent-sandbox.x-k8s.io")
            && text.contains("injected network failure"),
        "{text}"
    );
    assert!(
        gave_up <= Duration::from_millis(1000 + 200 + 700),
        "gave up after {gave_up:?}"
    );
    assert!(calls.load(Ordering::SeqCst) > before + 1, "it retried");
    assert!(!leader.working(), "its work was stopped");
    assert!(!leader.status.is_leader());
    // The standby leads once the lease it last saw renewed has expired.
    wait_for("the standby to lead", Duration::from_secs(5), || {
        standby.working()
    })
    .await;
    assert_eq!(holder(&client).await.as_deref(), Some("standby"));
}
