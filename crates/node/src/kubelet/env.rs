//! A container's process as kubelet makes it from the Pod: the environment from `envFrom`
//! (ConfigMaps and Secrets, with a prefix) and `env` (values with `$(VAR)` references, and
//! `valueFrom`: `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`), and
//! `$(VAR)` expanded in `command` and `args`. Resolved each time the container is created,
//! so a restart sees the current ConfigMap and Secret values, as with kubelet.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::refs::{DataKind, NodeFacts, Sources, Use, container_resource, pod_field};

/// A container's resolved environment and command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// Environment, in order (later entries win over earlier ones with the same name).
    pub env: Vec<(String, String)>,
    /// `command`, expanded.
    pub command: Option<Vec<String>>,
    /// `args`, expanded.
    pub args: Option<Vec<String>>,
    /// `envFrom` keys left out because they are not valid variable names, with their source
    /// (`configMap ns/name`), for a warning event.
    pub skipped: Vec<(String, Vec<String>)>,
}

/// Whether `name` may be an environment variable name: printable ASCII without `=`
/// (Kubernetes' relaxed rule).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// Expand `$(NAME)` in `input` with `lookup`, as Kubernetes does: `$$` is a literal `$`, a
/// reference to an unknown name and an unclosed `$(` stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The literal `env` entries of `c` (those with a `value`), `$(VAR)` expanded among
/// themselves: a container's environment when it names nothing to resolve.
pub fn literal(c: &Container) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten().filter(|e| e.value_from.is_none()) {
        let value = expand(e.value.as_deref().unwrap_or_default(), |n| {
            env.iter()
                .rev()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        });
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    env
}

