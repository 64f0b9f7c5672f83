//! The HTTP server: connections accepted within a cap, each with a header timeout and a write
//! stall timeout, served by hyper until the stop token fires.
//!
//! ```text
//!  listener ─► a connection slot (at most `connection_cap`; more wait in the kernel's backlog)
//!           ─► accept ─► write stall timeout (idle_timeout) ─► hyper HTTP/1: the whole request
//!              head within header_timeout (new or kept-alive) ─► router (request limits, access)
//!  stop ─► no more accepts; open connections finish their request (graceful), up to a bound
//! ```
//!
//! `axum::serve` gives hyper no timer, so a client that sends half a request head holds its
//! connection (and a file descriptor) forever: a thousand of them exhausted the process's file
//! limit and the checkpoints of the speed layer failed to open files. The request limits of the
//! router apply only once a head has arrived, so they cannot help.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::access::{HttpLimits, connection_cap};

/// How long open connections may take to finish after the stop token fired.
const DRAIN: Duration = Duration::from_secs(10);

/// The process's limit on open files: the soft limit, raised to the hard limit first (a
/// server's connections need more than the usual 1,024 soft default).
pub fn file_limit() -> u64 {
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(%err, "could not raise the open file limit");
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Serves `app` on `listener` within `limits` until `stop` fires; then lets open connections
/// finish their requests for a while.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let cap = connection_cap(limits.max_connections, file_limit());
    tracing::info!(
        max_connections = cap,
        header_timeout = ?limits.header_timeout,
        idle_timeout = ?limits.idle_timeout,
        "HTTP serving"
    );
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        // A slot before accepting: past the cap, connections wait in the kernel's backlog
        // instead of taking file descriptors the store and Kafka need.
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Per-connection errors (reset before accept) and running out of file
                    // descriptors both pass; pause a little so that the loop does not spin.
                    metrics::counter!("tandem_http_accept_errors_total").increment(1);
                    tracing::warn!(%err, "accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.idle_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        metrics::gauge!("tandem_http_connections").increment(1.0);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
            metrics::gauge!("tandem_http_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open {DRAIN:?} after the stop; closing them");
    }
    Ok(())
}
