//! Integration tests of the api crate: example manifests parse strictly and round-trip through
//! conversion without loss, bad input is rejected naming the field, the CRDs are structural and
//! match the committed copies, and the CEL rule and ConversionReview handler behave as upstream.

use std::path::{Path, PathBuf};

use agent_sandbox_api::constants::annotations;
use agent_sandbox_api::conversion::{self, ConversionError};
use agent_sandbox_api::manifest::{self, ManifestError, Object};
use agent_sandbox_api::schema::{Admission, AdmitError};
use agent_sandbox_api::{crd, v1beta1};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(rel: &str) -> String {
    fs_err::read_to_string(repo_root().join("examples/manifests").join(rel)).unwrap()
}

fn parse_one(text: &str) -> Object {
    let mut objects = manifest::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objects.len(), 1);
    objects.remove(0)
}

/// Sorts keys and drops null, empty arrays and empty objects (Go `omitempty`), so that two
/// serialisations of the same object compare byte for byte.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                let n = normalise(&m[k]);
                let empty = matches!(&n, Value::Null)
                    || matches!(&n, Value::Array(a) if a.is_empty())
                    || matches!(&n, Value::Object(o) if o.is_empty());
                if !empty {
                    out.insert(k.clone(), n);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

fn bytes(v: &Value) -> String {
    serde_json::to_string(&normalise(v)).unwrap()
}

const V1ALPHA1_EXAMPLES: &[&str] = &[
    "v1alpha1/sandbox.yaml",
    "v1alpha1/sandbox-default-replicas.yaml",
    "v1alpha1/template.yaml",
    "v1alpha1/warmpool.yaml",
    "v1alpha1/claim-specific-pool.yaml",
    "v1alpha1/claim-warm-start.yaml",
    "v1alpha1/claim-cold.yaml",
];

#[test]
fn every_example_parses_strictly() {
    for rel in [
        "sandbox.yaml",
        "template.yaml",
        "warmpool.yaml",
        "claim.yaml",
    ]
    .iter()
    .chain(V1ALPHA1_EXAMPLES)
    {
        let objects = manifest::parse(&example(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(objects.len(), 1, "{rel}");
    }
}

#[test]
fn v1alpha1_round_trips_through_v1beta1_without_loss() {
    for rel in V1ALPHA1_EXAMPLES {
        let original = parse_one(&example(rel)).to_json();
        let up = conversion::convert(original.clone(), &storage_version_of(&original)).unwrap();
        assert!(
            up["apiVersion"].as_str().unwrap().ends_with("/v1beta1"),
            "{rel}"
        );
        // The up-converted object is a valid v1beta1 object.
        manifest::parse_value(up.clone(), 1).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let down = conversion::convert(up, original["apiVersion"].as_str().unwrap()).unwrap();
        assert_eq!(bytes(&down), bytes(&original), "{rel}");
    }
}

fn storage_version_of(v: &Value) -> String {
    let api_version = v["apiVersion"].as_str().unwrap();
    format!("{}/v1beta1", api_version.split_once('/').unwrap().0)
}

#[test]
fn v1beta1_examples_round_trip_through_v1alpha1() {
    // Sandbox, template and pool are lossless this way too. (A claim's volumeClaimTemplates and
    // a Sandbox's status.nodeName have no v1alpha1 form; the examples set neither.)
    for rel in [
        "sandbox.yaml",
        "template.yaml",
        "warmpool.yaml",
        "claim.yaml",
    ] {
        let original = parse_one(&example(rel)).to_json();
        let group = original["apiVersion"]
            .as_str()
            .unwrap()
            .split_once('/')
            .unwrap()
            .0
            .to_owned();
        let down = conversion::convert(original.clone(), &format!("{group}/v1alpha1")).unwrap();
        manifest::parse_value(down.clone(), 1).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let up = conversion::convert(down, &format!("{group}/v1beta1")).unwrap();
        let mut up = normalise(&up);
        // Going up always records the v1alpha1 state; that is the only addition.
        let state_keys = [
            annotations::V1ALPHA1_SANDBOX_STATE,
            annotations::V1ALPHA1_SANDBOXTEMPLATE_STATE,
            annotations::V1ALPHA1_SANDBOXCLAIM_STATE,
            annotations::V1ALPHA1_SANDBOXWARMPOOL_STATE,
        ];
        if let Some(a) = up
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.retain(|k, _| !state_keys.contains(&k.as_str()));
        }
        assert_eq!(bytes(&up), bytes(&original), "{rel}");
    }
}

#[test]
fn sandbox_replicas_map_to_operating_mode() {
    let suspended = parse_one(&example("v1alpha1/sandbox.yaml")).to_json();
    let up = conversion::convert(suspended, "agents.x-k8s.io/v1beta1").unwrap();
    assert_eq!(up["spec"]["operatingMode"], "Suspended");
    assert!(up["metadata"]["annotations"][annotations::V1ALPHA1_SANDBOX_STATE].is_string());

    let running = parse_one(&example("v1alpha1/sandbox-default-replicas.yaml")).to_json();
    let mut up = conversion::convert(running, "agents.x-k8s.io/v1beta1").unwrap();
    assert_eq!(up["spec"]["operatingMode"], "Running");
    assert_eq!(up["status"].get("nodeName"), None);
    // Suspending through v1beta1 reads back as replicas 0, whatever the stashed state says.
    up["spec"]["operatingMode"] = json!("Suspended");
    let down = conversion::convert(up, "agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["spec"]["replicas"], 0);
    assert_eq!(
        down["metadata"]["annotations"].get(annotations::V1ALPHA1_SANDBOX_STATE),
        None
    );
}

#[test]
fn v1beta1_only_fields_are_dropped_going_down() {
    let mut sandbox = parse_one(&example("sandbox.yaml")).to_json();
    sandbox["status"] = json!({"nodeName": "node-a", "podIPs": ["10.0.0.1"]});
    let down = conversion::convert(sandbox, "agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["status"].get("nodeName"), None);
    assert_eq!(down["status"]["replicas"], 1);
    assert_eq!(down["spec"]["replicas"], 1);
}

#[test]
fn claim_warm_pool_ref_derivation() {
    let cases = [
        ("v1alpha1/claim-specific-pool.yaml", "legacy-pool"),
        ("v1alpha1/claim-warm-start.yaml", "legacy-pool"),
        ("v1alpha1/claim-cold.yaml", "shadow-pool-legacy-python"),
    ];
    for (rel, pool) in cases {
        let claim = parse_one(&example(rel)).to_json();
        let up = conversion::convert(claim, "extensions.agents.x-k8s.io/v1beta1").unwrap();
        assert_eq!(up["spec"]["warmPoolRef"]["name"], pool, "{rel}");
    }
}

#[test]
fn claim_down_without_state_uses_the_pool_name() {
    let claim = parse_one(&example("claim.yaml")).to_json();
    let down = conversion::convert(claim, "extensions.agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["spec"]["sandboxTemplateRef"]["name"], "python-pool");
    assert_eq!(down["spec"]["warmpool"], "python-pool");

    let mut shadow = parse_one(&example("claim.yaml")).to_json();
    shadow["spec"]["warmPoolRef"]["name"] = json!("shadow-pool-python");
    let down = conversion::convert(shadow, "extensions.agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["spec"]["sandboxTemplateRef"]["name"], "python");
    assert_eq!(down["spec"]["warmpool"], "default");
}

#[test]
fn claim_repointed_to_another_pool_keeps_template_and_takes_the_pool() {
    let claim = parse_one(&example("v1alpha1/claim-specific-pool.yaml")).to_json();
    let mut up = conversion::convert(claim, "extensions.agents.x-k8s.io/v1beta1").unwrap();
    up["spec"]["warmPoolRef"]["name"] = json!("other-pool");
    let down = conversion::convert(up, "extensions.agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["spec"]["warmpool"], "other-pool");
    assert_eq!(down["spec"]["sandboxTemplateRef"]["name"], "legacy-python");
}

#[test]
fn template_vct_policy_is_stashed_and_restored() {
    let template = parse_one(&example("template.yaml")).to_json();
    let down = conversion::convert(template, "extensions.agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(
        down["metadata"]["annotations"][annotations::V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY],
        "Overrides"
    );
    let up = conversion::convert(down, "extensions.agents.x-k8s.io/v1beta1").unwrap();
    assert_eq!(up["spec"]["volumeClaimTemplatesPolicy"], "Overrides");
    assert_eq!(
        up["metadata"]["annotations"].get(annotations::V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY),
        None
    );
}

#[test]
fn template_with_a_bad_stashed_policy_fails_conversion() {
    let mut template = parse_one(&example("v1alpha1/template.yaml")).to_json();
    template["metadata"]["annotations"] =
        json!({annotations::V1BETA1_VOLUME_CLAIM_TEMPLATES_POLICY: "Sometimes"});
    let err = conversion::convert(template, "extensions.agents.x-k8s.io/v1beta1").unwrap_err();
    assert!(matches!(
        err,
        ConversionError::InvalidVctPolicyAnnotation(_)
    ));
    assert_eq!(
        err.to_string(),
        "invalid VolumeClaimTemplatesPolicy annotation value: \"Sometimes\""
    );
}

#[test]
fn warm_pool_nil_replicas_go_down_as_one() {
    let mut pool = parse_one(&example("warmpool.yaml")).to_json();
    pool["spec"].as_object_mut().unwrap().remove("replicas");
    pool["status"] = json!({"observedGeneration": 4, "replicas": 1});
    let down = conversion::convert(pool, "extensions.agents.x-k8s.io/v1alpha1").unwrap();
    assert_eq!(down["spec"]["replicas"], 1);
    assert_eq!(down["status"].get("observedGeneration"), None);
}

#[test]
fn conversion_of_unknown_kinds_is_refused() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let err = conversion::convert(pod, "v2").unwrap_err();
    assert!(
        err.to_string().contains("cannot convert Pod from v1 to v2"),
        "{err}"
    );
    let no_kind = json!({"apiVersion": "agents.x-k8s.io/v1alpha1"});
    assert!(matches!(
        conversion::convert(no_kind, "agents.x-k8s.io/v1beta1"),
        Err(ConversionError::MissingTypeField("kind"))
    ));
}

#[test]
fn conversion_review_converts_every_object() {
    let sandbox = parse_one(&example("v1alpha1/sandbox.yaml")).to_json();
    let pool = parse_one(&example("v1alpha1/warmpool.yaml")).to_json();
    let review: kube::core::conversion::ConversionReview = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "desiredAPIVersion": "agents.x-k8s.io/v1beta1",
            "objects": [sandbox]
        }
    }))
    .unwrap();
    let out = serde_json::to_value(conversion::review(review)).unwrap();
    assert_eq!(
        out["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(out["response"]["result"]["status"], "Success");
    assert_eq!(
        out["response"]["convertedObjects"][0]["spec"]["operatingMode"],
        "Suspended"
    );

    // A Sandbox group request carrying a pool fails the whole review with a message.
    let review = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": "u2", "desiredAPIVersion": "agents.x-k8s.io/v1beta1", "objects": [pool]}
    }))
    .unwrap();
    let out = serde_json::to_value(conversion::review(review)).unwrap();
    assert_eq!(out["response"]["uid"], "u2");
    assert_eq!(out["response"]["result"]["status"], "Failure");
    assert!(
        out["response"]["result"]["message"]
            .as_str()
            .unwrap()
            .contains("SandboxWarmPool")
    );
}

fn parse_err(text: &str) -> String {
    manifest::parse(text)
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn unknown_fields_are_rejected_naming_the_field() {
    let text = example("sandbox.yaml")
        .replace("image: localhost", "imagee: x\n          image: localhost");
    let err = parse_err(&text);
    assert!(
        err.contains("unknown field \"spec.podTemplate.spec.containers[0].imagee\""),
        "{err}"
    );
    let err = parse_err(&example("claim.yaml").replace("spec:\n", "spec:\n  warmpool: x\n"));
    assert!(err.contains("unknown field \"spec.warmpool\""), "{err}");
}

#[test]
fn bad_input_names_the_field_and_the_allowed_values() {
    let err = parse_err(
        "apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {name: a\nspec: [",
    );
    assert!(
        err.starts_with("document 1: not valid YAML or JSON"),
        "{err}"
    );

    let err = parse_err(
        &example("sandbox.yaml").replace("agents.x-k8s.io/v1beta1", "agents.x-k8s.io/v2"),
    );
    assert!(
        err.contains("has no version \"v2\"; served versions are v1beta1, v1alpha1"),
        "{err}"
    );

    let err =
        parse_err("apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandboxx\nmetadata: {name: a}\n");
    assert!(
        err.contains("Sandboxx \"agents.x-k8s.io/v1beta1\" is not an agent-sandbox kind"),
        "{err}"
    );

    let err = parse_err(
        "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxClaim\nmetadata: {name: c}\nspec: {}\n",
    );
    assert_eq!(
        err,
        "document 1: SandboxClaim.extensions.agents.x-k8s.io \"c\" is invalid: spec.warmPoolRef: Required value"
    );

    let err = parse_err(
        &example("v1alpha1/sandbox.yaml")
            .replace("replicas: 0\n  service", "replicas: 2\n  service"),
    );
    assert!(err.contains("spec.replicas: Invalid value: 2: spec.replicas in body should be less than or equal to 1"), "{err}");

    let err = parse_err(
        &example("sandbox.yaml").replace("shutdownPolicy: Delete", "operatingMode: Paused"),
    );
    assert!(err.contains("spec.operatingMode: Unsupported value: \"Paused\": supported values: \"Running\", \"Suspended\""), "{err}");

    let err = parse_err(&example("warmpool.yaml").replace("replicas: 3", "replicas: three"));
    assert!(err.contains("spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""), "{err}");

    let err = parse_err(&example("claim.yaml").replace("\"2030-01-01T00:00:00Z\"", "tomorrow"));
    assert!(
        err.contains("spec.lifecycle.shutdownTime: Invalid value: \"tomorrow\""),
        "{err}"
    );

    // Several errors at once are all reported.
    let err = parse_err(
        "apiVersion: extensions.agents.x-k8s.io/v1alpha1\nkind: SandboxWarmPool\nmetadata: {name: p}\nspec: {updateStrategy: {type: Sometimes}}\n",
    );
    assert!(err.contains("spec.replicas: Required value") && err.contains("spec.sandboxTemplateRef: Required value") && err.contains("spec.updateStrategy.type: Unsupported value: \"Sometimes\": supported values: \"Recreate\", \"OnReplenish\""), "{err}");
    assert!(matches!(
        manifest::parse("kind: Sandbox\n"),
        Err(ManifestError::NotAnObject { .. })
    ));
}

#[test]
fn defaults_are_applied() {
    let Object::SandboxWarmPool(pool) = parse_one(
        "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxWarmPool\nmetadata: {name: p}\nspec: {sandboxTemplateRef: {name: t}, updateStrategy: {}}\n",
    ) else {
        panic!("not a pool")
    };
    assert_eq!(pool.spec.replicas, Some(1));
    assert_eq!(
        pool.spec.update_strategy.unwrap().type_,
        Some(v1beta1::UpdateStrategyType::OnReplenish)
    );
    let Object::Sandbox(sb) = parse_one(&example("sandbox.yaml")) else {
        panic!("not a sandbox")
    };
    assert_eq!(
        sb.spec.operating_mode,
        Some(v1beta1::OperatingMode::Running)
    );
    let port = &sb.spec.pod_template.spec.containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
}

#[test]
fn duplicate_container_names_are_rejected() {
    let text = example("sandbox.yaml").replace(
        "      containers:\n",
        "      containers:\n        - name: main\n          image: busybox\n",
    );
    let err = parse_err(&text);
    assert!(
        err.contains("spec.podTemplate.spec.containers[1]: Duplicate value: {\"name\":\"main\"}"),
        "{err}"
    );
}

fn sandbox_with_vcts(vcts: Option<Value>) -> Value {
    let mut s = parse_one(&example("sandbox.yaml")).to_json();
    match vcts {
        Some(v) => s["spec"]["volumeClaimTemplates"] = v,
        None => {
            s["spec"]
                .as_object_mut()
                .unwrap()
                .remove("volumeClaimTemplates");
        }
    }
    s
}

#[test]
fn volume_claim_templates_are_immutable() {
    let admission = Admission::new(&crd::sandbox());
    let vct = |name: &str| json!([{"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"]}}]);
    let cases = [
        (Some(vct("a")), Some(vct("b")), false),
        (None, Some(vct("a")), false),
        (Some(vct("a")), None, false),
        (Some(vct("a")), Some(vct("a")), true),
        (None, None, true),
    ];
    for (old, new, ok) in cases {
        let old = sandbox_with_vcts(old);
        let mut new = sandbox_with_vcts(new);
        let result = admission.admit("v1beta1", &mut new, Some(&old));
        match (ok, result) {
            (true, Ok(_)) => {}
            (false, Err(AdmitError::Invalid(errors))) => {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.to_string().contains("volumeClaimTemplates is immutable")),
                    "{errors:?}"
                );
            }
            (ok, other) => panic!("expected ok={ok}, got {other:?}"),
        }
    }
    // v1alpha1 has no such rule.
    let alpha = Admission::new(&crd::sandbox());
    let mut obj = parse_one(&example("v1alpha1/sandbox.yaml")).to_json();
    let old = obj.clone();
    obj["spec"]
        .as_object_mut()
        .unwrap()
        .remove("volumeClaimTemplates");
    assert!(alpha.admit("v1alpha1", &mut obj, Some(&old)).is_ok());
}

