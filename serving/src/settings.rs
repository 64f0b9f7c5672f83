//! `[serving]` and `[http]`: the serving layer's settings, with their defaults (the limits'
//! own defaults are `HttpLimits::default` and `SqlLimits::default`, written once).
//!
//! ```text
//!  [serving] TOML ──serde (defaults; sizes parse themselves)──► ServingSettings
//!  [http]    TOML ──serde──► HttpSettings ──check──► Invalid { key, problem }
//!                                  ├─► limits() ─► HttpLimits   └─► sql() ─► SqlLimits
//!                                  └─► tokens (values read from the environment by the app)
//! ```

use std::time::Duration;

use serde::Deserialize;
use tandem_shared::settings::{ByteSize, Invalid};
use tandem_shared::time::Span;

use crate::access::{HttpLimits, Scope};
use crate::sql::{SqlLimits, SqlRuntimeLimits};

/// The `[serving]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingSettings {
    /// Bound of the cache of published row groups (the view catalog's).
    pub cache_bytes: ByteSize,
}

impl Default for ServingSettings {
    fn default() -> Self {
        Self {
            cache_bytes: ByteSize(tandem_batch_layer::catalog::DEFAULT_CACHE_BYTES),
        }
    }
}

/// The `[sql]` section: the doors SQL clients connect through besides `POST /v1/sql`, each off
/// unless its address is set. They answer the same tables under the same limits (`[http]`'s
/// query limits and tokens).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlSettings {
    /// The PostgreSQL wire protocol (`psql`, drivers, BI tools): `host:port`.
    pub postgres: Option<String>,
    /// Arrow Flight SQL (ADBC, JDBC/ODBC Flight SQL drivers): `host:port`.
    pub flight: Option<String>,
    /// A PEM certificate chain and its PKCS#8 key: both doors then speak TLS.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Open connections per door at most (more are refused with an error).
    pub max_connections: usize,
}

impl SqlSettings {
    /// Connections per door by default.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

    pub fn check(&self) -> Result<(), Invalid> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Invalid::new(
                "tls_key",
                "give both tls_cert and tls_key, or neither",
            ));
        }
        Ok(())
    }

    /// Connections per door.
    pub fn connection_cap(&self) -> usize {
        if self.max_connections == 0 {
            Self::DEFAULT_MAX_CONNECTIONS
        } else {
            self.max_connections
        }
    }
}

/// One `[[http.tokens]]` entry as written: the token's value comes from an environment
/// variable (read where the configuration is parsed) or is given as its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub name: String,
    pub scope: Scope,
    /// The environment variable holding the token's value.
    pub env: Option<String>,
    /// Or the hex SHA-256 digest of the token's value.
    pub sha256: Option<String>,
}

/// The `[http]` section: tokens, and the limits of requests, connections, streams and SQL
/// queries (defaults: [`HttpLimits::default`] and [`SqlLimits::default`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub tokens: Vec<TokenSettings>,
    /// Allows `tandem run` to listen on a non-loopback address without tokens.
    pub allow_anonymous: bool,
    pub request_timeout: Span,
    pub max_concurrent_requests: usize,
    pub max_body_bytes: ByteSize,
    /// A SQL query that runs longer is stopped (408).
    pub query_timeout: Span,
    /// A SQL query's memory pool.
    pub query_memory: ByteSize,
    /// The most rows a SQL answer may have.
    pub query_rows: usize,
    /// SQL queries running at once (more wait within their timeout, a few at most).
    pub max_concurrent_queries: usize,
    /// Threads of the SQL runtime.
    pub query_threads: usize,
    /// A connection must send a whole request head within this (after it opens or after its
    /// last response).
    pub header_timeout: Span,
    /// A connection whose client reads nothing of a response for this long is closed.
    pub idle_timeout: Span,
    /// Open connections at most (capped below the process's file limit; unset: that cap).
    pub max_connections: Option<usize>,
    /// Open `/stream` responses at most.
    pub max_streams: usize,
}

fn span(d: Duration) -> Span {
    Span::from_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Default for HttpSettings {
    fn default() -> Self {
        let limits = HttpLimits::default();
        let sql = SqlLimits::default();
        Self {
            tokens: Vec::new(),
            allow_anonymous: false,
            request_timeout: span(limits.request_timeout),
            max_concurrent_requests: limits.max_concurrent_requests,
            max_body_bytes: ByteSize(limits.max_body_bytes),
            query_timeout: span(sql.timeout),
            query_memory: ByteSize(sql.memory_bytes),
            query_rows: sql.max_rows,
            max_concurrent_queries: sql.runtime.max_concurrent,
            query_threads: sql.runtime.threads,
            header_timeout: span(limits.header_timeout),
            idle_timeout: span(limits.idle_timeout),
            max_connections: limits.max_connections,
            max_streams: limits.max_streams,
        }
    }
}

impl HttpSettings {
    /// The settings' own limits (tokens are checked where their values are read).
    pub fn check(&self) -> Result<(), Invalid> {
        for (key, span) in [
            ("request_timeout", self.request_timeout),
            ("query_timeout", self.query_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if span.millis() <= 0 {
                return Err(Invalid::new(key, "must be greater than zero"));
            }
        }
        for (key, size) in [
            ("max_body_bytes", self.max_body_bytes),
            ("query_memory", self.query_memory),
        ] {
            if size.bytes() == 0 {
                return Err(Invalid::new(
                    key,
                    "expected a positive number of bytes or a size such as \"1MiB\"",
                ));
            }
        }
        for (key, n) in [
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("query_rows", self.query_rows),
            ("max_concurrent_queries", self.max_concurrent_queries),
            ("query_threads", self.query_threads),
            ("max_connections", self.max_connections.unwrap_or(1)),
        ] {
            if n == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The limits of requests, connections and streams.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            request_timeout: self.request_timeout.as_duration(),
            max_concurrent_requests: self.max_concurrent_requests,
            max_body_bytes: self.max_body_bytes.bytes(),
            header_timeout: self.header_timeout.as_duration(),
            idle_timeout: self.idle_timeout.as_duration(),
            max_connections: self.max_connections,
            max_streams: self.max_streams,
        }
    }

    /// The bounds of each SQL query and of the SQL runtime.
    pub fn sql(&self) -> SqlLimits {
        let defaults = SqlLimits::default();
        SqlLimits {
            timeout: self.query_timeout.as_duration(),
            memory_bytes: self.query_memory.bytes(),
            max_rows: self.query_rows,
            runtime: SqlRuntimeLimits {
                threads: self.query_threads,
                max_concurrent: self.max_concurrent_queries,
                ..defaults.runtime
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_serving_layers_limits_and_pass_their_checks() {
        let settings = HttpSettings::default();
        assert_eq!(settings.check(), Ok(()));
        assert_eq!(settings.limits(), HttpLimits::default());
        assert_eq!(settings.sql(), SqlLimits::default());
        let zero = HttpSettings {
            max_connections: Some(0),
            ..HttpSettings::default()
        };
        assert_eq!(zero.check().unwrap_err().key, "max_connections");
    }
}
