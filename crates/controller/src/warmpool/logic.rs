//! Pure decisions of the SandboxWarmPool reconciler (upstream-core §8): the shape of pool
//! Sandboxes, blueprint hashes, staleness with a semantic fallback, scale-down order and
//! slow-start batches. No I/O.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use agent_sandbox_api::conditions::is_status_condition_true;
use agent_sandbox_api::constants::{
    CREATED_BY_CONTROLLER, annotations, condition_types, labels, launch_type,
};
use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{Sandbox, SandboxSpec, SandboxTemplate, SandboxWarmPool};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::meta::{controller_ref, label};
use crate::template::apply_secure_defaults;

/// The `status.selector` of a pool.
pub fn pool_selector(pool_name: &str) -> String {
    format!("{}={}", labels::WARM_POOL_SANDBOX, name_hash(pool_name))
}

/// Hash of the template's blueprint (label `sandbox-template-hash`). The JSON encoding is ours,
/// so values may differ from upstream's; staleness never relies on the hash alone.
pub fn blueprint_hash(tpl: &SandboxTemplate) -> String {
    serde_json::to_string(&tpl.spec.blueprint())
        .map(|s| name_hash(&s))
        .unwrap_or_default()
}

/// Hash of the template's pod template (deprecated label, informational only).
pub fn pod_template_hash(tpl: &SandboxTemplate) -> String {
    serde_json::to_string(&tpl.spec.pod_template)
        .map(|s| name_hash(&s))
        .unwrap_or_default()
}

/// Whether a Sandbox is Ready=True.
pub fn is_ready(sb: &Sandbox) -> bool {
    sb.status
        .as_ref()
        .is_some_and(|s| is_status_condition_true(&s.conditions, condition_types::READY))
}

/// The pool Sandbox to create (§8.3), with `generateName: "<pool>-"`.
pub fn build_pool_sandbox(
    pool: &SandboxWarmPool,
    tpl: &SandboxTemplate,
    enable_eviction: bool,
) -> Sandbox {
    let pool_name = pool.name_any();
    let tpl_name = pool.spec.template_ref.name.clone();
    let pool_hash = name_hash(&pool_name);
    let ref_hash = name_hash(&tpl_name);
    let pt_hash = pod_template_hash(tpl);
    let bp_hash = blueprint_hash(tpl);
    let hash_labels = [
        (labels::WARM_POOL_SANDBOX, pool_hash.as_str()),
        (labels::SANDBOX_TEMPLATE_REF_HASH, ref_hash.as_str()),
        (
            labels::DEPRECATED_SANDBOX_POD_TEMPLATE_HASH,
            pt_hash.as_str(),
        ),
        (labels::SANDBOX_TEMPLATE_HASH, bp_hash.as_str()),
    ];
    let mut top: BTreeMap<String, String> = hash_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    top.insert(labels::LAUNCH_TYPE.into(), launch_type::WARM.into());
    top.insert(labels::CREATED_BY.into(), CREATED_BY_CONTROLLER.into());

    let mut pod_template = tpl.spec.pod_template.clone();
    for (k, v) in hash_labels {
        pod_template.metadata.labels.insert(k.into(), v.into());
    }
    if enable_eviction
        && !pod_template
            .metadata
            .annotations
            .contains_key(annotations::SAFE_TO_EVICT)
    {
        pod_template
            .metadata
            .annotations
            .insert(annotations::SAFE_TO_EVICT.into(), "true".into());
    }
    apply_secure_defaults(&tpl.spec, &mut pod_template.spec);

    Sandbox {
        metadata: ObjectMeta {
            generate_name: Some(format!("{pool_name}-")),
            namespace: pool.namespace(),
            labels: Some(top),
            annotations: Some(BTreeMap::from([(
                annotations::SANDBOX_TEMPLATE_REF.to_string(),
                tpl_name,
            )])),
            owner_references: Some(vec![controller_ref(pool)]),
            ..Default::default()
        },
        spec: SandboxSpec {
            pod_template,
            volume_claim_templates: tpl.spec.volume_claim_templates.clone(),
            service: tpl.spec.service,
            ..Default::default()
        },
        status: None,
    }
}

/// `compareSandboxBlueprint`: the secure-defaulted template pod spec, the VCT names and specs
/// index by index, and `service` are semantically equal. Pod template metadata is ignored.
pub fn blueprint_matches(tpl: &SandboxTemplate, spec: &SandboxSpec) -> bool {
    let mut want = tpl.spec.pod_template.spec.clone();
    apply_secure_defaults(&tpl.spec, &mut want);
    if !agent_sandbox_api::semantic::eq(&want, &spec.pod_template.spec) {
        return false;
    }
    let (a, b) = (
        &tpl.spec.volume_claim_templates,
        &spec.volume_claim_templates,
    );
    if a.len() != b.len()
        || a.iter().zip(b).any(|(x, y)| {
            x.metadata.name != y.metadata.name || !agent_sandbox_api::semantic::eq(&x.spec, &y.spec)
        })
    {
        return false;
    }
    tpl.spec.service == spec.service
}