#[test]
fn unknown_fields_are_pruned_and_reported_by_admission() {
    let admission = Admission::new(&crd::sandbox_claim());
    let mut obj = json!({
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
        "metadata": {"name": "c", "labels": {"a": "b"}},
        "spec": {"warmPoolRef": {"name": "p", "extra": 1}, "bogus": true, "env": null}
    });
    let admitted = admission.admit("v1beta1", &mut obj, None).unwrap();
    assert_eq!(
        admitted.unknown_fields,
        ["spec.bogus", "spec.warmPoolRef.extra"]
    );
    assert_eq!(obj["spec"], json!({"warmPoolRef": {"name": "p"}}));
    assert_eq!(obj["metadata"]["labels"]["a"], "b");
}

#[test]
fn updates_revalidate_only_what_changed() {
    let admission = Admission::new(&crd::sandbox_claim());
    // Stored before a schema change made it invalid: a number where a string belongs.
    let old = json!({
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
        "metadata": {"name": "c"},
        "spec": {"warmPoolRef": {"name": 7}},
    });
    // A status write leaves the spec alone: it is not walked again.
    let mut status_write = old.clone();
    status_write["status"] = json!({"conditions": []});
    assert!(
        admission
            .admit("v1beta1", &mut status_write, Some(&old))
            .is_ok()
    );
    // A changed field is walked: pruned, defaulted and validated.
    let mut spec_write = old.clone();
    spec_write["spec"]["warmPoolRef"] = json!({"name": 8, "extra": 1});
    match admission.admit("v1beta1", &mut spec_write, Some(&old)) {
        Err(AdmitError::Invalid(errors)) => assert!(
            errors.iter().any(|e| e.field == "spec.warmPoolRef.name"),
            "{errors:?}"
        ),
        other => panic!("expected the changed field to be refused, got {other:?}"),
    }
    // Without an old object (a create) everything is walked.
    let mut create = old.clone();
    assert!(admission.admit("v1beta1", &mut create, None).is_err());
}

