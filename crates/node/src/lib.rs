//! The embedded node agent: turns Pods bound to this machine into isolated sandboxes (images,
//! overlay rootfs, OCI bundles, runtime handlers, CNI networking, volumes, limits, probes, status).
//!
//! Two layers:
//! - [`runtime`]: what containerd and the OCI runtime do. The entry point is [`SandboxEngine`]:
//!   `create` a sandbox from a [`SandboxSpec`] (derived from a Pod with
//!   [`SandboxSpec::from_pod`]), then `start`, `state`, `wait`, `pause`, `resume`, `stop`,
//!   `remove`; `recover` re-adopts sandboxes after a restart. Its lifecycle is one transition
//!   function ([`lifecycle::transition`]); its mounts, network namespaces and cgroups go
//!   through the [`host::Host`] trait.
//! - [`kubelet`]: what kubelet does. [`kubelet::NodeAgent`] watches the Pods bound to the node
//!   and drives the engine; its decisions (which container to start, restart or give up on,
//!   back-offs, the Pod's phase) are pure functions in [`kubelet::plan`].
//!
//! The only `unsafe` code is in the private `sys` module.

pub mod error;
pub mod kubelet;
pub mod runtime;
mod sys;

// The modules under their names before the split into layers.
pub use kubelet::agent;
pub use kubelet::{
    audit, env, events, exec, logs, pod, portforward, probe, projected, refs, snapshot_plan,
    storage,
};
pub(crate) use runtime::record_file;
pub use runtime::{
    bundle, cni, engine, firewall, host, image, lifecycle, monitor, netpol, sandboxd_kit, seccomp,
    spec, timeline,
};

pub use error::{NodeError, Result};
pub use runtime::engine::{
    EngineConfig, Phase, RecoveryReport, SandboxEngine, SandboxHandle, SandboxState,
};
pub use runtime::{HandlerKind, HandlerStatus};
pub use spec::{PullPolicy, SandboxSpec};
