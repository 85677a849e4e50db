//! The sandbox router: the `X-Sandbox-*` header contract of upstream agent-sandbox, in front of
//! every sandbox.
//!
//! A request flows through four steps, each in its own module:
//! 1. [`target`] parses and validates the routing headers (`X-Sandbox-ID`, `-Namespace`, `-Port`,
//!    `-Pod-IP` with the SSRF guard, `-UID`, `-Timeout`) into a [`target::Target`];
//! 2. [`cache`] resolves the sandbox to a pod IP from a watch cache of Pods (no API call per
//!    request), or DNS in a cluster;
//! 3. [`proxy`] forwards the request (HTTP/1.1, HTTP/2 cleartext for gRPC, WebSocket upgrades),
//!    streaming both ways without buffering, retrying only connection failures;
//! 4. [`metrics`] records the outcome.
//!
//! [`idle`] pauses or suspends sandboxes idle past their policy and wakes them on their next
//! request.
//!
//! [`server::serve`] runs the listener (plain HTTP/1.1 and h2c on one port, `GET /healthz`,
//! bearer-token auth on by default) and [`server::serve_metrics`] the Prometheus endpoint.
#![forbid(unsafe_code)]

pub mod cache;
pub mod idle;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod target;

pub use server::{Config, Router};
