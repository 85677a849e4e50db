//! The CRD schemas validate what upstream's controller-gen CRDs validate: the markers of the
//! embedded Kubernetes types sit at the right paths (list and map types, defaults, optional
//! reference names, int-or-string and Quantity forms, Condition bounds), and admission applies
//! them as kube-apiserver does (pattern refusal with its message, defaults written, integers and
//! strings both accepted where a Quantity or IntOrString is).

use agent_sandbox_api::crd::{self, QUANTITY_PATTERN};
use agent_sandbox_api::schema::{Admission, AdmitError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// The openAPIV3Schema of every version of `crd`, v1beta1 first.
fn schemas(crd: &CustomResourceDefinition) -> Vec<(String, Value)> {
    crd.spec
        .versions
        .iter()
        .map(|v| {
            let schema = v
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            (v.name.clone(), serde_json::to_value(schema).unwrap())
        })
        .collect()
}

/// The node at `path`: `.` steps into properties, `[]` into items, `{}` into
/// additionalProperties, e.g. `spec.podTemplate.spec.containers[].ports`.
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut node = schema;
    for step in path.split('.') {
        let (name, rest) = step.split_at(step.find(['[', '{']).unwrap_or(step.len()));
        if !name.is_empty() {
            node = &node["properties"][name];
        }
        for suffix in rest.as_bytes().chunks(2) {
            node = match suffix {
                b"[]" => &node["items"],
                b"{}" => &node["additionalProperties"],
                other => panic!("bad path step {:?}", String::from_utf8_lossy(other)),
            };
        }
        assert!(!node.is_null(), "no schema at {path} (stopped at {step})");
    }
    node
}

fn required(node: &Value) -> Vec<&str> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn assert_quantity(node: &Value, path: &str) {
    assert_eq!(node["x-kubernetes-int-or-string"], true, "{path}");
    assert_eq!(
        node["anyOf"],
        json!([{"type": "integer"}, {"type": "string"}]),
        "{path}"
    );
    assert_eq!(node["pattern"], QUANTITY_PATTERN, "{path}");
    assert!(node.get("type").is_none(), "{path}");
}

