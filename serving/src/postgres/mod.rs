//! The PostgreSQL wire protocol: psql, drivers (psycopg, JDBC, ...) and BI tools query the
//! views and `events` as they would a PostgreSQL database named `tandem`.
//!
//! ```text
//!  listener ─► a connection slot (at most `[sql] max_connections`; past it: error 53300)
//!           ─► TLS if configured (pgwire) ─► startup within the header timeout
//!           ─► a token of [[http.tokens]] (any user name): a cleartext password under TLS,
//!              SCRAM-SHA-256 without (access::scram), checked against the tokens HTTP checks
//!           ─► messages, each within the query timeout plus the idle timeout (a client that
//!              stops reading its answer is closed); a quiet connection is closed after the
//!              session timeout
//!  query ─► PostgresCompatibilityParser (pg_catalog rewrites) ─► Command (SET, SHOW, BEGIN, ...)
//!                                                            └► sql::SqlEngine (Dialect::Postgres)
//!                                                               ─► Arrow batches ─► rows (arrow-pg)
//! ```
//!
//! The protocol (messages, extended queries, cancel requests, TLS) is `pgwire`'s; the catalog,
//! the SQL rewrites and the Arrow-to-PostgreSQL encoding are `datafusion-postgres`'s. Every
//! query runs on the engine `POST /v1/sql` uses, under the same limits; each refusal is a
//! PostgreSQL error with its SQLSTATE ([`commands::sqlstate`]) after which the connection
//! still answers.

mod commands;
mod session;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState};
use pgwire::messages::PgWireBackendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::sql::SqlEngine;
use crate::tls::Tls;

pub use session::Handlers;

/// The server version clients are told: the PostgreSQL version whose protocol and catalog this
/// door follows.
pub const SERVER_VERSION: &str = "16.6";

/// The bounds of the door's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Startup and authentication must end within this.
    pub startup_timeout: Duration,
    /// A client that reads nothing of an answer for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub session_timeout: Duration,
}

/// Connections past the cap told why at once, at most.
const REFUSALS_AT_ONCE: usize = 64;

/// What the door serves and whom it lets in.
#[derive(Debug, Clone)]
pub struct PostgresDoor {
    pub engine: SqlEngine,
    pub access: Access,
    pub tls: Option<Tls>,
    pub limits: ConnectionLimits,
}

/// Serves the PostgreSQL protocol on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    door: PostgresDoor,
    stop: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(door.limits.max_connections));
    // Refusals past the cap are answered a few at a time; past that a connection is closed at
    // once, so a flood cannot hold more sockets than the cap and this.
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let handlers = Arc::new(Handlers::new(
        door.engine.clone(),
        door.access.clone(),
        Arc::new(ConnectionManager::new()),
    ));
    let acceptor = door.tls.as_ref().map(Tls::postgres_acceptor).transpose()?;
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = acceptor.is_some(),
        max_connections = door.limits.max_connections,
        "PostgreSQL protocol serving"
    );
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    metrics::counter!("tandem_postgres_accept_errors_total").increment(1);
                    tracing::warn!(%err, "PostgreSQL accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!("tandem_postgres_refused_total", "reason" => "connections")
                .increment(1);
            if let Ok(refusing) = Arc::clone(&refusals).try_acquire_owned() {
                let cap = door.limits.max_connections;
                connections.spawn(async move {
                    refuse(socket, cap).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let handlers = Arc::clone(&handlers);
        let acceptor = acceptor.clone();
        let limits = door.limits;
        let stop = stop.clone();
        metrics::gauge!("tandem_postgres_connections").increment(1.0);
        connections.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = connection(socket, acceptor, handlers, limits) => {
                    if let Err(err) = result {
                        tracing::debug!(%err, %peer, "PostgreSQL connection ended with an error");
                    }
                }
            }
            metrics::gauge!("tandem_postgres_connections").decrement(1.0);
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Tells a client past the connection cap why, as PostgreSQL does (53300), and closes.
async fn refuse(socket: tokio::net::TcpStream, cap: usize) {
    let refused = async {
        let Some(mut framed) = negotiate_tls::<session::Prepared>(socket, None).await? else {
            return Ok::<_, io::Error>(());
        };
        // Read the startup message, then answer it with the refusal.
        let _ = framed.next().await;
        let mut info = commands::error("53300", format!("too many connections (at most {cap})"));
        info.severity = "FATAL".into();
        framed
            .send(PgWireBackendMessage::ErrorResponse(info.into()))
            .await
            .map_err(io::Error::other)?;
        Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), refused).await;
}

/// One connection: the startup within its timeout, then each message within the query timeout
/// and the idle timeout, and a bound on silence between messages.
async fn connection(
    socket: tokio::net::TcpStream,
    acceptor: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<Handlers>,
    limits: ConnectionLimits,
) -> io::Result<()> {
    use pgwire::api::PgWireServerHandlers;
    let startup_deadline = tokio::time::Instant::now() + limits.startup_timeout;
    let Ok(negotiated) =
        tokio::time::timeout_at(startup_deadline, negotiate_tls(socket, acceptor)).await
    else {
        return Ok(());
    };
    let Some(mut socket) = negotiated? else {
        return Ok(());
    };
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let query_bound = handlers.query_timeout() + limits.idle_timeout;
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if starting {
            tokio::time::timeout_at(startup_deadline, socket.next()).await
        } else {
            tokio::time::timeout(limits.session_timeout, socket.next()).await
        };
        let Ok(Some(Ok(message))) = next else {
            break;
        };
        if matches!(
            message,
            pgwire::messages::PgWireFrontendMessage::Terminate(_)
        ) {
            break;
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let processed = tokio::time::timeout(
            query_bound,
            process_message(
                message,
                &mut socket,
                startup.clone(),
                simple.clone(),
                extended.clone(),
                copy.clone(),
                cancel.clone(),
            ),
        )
        .await;
        match processed {
            Err(_) => {
                tracing::debug!("PostgreSQL client did not read its answer in time: closed");
                break;
            }
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                // A fatal error (a wrong password) closes the socket; the next read ends.
                tokio::time::timeout(
                    limits.idle_timeout,
                    process_error(&mut socket, error, extended_query),
                )
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
        }
    }
    Ok(())
}
