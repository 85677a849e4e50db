//! The kubelet layer: what kubelet does for a node. It watches the Pods bound to this machine,
//! decides what each needs (which containers to create, restart or give up on, in which
//! order, after which back-off; the Pod's phase and conditions) and drives the
//! [`crate::runtime`] layer to get there, reporting through the Pod's status and events.
//!
//! | module | owns |
//! |---|---|
//! | [`agent`] | the [`NodeAgent`]: watches, per-Pod sync, the executor of the plan |
//! | [`plan`] | the decisions of a sync, as pure functions of the Pod, the agent's memory and the runtime's state |
//! | [`pod`] | the agent's memory of each Pod and its rendering as the Pod's status |
//! | [`probe`] | probes and lifecycle hooks |
//! | [`env`], [`refs`], [`projected`] | environment, ConfigMap/Secret/downward API references and volumes |
//! | [`snapshot_plan`] | the decisions about a `SandboxSnapshot` (take, wait, fail, clean up) |
//! | [`storage`] | PersistentVolumeClaims as durable host directories |
//! | [`events`], [`audit`] | kubelet-style events; Pod fields the node does not honour |
//! | [`exec`], [`logs`], [`portforward`] | `kubectl exec`, `logs` and `port-forward` |

pub mod agent;
pub mod audit;
pub mod env;
pub mod events;
pub mod exec;
pub mod logs;
pub mod plan;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod projected;
pub mod refs;
pub mod snapshot_plan;
pub mod storage;

pub use agent::{
    AgentConfig, DEFAULT_SNAPSHOT_SIZE_LIMIT, MIRROR_ANNOTATION, NodeAgent, RESYNC, is_mirror,
};
