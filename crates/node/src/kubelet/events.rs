//! Pod events as kubelet writes them (`events.k8s.io/v1`, served as core/v1 too): reporting
//! controller `kubelet`, the node name as instance, the Pod as the regarding object with
//! `spec.containers{name}` (or `spec.initContainers{name}`) as field path for container events,
//! and kubelet's reasons (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`,
//! `Failed`, `Unhealthy`, `FailedPostStartHook`, `FailedPreStopHook`, `DeadlineExceeded`).
//!
//! Publishing never blocks the Pod loop: events go through a bounded queue to one task that
//! writes them in order (repeats of the same event become a series, as kube-runtime's
//! recorder does); when the queue is full, events are dropped with a warning.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

/// Queue length before events are dropped.
const QUEUE: usize = 4096;

/// A handle to the event writer.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(Event, ObjectReference)>,
}

/// The object reference kubelet uses for a Pod, or one of its containers (`field_path`).
pub fn pod_ref(pod: &Pod, field_path: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: Some(
            pod.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

impl EventSink {
    /// Start the writer task for `node` (the reporting instance).
    pub fn start(client: Client, node: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kubelet".into(),
                instance: Some(node.to_string()),
            },
        );
        tokio::spawn(async move {
            while let Some((ev, reference)) = rx.recv().await {
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::debug!(target: "node::events", error = %e, reason = %ev.reason, "writing an event failed");
                }
            }
        });
        EventSink { tx }
    }

    /// Queue an event about `reference`.
    pub fn emit(&self, reference: ObjectReference, warning: bool, reason: &str, note: String) {
        // The recorder folds repeats of an event (same type, action, reason and object) into a
        // series: the note is the action, so only identical messages fold, as kubelet's do.
        let action: String = note.chars().take(128).collect();
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action,
            secondary: None,
        };
        if self.tx.try_send((ev, reference)).is_err() {
            tracing::warn!(target: "node::events", %reason, "event queue full; dropping an event");
        }
    }
}
