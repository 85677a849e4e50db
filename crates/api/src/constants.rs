//! The registry of every label, annotation, finalizer-free condition type, reason and message that
//! agent-sandbox reads or writes, verbatim as upstream defines them. Nothing else in the project
//! spells these strings.

/// API group of `Sandbox`.
pub const CORE_GROUP: &str = "agents.x-k8s.io";
/// API group of `SandboxTemplate`, `SandboxClaim` and `SandboxWarmPool`.
pub const EXTENSIONS_GROUP: &str = "extensions.agents.x-k8s.io";
/// Version that every object is stored in and that controllers read and write.
pub const STORAGE_VERSION: &str = "v1beta1";
/// Deprecated version, still served and converted.
pub const DEPRECATED_VERSION: &str = "v1alpha1";

/// Labels (upstream-core §5.1).
pub mod labels {
    /// `NameHash(sandbox name)` on the Pod, Service and PVCs of a Sandbox; the Service selector.
    pub const SANDBOX_NAME_HASH: &str = "agents.x-k8s.io/sandbox-name-hash";
    /// `"true"` lets the Sandbox controller adopt an unowned object with the expected name.
    pub const ADOPTABLE: &str = "agents.x-k8s.io/adoptable";
    /// `NameHash(pool name)` on pool Sandboxes and their Pods.
    pub const WARM_POOL_SANDBOX: &str = "agents.x-k8s.io/warm-pool-sandbox";
    /// `NameHash(template name)` on templates, sandboxes, pods and the NetworkPolicy selector.
    pub const SANDBOX_TEMPLATE_REF_HASH: &str = "agents.x-k8s.io/sandbox-template-ref-hash";
    /// Blueprint hash on pool Sandboxes (staleness fast path).
    pub const SANDBOX_TEMPLATE_HASH: &str = "agents.x-k8s.io/sandbox-template-hash";
    /// Deprecated pod template hash on pool Sandboxes (informational only).
    pub const DEPRECATED_SANDBOX_POD_TEMPLATE_HASH: &str =
        "agents.x-k8s.io/sandbox-pod-template-hash";
    /// `cold` or `warm`.
    pub const LAUNCH_TYPE: &str = "agents.x-k8s.io/launch-type";
    /// Who created the object: one of [`super::CREATED_BY_ALLOWED`], else `unknown`.
    pub const CREATED_BY: &str = "agents.x-k8s.io/created-by";
    /// The claim UID on the Sandbox it created or adopted.
    pub const CLAIM_UID: &str = "agents.x-k8s.io/claim-uid";
    /// Legacy label form of the assigned-sandbox annotation on a claim; read, migrated, removed.
    pub const DEPRECATED_CLAIM_SANDBOX_NAME: &str = "agents.x-k8s.io/sandbox-name";
}

/// Values of [`labels::LAUNCH_TYPE`].
pub mod launch_type {
    /// The Sandbox was created for the claim.
    pub const COLD: &str = "cold";
    /// The Sandbox came from a warm pool.
    pub const WARM: &str = "warm";
}

/// Values allowed in [`labels::CREATED_BY`]; anything else is normalised to [`CREATED_BY_UNKNOWN`].
pub const CREATED_BY_ALLOWED: [&str; 3] = ["go-client", "python-client", "controller"];
/// The normalised value of an unrecognised [`labels::CREATED_BY`].
pub const CREATED_BY_UNKNOWN: &str = "unknown";
/// The value the warm pool controller writes in [`labels::CREATED_BY`].
pub const CREATED_BY_CONTROLLER: &str = "controller";

