//! Integration tests of the agent-sandbox binary: the controller verb, deploy/, and end to end through up.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod controller;
mod deploy;
mod e2e;
