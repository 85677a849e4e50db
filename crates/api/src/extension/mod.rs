//! This project's own kinds, beyond upstream's API, in the group `agent-sandbox-rs.github.io`
//! (never in upstream's groups): served, stored and generated like the upstream kinds, in one
//! version (`v1alpha1`) without conversion.

mod snapshot;

pub use snapshot::*;
