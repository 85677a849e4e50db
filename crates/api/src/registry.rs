//! The four CRDs with their admission prepared once per process: what an API server serving
//! agent-sandbox needs (CRD objects, admission by CRD name, conversion), in one place.

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::crd;
use crate::schema::{Admission, AdmitError, Admitted};

/// One served CRD and its prepared admission.
pub struct Entry {
    /// The CRD.
    pub crd: CustomResourceDefinition,
    /// The CRD as JSON (as an API server lists it).
    pub json: Value,
    /// Admission against its schemas.
    pub admission: Admission,
}

/// The registry of agent-sandbox CRDs.
pub struct Registry {
    entries: Vec<Entry>,
}

/// The process-wide registry (built on first use: schema generation and CEL compilation take a
/// moment, so it is done once).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        entries: crd::all()
            .into_iter()
            .map(|crd| Entry {
                json: serde_json::to_value(&crd).expect("CRDs serialise"),
                admission: Admission::new(&crd),
                crd,
            })
            .collect(),
    })
}

impl Registry {
    /// Every entry, in [`crd::all`] order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry for a CRD name such as `sandboxes.agents.x-k8s.io`.
    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.crd.metadata.name.as_deref() == Some(name))
    }

    /// The entry serving `group`/`kind`.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.crd.spec.group == group && e.crd.spec.names.kind == kind)
    }

    /// Admits `obj` against the CRD named `crd_name` (see [`Admission::admit`]).
    pub fn admit(
        &self,
        crd_name: &str,
        version: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Option<Result<Admitted, AdmitError>> {
        self.by_name(crd_name)
            .map(|e| e.admission.admit(version, obj, old))
    }
}