fn assert_conditions(schema: &Value, version: &str) {
    let c = at(schema, "status.conditions[]");
    assert_eq!(
        required(c),
        ["lastTransitionTime", "message", "reason", "status", "type"],
        "{version}"
    );
    assert_eq!(at(c, "type")["maxLength"], 316);
    assert!(
        at(c, "type")["pattern"]
            .as_str()
            .unwrap()
            .starts_with("^([a-z0-9]")
    );
    assert_eq!(at(c, "status")["enum"], json!(["True", "False", "Unknown"]));
    assert_eq!(at(c, "observedGeneration")["minimum"], 0.0);
    assert_eq!(
        at(c, "reason")["pattern"],
        "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    );
    assert_eq!(at(c, "reason")["minLength"], 1);
    assert_eq!(at(c, "reason")["maxLength"], 1024);
    assert_eq!(at(c, "message")["maxLength"], 32768);
}

/// The markers of a PodSpec, wherever a CRD embeds one (`pod` is the path of the PodSpec).
fn assert_pod_spec(schema: &Value, pod: &str) {
    let p = |rest: &str| at(schema, &format!("{pod}.{rest}"));
    for containers in ["containers", "initContainers", "ephemeralContainers"] {
        let list = p(containers);
        assert_eq!(list["x-kubernetes-list-type"], "map", "{containers}");
        assert_eq!(list["x-kubernetes-list-map-keys"], json!(["name"]));
        let c = |rest: &str| p(&format!("{containers}[].{rest}"));
        assert_eq!(c("ports")["x-kubernetes-list-type"], "map");
        assert_eq!(
            c("ports")["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        assert_eq!(c("ports[].protocol")["default"], "TCP");
        assert_eq!(required(c("ports[]")), ["containerPort"]);
        assert_eq!(c("env")["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(
            c("volumeMounts")["x-kubernetes-list-map-keys"],
            json!(["mountPath"])
        );
        for list in [
            "args",
            "command",
            "envFrom",
            "resizePolicy",
            "restartPolicyRules",
        ] {
            assert_eq!(
                c(list)["x-kubernetes-list-type"],
                "atomic",
                "{containers}.{list}"
            );
        }
        assert_quantity(c("resources.limits{}"), "limits");
        assert_quantity(c("resources.requests{}"), "requests");
        assert_eq!(
            c("resources.claims")["x-kubernetes-list-map-keys"],
            json!(["name"])
        );
        // Probes: IntOrString ports, atomic exec commands.
        let port = c("livenessProbe.httpGet.port");
        assert_eq!(port["x-kubernetes-int-or-string"], true);
        assert_eq!(
            port["anyOf"],
            json!([{"type": "integer"}, {"type": "string"}])
        );
        assert!(port.get("pattern").is_none());
        assert_eq!(
            c("readinessProbe.exec.command")["x-kubernetes-list-type"],
            "atomic"
        );
        // References by name: optional, defaulting to "", atomic.
        let secret_ref = c("env[].valueFrom.secretKeyRef");
        assert_eq!(required(secret_ref), ["key"]);
        assert_eq!(at(secret_ref, "name")["default"], "");
        assert_eq!(secret_ref["x-kubernetes-map-type"], "atomic");
        assert!(required(c("envFrom[].configMapRef")).is_empty());
        assert_eq!(
            c("env[].valueFrom.fileKeyRef")["x-kubernetes-map-type"],
            "atomic"
        );
        assert_eq!(
            c("env[].valueFrom.fieldRef")["x-kubernetes-map-type"],
            "atomic"
        );
        assert_eq!(
            c("securityContext.capabilities.add")["x-kubernetes-list-type"],
            "atomic"
        );
    }
    let pull = p("imagePullSecrets");
    assert_eq!(pull["x-kubernetes-list-type"], "map");
    assert_eq!(pull["x-kubernetes-list-map-keys"], json!(["name"]));
    assert!(required(p("imagePullSecrets[]")).is_empty());
    assert_eq!(p("imagePullSecrets[].name")["default"], "");
    assert_eq!(p("imagePullSecrets[]")["x-kubernetes-map-type"], "atomic");
    assert_eq!(p("volumes")["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(
        p("topologySpreadConstraints")["x-kubernetes-list-map-keys"],
        json!(["topologyKey", "whenUnsatisfiable"])
    );
    assert_eq!(
        p("hostAliases")["x-kubernetes-list-map-keys"],
        json!(["ip"])
    );
    assert_eq!(p("nodeSelector")["x-kubernetes-map-type"], "atomic");
    assert_eq!(p("tolerations")["x-kubernetes-list-type"], "atomic");
    assert_eq!(p("readinessGates")["x-kubernetes-list-type"], "atomic");
    assert_eq!(
        p("securityContext.supplementalGroups")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(
        p("dnsConfig.nameservers")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_quantity(p("overhead{}"), "overhead");
    let node_affinity = p("affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution");
    assert_eq!(node_affinity["x-kubernetes-map-type"], "atomic");
    assert_eq!(
        at(node_affinity, "nodeSelectorTerms")["x-kubernetes-list-type"],
        "atomic"
    );
    let term = p("affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[]");
    assert_eq!(at(term, "labelSelector")["x-kubernetes-map-type"], "atomic");
    assert_eq!(
        at(term, "labelSelector.matchExpressions")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(at(term, "namespaces")["x-kubernetes-list-type"], "atomic");
    // Volumes: plugin defaults, atomic references, the opaque metadata of ephemeral claims.
    assert_eq!(p("volumes[].rbd.pool")["default"], "rbd");
    assert_eq!(
        p("volumes[].scaleIO.storageMode")["default"],
        "ThinProvisioned"
    );
    assert_eq!(p("volumes[].azureDisk.readOnly")["default"], false);
    assert_eq!(p("volumes[].configMap")["x-kubernetes-map-type"], "atomic");
    assert_eq!(
        p("volumes[].configMap.items")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(
        p("volumes[].secret.items")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(
        p("volumes[].projected.sources")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_quantity(p("volumes[].emptyDir.sizeLimit"), "sizeLimit");
    let metadata = p("volumes[].ephemeral.volumeClaimTemplate.metadata");
    assert_eq!(metadata["type"], "object");
    assert!(metadata.get("properties").is_none());
}

/// The markers of a PersistentVolumeClaim list (a CRD's `volumeClaimTemplates`).
fn assert_claim_templates(schema: &Value, path: &str) {
    let t = at(schema, &format!("{path}[].spec"));
    assert_eq!(at(t, "accessModes")["x-kubernetes-list-type"], "atomic");
    assert_eq!(at(t, "dataSource")["x-kubernetes-map-type"], "atomic");
    assert_eq!(at(t, "selector")["x-kubernetes-map-type"], "atomic");
    assert_eq!(
        at(t, "selector.matchExpressions[].values")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_quantity(at(t, "resources.requests{}"), "requests");
}

#[test]
fn sandbox_schemas_carry_the_kubernetes_markers() {
    for (version, schema) in schemas(&crd::sandbox()) {
        assert_pod_spec(&schema, "spec.podTemplate.spec");
        assert_claim_templates(&schema, "spec.volumeClaimTemplates");
        assert_eq!(
            at(&schema, "spec.volumeClaimTemplates")["x-kubernetes-list-type"],
            "atomic"
        );
        assert_conditions(&schema, &version);
    }
}

#[test]
fn sandbox_template_schemas_carry_the_kubernetes_markers() {
    for (_, schema) in schemas(&crd::sandbox_template()) {
        assert_pod_spec(&schema, "spec.podTemplate.spec");
        assert_claim_templates(&schema, "spec.volumeClaimTemplates");
        let rule = at(&schema, "spec.networkPolicy.ingress[]");
        assert_eq!(at(rule, "from")["x-kubernetes-list-type"], "atomic");
        assert_eq!(at(rule, "ports")["x-kubernetes-list-type"], "atomic");
        assert_eq!(at(rule, "ports[].port")["x-kubernetes-int-or-string"], true);
        assert_eq!(
            at(rule, "from[].podSelector")["x-kubernetes-map-type"],
            "atomic"
        );
        let egress = at(&schema, "spec.networkPolicy.egress[]");
        assert_eq!(
            at(egress, "to[].ipBlock.except")["x-kubernetes-list-type"],
            "atomic"
        );
    }
    let (_, beta) = &schemas(&crd::sandbox_template())[0];
    assert_eq!(
        at(beta, "spec.volumeClaimTemplatesPolicy")["enum"],
        json!(["Disallowed", "Allowed", "Overrides"])
    );
}

#[test]
fn claim_and_warm_pool_schemas_carry_the_kubernetes_markers() {
    for (version, schema) in schemas(&crd::sandbox_claim()) {
        assert_conditions(&schema, &version);
        if version == "v1beta1" {
            assert_claim_templates(&schema, "spec.volumeClaimTemplates");
            assert_eq!(at(&schema, "spec.env")["x-kubernetes-list-type"], "atomic");
        }
    }
    for (_, schema) in schemas(&crd::sandbox_warm_pool()) {
        assert_eq!(at(&schema, "spec.replicas")["minimum"], 0.0);
        assert_eq!(required(at(&schema, "spec.sandboxTemplateRef")), ["name"]);
    }
}

// ---- admission ----

fn sandbox(container: Value) -> Value {
    json!({
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"podTemplate": {"spec": {"containers": [container]}}}
    })
}

fn admit(obj: &mut Value) -> Result<(), String> {
    match Admission::new(&crd::sandbox()).admit("v1beta1", obj, None) {
        Ok(_) => Ok(()),
        Err(AdmitError::Invalid(errors)) => Err(agent_sandbox_api::schema::join_errors(&errors)),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_bad_quantity_is_refused_as_kube_apiserver_refuses_it() {
    let mut obj = sandbox(json!({
        "name": "main", "image": "busybox",
        "resources": {"limits": {"cpu": "lots"}}
    }));
    let path = "spec.podTemplate.spec.containers[0].resources.limits.cpu";
    assert_eq!(
        admit(&mut obj).unwrap_err(),
        format!(
            "{path}: Invalid value: \"lots\": {path} in body should match '{QUANTITY_PATTERN}'"
        )
    );
}

#[test]
fn quantities_and_int_or_strings_take_integers_and_strings() {
    for cpu in [
        json!(2),
        json!("500m"),
        json!("1.5"),
        json!("1e3"),
        json!("-2Ki"),
    ] {
        let mut obj = sandbox(json!({
            "name": "main", "image": "busybox",
            "resources": {"limits": {"cpu": cpu, "memory": "1Gi"}},
            "livenessProbe": {"httpGet": {"port": "http"}},
            "readinessProbe": {"httpGet": {"port": 8080}}
        }));
        admit(&mut obj).unwrap();
    }
    let mut obj = sandbox(json!({
        "name": "main", "image": "busybox",
        "resources": {"limits": {"cpu": 1.5}}
    }));
    assert!(
        admit(&mut obj)
            .unwrap_err()
            .contains("must be of type integer or string")
    );
}

#[test]
fn defaults_of_the_kubernetes_types_are_written() {
    let mut obj = sandbox(json!({
        "name": "main", "image": "busybox",
        "ports": [{"containerPort": 8080}],
        "envFrom": [{"secretRef": {}}]
    }));
    obj["spec"]["podTemplate"]["spec"]["imagePullSecrets"] = json!([{}]);
    admit(&mut obj).unwrap();
    let pod = &obj["spec"]["podTemplate"]["spec"];
    assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(pod["containers"][0]["envFrom"][0]["secretRef"]["name"], "");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": ""}]));
}

#[test]
fn ports_are_unique_by_port_and_defaulted_protocol() {
    let mut obj = sandbox(json!({
        "name": "main", "image": "busybox",
        "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}]
    }));
    let err = admit(&mut obj).unwrap_err();
    assert!(
        err.contains("containers[0].ports[1]: Duplicate value"),
        "{err}"
    );
    let mut obj = sandbox(json!({
        "name": "main", "image": "busybox",
        "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP"}]
    }));
    admit(&mut obj).unwrap();
}

#[test]
fn condition_reasons_are_held_to_their_pattern() {
    let mut obj = sandbox(json!({"name": "main", "image": "busybox"}));
    obj["status"] = json!({"conditions": [{
        "type": "Ready", "status": "Maybe", "reason": "not camel",
        "message": "", "lastTransitionTime": "2030-01-01T00:00:00Z"
    }]});
    let err = admit(&mut obj).unwrap_err();
    assert!(
        err.contains(
            "status.conditions[0].reason: Invalid value: \"not camel\": status.conditions[0].reason in body should match '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$'"
        ),
        "{err}"
    );
    assert!(
        err.contains("status.conditions[0].status: Unsupported value: \"Maybe\""),
        "{err}"
    );
}