/// Staleness of pool members against the current template (§8.4), memoised per old hash value.
pub struct StaleChecker<'a> {
    tpl: &'a SandboxTemplate,
    ref_hash: String,
    current_hash: String,
    memo: HashMap<String, bool>,
}

impl<'a> StaleChecker<'a> {
    /// A checker for `tpl`.
    pub fn new(tpl: &'a SandboxTemplate) -> Self {
        Self {
            tpl,
            ref_hash: name_hash(&tpl.name_any()),
            current_hash: blueprint_hash(tpl),
            memo: HashMap::new(),
        }
    }

    /// The current blueprint hash.
    pub fn current_hash(&self) -> &str {
        &self.current_hash
    }

    /// Whether `sb` is stale. A hash mismatch alone never makes a member stale.
    pub fn is_stale(&mut self, sb: &Sandbox, orphan: bool) -> bool {
        if label(&sb.metadata, labels::SANDBOX_TEMPLATE_REF_HASH) != Some(self.ref_hash.as_str()) {
            return true;
        }
        if orphan {
            return !blueprint_matches(self.tpl, &sb.spec);
        }
        let old = label(&sb.metadata, labels::SANDBOX_TEMPLATE_HASH).unwrap_or("");
        if old == self.current_hash || self.current_hash.is_empty() {
            return false;
        }
        if let Some(v) = self.memo.get(old) {
            return *v;
        }
        let stale = !blueprint_matches(self.tpl, &sb.spec);
        self.memo.insert(old.to_string(), stale);
        stale
    }
}

