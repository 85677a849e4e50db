//! Leader election on a `coordination.k8s.io/v1` Lease (upstream-core §12.3): acquire, renew,
//! release on cancel, and the `leader_election_master_status` gauge.
//!
//! The protocol is client-go's resource lock, re-implemented over kube-rs with optimistic
//! concurrency on `resourceVersion`:
//!
//! - a candidate reads the Lease; if nobody holds it, the holder released it, or the record has not
//!   changed for `lease_duration` **as observed by this candidate's own clock** (never by
//!   comparing `renewTime` with local time, so clock skew between replicas does not matter), it
//!   writes itself in as holder with a `replace` that carries the resourceVersion it read; a
//!   concurrent writer makes that a 409 and the candidate tries again `retry_period` later;
//! - the leader renews every `retry_period`; if no renewal succeeds within `renew_deadline`, it
//!   has lost the lease and must stop working (another replica may take over once
//!   `lease_duration` has passed since the last renewal it saw);
//! - on cancel the leader releases the Lease (empty holder, 1 s duration) so a standby takes over
//!   at its next retry instead of waiting for the lease to expire.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;

/// Upstream's leader election ID: the Lease name every replica competes for.
pub const LEADER_ELECTION_ID: &str = "a3317529.agent-sandbox.x-k8s.io";

/// Where the in-cluster service account's namespace is mounted.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Timings and identity of one candidate.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease ([`LEADER_ELECTION_ID`]).
    pub name: String,
    /// This candidate's identity, written as `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a lease stays valid after the last renewal a standby observed (default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before it gives up (default 10 s).
    pub renew_deadline: Duration,
    /// Pause between acquire and renew attempts (default 2 s).
    pub retry_period: Duration,
    /// Release the Lease when the leader is cancelled (upstream: true).
    pub release_on_cancel: bool,
}

impl LeaderElectionConfig {
    /// Upstream's timings (15 s lease, 10 s renew deadline, 2 s retry, release on cancel) for a
    /// Lease named [`LEADER_ELECTION_ID`] in `namespace`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: LEADER_ELECTION_ID.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_on_cancel: true,
        }
    }

    /// Checks the timings as client-go does: lease > renew deadline > 1.2 × retry period, and the
    /// lease at least one second (the Lease stores whole seconds).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |msg: String| Err(LeaderError::InvalidConfig(msg));
        if self.identity.is_empty() {
            return invalid("the leader election identity must not be empty".into());
        }
        if self.namespace.is_empty() || self.name.is_empty() {
            return invalid(
                "the Lease namespace and name must not be empty; pass --leader-election-namespace"
                    .into(),
            );
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid(format!(
                "the lease duration ({:?}) must be at least 1s",
                self.lease_duration
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid(format!(
                "the lease duration ({:?}) must be greater than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return invalid(format!(
                "the renew deadline ({:?}) must be greater than 1.2 × the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.retry_period.is_zero() {
            return invalid("the retry period must be greater than zero".into());
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// A unique identity for this process: `<host name>_<random UUID>`, as controller-runtime does.
pub fn default_identity() -> String {
    let host = fs_err::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "agent-sandbox-controller".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// The namespace of the Lease when none is given: the in-cluster service account's namespace,
/// else `fallback` (the kubeconfig context's namespace).
pub fn detect_namespace(fallback: &str) -> String {
    fs_err::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Why leader election ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timings or names are unusable.
    #[error("invalid leader election configuration: {0}")]
    InvalidConfig(String),
    /// The leader could not renew within its deadline; its work was stopped.
    #[error(
        "lost leadership of Lease {namespace}/{name}: no renewal succeeded within {deadline:?} (last error: {last_error}); the controllers were stopped so that another replica can lead — check connectivity to the API server and that the service account may update leases"
    )]
    Lost {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The renew deadline that passed.
        deadline: Duration,
        /// The last renewal failure.
        last_error: String,
    },
}

/// How [`LeaderElector::run`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Cancelled before this candidate became leader.
    CancelledWhileWaiting,
    /// Cancelled while leading; the Lease was released if so configured.
    CancelledWhileLeading,
    /// The work future returned on its own while leading; the Lease was released if so
    /// configured.
    WorkFinished,
}

/// The `leader_election_master_status` gauge: 1 while this process leads.
#[derive(Clone, Debug)]
pub struct LeaderStatus {
    name: Arc<str>,
    leading: Arc<AtomicBool>,
}

impl LeaderStatus {
    /// A gauge for the Lease `name`, initially 0.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            leading: Arc::default(),
        }
    }

    /// Whether this process currently leads.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn set(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// The gauge in the Prometheus text format (without a trailing `# EOF`), labelled with the
    /// Lease name as controller-runtime labels it.
    pub fn render(&self) -> String {
        format!(
            "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{name=\"{}\"}} {}\n",
            self.name,
            u8::from(self.is_leader())
        )
    }
}

/// The last Lease spec this candidate saw and when (by its own monotonic clock) it changed.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    status: LeaderStatus,
    observed: Mutex<Option<Observed>>,
}

