//! Integration tests of sandboxd: the REST, legacy, gRPC and v2 APIs, confinement, lifecycle.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod bad_input;
mod common;
mod computer;
mod confinement;
mod grpc;
mod legacy;
mod lifecycle;
mod rest_v1;
mod v2_code;
mod v2_exec;
mod v2_files;
