//! `pods/log` (`kubectl logs`), and what the Pod's connect subresources share: the container a
//! request names, and the refusal of a Pod that no node runs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::api::{App, Target, form_pairs};
use crate::error::{ApiError, ApiResult};

/// Streams a Pod's container log (registered by the node agent).
pub trait PodLogs: Send + Sync {
    /// Returns the log stream of `container` in `pod`; `query` holds the request's log options
    /// (`follow`, `tailLines`, `sinceSeconds`, `timestamps`, `previous`).
    fn logs(
        &self,
        pod: &Value,
        container: &str,
        query: &HashMap<String, String>,
    ) -> futures::future::BoxFuture<'static, Result<Body, String>>;
}

/// kube-apiserver's refusal of a connection to a Pod that no node runs (`pods/exec`,
/// `pods/portforward`).
pub fn require_host(pod: &Value, name: &str) -> ApiResult<()> {
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(())
}

/// The container a `pods/log` or `pods/exec` request names (or the Pod's only one), with
/// kube-apiserver's refusals: none named in a Pod with several, or a name the Pod does not have.
pub fn pod_container(pod: &Value, pod_name: &str, named: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    match named.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = containers.iter().any(|n| n == c)
                || names("initContainers").iter().any(|n| n == c)
                || names("ephemeralContainers").iter().any(|n| n == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            let init = names("initContainers");
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// `GET pods/{name}/log`: the container's log from the node agent's [`PodLogs`].
pub(super) async fn serve(app: Arc<App>, t: Target, req: Request) -> Response {
    let query = crate::query::first_values(form_pairs(req.uri().query().unwrap_or("")));
    let pod = match app.get(&t) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let container = match pod_container(
        pod.value(),
        t.name(),
        query.get("container").map(String::as_str),
    ) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let provider = app.logs.read().ok().and_then(|g| g.clone());
    let Some(provider) = provider else {
        return ApiError::bad_request(format!(
            "container {container:?} in pod {:?} is waiting to start: no node agent is serving logs on this server",
            t.name()
        ))
        .into_response();
    };
    match provider.logs(pod.value(), &container, &query).await {
        Ok(body) => {
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        Err(e) => ApiError::bad_request(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_checked_as_kube_apiserver_does() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "i"}]}});
        assert_eq!(pod_container(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(pod_container(&pod, "p", Some("i")).unwrap(), "i");
        assert_eq!(
            pod_container(&pod, "p", Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
        assert_eq!(
            pod_container(&pod, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pod_container(&one, "p", None).unwrap(), "a");
    }
}
