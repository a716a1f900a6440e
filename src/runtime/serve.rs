//! The HTTP server's connections: how many, and for how long.
//!
//! axum's `serve` sets no timeouts, so an idle or slow client holds its
//! connection (and a file handle) for as long as it likes; a thousand of them
//! stop the server. Here each connection is served by hyper's HTTP/1 builder
//! with its timer and header-read timeout (which also bounds the idle wait for
//! the next request on a kept-alive connection), the request body has its own
//! timeout and the whole request another (tower-http's layers), and at most
//! `server.max_connections` are open at once: beyond, new connections wait in
//! the kernel's queue until one closes, which the timeouts guarantee. The cap
//! never exceeds what the process may open: at start the soft limit on open
//! files is raised to the hard one (as Go's runtime does), and the cap is kept
//! below it, with room for the store and Qpien's connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use super::Stop;
use crate::config::ServerConfig;

/// File handles kept for everything but client connections (the store, logs,
/// Qpien's connections, the flow's files).
const RESERVED_FILES: u64 = 256;

/// The connection cap for `config`: its `max_connections`, within the open-file
/// limit (raised to the hard limit first where the system allows).
pub(crate) fn connection_cap(config: &ServerConfig) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = files.saturating_sub(RESERVED_FILES).max(16);
    let cap = config
        .max_connections
        .min(usize::try_from(room).unwrap_or(usize::MAX));
    if cap < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            open_files = files,
            cap,
            "server.max_connections lowered to what the open-file limit allows"
        );
    }
    cap.max(1)
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish.
pub(crate) async fn serve(listener: TcpListener, app: Router, config: &ServerConfig, stop: Stop) {
    let app = app
        .layer(RequestBodyTimeoutLayer::new(config.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));
    let slots = Arc::new(Semaphore::new(connection_cap(config)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = stop.wait() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file handles, or a connection reset while queued:
                    // wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    // Open requests get the shutdown deadline the caller enforces.
    graceful.shutdown().await;
}