/// Annotations (upstream-core §5.2).
pub mod annotations {
    /// Name of the Pod backing a Sandbox.
    pub const POD_NAME: &str = "agents.x-k8s.io/pod-name";
    /// Sorted, comma-joined label keys propagated from the pod template to the Pod.
    pub const PROPAGATED_LABELS: &str = "agents.x-k8s.io/propagated-labels";
    /// Sorted, comma-joined annotation keys propagated from the pod template to the Pod.
    pub const PROPAGATED_ANNOTATIONS: &str = "agents.x-k8s.io/propagated-annotations";
    /// Template name on a Sandbox (the `sandbox_template` metrics label).
    pub const SANDBOX_TEMPLATE_REF: &str = "agents.x-k8s.io/sandbox-template-ref";
    /// The adopted Sandbox's name on a claim (written before the ownership transfer).
    pub const CLAIM_SANDBOX_NAME: &str = "agents.x-k8s.io/sandbox-name";
    /// RFC3339Nano time the controller first observed a claim.
    pub const CONTROLLER_FIRST_OBSERVED_AT: &str = "agents.x-k8s.io/controller-first-observed-at";
    /// RFC3339Nano time a claim first became Ready, or [`super::CLAIM_FIRST_READY_UNKNOWN`].
    pub const CLAIM_FIRST_READY_AT: &str = "agents.x-k8s.io/claim-first-ready-at";
    /// RFC3339Nano time a client asked for the claim (set by SDKs).
    pub const CLIENT_FIRST_REQUESTED_AT: &str = "agents.x-k8s.io/client-first-requested-at";
    /// RFC3339Nano time an optional user mutating webhook saw the claim.
    pub const WEBHOOK_FIRST_OBSERVED_AT: &str = "agents.x-k8s.io/webhook-first-observed-at";
    /// Defined upstream, unused.
    pub const CREATION_LATENCY_RECORDED: &str = "agents.x-k8s.io/creation-latency-recorded";
    /// JSON map of W3C trace-context headers.
    pub const TRACE_CONTEXT: &str = "opentelemetry.io/trace-context";
    /// Cluster autoscaler eviction hint stamped on warm pool pod templates.
    pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
    /// Full v1alpha1 Sandbox kept on the v1beta1 object by conversion.
    pub const V1ALPHA1_SANDBOX_STATE: &str = "api.agents.x-k8s.io/v1alpha1-sandbox-state";
    /// Full v1alpha1 SandboxClaim kept on the v1beta1 object by conversion.
    pub const V1ALPHA1_SANDBOXCLAIM_STATE: &str = "api.agents.x-k8s.io/v1alpha1-sandboxclaim-state";
    /// Full v1alpha1 SandboxTemplate kept on the v1beta1 object by conversion.
    pub const V1ALPHA1_SANDBOXTEMPLATE_STATE: &str =
        "api.agents.x-k8s.io/v1alpha1-sandboxtemplate-state";
    /// Full v1alpha1 SandboxWarmPool kept on the v1beta1 object by conversion.
    pub const V1ALPHA1_SANDBOXWARMPOOL_STATE: &str =
        "api.agents.x-k8s.io/v1alpha1-sandboxwarmpool-state";
    /// v1beta1 `volumeClaimTemplatesPolicy` kept on a v1alpha1 SandboxTemplate by conversion.
    pub const V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY: &str =
        "api.agents.x-k8s.io/v1beta1-volume-claim-templates-policy";
    /// Migration tooling: marks a shadow pool.
    pub const MIGRATION_SHADOW: &str = "agents.x-k8s.io/migration-shadow";
    /// Migration tooling: the template a shadow pool was made for.
    pub const MIGRATION_SOURCE_TEMPLATE: &str = "agents.x-k8s.io/migration-source-template";
    /// Migration tooling: forces a storage rewrite.
    pub const STORAGE_MIGRATED_AT: &str = "agents.x-k8s.io/storage-migrated-at";
}

/// Sentinel value of [`annotations::CLAIM_FIRST_READY_AT`].
pub const CLAIM_FIRST_READY_UNKNOWN: &str = "unknown";
/// Prefix of the warm pool a cold v1alpha1 claim is mapped to by conversion.
pub const SHADOW_POOL_PREFIX: &str = "shadow-pool-";

/// Key prefixes that are never copied from a pod template to a Pod (upstream-core §5.3).
pub const SYSTEM_KEY_PREFIXES: [&str; 2] = ["agents.x-k8s.io/", "extensions.agents.x-k8s.io/"];