/// The order pool members are deleted in when scaling down: unready first, then newest first.
pub fn scale_down_order<S: Borrow<Sandbox>>(members: &mut [S]) {
    members.sort_by_key(|sb| {
        let sb: &Sandbox = sb.borrow();
        (
            is_ready(sb),
            Reverse(sb.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    });
}

/// Slow-start batch sizes for `n` operations: 1, 2, 4, … with the last batch trimmed.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut left, mut size) = (n, 1usize);
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size = size.saturating_mul(2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sandbox_api::v1beta1::{
        PersistentVolumeClaimTemplate, SandboxTemplateRef, SandboxTemplateSpec, SandboxWarmPoolSpec,
    };
    use k8s_openapi::api::core::v1::{Container, EnvVar};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn template(name: &str) -> SandboxTemplate {
        let mut t = SandboxTemplate::new(name, SandboxTemplateSpec::default());
        t.metadata.namespace = Some("ns".into());
        t.spec.pod_template.spec.containers = vec![Container {
            name: "c".into(),
            image: Some("pause".into()),
            ..Default::default()
        }];
        t.spec
            .pod_template
            .metadata
            .labels
            .insert("team".into(), "a".into());
        t
    }

    fn pool() -> SandboxWarmPool {
        let mut p = SandboxWarmPool::new(
            "pool",
            SandboxWarmPoolSpec {
                template_ref: SandboxTemplateRef { name: "tpl".into() },
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("pool-uid".into());
        p
    }

    #[test]
    fn pool_sandbox_shape() {
        let tpl = template("tpl");
        let sb = build_pool_sandbox(&pool(), &tpl, true);
        assert_eq!(sb.metadata.generate_name.as_deref(), Some("pool-"));
        let l = sb.metadata.labels.clone().unwrap();
        assert_eq!(l[labels::WARM_POOL_SANDBOX], name_hash("pool"));
        assert_eq!(l[labels::SANDBOX_TEMPLATE_REF_HASH], name_hash("tpl"));
        assert_eq!(l[labels::LAUNCH_TYPE], "warm");
        assert_eq!(l[labels::CREATED_BY], "controller");
        assert_eq!(l[labels::SANDBOX_TEMPLATE_HASH], blueprint_hash(&tpl));
        assert_eq!(
            l[labels::DEPRECATED_SANDBOX_POD_TEMPLATE_HASH],
            pod_template_hash(&tpl)
        );
        assert_eq!(
            sb.metadata.annotations.unwrap()[annotations::SANDBOX_TEMPLATE_REF],
            "tpl"
        );
        let owner = &sb.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.api_version.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            (
                "SandboxWarmPool",
                "extensions.agents.x-k8s.io/v1beta1",
                Some(true),
                Some(true)
            )
        );
        let pm = &sb.spec.pod_template.metadata;
        assert_eq!(pm.labels["team"], "a");
        assert_eq!(pm.labels[labels::WARM_POOL_SANDBOX], name_hash("pool"));
        assert_eq!(
            pm.labels[labels::SANDBOX_TEMPLATE_HASH],
            blueprint_hash(&tpl)
        );
        assert_eq!(pm.annotations[annotations::SAFE_TO_EVICT], "true");
        assert_eq!(
            sb.spec.pod_template.spec.automount_service_account_token,
            Some(false)
        );
        assert_eq!(
            sb.spec.pod_template.spec.dns_policy.as_deref(),
            Some("None")
        );
        // No eviction stamp when disabled, and a template value is kept.
        let sb = build_pool_sandbox(&pool(), &tpl, false);
        assert!(
            !sb.spec
                .pod_template
                .metadata
                .annotations
                .contains_key(annotations::SAFE_TO_EVICT)
        );
        let mut t2 = template("tpl");
        t2.spec
            .pod_template
            .metadata
            .annotations
            .insert(annotations::SAFE_TO_EVICT.into(), "false".into());
        let sb = build_pool_sandbox(&pool(), &t2, true);
        assert_eq!(
            sb.spec.pod_template.metadata.annotations[annotations::SAFE_TO_EVICT],
            "false"
        );
    }

    fn member(tpl: &SandboxTemplate) -> Sandbox {
        let mut sb = build_pool_sandbox(&pool(), tpl, true);
        sb.metadata.name = Some("pool-abcde".into());
        sb
    }

    #[test]
    fn staleness_needs_more_than_a_hash_mismatch() {
        let tpl = template("tpl");
        let mut sb = member(&tpl);
        let mut c = StaleChecker::new(&tpl);
        assert!(!c.is_stale(&sb, false));
        // A different hash value with an identical blueprint: not stale (no mass recreation).
        sb.labels_mut()
            .insert(labels::SANDBOX_TEMPLATE_HASH.into(), "deadbeef".into());
        assert!(!c.is_stale(&sb, false));
        // Metadata-only template changes never make a member stale.
        let mut t2 = template("tpl");
        t2.spec
            .pod_template
            .metadata
            .labels
            .insert("new".into(), "x".into());
        let mut c2 = StaleChecker::new(&t2);
        assert!(!c2.is_stale(&member(&tpl), false));
        // A spec change does.
        let mut t3 = template("tpl");
        t3.spec.pod_template.spec.containers[0].env = Some(vec![EnvVar {
            name: "TEST_ENV".into(),
            value: Some("updated".into()),
            ..Default::default()
        }]);
        let mut c3 = StaleChecker::new(&t3);
        assert!(c3.is_stale(&member(&tpl), false));
        assert!(c3.is_stale(&member(&tpl), true));
        // A different template (ref hash) is stale even with an identical spec.
        let tb = template("template-b");
        let mut cb = StaleChecker::new(&tb);
        assert!(cb.is_stale(&member(&tpl), false));
    }

    #[test]
    fn blueprint_compares_vcts_by_index_and_service() {
        let mut tpl = template("tpl");
        let mut v = PersistentVolumeClaimTemplate::default();
        v.metadata.name = "data".into();
        tpl.spec.volume_claim_templates = vec![v.clone()];
        let sb = member(&tpl);
        assert!(blueprint_matches(&tpl, &sb.spec));
        let mut t2 = tpl.clone();
        t2.spec.volume_claim_templates[0]
            .metadata
            .labels
            .insert("x".into(), "y".into());
        assert!(blueprint_matches(&t2, &sb.spec), "VCT metadata is ignored");
        t2.spec.volume_claim_templates[0].metadata.name = "other".into();
        assert!(!blueprint_matches(&t2, &sb.spec));
        let mut t3 = tpl.clone();
        t3.spec.service = Some(true);
        assert!(!blueprint_matches(&t3, &sb.spec));
    }

    fn aged(name: &str, secs: i64, ready: bool) -> Sandbox {
        let mut sb = Sandbox::new(name, SandboxSpec::default());
        sb.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        if ready {
            sb.status = Some(agent_sandbox_api::v1beta1::SandboxStatus {
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "DependenciesReady".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(Timestamp::from_second(secs).unwrap()),
                }],
                ..Default::default()
            });
        }
        sb
    }

    #[test]
    fn scale_down_unready_then_newest() {
        let (a, b, c, d) = (
            aged("a", 1, true),
            aged("b", 2, false),
            aged("c", 3, true),
            aged("d", 4, false),
        );
        let mut v = vec![&a, &b, &c, &d];
        scale_down_order(&mut v);
        let names: Vec<_> = v.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["d", "b", "c", "a"]);
    }

    #[test]
    fn slow_start() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(25).iter().sum::<usize>(), 25);
        assert_eq!(
            pool_selector("pool"),
            format!("agents.x-k8s.io/warm-pool-sandbox={}", name_hash("pool"))
        );
    }
}