// ---- CRDs ----

fn walk(schema: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, &format!("{path}.{k}"), visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        walk(add, &format!("{path}{{}}"), visit);
    }
}

#[test]
fn crds_are_structural() {
    for c in crd::all() {
        for v in &c.spec.versions {
            let schema = serde_json::to_value(
                v.schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            walk(&schema, "", &mut |path, s| {
                let typed = s.get("type").is_some()
                    || s.get("x-kubernetes-int-or-string") == Some(&json!(true));
                assert!(
                    typed,
                    "{} {}: {path} has no type",
                    c.metadata.name.as_deref().unwrap(),
                    v.name
                );
                assert!(
                    s.get("x-kubernetes-preserve-unknown-fields").is_none(),
                    "{path}: upstream preserves no unknown fields"
                );
                for k in ["$ref", "oneOf", "allOf", "nullable"] {
                    assert!(s.get(k).is_none(), "{path} has {k}");
                }
            });
        }
    }
}

#[test]
fn crds_match_upstream_shape() {
    let mut crds = crd::all();
    let own = crds.pop().unwrap();
    assert_eq!(
        own.metadata.name.as_deref(),
        Some("sandboxsnapshots.agent-sandbox-rs.github.io"),
        "this project's own kinds come after upstream's"
    );
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sandboxes.agents.x-k8s.io",
            "sandboxclaims.extensions.agents.x-k8s.io",
            "sandboxtemplates.extensions.agents.x-k8s.io",
            "sandboxwarmpools.extensions.agents.x-k8s.io",
        ]
    );
    let short: Vec<_> = crds
        .iter()
        .map(|c| c.spec.names.short_names.clone().unwrap())
        .collect();
    assert_eq!(
        short,
        [
            vec!["sandbox"],
            vec!["sandboxclaim"],
            vec!["sandboxtemplate"],
            vec!["swp"]
        ]
    );
    for c in &crds {
        let versions: Vec<_> = c
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage, v.served))
            .collect();
        assert_eq!(
            versions,
            [("v1beta1", true, true), ("v1alpha1", false, true)]
        );
        let alpha = &c.spec.versions[1];
        assert_eq!(alpha.deprecated, Some(true));
        let warning = alpha.deprecation_warning.clone().unwrap();
        assert!(
            warning.ends_with(&format!(
                "use {}/v1beta1 {} instead",
                c.spec.group, c.spec.names.kind
            )),
            "{warning}"
        );
        let conv = serde_json::to_value(&c.spec.conversion).unwrap();
        assert_eq!(
            conv,
            json!({"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": {"service": {"name": "agent-sandbox-webhook-service", "namespace": "agent-sandbox-system", "path": "/convert"}}}})
        );
    }
    let columns = |c: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, i: usize| {
        c.spec.versions[i].additional_printer_columns.clone().unwrap_or_default().iter()
            .map(|p| format!("{}:{}:{}", p.name, p.type_, p.json_path)).collect::<Vec<_>>()
    };
    let ready = ":string:.status.conditions[?(@.type=='Ready')].";
    assert_eq!(
        columns(&crds[0], 0),
        [
            format!("Ready{ready}status"),
            format!("Reason{ready}reason"),
            "Age:date:.metadata.creationTimestamp".into()
        ]
    );
    assert!(columns(&crds[0], 1).is_empty());
    assert_eq!(
        columns(&crds[1], 0),
        [
            format!("Ready{ready}status"),
            "Sandbox:string:.status.sandbox.name".into(),
            format!("Reason{ready}reason"),
            "Age:date:.metadata.creationTimestamp".into()
        ]
    );
    assert!(columns(&crds[2], 0).is_empty());
    for i in 0..2 {
        assert_eq!(
            columns(&crds[3], i),
            [
                "Ready:integer:.status.readyReplicas",
                "Desired:integer:.spec.replicas",
                "Age:date:.metadata.creationTimestamp"
            ]
        );
    }
    let subresources = |c: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, i: usize| {
        serde_json::to_value(&c.spec.versions[i].subresources).unwrap()
    };
    let scale = json!({"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"});
    assert_eq!(subresources(&crds[0], 0), json!({"status": {}}));
    assert_eq!(
        subresources(&crds[0], 1),
        json!({"status": {}, "scale": scale})
    );
    assert_eq!(subresources(&crds[1], 0), json!({"status": {}}));
    assert_eq!(subresources(&crds[2], 0), Value::Null);
    assert_eq!(
        subresources(&crds[3], 0),
        json!({"status": {}, "scale": scale})
    );
}

