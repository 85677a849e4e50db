//! The node's error type: every variant names the object (sandbox, image, path, handler) that
//! failed and, where the caller can act, says what to do.

use std::path::PathBuf;

/// Result alias for the node crate.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Everything that can go wrong while turning a sandbox spec into a running sandbox.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file-system operation failed (fs-err names the path in the source).
    #[error("{0}")]
    Io(#[from] std::io::Error),

    /// A host system call failed.
    #[error("{op} on {path}: {source}")]
    Sys {
        /// What was attempted, e.g. "mount overlay".
        op: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },

    /// A JSON document could not be read or written.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file or object.
        path: PathBuf,
        /// Parser error.
        source: serde_json::Error,
    },

    /// The Pod or sandbox spec asks for something this node does not do.
    #[error("sandbox {sandbox}: field {field} is not supported on the embedded node: {reason}")]
    Unsupported {
        /// Sandbox (namespace/name or id).
        sandbox: String,
        /// The field path, e.g. `spec.containers[0].securityContext.privileged`.
        field: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The spec is malformed.
    #[error("sandbox {sandbox}: invalid {field}: {reason}")]
    InvalidSpec {
        /// Sandbox (namespace/name or id).
        sandbox: String,
        /// The field path.
        field: String,
        /// What is wrong.
        reason: String,
    },

    /// A ConfigMap, Secret, key or field that a container's environment or a volume names
    /// cannot be resolved (kubelet's `CreateContainerConfigError`); the message is kubelet's
    /// and names the object, e.g. `configmap "settings" not found`.
    #[error("{message}")]
    Reference {
        /// Sandbox (namespace/name).
        sandbox: String,
        /// What is missing or wrong.
        message: String,
    },

    /// A `RuntimeClass` handler name that this node does not know.
    #[error(
        "sandbox {sandbox}: unknown runtime handler {handler:?}; known handlers: {known}. Use one of them in the RuntimeClass or omit runtimeClassName"
    )]
    UnknownHandler {
        /// Sandbox.
        sandbox: String,
        /// The requested name.
        handler: String,
        /// Comma-separated known names.
        known: String,
    },

    /// The handler exists but failed its start-up probe on this host.
    #[error("sandbox {sandbox}: runtime handler {handler} is not usable on this host: {reason}")]
    HandlerUnavailable {
        /// Sandbox.
        sandbox: String,
        /// Handler name.
        handler: String,
        /// Probe result.
        reason: String,
    },

    /// An OCI runtime command failed.
    #[error("{handler} {op} of container {id} failed (exit {status}): {message}")]
    Runtime {
        /// Handler name.
        handler: String,
        /// Subcommand.
        op: String,
        /// Container id.
        id: String,
        /// Exit status of the runtime binary.
        status: i32,
        /// The runtime's own message.
        message: String,
    },

    /// The image is not in the local store and the pull policy forbids pulling.
    #[error(
        "image {image} is not present on the node and imagePullPolicy is Never: import it first or use IfNotPresent"
    )]
    ImageNotPresent {
        /// Image reference.
        image: String,
    },

    /// The image reference cannot be parsed.
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidReference {
        /// As given.
        image: String,
        /// Parser message.
        reason: String,
    },

    /// The registry could not be reached or refused the request.
    #[error("pulling image {image}: {reason}")]
    Pull {
        /// Image reference.
        image: String,
        /// What failed; includes the registry's message.
        reason: String,
    },

    /// Content did not match its digest.
    #[error(
        "image {image}: content of {what} does not match its digest (expected {expected}, got {actual}); the registry or layout is corrupt or tampered with, refusing it"
    )]
    DigestMismatch {
        /// Image reference.
        image: String,
        /// Which blob (manifest, config, layer).
        what: String,
        /// Declared digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },

    /// The image is malformed or uses a feature not supported here.
    #[error("image {image}: {reason}")]
    BadImage {
        /// Image reference.
        image: String,
        /// What is wrong.
        reason: String,
    },

    /// The command to run is not in the image.
    #[error(
        "sandbox {sandbox}: command {command:?} not found in image {image} (searched PATH {path}); fix the container's command or use an image that has it"
    )]
    CommandNotFound {
        /// Sandbox.
        sandbox: String,
        /// argv\[0\].
        command: String,
        /// Image reference.
        image: String,
        /// The PATH searched.
        path: String,
    },

    /// No sandbox with that id.
    #[error("sandbox {0} not found")]
    NotFound(String),

    /// The sandbox id is taken.
    #[error("sandbox {0} already exists: remove it first or pick another id")]
    AlreadyExists(String),

    /// An operation is not valid in the sandbox's current state.
    #[error("sandbox {sandbox}: cannot {op} while {state}")]
    InvalidState {
        /// Sandbox.
        sandbox: String,
        /// Operation.
        op: &'static str,
        /// Current state.
        state: String,
    },

    /// CNI plugin failure.
    #[error("network for sandbox {sandbox}: CNI {plugin} {command} failed: {message}")]
    Cni {
        /// Sandbox.
        sandbox: String,
        /// Plugin type.
        plugin: String,
        /// ADD/DEL/CHECK.
        command: &'static str,
        /// The plugin's error message.
        message: String,
    },

    /// NetworkPolicy enforcement failed or is impossible on this host.
    #[error("NetworkPolicy enforcement (nftables table {table}): {message}")]
    Firewall {
        /// The node's table.
        table: String,
        /// What failed, and what to do.
        message: String,
    },

    /// Node configuration problem.
    #[error("node configuration: {0}")]
    Config(String),

    /// Timed out waiting for something.
    #[error("sandbox {sandbox}: timed out after {secs:.1}s waiting for {what}")]
    Timeout {
        /// Sandbox.
        sandbox: String,
        /// What we waited for.
        what: &'static str,
        /// Seconds waited.
        secs: f64,
    },

    /// A snapshot would take more than the node allows; nothing of it is kept.
    #[error(
        "snapshot of sandbox {sandbox} exceeds the node's limit of {limit} bytes; raise it with --snapshot-size-limit or make the sandbox hold less data"
    )]
    SnapshotTooLarge {
        /// Sandbox.
        sandbox: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// A snapshot was cancelled (its resource deleted) before it completed; nothing is kept.
    #[error("snapshot of sandbox {sandbox} was cancelled before it completed")]
    SnapshotCancelled {
        /// Sandbox.
        sandbox: String,
    },
}

impl NodeError {
    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, source: nix::Error) -> Self {
        NodeError::Sys {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        NodeError::Json {
            path: path.into(),
            source,
        }
    }
}
