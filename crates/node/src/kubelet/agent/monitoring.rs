//! A Pod's gVisor runtime-monitoring setting: its annotation
//! (`agent-sandbox-rs.github.io/runtime-monitoring`), else the node's default for Pods that run
//! under runsc.

use agent_sandbox_api::constants::extensions::annotations::RUNTIME_MONITORING;
use kube::ResourceExt;

use super::*;
use crate::monitor::RuntimeMonitoring;
use crate::runtime::HandlerKind;

impl NodeAgent {
    /// Where the sandbox's runtime events go, or `None`. A value that is not a setting is an
    /// error naming the annotation and what to write; whether the sandbox can be monitored
    /// (runsc, a Falco socket) the engine checks at create.
    pub(super) fn runtime_monitoring_of(
        &self,
        pod: &Pod,
        spec: &SandboxSpec,
    ) -> Result<Option<RuntimeMonitoring>, NodeError> {
        if let Some(value) = pod.annotations().get(RUNTIME_MONITORING) {
            return RuntimeMonitoring::parse(value).map_err(|reason| NodeError::InvalidSpec {
                sandbox: spec.display_name(),
                field: format!("metadata.annotations[{RUNTIME_MONITORING}]"),
                reason,
            });
        }
        let Some(default) = self.config.runtime_monitoring else {
            return Ok(None);
        };
        Ok((self.engine.handler_of(spec)? == HandlerKind::Runsc).then_some(default))
    }
}