#[test]
fn crd_defaults_and_enums() {
    let schema = |c: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, v: usize| {
        serde_json::to_value(c.spec.versions[v].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
    };
    let sb = schema(&crd::sandbox(), 0);
    let spec = &sb["properties"]["spec"]["properties"];
    assert_eq!(spec["operatingMode"]["default"], "Running");
    assert_eq!(
        spec["operatingMode"]["enum"],
        json!(["Running", "Suspended"])
    );
    assert_eq!(spec["shutdownPolicy"]["default"], "Retain");
    assert_eq!(spec["shutdownPolicy"]["enum"], json!(["Delete", "Retain"]));
    assert_eq!(spec["shutdownTime"]["format"], "date-time");
    assert_eq!(
        spec["volumeClaimTemplates"]["x-kubernetes-list-type"],
        "atomic"
    );
    let containers = &spec["podTemplate"]["properties"]["spec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    assert_eq!(
        containers["items"]["properties"]["ports"]["x-kubernetes-list-map-keys"],
        json!(["containerPort", "protocol"])
    );
    let alpha = schema(&crd::sandbox(), 1);
    let replicas = &alpha["properties"]["spec"]["properties"]["replicas"];
    assert_eq!(
        (
            replicas["minimum"].as_f64(),
            replicas["maximum"].as_f64(),
            &replicas["default"]
        ),
        (Some(0.0), Some(1.0), &json!(1))
    );

    let t = schema(&crd::sandbox_template(), 0);
    let tspec = &t["properties"]["spec"]["properties"];
    assert_eq!(tspec["networkPolicyManagement"]["default"], "Managed");
    assert_eq!(
        tspec["networkPolicyManagement"]["enum"],
        json!(["Managed", "Unmanaged"])
    );
    assert_eq!(
        tspec["envVarsInjectionPolicy"]["enum"],
        json!(["Allowed", "Overrides", "Disallowed"])
    );
    assert_eq!(tspec["volumeClaimTemplatesPolicy"]["default"], "Disallowed");
    assert!(
        schema(&crd::sandbox_template(), 1)["properties"]["spec"]["properties"]
            .get("volumeClaimTemplatesPolicy")
            .is_none()
    );

    let c = schema(&crd::sandbox_claim(), 0);
    let lifecycle = &c["properties"]["spec"]["properties"]["lifecycle"]["properties"];
    assert_eq!(
        lifecycle["shutdownPolicy"]["enum"],
        json!(["Delete", "DeleteForeground", "Retain"])
    );
    assert_eq!(
        lifecycle["ttlSecondsAfterFinished"]["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(c["properties"]["spec"]["required"], json!(["warmPoolRef"]));
    let ca = schema(&crd::sandbox_claim(), 1);
    assert_eq!(
        ca["properties"]["spec"]["properties"]["warmpool"]["default"],
        "default"
    );

    let p = schema(&crd::sandbox_warm_pool(), 0);
    let pspec = &p["properties"]["spec"]["properties"];
    assert_eq!(pspec["replicas"]["default"], 1);
    assert_eq!(
        pspec["updateStrategy"]["properties"]["type"]["enum"],
        json!(["Recreate", "OnReplenish"])
    );
    assert_eq!(
        pspec["updateStrategy"]["properties"]["type"]["default"],
        "OnReplenish"
    );
    let pa = schema(&crd::sandbox_warm_pool(), 1);
    assert_eq!(
        pa["properties"]["spec"]["required"],
        json!(["replicas", "sandboxTemplateRef"])
    );
    assert!(
        pa["properties"]["status"]["properties"]
            .get("observedGeneration")
            .is_none()
    );
}

#[test]
fn committed_crds_are_up_to_date() {
    for c in crd::all() {
        let path = repo_root().join("deploy/crds").join(crd::file_name(&c));
        let committed = fs_err::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd::to_yaml(std::slice::from_ref(&c)).unwrap(),
            "{} is out of date: run `agent-sandbox crd --output-dir deploy/crds`",
            path.display()
        );
    }
}

/// The causes kube-apiserver 1.36.3 gives for the same objects (checked against it): an
/// object's own `required` errors after its properties' errors, and a cause saying the CEL rules
/// were not run once a blocking error was found.
#[test]
fn causes_come_in_kube_apiservers_order() {
    let message = |crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
                   mut obj: serde_json::Value| {
        match Admission::new(crd).admit("v1beta1", &mut obj, None) {
            Err(e) => e.to_string(),
            Ok(_) => "admitted".into(),
        }
    };
    let claim = json!({
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
        "metadata": {"name": "c"}, "spec": {"lifecycle": {"shutdownPolicy": "Never"}}
    });
    assert_eq!(
        message(&crd::sandbox_claim(), claim),
        "[spec.lifecycle.shutdownPolicy: Unsupported value: \"Never\": supported values: \"Delete\", \"DeleteForeground\", \"Retain\", spec.warmPoolRef: Required value]"
    );
    let sandbox = json!({
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {"name": "e"}, "spec": {}
    });
    assert_eq!(
        message(&crd::sandbox(), sandbox),
        "[spec.podTemplate: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
    );
}
