//! The embedded node agent: turns Pods bound to this machine into isolated sandboxes (images,
//! overlay rootfs, OCI bundles, runtime handlers, CNI networking, volumes, limits, probes, status).
//!
//! The entry point is [`SandboxEngine`]: `create` a sandbox from a [`SandboxSpec`] (derived from
//! a Pod with [`SandboxSpec::from_pod`]), then `start`, `state`, `wait`, `pause`, `resume`,
//! `stop`, `remove`; `recover` re-adopts sandboxes after a restart; which operation is legal in
//! which phase, and with which runtime effects, is one function ([`lifecycle::transition`]).
//! Every host side effect goes through [`host`] (the engine's mounts, network namespaces and
//! cgroups through its [`host::Host`] trait, with a recording double for tests); the only
//! `unsafe` code is in the private `sys` module.

pub mod agent;
pub mod audit;
pub mod bundle;
pub mod cni;
pub mod engine;
pub mod env;
pub mod error;
pub mod events;
pub mod exec;
pub mod firewall;
pub mod host;
pub mod image;
pub mod lifecycle;
pub mod logs;
pub mod netpol;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod projected;
mod record_file;
pub mod refs;
pub mod runtime;
pub mod sandboxd_kit;
pub mod seccomp;
pub mod spec;
pub mod storage;
mod sys;
pub mod timeline;

pub use engine::{EngineConfig, Phase, RecoveryReport, SandboxEngine, SandboxHandle, SandboxState};
pub use error::{NodeError, Result};
pub use runtime::{HandlerKind, HandlerStatus};
pub use spec::{PullPolicy, SandboxSpec};
