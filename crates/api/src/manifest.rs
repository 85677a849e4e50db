//! Parsing user manifests (YAML or JSON, one or many documents) into typed objects, with the same
//! checks a cluster applies: known apiVersion and kind, strict unknown-field rejection, schema
//! defaults and validation (see [`crate::schema`]).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::constants::{CORE_GROUP, EXTENSIONS_GROUP};
use crate::conversion::{self, ConversionError};
use crate::registry::{Entry, registry};
use crate::schema::{AdmitError, FieldError};
use crate::{v1alpha1, v1beta1};

/// A typed agent-sandbox object in the version it was written in.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// `agents.x-k8s.io/v1beta1` Sandbox.
    Sandbox(v1beta1::Sandbox),
    /// `extensions.agents.x-k8s.io/v1beta1` SandboxTemplate.
    SandboxTemplate(v1beta1::SandboxTemplate),
    /// `extensions.agents.x-k8s.io/v1beta1` SandboxClaim.
    SandboxClaim(v1beta1::SandboxClaim),
    /// `extensions.agents.x-k8s.io/v1beta1` SandboxWarmPool.
    SandboxWarmPool(v1beta1::SandboxWarmPool),
    /// `agents.x-k8s.io/v1alpha1` Sandbox.
    SandboxV1alpha1(v1alpha1::Sandbox),
    /// `extensions.agents.x-k8s.io/v1alpha1` SandboxTemplate.
    SandboxTemplateV1alpha1(v1alpha1::SandboxTemplate),
    /// `extensions.agents.x-k8s.io/v1alpha1` SandboxClaim.
    SandboxClaimV1alpha1(v1alpha1::SandboxClaim),
    /// `extensions.agents.x-k8s.io/v1alpha1` SandboxWarmPool.
    SandboxWarmPoolV1alpha1(v1alpha1::SandboxWarmPool),
}

impl Object {
    /// The object as JSON, in the version it was written in.
    pub fn to_json(&self) -> Value {
        let v = match self {
            Self::Sandbox(o) => serde_json::to_value(o),
            Self::SandboxTemplate(o) => serde_json::to_value(o),
            Self::SandboxClaim(o) => serde_json::to_value(o),
            Self::SandboxWarmPool(o) => serde_json::to_value(o),
            Self::SandboxV1alpha1(o) => serde_json::to_value(o),
            Self::SandboxTemplateV1alpha1(o) => serde_json::to_value(o),
            Self::SandboxClaimV1alpha1(o) => serde_json::to_value(o),
            Self::SandboxWarmPoolV1alpha1(o) => serde_json::to_value(o),
        };
        v.expect("API types always serialise")
    }

    /// The object converted to `<group>/<version>`.
    pub fn convert_to(&self, version: &str) -> Result<Value, ConversionError> {
        let group = self.to_json()["apiVersion"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .map(|(g, _)| g.to_owned())
            .unwrap_or_default();
        conversion::convert(self.to_json(), &format!("{group}/{version}"))
    }
}

/// Why a document of a manifest was rejected. Every variant names the document and, where there
/// is one, the object.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid YAML or JSON.
    #[error("document {doc}: not valid YAML or JSON: {source}")]
    Syntax {
        /// 1-based document number.
        doc: usize,
        /// The parser error, with line and column.
        source: serde_yaml_ng::Error,
    },
    /// The document is not an object with apiVersion and kind.
    #[error("document {doc}: {message}")]
    NotAnObject {
        /// 1-based document number.
        doc: usize,
        /// What is missing.
        message: String,
    },
    /// The apiVersion/kind is not one of ours.
    #[error(
        "document {doc}: {kind} {api_version:?} is not an agent-sandbox kind; expected Sandbox ({CORE_GROUP}/v1beta1 or /v1alpha1), or SandboxTemplate, SandboxClaim, SandboxWarmPool ({EXTENSIONS_GROUP}/v1beta1 or /v1alpha1)"
    )]
    UnknownKind {
        /// 1-based document number.
        doc: usize,
        /// The kind found.
        kind: String,
        /// The apiVersion found.
        api_version: String,
    },
    /// The version is not served.
    #[error("document {doc}: {source}")]
    UnknownVersion {
        /// 1-based document number.
        doc: usize,
        /// Details.
        source: crate::schema::UnknownVersion,
    },
    /// The object fails schema validation or has unknown fields.
    #[error("document {doc}: {kind}.{group} {name:?} is invalid: {}", crate::schema::join_errors(.errors))]
    Invalid {
        /// 1-based document number.
        doc: usize,
        /// Kind of the object.
        kind: String,
        /// Group of the object.
        group: String,
        /// Name of the object.
        name: String,
        /// Each failing field.
        errors: Vec<FieldError>,
    },
    /// The object passed schema validation but does not fit the Rust type.
    #[error("document {doc}: {kind} {name:?}: {source}")]
    Decode {
        /// 1-based document number.
        doc: usize,
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The decoding error, naming the field.
        source: serde_path_to_error::Error<serde_json::Error>,
    },
}

