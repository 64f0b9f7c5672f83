//! The SQL doors besides `POST /v1/sql` (`[sql]`): the PostgreSQL wire protocol and Arrow
//! Flight SQL, each on its own listener, over the serving process's SQL engine and tokens.
//!
//! ```text
//!  [sql] postgres / flight ─► exposure check (as HTTP's) ─► TLS (tls_cert, tls_key) ─► bind
//!      ─► tandem_serving::postgres::serve / flight::serve until the frontend stops
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tandem_serving::Access;
use tandem_serving::flight::FlightDoor;
use tandem_serving::postgres::{ConnectionLimits, PostgresDoor};
use tandem_serving::sql::SqlEngine;
use tandem_serving::tls::Tls;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::process::Error;

/// A connection that sends nothing for this long is closed (PostgreSQL clients keep idle
/// connections in pools; this bounds what a forgotten one holds).
const SESSION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The open doors: their addresses, and their tasks.
#[derive(Debug, Default)]
pub struct Doors {
    pub postgres: Option<SocketAddr>,
    pub flight: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Doors {
    /// Waits for the doors to close (after their stop token fired).
    pub async fn closed(self) {
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

/// The addresses of the configured doors.
pub fn addresses(config: &Config) -> impl Iterator<Item = &str> {
    [config.sql.postgres.as_deref(), config.sql.flight.as_deref()]
        .into_iter()
        .flatten()
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let failed = |source| Error::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// Opens the configured doors over `engine`, behind `access`, until `stop` fires.
pub async fn open(
    config: &Config,
    engine: &SqlEngine,
    access: &Access,
    stop: &CancellationToken,
) -> Result<Doors, Error> {
    let settings = &config.sql;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key).map_err(Error::Tls)?),
        _ => None,
    };
    let limits = config.http.policy.limits.clone();
    let mut doors = Doors::default();
    if let Some(addr) = &settings.postgres {
        let (listener, local) = bind(addr).await?;
        let door = PostgresDoor {
            engine: engine.clone(),
            access: access.clone(),
            tls: tls.clone(),
            limits: ConnectionLimits {
                max_connections: settings.connection_cap(),
                startup_timeout: limits.header_timeout,
                idle_timeout: limits.idle_timeout,
                session_timeout: SESSION_TIMEOUT,
            },
        };
        let stop = stop.clone();
        doors.postgres = Some(local);
        doors.tasks.push(tokio::spawn(async move {
            if let Err(err) = tandem_serving::postgres::serve(listener, door, stop).await {
                tracing::error!(%err, "the PostgreSQL door stopped");
            }
        }));
    }
    if let Some(addr) = &settings.flight {
        let (listener, local) = bind(addr).await?;
        let door = FlightDoor {
            engine: engine.clone(),
            access: access.clone(),
            tls,
            max_connections: settings.connection_cap(),
            idle_timeout: limits.idle_timeout,
        };
        let stop = stop.clone();
        doors.flight = Some(local);
        doors.tasks.push(tokio::spawn(async move {
            if let Err(err) = tandem_serving::flight::serve(listener, door, stop).await {
                tracing::error!(%err, "the Flight SQL door stopped");
            }
        }));
    }
    Ok(doors)
}
