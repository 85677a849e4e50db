//! Integration tests of the node agent: images, isolation, lifecycle, networking, pods, logs,
//! exec (with the real kubectl), a Pod's configuration (ConfigMaps, Secrets, downward API),
//! recovery.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod bad_input;
mod common;
mod config;
mod exec;
mod images;
mod isolation;
mod lifecycle;
mod logs;
mod monitoring;
mod netpol;
mod network;
mod pause;
mod pods;
mod recovery;
