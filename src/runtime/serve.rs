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
//!
//! Near the cap, slow clients give way, as HTTP servers' overload managers
//! do: once three quarters of the connections are taken, new ones get a short
//! header timeout ([`PRESSED_HEADER_TIMEOUT`]); at the cap, a new connection
//! is accepted and the oldest connection with no request in progress (one
//! that has not sent a whole header yet, or a kept-alive one between
//! requests) is closed to make room. So a thousand half-open connections
//! cannot keep `/healthz`, `/readyz` or a complete webhook waiting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
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

/// The header timeout of connections accepted under pressure.
const PRESSED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// One open connection: how many of its requests are in progress, and the
/// signal that closes it.
#[derive(Debug, Default)]
struct Conn {
    busy: AtomicUsize,
    shed: Notify,
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Conns {
    table: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the oldest connection with no request in progress; says
    /// whether there was one.
    fn shed_oldest_idle(&self) -> bool {
        let mut table = self.lock();
        let Some(id) = table
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(c) = table.remove(&id) {
            c.shed.notify_one();
        }
        true
    }
}

/// A connection's service: the router, counting the requests in progress.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<Conn>,
}

/// Counts a request in progress until its response is made.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.conn.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(self.conn.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(busy);
            r
        })
    }
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish.
pub(crate) async fn serve(listener: TcpListener, app: Router, config: &ServerConfig, stop: Stop) {
    let app = app
        .layer(RequestBodyTimeoutLayer::new(config.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));
    let cap = connection_cap(config);
    let slots = Arc::new(Semaphore::new(cap));
    let conns = Arc::new(Conns::default());
    let graceful = GracefulShutdown::new();
    let builder = |header_timeout: Duration| {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        http
    };
    let http = builder(config.header_timeout);
    let pressed = builder(config.header_timeout.min(PRESSED_HEADER_TIMEOUT));
    let mut next_id = 0u64;
    loop {
        // A connection is accepted first (the cap leaves room for one more
        // handle), then given a slot: a free one, or one a slow client gives up.
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
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if conns.shed_oldest_idle() {
                    tracing::debug!("at the connection cap: the oldest idle connection is closed");
                }
                tokio::select! {
                    _ = stop.wait() => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::default());
        next_id += 1;
        conns.lock().insert(next_id, conn.clone());
        let under_pressure = slots.available_permits() < cap / 4;
        let service = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            conn: conn.clone(),
        };
        let builder = if under_pressure { &pressed } else { &http };
        let served = builder.serve_connection(TokioIo::new(stream), service);
        let served = graceful.watch(served);
        let (id, conns) = (next_id, conns.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = served => {}
                // Dropping the connection closes it.
                _ = conn.shed.notified() => {}
            }
            conns.lock().remove(&id);
            drop(permit);
        });
    }
    // Open requests get the shutdown deadline the caller enforces.
    graceful.shutdown().await;
}