/// The process of container `c` of `pod`: `sources` holds the ConfigMaps and Secrets it names
/// (see [`crate::refs::container_refs`]), `pod_ips` the sandbox's addresses. The error is
/// kubelet's message (`configmap "x" not found`, `couldn't find key k in Secret ns/x`).
pub fn resolve(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    pod_ips: &[String],
    node: &NodeFacts,
) -> Result<Process, String> {
    let ns = &sources.namespace;
    let mut env: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(&i) = index.get(&name) {
            env[i].1 = value;
        } else {
            index.insert(name.clone(), env.len());
            env.push((name, value));
        }
    };
    let mut skipped = Vec::new();
    for (i, f) in c.env_from.iter().flatten().enumerate() {
        let (kind, name, optional) = match (&f.config_map_ref, &f.secret_ref) {
            (Some(r), None) => (DataKind::ConfigMap, &r.name, r.optional == Some(true)),
            (None, Some(r)) => (DataKind::Secret, &r.name, r.optional == Some(true)),
            _ => {
                return Err(format!(
                    "envFrom[{i}] must name exactly one of configMapRef and secretRef"
                ));
            }
        };
        let Some(data) = sources.get(kind, name, optional)? else {
            continue;
        };
        let prefix = f.prefix.as_deref().unwrap_or_default();
        let mut invalid = Vec::new();
        for (k, v) in data {
            let var = format!("{prefix}{k}");
            if valid_name(&var) {
                set(&mut env, var, String::from_utf8_lossy(v).into_owned());
            } else {
                invalid.push(k.clone());
            }
        }
        if !invalid.is_empty() {
            let what = match kind {
                DataKind::ConfigMap => "configMap",
                DataKind::Secret => "secret",
            };
            skipped.push((format!("{what} {ns}/{name}"), invalid));
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let known: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(e.value.as_deref().unwrap_or_default(), |n| {
                    known.get(n).map(|v| v.to_string())
                })
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    pod_field(pod, f, pod_ips, Use::Env)
                        .map_err(|m| format!("env {:?}: {m}", e.name))?
                } else if let Some(r) = &from.resource_field_ref {
                    let target = r.container_name.as_deref().unwrap_or(&c.name);
                    let spec = pod.spec.clone().unwrap_or_default();
                    container_resource(&spec, target, r, node)
                        .map_err(|m| format!("env {:?}: {m}", e.name))?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match key(sources, DataKind::ConfigMap, &r.name, &r.key, optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match key(sources, DataKind::Secret, &r.name, &r.key, optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    return Err(format!(
                        "env {:?}: valueFrom needs one of fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef",
                        e.name
                    ));
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    let known: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |v: &Option<Vec<String>>| {
        v.as_ref().map(|v| {
            v.iter()
                .map(|s| expand(s, |n| known.get(n).map(|v| v.to_string())))
                .collect()
        })
    };
    let command = expand_all(&c.command);
    let args = expand_all(&c.args);
    Ok(Process {
        env,
        command,
        args,
        skipped,
    })
}

/// The value of `key` in a ConfigMap or Secret; `None` when it or the object is missing and the
/// reference is optional.
fn key(
    sources: &Sources,
    kind: DataKind,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    let Some(data) = sources.get(kind, name, optional)? else {
        return Ok(None);
    };
    match data.get(key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {} {}/{name}",
            match kind {
                DataKind::ConfigMap => "ConfigMap",
                DataKind::Secret => "Secret",
            },
            sources.namespace
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refs::Data;
    use serde_json::json;

    fn lookup(n: &str) -> Option<String> {
        match n {
            "A" => Some("1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        assert_eq!(expand("x$(A)y", lookup), "x1y");
        assert_eq!(expand("$(A)$(A)", lookup), "11");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$1");
        assert_eq!(expand("$(B)", lookup), "$(B)");
        assert_eq!(expand("$(EMPTY)-", lookup), "-");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("$A $", lookup), "$A $");
        assert_eq!(expand("ünï$(A)cödé", lookup), "ünï1cödé");
        assert_eq!(expand("", lookup), "");
    }

    fn node() -> NodeFacts {
        NodeFacts {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 1 << 40,
        }
    }

    fn pod(container: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [container]}
        }))
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    fn sources() -> Sources {
        let mut s = Sources::new("ns");
        let data = |kv: &[(&str, &str)]| -> Data {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        s.insert(
            DataKind::ConfigMap,
            "cfg",
            Some(data(&[("MODE", "fast"), ("LEVEL", "3"), ("bad=name", "x")])),
        );
        s.insert(
            DataKind::Secret,
            "creds",
            Some(data(&[("token", "s3cr3t")])),
        );
        s.insert(DataKind::Secret, "absent", None);
        s
    }

    #[test]
    fn env_from_then_env_in_order_with_references() {
        let (p, c) = pod(json!({"name": "c", "image": "i",
        "command": ["sh", "-c", "echo $(GREETING) $$(HOME)"],
        "args": ["$(MODE)", "$(UNKNOWN)"],
        "envFrom": [{"configMapRef": {"name": "cfg"}},
                    {"secretRef": {"name": "creds"}, "prefix": "S_"},
                    {"secretRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "LEVEL", "value": "override-$(LEVEL)"},
            {"name": "GREETING", "value": "hi $(NAME) in $(MODE)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
        ]}));
        let r = resolve(&p, &c, &sources(), &["10.88.0.9".into()], &node()).unwrap();
        let env: HashMap<_, _> = r.env.iter().cloned().collect();
        assert_eq!(env["MODE"], "fast");
        assert_eq!(env["LEVEL"], "override-3");
        assert_eq!(env["S_token"], "s3cr3t");
        // NAME is defined after GREETING: the reference stays as written, as in Kubernetes.
        assert_eq!(env["GREETING"], "hi $(NAME) in fast");
        assert_eq!(env["NAME"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.88.0.9");
        assert_eq!(env["TOKEN"], "s3cr3t");
        assert_eq!(env["MEM"], "1024");
        assert!(!env.contains_key("OPT"));
        assert!(!env.contains_key("bad=name"));
        assert_eq!(
            r.skipped,
            vec![("configMap ns/cfg".to_string(), vec!["bad=name".to_string()])]
        );
        // LEVEL keeps its first position.
        let order: Vec<&str> = r.env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(order.iter().position(|k| *k == "LEVEL") < order.iter().position(|k| *k == "MODE"));
        assert_eq!(
            r.command.unwrap(),
            vec!["sh", "-c", "echo hi $(NAME) in fast $(HOME)"]
        );
        assert_eq!(r.args.unwrap(), vec!["fast", "$(UNKNOWN)"]);
    }

    #[test]
    fn missing_references_give_kubelets_messages() {
        let cases = [
            (
                json!({"envFrom": [{"configMapRef": {"name": "none"}}]}),
                "configmap \"none\" not found",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}),
                "secret \"absent\" not found",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}),
                "couldn't find key k in Secret ns/creds",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap ns/cfg",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]}),
                "env \"X\": fieldPath \"spec.hostname\" is not supported here",
            ),
        ];
        for (extra, want) in cases {
            let mut c = json!({"name": "c", "image": "i"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            let (p, c) = pod(c);
            let err = resolve(&p, &c, &sources(), &[], &node()).unwrap_err();
            assert!(err.starts_with(want), "{err} vs {want}");
        }
    }
}
