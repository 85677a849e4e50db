//! Extensions beyond upstream under `/v2`: streaming exec over HTTP (NDJSON and SSE), a
//! WebSocket PTY, run_code with persistent contexts, file stat/mkdir/move/tree/tar/watch and the
//! process list.

pub mod code;
pub mod exec;

use std::sync::Arc;

use axum::Router;

use crate::App;

/// Routes under `/v2`.
pub fn router() -> Router<Arc<App>> {
    use axum::routing::{get, post};
    Router::new()
        .route("/v2/exec", post(exec::exec))
        .route("/v2/pty", get(exec::pty))
        .route("/v2/processes", get(exec::list_processes))
        .route("/v2/processes/{id}/signal", post(exec::signal_process))
        .route("/v2/code/run", post(code::run_code))
        .route(
            "/v2/code/contexts",
            post(code::create_context).get(code::list_contexts),
        )
        .route(
            "/v2/code/contexts/{id}",
            axum::routing::delete(code::delete_context),
        )
        .route(
            "/v2/code/contexts/{id}/interrupt",
            post(code::interrupt_context),
        )
        .route(
            "/v2/code/contexts/{id}/restart",
            post(code::restart_context),
        )
}
