//! The runtime layer: what containerd and the OCI runtime do for a node. It turns a
//! [`SandboxSpec`](spec::SandboxSpec) into running containers and knows nothing of Pods'
//! status, probes or restart policies (that is [`crate::kubelet`]).
//!
//! | module | owns |
//! |---|---|
//! | [`engine`] | the sandbox engine: create, start, state, pause, resume, stop, remove, recover |
//! | [`lifecycle`] | the lifecycle phases and the one transition function |
//! | [`host`] | host effects (mounts, network namespaces, cgroups, programs) behind a trait |
//! | [`handler`] | the OCI runtime CLIs (runc, crun, runsc) |
//! | [`image`] | image pull, cache and layer unpacking |
//! | [`monitor`] | gVisor runtime monitoring: trace sessions, the node's sink sockets, Falco |
//! | [`bundle`], [`seccomp`], [`sandboxd_kit`] | the OCI `config.json` of a container |
//! | [`cni`], [`firewall`], [`netpol`] | pod networking and NetworkPolicy enforcement |
//! | [`spec`] | the sandbox spec, derived from a Pod |
//! | [`timeline`] | per-step timings of a sandbox's start |

pub mod bundle;
pub mod cni;
pub mod engine;
pub mod firewall;
pub mod handler;
pub mod host;
pub mod image;
pub mod lifecycle;
pub mod monitor;
pub mod netpol;
pub(crate) mod record_file;
pub mod sandboxd_kit;
pub mod seccomp;
pub mod spec;
pub mod timeline;

pub use handler::*;
