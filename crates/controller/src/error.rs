//! The reconcilers' error type: every variant names the operation and object that failed.

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        /// What was attempted (`get`, `create`, `patch status of`…).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Child resources of a Sandbox could not be reconciled; the texts are in its Ready condition.
    #[error("reconciling children of Sandbox {namespace}/{name}: {}", errors.join("; "))]
    Children {
        /// Namespace of the Sandbox.
        namespace: String,
        /// Name of the Sandbox.
        name: String,
        /// The error texts, in order.
        errors: Vec<String>,
    },
    /// A claim could not be reconciled; the text is in its Ready condition.
    #[error("reconciling SandboxClaim {namespace}/{name}: {message}")]
    Claim {
        /// Namespace of the claim.
        namespace: String,
        /// Name of the claim.
        name: String,
        /// The error text.
        message: String,
    },
    /// A warm pool could not be reconciled.
    #[error("reconciling SandboxWarmPool {namespace}/{name}: {}", errors.join("; "))]
    Pool {
        /// Namespace of the pool.
        namespace: String,
        /// Name of the pool.
        name: String,
        /// The error texts, in order.
        errors: Vec<String>,
    },
    /// A NetworkPolicy with the managed name is controlled by something else.
    #[error(
        "refusing to update NetworkPolicy {policy:?} as it is not controlled by SandboxTemplate {template:?}"
    )]
    ForeignNetworkPolicy {
        /// The NetworkPolicy name.
        policy: String,
        /// The template name.
        template: String,
    },
}

/// Result alias of the reconcilers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api",
            Error::Children { .. } => "children",
            Error::Claim { .. } => "claim",
            Error::Pool { .. } => "pool",
            Error::ForeignNetworkPolicy { .. } => "foreign_network_policy",
        }
    }
}

/// Whether a client error is an API status with this HTTP code.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// NotFound.
pub fn is_not_found(e: &kube::Error) -> bool {
    is_status(e, 404)
}

/// Conflict (optimistic lock failure).
pub fn is_conflict(e: &kube::Error) -> bool {
    is_status(e, 409)
}

/// AlreadyExists (409 with reason AlreadyExists).
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}
