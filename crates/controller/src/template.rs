//! The SandboxTemplate reconciler (upstream-core §7): the template's own ref-hash label, the
//! managed NetworkPolicy `<template>-network-policy` with its secure default, Unmanaged mode, and
//! the secure pod-spec defaults applied to sandboxes made from templates.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::runner::Action;
use agent_sandbox_api::constants::labels;
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{NetworkPolicyManagement, SandboxTemplate, SandboxTemplateSpec};
use k8s_openapi::api::core::v1::{PodDNSConfig, PodSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::instrument;

use crate::cache::get;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, is_already_exists, is_not_found};
use crate::meta::{controller_ref, is_controlled_by, label};

/// The controller name in metrics.
pub const CONTROLLER: &str = "sandboxtemplate";

/// Namespace of the router the default policy admits.
pub const ROUTER_NAMESPACE: &str = "agent-sandbox-system";
/// Nameservers set on sandboxes under the default policy (cluster DNS is blocked).
pub const DEFAULT_NAMESERVERS: [&str; 2] = ["8.8.8.8", "1.1.1.1"];

/// The managed NetworkPolicy name of a template.
pub fn network_policy_name(template: &str) -> String {
    format!("{template}-network-policy")
}

/// The spec of the managed NetworkPolicy (§7 step 6): the secure default when the template has
/// no `networkPolicy`, else the template's rules, always with the ref-hash pod selector.
pub fn desired_network_policy(
    template_name: &str,
    spec: &SandboxTemplateSpec,
) -> NetworkPolicySpec {
    let pod_selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            labels::SANDBOX_TEMPLATE_REF_HASH.to_string(),
            name_hash(template_name),
        )])),
        match_expressions: None,
    };
    let policy_types = Some(vec!["Ingress".to_string(), "Egress".to_string()]);
    match &spec.network_policy {
        Some(np) => NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types,
            ingress: Some(np.ingress.clone()),
            egress: Some(np.egress.clone()),
        },
        None => {
            let ingress = NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            ROUTER_NAMESPACE.to_string(),
                        )])),
                        match_expressions: None,
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "app".to_string(),
                            "sandbox-router".to_string(),
                        )])),
                        match_expressions: None,
                    }),
                    ip_block: None,
                }]),
                ports: None,
            };
            let block = |cidr: &str, except: &[&str]| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: Some(except.iter().map(|s| s.to_string()).collect()),
                }),
                ..Default::default()
            };
            let egress = NetworkPolicyEgressRule {
                to: Some(vec![
                    block(
                        "0.0.0.0/0",
                        &[
                            "10.0.0.0/8",
                            "172.16.0.0/12",
                            "192.168.0.0/16",
                            "169.254.0.0/16",
                        ],
                    ),
                    block("::/0", &["fc00::/7", "fe80::/10"]),
                ]),
                ports: None,
            };
            NetworkPolicySpec {
                pod_selector: Some(pod_selector),
                policy_types,
                ingress: Some(vec![ingress]),
                egress: Some(vec![egress]),
            }
        }
    }
}

/// `ApplySandboxSecureDefaults`: no service-account token unless asked, and public DNS under the
/// default (managed, no custom policy) network policy when no DNS policy is set.
pub fn apply_secure_defaults(tpl: &SandboxTemplateSpec, spec: &mut PodSpec) {
    if spec.automount_service_account_token.is_none() {
        spec.automount_service_account_token = Some(false);
    }
    let managed = tpl.network_policy_management() == NetworkPolicyManagement::Managed;
    if managed
        && tpl.network_policy.is_none()
        && spec.dns_policy.as_deref().unwrap_or("").is_empty()
    {
        spec.dns_policy = Some("None".into());
        let cfg = spec.dns_config.get_or_insert_with(PodDNSConfig::default);
        cfg.nameservers = Some(DEFAULT_NAMESERVERS.iter().map(|s| s.to_string()).collect());
    }
}

