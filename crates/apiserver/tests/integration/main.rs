//! Integration tests of the embedded API server: kube-rs and kubectl against it, bad input, durability,
//! exec, port-forward.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod bad_input;
mod common;
mod durability;
mod exec;
mod kube_client;
mod kubectl;
mod portforward;
