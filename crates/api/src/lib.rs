//! The agent-sandbox resource model: CRD types for v1beta1 and v1alpha1, conversion between them,
//! the label/annotation/condition registry, hashing, condition helpers, schema validation and CRD
//! generation. This crate does no I/O.
#![forbid(unsafe_code)]
