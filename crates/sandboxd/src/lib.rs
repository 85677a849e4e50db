//! sandboxd, the in-sandbox runtime: the upstream files REST API and gRPC `process.v1` service,
//! the legacy python-runtime HTTP API, streaming exec, PTY and `run_code`.