/// Reconciles one SandboxTemplate.
#[instrument(name = "ReconcileSandboxTemplate", skip_all, fields(template.name = %tpl.name_any(), template.namespace = tpl.namespace().unwrap_or_default()))]
pub async fn reconcile(tpl: Arc<SandboxTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = tpl.namespace().unwrap_or_default();
    let name = tpl.name_any();
    let api_err = |action, kind, name: &str, source| Error::Api {
        action,
        kind,
        namespace: ns.clone(),
        name: name.to_string(),
        source,
    };
    let hash = name_hash(&name);
    if tpl.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if label(&tpl.metadata, labels::SANDBOX_TEMPLATE_REF_HASH) != Some(hash.as_str()) {
        let api: Api<SandboxTemplate> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"labels": {labels::SANDBOX_TEMPLATE_REF_HASH: hash}}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(api_err("label", "SandboxTemplate", &name, e)),
        }
    }
    let np_name = network_policy_name(&name);
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = get(&ctx.stores.network_policies, &ns, &np_name);
    if tpl.spec.network_policy_management() == NetworkPolicyManagement::Unmanaged {
        if let Some(np) = existing
            && is_controlled_by(&np.metadata, tpl.as_ref())
            && let Err(e) = api.delete(&np_name, &DeleteParams::default()).await
            && !is_not_found(&e)
        {
            return Err(api_err("delete", "NetworkPolicy", &np_name, e));
        }
        return Ok(Action::await_change());
    }
    let desired = desired_network_policy(&name, &tpl.spec);
    match existing {
        Some(np) => {
            if !is_controlled_by(&np.metadata, tpl.as_ref()) {
                return Err(Error::ForeignNetworkPolicy {
                    policy: np_name,
                    template: name,
                });
            }
            if agent_sandbox_api::semantic::eq(&np.spec, &Some(desired.clone())) {
                return Ok(Action::await_change());
            }
            let mut np = (*np).clone();
            np.spec = Some(desired);
            np.metadata.managed_fields = None;
            api.replace(&np_name, &PostParams::default(), &np)
                .await
                .map_err(|e| api_err("update", "NetworkPolicy", &np_name, e))?;
        }
        None => {
            let np = NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(np_name.clone()),
                    namespace: Some(ns.clone()),
                    owner_references: Some(vec![controller_ref(tpl.as_ref())]),
                    ..Default::default()
                },
                spec: Some(desired),
            };
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&pp, &np).await {
                Ok(_) => {}
                Err(e) if is_already_exists(&e) => {
                    return Ok(Action::requeue(std::time::Duration::from_millis(200)));
                }
                Err(e) => return Err(api_err("create", "NetworkPolicy", &np_name, e)),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sandbox_api::v1beta1::NetworkPolicySpec as TplPolicy;

    #[test]
    fn secure_default_policy() {
        let np = desired_network_policy("tpl", &SandboxTemplateSpec::default());
        let v = serde_json::to_value(&np).unwrap();
        assert_eq!(
            v,
            json!({
                "podSelector": {"matchLabels": {"agents.x-k8s.io/sandbox-template-ref-hash": name_hash("tpl")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}},
                    "podSelector": {"matchLabels": {"app": "sandbox-router"}}
                }]}],
                "egress": [{"to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}
                ]}]
            })
        );
    }

    #[test]
    fn custom_policy_keeps_selector_and_empty_lists_deny() {
        let spec = SandboxTemplateSpec {
            network_policy: Some(TplPolicy::default()),
            ..Default::default()
        };
        let np = desired_network_policy("tpl", &spec);
        assert_eq!(np.ingress, Some(vec![]));
        assert_eq!(np.egress, Some(vec![]));
        assert_eq!(
            np.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..])
        );
        assert!(
            np.pod_selector
                .unwrap()
                .match_labels
                .unwrap()
                .contains_key(labels::SANDBOX_TEMPLATE_REF_HASH)
        );
    }

    #[test]
    fn secure_defaults_table() {
        let mut spec = PodSpec::default();
        apply_secure_defaults(&SandboxTemplateSpec::default(), &mut spec);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        assert_eq!(
            spec.dns_config.unwrap().nameservers.unwrap(),
            ["8.8.8.8", "1.1.1.1"]
        );

        let mut spec = PodSpec {
            automount_service_account_token: Some(true),
            dns_policy: Some("ClusterFirst".into()),
            ..Default::default()
        };
        apply_secure_defaults(&SandboxTemplateSpec::default(), &mut spec);
        assert_eq!(spec.automount_service_account_token, Some(true));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));

        let unmanaged = SandboxTemplateSpec {
            network_policy_management: Some(NetworkPolicyManagement::Unmanaged),
            ..Default::default()
        };
        let mut spec = PodSpec::default();
        apply_secure_defaults(&unmanaged, &mut spec);
        assert!(spec.dns_policy.is_none());
        let custom = SandboxTemplateSpec {
            network_policy: Some(TplPolicy::default()),
            ..Default::default()
        };
        let mut spec = PodSpec::default();
        apply_secure_defaults(&custom, &mut spec);
        assert!(spec.dns_policy.is_none());
    }
}
