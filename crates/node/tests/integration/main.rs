//! Integration tests of the node agent: images, isolation, lifecycle, networking, pods, recovery.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod bad_input;
mod common;
mod images;
mod isolation;
mod lifecycle;
mod netpol;
mod network;
mod pods;
mod recovery;
