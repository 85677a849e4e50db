//! Extensions beyond upstream under `/v2`: streaming exec over HTTP (NDJSON and SSE), a
//! WebSocket PTY, run_code with persistent contexts, file stat/mkdir/move/tree/tar/watch and the
//! process list.

pub mod code;

use std::sync::Arc;

use axum::Router;

use crate::App;

/// Routes under `/v2`.
pub fn router() -> Router<Arc<App>> {
    Router::new()
}
