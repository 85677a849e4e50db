//! Integration tests of the controllers: conformance against the embedded API server, cluster-mode pieces, bursts.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod burst;
mod cluster_certs;
mod cluster_leader;
mod cluster_tracing;
mod cluster_webhook;
mod common;
mod extensions;
mod sandbox;
