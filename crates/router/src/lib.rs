//! The sandbox router: the `X-Sandbox-*` header contract, pod-IP resolution from a watch cache,
//! HTTP/1.1, HTTP/2 (gRPC) and WebSocket proxying, auth, SSRF guard and metrics.
#![forbid(unsafe_code)]