impl LeaderElector {
    /// A candidate; fails if the configuration is invalid.
    pub fn new(client: Client, config: LeaderElectionConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            status: LeaderStatus::new(&config.name),
            config,
            observed: Mutex::new(None),
        })
    }

    /// The gauge handle.
    pub fn status(&self) -> LeaderStatus {
        self.status.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.config
    }

    fn lease_ref(&self) -> String {
        format!("Lease {}/{}", self.config.namespace, self.config.name)
    }

    /// Records `spec` as observed now if it differs from the last observation; returns when the
    /// record last changed.
    fn observe(&self, spec: &LeaseSpec) -> Instant {
        let mut o = self.observed.lock();
        match o.as_ref() {
            Some(prev) if prev.spec == *spec => prev.at,
            _ => {
                let now = Instant::now();
                *o = Some(Observed {
                    spec: spec.clone(),
                    at: now,
                });
                now
            }
        }
    }

    /// One attempt to acquire or renew. `Ok(true)` means this candidate holds the Lease now;
    /// `Ok(false)` means another holder's lease is still valid; errors are API failures
    /// (including a lost optimistic-concurrency race).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.as_str();
        let existing = self.api.get_opt(&self.config.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(self.config.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let created = self.api.create(&PostParams::default(), &lease).await?;
            self.observe(&created.spec.unwrap_or_default());
            return Ok(true);
        };
        let old = lease.spec.clone().unwrap_or_default();
        let changed_at = self.observe(&old);
        let holder = old.holder_identity.as_deref().unwrap_or("");
        let held_by_me = holder == me;
        // The holder's own duration counts, as in client-go (a released lease says 1 s).
        let duration = old
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        if !holder.is_empty() && !held_by_me && changed_at.elapsed() < duration {
            return Ok(false);
        }
        let transitions = old.lease_transitions.unwrap_or(0);
        let spec = LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(self.config.lease_seconds()),
            acquire_time: if held_by_me {
                old.acquire_time.clone().or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if held_by_me {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..old
        };
        lease.spec = Some(spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        let written = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        self.observe(&written.spec.unwrap_or_default());
        Ok(true)
    }

    /// Retries until this candidate holds the Lease (never returns otherwise).
    pub async fn acquire(&self) {
        let mut logged_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.status.set(true);
                    tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, "acquired leadership");
                    return;
                }
                Ok(false) => {
                    let holder = self.current_holder().unwrap_or_default();
                    if holder != logged_holder {
                        tracing::info!(lease = %self.lease_ref(), holder = %holder, "waiting for leadership; another replica holds the lease");
                        logged_holder = holder;
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.lease_ref(), error = %e, "could not acquire the lease; retrying");
                }
            }
            tokio::time::sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// The holder in the last observed record.
    pub fn current_holder(&self) -> Option<String> {
        self.observed
            .lock()
            .as_ref()
            .and_then(|o| o.spec.holder_identity.clone())
    }

    /// Renews every `retry_period` while leading; returns the error once no renewal succeeded
    /// within `renew_deadline`.
    pub async fn renew_until_lost(&self) -> LeaderError {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = Instant::now() + self.config.renew_deadline;
            let mut last_error;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                last_error =
                    match tokio::time::timeout(remaining, self.try_acquire_or_renew()).await {
                        Ok(Ok(true)) => break,
                        Ok(Ok(false)) => format!(
                            "{} is held by {:?}",
                            self.lease_ref(),
                            self.current_holder().unwrap_or_default()
                        ),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "the renewal request did not finish in time".to_owned(),
                    };
                tracing::warn!(lease = %self.lease_ref(), error = %last_error, "failed to renew the lease");
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    self.status.set(false);
                    return LeaderError::Lost {
                        namespace: self.config.namespace.clone(),
                        name: self.config.name.clone(),
                        deadline: self.config.renew_deadline,
                        last_error,
                    };
                }
                tokio::time::sleep(self.config.retry_period.min(remaining)).await;
            }
        }
    }

    /// Gives the Lease up if this candidate holds it: empty holder, 1 s duration, so that a
    /// standby takes over at its next attempt. A renewal cancelled in flight may still land
    /// between the read and the write; the resulting conflict is retried on a fresh read.
    pub async fn release(&self) -> Result<(), kube::Error> {
        const ATTEMPTS: usize = 5;
        self.status.set(false);
        let mut attempt = 1;
        loop {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(());
            };
            let old = lease.spec.clone().unwrap_or_default();
            if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            let now = MicroTime(Timestamp::now());
            lease.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..old
            });
            match self
                .api
                .replace(&lease.name_any(), &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %self.lease_ref(), "released leadership");
                    return Ok(());
                }
                Err(e) if crate::error::is_conflict(&e) && attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for leadership (or `cancel`), then runs `work` while renewing. Returns
    /// [`LeaderError::Lost`] when a renewal deadline passes (the work is dropped first); on
    /// cancel, or when the work ends, the work is dropped and the Lease released if configured.
    pub async fn run<W, C>(&self, work: W, cancel: C) -> Result<Outcome, LeaderError>
    where
        W: Future<Output = ()>,
        C: Future<Output = ()>,
    {
        tokio::pin!(cancel);
        tokio::select! {
            () = self.acquire() => {}
            () = &mut cancel => return Ok(Outcome::CancelledWhileWaiting),
        }
        let outcome = {
            tokio::pin!(work);
            tokio::select! {
                lost = self.renew_until_lost() => {
                    self.status.set(false);
                    return Err(lost);
                }
                () = &mut work => Outcome::WorkFinished,
                () = &mut cancel => Outcome::CancelledWhileLeading,
            }
        };
        // The work is dropped here, before the Lease is released.
        self.status.set(false);
        if self.config.release_on_cancel
            && let Err(e) = self.release().await
        {
            tracing::warn!(lease = %self.lease_ref(), error = %e, "could not release the lease; another replica takes over when it expires");
        }
        Ok(outcome)
    }
}

