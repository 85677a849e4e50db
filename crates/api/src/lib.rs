//! The agent-sandbox resource model: CRD types for v1beta1 and v1alpha1, conversion between them,
//! the label/annotation/condition registry, hashing, condition helpers, schema validation and CRD
//! generation. This crate does no I/O.
//!
//! - [`v1beta1`] and [`v1alpha1`]: the four kinds in both served versions.
//! - [`extension`]: this project's own kinds (`SandboxSnapshot`), group `agent-sandbox-rs.github.io`.
//! - [`constants`]: every label, annotation, condition type, reason and message, verbatim.
//! - [`hash::name_hash`]: the FNV-1a hash every hash label uses.
//! - [`conditions`]: `SetStatusCondition` semantics; [`semantic`]: `Semantic.DeepEqual` semantics.
//! - [`crd`]: the four CustomResourceDefinitions; [`schema`]: admission against their schemas
//!   (pruning, defaulting, validation, CEL); [`conversion`]: lossless v1alpha1 ⇄ v1beta1 and the
//!   `ConversionReview` handler; [`manifest`]: parsing user manifests with all of the above;
//!   [`registry`]: the CRDs with their admission prepared once, for API servers;
//!   [`duration`]: Go's duration syntax; [`idle`]: the idle policy of a sandbox (pause or suspend after no traffic);
//!   [`validation`]: label keys, label values and DNS subdomains with apimachinery's messages.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cel_plan;
pub mod conditions;
pub mod constants;
pub mod conversion;
pub mod crd;
pub mod duration;
pub mod extension;
pub mod hash;
pub mod idle;
pub mod manifest;
pub mod quantity;
pub mod registry;
pub mod schema;
pub mod semantic;
pub mod v1alpha1;
pub mod v1beta1;
pub mod validation;

pub use hash::name_hash;

/// `skip_serializing_if` for status counters that Go serialises with `omitempty`.
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