/// Parses every document of `text` strictly: unknown fields are errors, defaults are applied.
/// Empty documents are skipped.
pub fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value =
            Value::deserialize(document).map_err(|source| ManifestError::Syntax { doc, source })?;
        if value.is_null() {
            continue;
        }
        objects.push(parse_value(value, doc)?);
    }
    Ok(objects)
}

/// Parses one JSON object (document number `doc` in messages).
pub fn parse_value(mut value: Value, doc: usize) -> Result<Object, ManifestError> {
    if !value.is_object() {
        return Err(ManifestError::NotAnObject {
            doc,
            message: "expected an object with apiVersion and kind".into(),
        });
    }
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind)) = (field(&value, "apiVersion"), field(&value, "kind"))
    else {
        return Err(ManifestError::NotAnObject { doc, message: "apiVersion and kind are required, e.g. apiVersion: agents.x-k8s.io/v1beta1 and kind: Sandbox".into() });
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let Some(Entry { admission, .. }) = registry().by_kind(group, &kind) else {
        return Err(ManifestError::UnknownKind {
            doc,
            kind,
            api_version,
        });
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let admitted = admission
        .admit(version, &mut value, None)
        .map_err(|e| match e {
            AdmitError::UnknownVersion(source) => ManifestError::UnknownVersion { doc, source },
            AdmitError::Invalid(errors) => ManifestError::Invalid {
                doc,
                kind: kind.clone(),
                group: group.to_owned(),
                name: name.clone(),
                errors,
            },
        })?;
    if !admitted.unknown_fields.is_empty() {
        let errors = admitted
            .unknown_fields
            .iter()
            .map(|f| FieldError {
                field: String::new(),
                reason: crate::schema::cause::INVALID,
                message: format!("strict decoding error: unknown field \"{f}\""),
            })
            .collect();
        return Err(ManifestError::Invalid {
            doc,
            kind,
            group: group.to_owned(),
            name,
            errors,
        });
    }
    let decode_err = |source| ManifestError::Decode {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    Ok(match (kind.as_str(), version) {
        ("Sandbox", "v1beta1") => Object::Sandbox(decode(value).map_err(decode_err)?),
        ("SandboxTemplate", "v1beta1") => {
            Object::SandboxTemplate(decode(value).map_err(decode_err)?)
        }
        ("SandboxClaim", "v1beta1") => Object::SandboxClaim(decode(value).map_err(decode_err)?),
        ("SandboxWarmPool", "v1beta1") => {
            Object::SandboxWarmPool(decode(value).map_err(decode_err)?)
        }
        ("Sandbox", _) => Object::SandboxV1alpha1(decode(value).map_err(decode_err)?),
        ("SandboxTemplate", _) => {
            Object::SandboxTemplateV1alpha1(decode(value).map_err(decode_err)?)
        }
        ("SandboxClaim", _) => Object::SandboxClaimV1alpha1(decode(value).map_err(decode_err)?),
        (_, _) => Object::SandboxWarmPoolV1alpha1(decode(value).map_err(decode_err)?),
    })
}

fn decode<T: DeserializeOwned>(
    v: Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(v)
}
