//! The sandbox's API activity, for idle detection: when the last request ended and how many are
//! open (a streamed response or a terminal counts until it ends), served at `GET /v2/activity`.
//!
//! The router pauses or suspends a sandbox idle past its policy; it sees only the traffic that
//! goes through it, so before it acts it asks sandboxd here about the rest (clients connected to
//! the Pod directly). Health checks and this endpoint itself are not activity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::App;

/// When the last request ended, and how many are open.
#[derive(Debug)]
pub struct Activity {
    last: Mutex<Instant>,
    open: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
            open: AtomicU64::new(0),
        }
    }
}

/// One open request or session; its end is activity.
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// Marks a request or session open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(Arc::clone(self))
    }

    /// Seconds since the last request ended (0 while one is open) and the open count.
    pub fn idle(&self) -> (f64, u64) {
        let open = self.open.load(Ordering::Acquire);
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let idle = if open > 0 {
            0.0
        } else {
            last.elapsed().as_secs_f64()
        };
        (idle, open)
    }
}

/// Paths that are not activity: health checks (probes would keep every sandbox awake) and the
/// activity endpoint.
fn is_probe(path: &str) -> bool {
    matches!(path, "/" | "/v1/health" | "/healthz" | "/v2/activity")
}

/// Middleware: every other request is open from its start to the end of its response body.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    let open = app.activity.open();
    let resp = next.run(req).await;
    resp.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &open;
            frame
        }))
    })
}

/// `GET /v2/activity`: `{"idleSeconds": 12.5, "open": 0}`.
pub async fn get(State(app): State<Arc<App>>) -> Json<Value> {
    let (idle, open) = app.activity.idle();
    Json(json!({"idleSeconds": idle, "open": open}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_request_is_never_idle_and_its_end_restarts_the_clock() {
        let a = Arc::new(Activity::default());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(a.idle().0 >= 0.02);
        let open = a.open();
        assert_eq!(a.idle(), (0.0, 1));
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(open);
        let (idle, n) = a.idle();
        assert_eq!(n, 0);
        assert!(idle < 0.02, "{idle}");
        assert!(is_probe("/v1/health") && !is_probe("/v2/exec"));
    }
}