/// `d` plus up to 20 % (client-go's jitter factor 1.2), so candidates do not retry in lockstep.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 1000.0 * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_defaults_are_valid() {
        let c = LeaderElectionConfig::new("ns", "me");
        assert_eq!(c.name, "a3317529.agent-sandbox.x-k8s.io");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert!(c.release_on_cancel);
        c.validate().unwrap();
    }

    #[test]
    fn timings_are_checked() {
        let mut c = LeaderElectionConfig::new("ns", "me");
        c.renew_deadline = c.lease_duration;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("greater than the renew")
        );
        let mut c = LeaderElectionConfig::new("ns", "me");
        c.retry_period = Duration::from_secs(9);
        assert!(c.validate().unwrap_err().to_string().contains("1.2"));
        let mut c = LeaderElectionConfig::new("", "me");
        c.namespace.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn gauge_renders() {
        let s = LeaderStatus::new(LEADER_ELECTION_ID);
        assert!(s.render().contains(
            "leader_election_master_status{name=\"a3317529.agent-sandbox.x-k8s.io\"} 0\n"
        ));
        s.set(true);
        assert!(s.render().ends_with("} 1\n"));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let d = Duration::from_secs(2);
        let j = jittered(d);
        assert!(j >= d && j <= d.mul_f64(1.2));
    }
}
