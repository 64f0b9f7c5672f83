//! The embedded Kafka broker of `tandem dev`: librdkafka's mock cluster.
//!
//! The mock cluster listens on a random loopback port. To give users a stable bootstrap address
//! (`127.0.0.1:9092` by default) a TCP forwarder listens on the requested port and relays each
//! connection to the mock broker. Clients bootstrap through the forwarder; metadata then points
//! them at the broker's own loopback listener, which is reachable from the same machine.
//!
//! The mock cluster keeps only about 5 MiB (or 100k batches) per partition and drops older data;
//! topics are created with enough partitions for the demo's volume.

use std::net::SocketAddr;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Errors starting the embedded broker. Environment (port in use) or internal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the embedded Kafka broker: {0}")]
    Cluster(#[source] rdkafka::error::KafkaError),
    #[error("creating topic `{topic}`: {source}")]
    Topic {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("listening on 127.0.0.1:{port} for Kafka clients: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("the mock broker reported no address")]
    NoAddress,
}

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedKafka {
    // Kept alive for the broker's lifetime; not `Send`, so it stays on the task that made it.
    _cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: SocketAddr,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedKafka {
    /// Starts a one-broker mock cluster with `topics` (name, partitions) and a forwarder on
    /// `127.0.0.1:port` (`0` picks a free port).
    pub async fn start(
        port: u16,
        topics: &[(&str, i32)],
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let cluster = MockCluster::new(1).map_err(Error::Cluster)?;
        for (topic, partitions) in topics {
            cluster
                .create_topic(topic, *partitions, 1)
                .map_err(|source| Error::Topic {
                    topic: (*topic).to_owned(),
                    source,
                })?;
        }
        let broker: SocketAddr = cluster
            .bootstrap_servers()
            .split(',')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Error::NoAddress)?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| Error::Listen { port, source })?;
        let bootstrap = listener
            .local_addr()
            .map_err(|source| Error::Listen { port, source })?;
        tokio::spawn(forward(listener, broker, cancel));
        Ok(Self {
            _cluster: cluster,
            bootstrap,
        })
    }

    /// The address clients bootstrap from.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.to_string()
    }
}

async fn forward(listener: TcpListener, broker: SocketAddr, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(broker).await else {
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}