/// Whether a label key is system-reserved (never propagated from a pod template).
pub fn is_system_label(key: &str) -> bool {
    SYSTEM_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether an annotation key is system-reserved (never propagated from a pod template).
pub fn is_system_annotation(key: &str) -> bool {
    is_system_label(key) || key == annotations::TRACE_CONTEXT
}

/// Condition types.
pub mod condition_types {
    /// Whether the Sandbox is suspended (always present on a Sandbox).
    pub const SUSPENDED: &str = "Suspended";
    /// Readiness of a Sandbox or claim.
    pub const READY: &str = "Ready";
    /// Mirrors the Pod's PodScheduled condition.
    pub const POD_SCHEDULED: &str = "PodScheduled";
    /// The Pod reached a terminal phase.
    pub const FINISHED: &str = "Finished";
}

/// Condition reasons of the Sandbox controller (upstream-core §6.9).
pub mod reasons {
    /// Suspended=True: the Pod is gone.
    pub const POD_TERMINATED: &str = "PodTerminated";
    /// Deprecated; no longer emitted.
    pub const POD_NOT_TERMINATED: &str = "PodNotTerminated";
    /// Suspended=False: the owned Pod is still terminating.
    pub const POD_TERMINATING: &str = "PodTerminating";
    /// Suspended=False: a Pod exists that this Sandbox does not own.
    pub const POD_NOT_OWNED: &str = "PodNotOwned";
    /// Suspended=False: operating mode is not Suspended.
    pub const NOT_SUSPENDED: &str = "NotSuspended";
    /// Suspended=Unknown: the Pod lookup failed.
    pub const POD_STATE_UNKNOWN: &str = "PodStateUnknown";
    /// Ready=True.
    pub const DEPENDENCIES_READY: &str = "DependenciesReady";
    /// Ready=False: the Pod (or Service) is not ready yet.
    pub const DEPENDENCIES_NOT_READY: &str = "DependenciesNotReady";
    /// Ready=False: more than one Pod is owned.
    pub const MULTIPLE_PODS: &str = "MultiplePods";
    /// Ready=False: a child reconciliation failed.
    pub const RECONCILER_ERROR: &str = "ReconcilerError";
    /// Ready=False: the Sandbox is suspended or suspending.
    pub const SANDBOX_SUSPENDED: &str = "SandboxSuspended";
    /// PodScheduled=True with an empty pod reason.
    pub const POD_SCHEDULED: &str = "PodScheduled";
    /// PodScheduled=Unknown.
    pub const POD_SCHEDULING_UNKNOWN: &str = "PodSchedulingUnknown";
    /// Finished=True / Ready=False: the Pod succeeded.
    pub const POD_SUCCEEDED: &str = "PodSucceeded";
    /// Finished=True / Ready=False: the Pod failed.
    pub const POD_FAILED: &str = "PodFailed";
    /// Ready=False: the Sandbox reached its shutdownTime.
    pub const SANDBOX_EXPIRED: &str = "SandboxExpired";
}

/// Condition messages of the Sandbox controller (upstream-core §6.9).
pub mod messages {
    /// Suspended=False, NotSuspended.
    pub const NOT_SUSPENDED: &str = "Sandbox is not suspended";
    /// Suspended=Unknown, PodStateUnknown.
    pub const POD_STATE_UNKNOWN: &str =
        "Pod state is unknown. Sandbox suspension cannot be confirmed";
    /// Suspended=True, PodTerminated.
    pub const POD_TERMINATED: &str = "Pod has been terminated. Sandbox is suspended";
    /// Suspended=False, PodNotOwned.
    pub const POD_NOT_OWNED: &str = "Refused to delete pod because it is not owned by this sandbox";
    /// Suspended=False, PodTerminating.
    pub const POD_TERMINATING: &str = "Pod is terminating. Sandbox is suspending";
    /// PodScheduled=Unknown when the Pod lookup failed.
    pub const POD_SCHEDULING_UNKNOWN: &str =
        "Pod state is unknown. Pod scheduling cannot be determined";
    /// PodScheduled=Unknown when the Pod has no PodScheduled condition.
    pub const POD_SCHEDULED_NOT_REPORTED: &str =
        "Pod has not reported a PodScheduled condition yet";
    /// Finished / Ready for a succeeded Pod.
    pub const POD_SUCCEEDED: &str = "Pod completed successfully";
    /// Finished / Ready for a failed Pod.
    pub const POD_FAILED: &str = "Pod failed";
    /// Prefix of the ReconcilerError message; the errors follow, joined by newlines.
    pub const ERROR_SEEN_PREFIX: &str = "Error seen: ";
    /// Ready=False, SandboxSuspended, while a Pod still exists.
    pub const SANDBOX_SUSPENDING: &str = "Sandbox is suspending";
    /// Ready=False, SandboxSuspended, once no Pod exists.
    pub const SANDBOX_SUSPENDED: &str = "Sandbox is suspended";
    /// Ready message part: no Pod.
    pub const POD_DOES_NOT_EXIST: &str = "Pod does not exist";
    /// Ready message part: prefix before the Pod phase (which may be empty).
    pub const POD_EXISTS_WITH_PHASE: &str = "Pod exists with phase: ";
    /// Ready message part: Running but not Ready.
    pub const POD_RUNNING_NOT_READY: &str = "Pod is Running but not Ready";
    /// Ready message part: Ready without IPs.
    pub const POD_READY_NO_IPS: &str = "Pod is Ready but has no podIPs yet";
    /// Ready message part: Ready.
    pub const POD_READY: &str = "Pod is Ready";
    /// Ready message suffix when the Service exists.
    pub const SERVICE_EXISTS: &str = "; Service Exists";
    /// Ready message suffix when the Service is missing.
    pub const SERVICE_DOES_NOT_EXIST: &str = "; Service does not exist";
    /// Ready=False, SandboxExpired.
    pub const SANDBOX_EXPIRED: &str = "Sandbox has expired";
}

/// Deprecation warnings served with v1alpha1 (upstream-core §2), by kind.
pub mod deprecation {
    /// v1alpha1 Sandbox.
    pub const SANDBOX: &str = "agents.x-k8s.io/v1alpha1 Sandbox is deprecated; use agents.x-k8s.io/v1beta1 Sandbox instead";
    /// v1alpha1 SandboxTemplate.
    pub const SANDBOX_TEMPLATE: &str = "extensions.agents.x-k8s.io/v1alpha1 SandboxTemplate is deprecated; use extensions.agents.x-k8s.io/v1beta1 SandboxTemplate instead";
    /// v1alpha1 SandboxClaim.
    pub const SANDBOX_CLAIM: &str = "extensions.agents.x-k8s.io/v1alpha1 SandboxClaim is deprecated; use extensions.agents.x-k8s.io/v1beta1 SandboxClaim instead";
    /// v1alpha1 SandboxWarmPool.
    pub const SANDBOX_WARM_POOL: &str = "extensions.agents.x-k8s.io/v1alpha1 SandboxWarmPool is deprecated; use extensions.agents.x-k8s.io/v1beta1 SandboxWarmPool instead";
}

/// The CEL rule on v1beta1 `Sandbox.spec` that makes `volumeClaimTemplates` immutable.
pub const VCT_IMMUTABLE_RULE: &str = "has(self.volumeClaimTemplates) == has(oldSelf.volumeClaimTemplates) && (!has(self.volumeClaimTemplates) || self.volumeClaimTemplates == oldSelf.volumeClaimTemplates)";
/// The message of [`VCT_IMMUTABLE_RULE`].
pub const VCT_IMMUTABLE_MESSAGE: &str = "volumeClaimTemplates is immutable";

/// Where the conversion webhook is served in cluster mode.
pub mod webhook {
    /// Service name of the conversion webhook.
    pub const SERVICE_NAME: &str = "agent-sandbox-webhook-service";
    /// Namespace of the conversion webhook Service.
    pub const SERVICE_NAMESPACE: &str = "agent-sandbox-system";
    /// HTTP path of the conversion handler.
    pub const PATH: &str = "/convert";
}

/// This project's own extensions, beyond upstream's API: keys under
/// `agent-sandbox-rs.github.io/`, so that the CRDs stay equal to upstream's and an upstream
/// controller ignores them.
pub mod extensions {
    /// The prefix of every key this project adds.
    pub const PREFIX: &str = "agent-sandbox-rs.github.io/";

    /// Annotations.
    pub mod annotations {
        /// On a Sandbox: `"true"` asks for it to be paused (every process frozen with the
        /// cgroup freezer, memory kept); absent or any other value means running. The Sandbox
        /// controller copies it onto the Sandbox's Pod, where the node acts on it.
        pub const PAUSED: &str = "agent-sandbox-rs.github.io/paused";
        /// On a Sandbox: a time (RFC 3339) at which to pause it, a startup action. When it
        /// comes the Sandbox controller sets [`PAUSED`] and removes this key.
        pub const PAUSE_AT: &str = "agent-sandbox-rs.github.io/pause-at";
        /// On a Pod (through its Sandbox's `podTemplate.metadata.annotations`): the name of a
        /// Ready SandboxSnapshot in its namespace, on its node. The new sandbox's writable
        /// layers and data volumes start from the snapshot's files (processes start afresh).
        pub const RESTORE_FROM: &str = "agent-sandbox-rs.github.io/restore-from";
        /// On a Pod, with [`RESTORE_FROM`]: `Replace` replaces the data of volumes that already
        /// hold some (a rollback); absent or `IfEmpty` fills only empty volumes (a fork).
        pub const RESTORE_VOLUMES: &str = "agent-sandbox-rs.github.io/restore-volumes";
        /// On a Pod (through a template's, a Sandbox's or a claim's Pod metadata): pause the
        /// sandbox after this long without a request through the router (see [`crate::idle`]).
        pub const IDLE_TIMEOUT: &str = "agent-sandbox-rs.github.io/idle-timeout";
        /// On a Pod, like [`IDLE_TIMEOUT`]: suspend the sandbox after this long without a
        /// request.
        pub const IDLE_SUSPEND_AFTER: &str = "agent-sandbox-rs.github.io/idle-suspend-after";
        /// On a Pod, like [`IDLE_TIMEOUT`]: delete the sandbox (its claim, when a claim owns
        /// it) after this long without a request.
        pub const IDLE_DELETE_AFTER: &str = "agent-sandbox-rs.github.io/idle-delete-after";
        /// On a Sandbox, written by the router with [`PAUSED`]: when it paused the sandbox for
        /// being idle (RFC 3339). Marks a pause that the next request undoes; a pause without
        /// it (a person's) is left alone.
        pub const IDLE_PAUSED: &str = "agent-sandbox-rs.github.io/idle-paused";
        /// On a Sandbox, written by the router with `operatingMode: Suspended`: when it
        /// suspended the sandbox for being idle (RFC 3339). The next request resumes it.
        pub const IDLE_SUSPENDED: &str = "agent-sandbox-rs.github.io/idle-suspended";
        /// On a Pod (through its Sandbox's `podTemplate.metadata.annotations`) that runs under
        /// gVisor: where its runtime trace events go, `log`, `falco` or `log,falco`; `off`
        /// turns off the node's default. See `docs/runtime-monitoring.md`.
        pub const RUNTIME_MONITORING: &str = "agent-sandbox-rs.github.io/runtime-monitoring";
    }

    /// The only value of [`annotations::PAUSED`] that pauses.
    pub const PAUSED_TRUE: &str = "true";

    /// The time of [`annotations::PAUSE_AT`]: RFC 3339, or an error that says what to write.
    pub fn parse_pause_at(value: &str) -> Result<k8s_openapi::jiff::Timestamp, String> {
        value.parse().map_err(|_| {
            format!(
                "{value:?} is not a time; write one in RFC 3339, such as \"2026-12-07T10:00:00Z\""
            )
        })
    }

    /// Whether an annotation map asks for a pause ([`annotations::PAUSED`] is `"true"`).
    pub fn asks_paused(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
        annotations
            .and_then(|a| a.get(annotations::PAUSED))
            .is_some_and(|v| v == PAUSED_TRUE)
    }

    /// Condition types.
    pub mod condition_types {
        /// On a Sandbox: whether its processes are frozen (absent until it is first asked to
        /// pause; then it stays, True or False, as `Suspended` does).
        pub const PAUSED: &str = "Paused";
        /// On a Pod, written by the node: whether every container of the Pod is frozen.
        pub const POD_PAUSED: &str = "agent-sandbox-rs.github.io/Paused";
    }

    /// Reasons of the Sandbox's `Paused` condition (and of `Ready` while paused).
    pub mod reasons {
        /// Paused=True (and Ready=False): every process of the Pod is frozen.
        pub const SANDBOX_PAUSED: &str = "SandboxPaused";
        /// Paused=False: the Sandbox runs.
        pub const SANDBOX_RUNNING: &str = "SandboxRunning";
        /// Paused=False: asked to pause, the node has not frozen the Pod yet.
        pub const SANDBOX_PAUSING: &str = "SandboxPausing";
        /// Paused=True: asked to run again, the node has not thawed the Pod yet.
        pub const SANDBOX_UNPAUSING: &str = "SandboxUnpausing";
        /// Paused=False: asked to pause, but there is no running Pod to freeze.
        pub const NO_POD_TO_PAUSE: &str = "NoPodToPause";
        /// Paused=False: the node could not freeze (or thaw) the Pod; its message says why.
        pub const PAUSE_FAILED: &str = "PauseFailed";
    }

    /// Reasons of the Pod's `agent-sandbox-rs.github.io/Paused` condition (written by the node).
    pub mod pod_reasons {
        /// True: every container is frozen.
        pub const PAUSED: &str = "Paused";
        /// False: the containers run (thawed, or never paused).
        pub const RUNNING: &str = "Running";
        /// False: asked to pause while its containers do not run, or are not ready, yet.
        pub const NOT_RUNNING: &str = "PodNotRunning";
        /// False (freeze failed) or True (thaw failed): the message says why; retried.
        pub const PAUSE_FAILED: &str = "PauseFailed";
    }

    /// The group of this project's own kinds (`SandboxSnapshot`).
    pub const GROUP: &str = "agent-sandbox-rs.github.io";
    /// The only served (and stored) version of this project's own kinds.
    pub const VERSION: &str = "v1alpha1";

    /// Finalizers.
    pub mod finalizers {
        /// On a SandboxSnapshot whose files are on a node: the node removes it once it deleted
        /// them.
        pub const SNAPSHOT_FILES: &str = "agent-sandbox-rs.github.io/snapshot-files";
    }

    /// Reasons of a SandboxSnapshot's `Ready` condition.
    pub mod snapshot_reasons {
        /// False, Pending: accepted, waiting for its turn on the node.
        pub const PENDING: &str = "SnapshotPending";
        /// False, InProgress: the node is copying.
        pub const IN_PROGRESS: &str = "SnapshotInProgress";
        /// True, Ready.
        pub const READY: &str = "SnapshotReady";
        /// False, Failed: the Sandbox does not exist.
        pub const SANDBOX_NOT_FOUND: &str = "SandboxNotFound";
        /// False, Failed: the Sandbox has no running Pod (suspended, starting, or finished).
        pub const SANDBOX_NOT_RUNNING: &str = "SandboxNotRunning";
        /// False, Failed: the Sandbox is being deleted.
        pub const SANDBOX_DELETING: &str = "SandboxDeleting";
        /// False, Failed: the snapshot would exceed the node's size limit.
        pub const TOO_LARGE: &str = "SnapshotTooLarge";
        /// False, Failed: the node could not take it; the message says why.
        pub const FAILED: &str = "SnapshotFailed";
    }

    /// Messages of the Sandbox's `Paused` condition.
    pub mod messages {
        /// Paused=True, SandboxPaused.
        pub const SANDBOX_PAUSED: &str =
            "Sandbox is paused: its processes are frozen and keep their memory";
        /// Ready=False, SandboxPaused.
        pub const READY_PAUSED: &str = "Sandbox is paused; unpause it (remove the annotation agent-sandbox-rs.github.io/paused) to use it";
        /// Paused=False, SandboxRunning.
        pub const SANDBOX_RUNNING: &str = "Sandbox is running";
        /// Paused=False, SandboxPausing.
        pub const SANDBOX_PAUSING: &str =
            "Sandbox is pausing: waiting for the node to freeze its Pod";
        /// Paused=True, SandboxUnpausing.
        pub const SANDBOX_UNPAUSING: &str =
            "Sandbox is unpausing: waiting for the node to thaw its Pod";
        /// Paused=False, NoPodToPause, for a suspended Sandbox.
        pub const SUSPENDED_NO_POD: &str = "Sandbox is suspended and has no Pod to pause; the annotation takes effect when it resumes";
        /// Paused=False, NoPodToPause, without a Pod.
        pub const NO_POD: &str = "Sandbox has no Pod to pause yet; it is paused once its Pod runs";
        /// Paused=False, NoPodToPause, prefix before the finished Pod's phase.
        pub const POD_FINISHED_PREFIX: &str =
            "Sandbox has nothing to pause: its Pod has finished with phase ";
    }
}
