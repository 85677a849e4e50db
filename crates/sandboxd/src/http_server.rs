//! The accept loop of every port (hyper): HTTP/1.1 and h2c with upgrades for WebSocket, a header
//! read timeout, an idle timeout and a 1 MiB header limit on the HTTP ports; h2c alone on the
//! gRPC port; graceful shutdown on all.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Upstream's `ReadHeaderTimeout`.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper runs one timer from the moment a connection waits for a request head, idle keep-alive
/// time included, so it serves as both upstream timeouts: the larger of the two is used, which
/// keeps idle connections open for `--http-idle-timeout` as upstream does.
fn head_timeout(idle: Duration) -> Duration {
    idle.max(READ_HEADER_TIMEOUT)
}
/// Largest request head accepted (Go's default `MaxHeaderBytes`); larger gets 431.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// What a port speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Protocol {
    /// HTTP/1.1 (with upgrades) and h2c; idle connections close after `idle`.
    Http {
        /// `--http-idle-timeout`.
        idle: Duration,
    },
    /// h2c only, as Go's gRPC server: no idle timeout and no limit on concurrent streams.
    Grpc,
}

/// Serves `service` on `listener` until `stop` turns true, then drains connections for at most
/// `grace`.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    protocol: Protocol,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match protocol {
        Protocol::Http { idle } => {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout(idle))
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true);
            builder.http2().timer(TokioTimer::new());
        }
        Protocol::Grpc => {
            builder = builder.http2_only();
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(None);
        }
    }
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                let service = TowerToHyperService::new(service.clone());
                match protocol {
                    Protocol::Http { .. } => {
                        let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    Protocol::Grpc => {
                        let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                }
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
