//! Extensions beyond upstream under `/v2`: streaming exec over HTTP (NDJSON and SSE), a
//! WebSocket PTY, run_code with persistent contexts, file stat/mkdir/move/tree/tar/watch and the
//! process list; the desktop API, the list of managed services and the API activity.

pub mod code;
pub mod desktop;
pub mod exec;
pub mod files;

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
        .route("/v2/files/stat", get(files::stat))
        .route("/v2/files/tree", get(files::tree))
        .route("/v2/files/mkdir", post(files::mkdir))
        .route("/v2/files/move", post(files::move_path))
        .route(
            "/v2/files/tar",
            get(files::tar_download).put(files::tar_upload),
        )
        .route("/v2/files/watch", get(files::watch))
        .route("/v2/services", get(crate::services::list))
        .route("/v2/activity", get(crate::activity::get))
        .route("/v2/desktop/screenshot", get(desktop::screenshot))
        .route("/v2/desktop/screen", get(desktop::screen_size))
        .route("/v2/desktop/cursor", get(desktop::cursor))
        .route("/v2/desktop/windows", get(desktop::windows))
        .route("/v2/desktop/mouse/move", post(desktop::mouse_move))
        .route("/v2/desktop/mouse/click", post(desktop::mouse_click))
        .route("/v2/desktop/mouse/drag", post(desktop::mouse_drag))
        .route("/v2/desktop/mouse/scroll", post(desktop::mouse_scroll))
        .route("/v2/desktop/keyboard/press", post(desktop::key_press))
        .route("/v2/desktop/keyboard/type", post(desktop::key_type))
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
