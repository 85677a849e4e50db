//! The four reconcilers (Sandbox, SandboxTemplate, SandboxWarmPool, SandboxClaim) written once
//! against `kube::Client`, with their indexes, expectations, metrics, events and tracing.
//!
//! The reconcilers never ask whether they run embedded or against a cluster.
#![forbid(unsafe_code)]
