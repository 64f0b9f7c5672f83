//! TLS for the SQL doors: one certificate chain and key (PEM, `[sql] tls_cert` and `tls_key`),
//! read once at start-up, served by rustls (ring) to PostgreSQL clients and by tonic to Flight
//! SQL clients.

use std::io;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A certificate chain and its key, checked when loaded.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the PEM files (a chain, then a PKCS#8, PKCS#1 or SEC1 key).
    pub fn load(cert_path: &str, key_path: &str) -> io::Result<Self> {
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
        };
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{cert_path}: no certificate"),
            ));
        }
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{key_path}: no key"))
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self {
            cert_pem,
            key_pem,
            config: Arc::new(config),
        })
    }

    /// The acceptor of PostgreSQL connections (ALPN `postgresql`, for direct TLS too).
    pub fn postgres_acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The TLS of the Flight SQL server.
    pub fn flight(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}
