//! Who may call what: bearer tokens with scopes, and the request limits in front of the API.
//!
//! ```text
//!  request ─► limits (concurrency, body size, timeout) ─► access (path + method → scope needed;
//!             Authorization: Bearer <token> → sha256 → constant-time match) ─► handlers
//! ```
//!
//! The decision is pure ([`Access::decide`]); the axum middleware only reads the header and
//! turns a refusal into a JSON 401 or 403. Tokens are kept as SHA-256 digests only: a token's
//! value is never stored, printed or logged. Every configured digest is compared with every
//! request (no early exit), in constant time.
//!
//! Two browser attacks are refused before that, also by pure tests ([`cross_site`],
//! [`loopback_host`]): a page of another site that posts to the API (a form's `text/plain` or
//! `x-www-form-urlencoded` body needs no preflight, and an API without tokens has nothing else
//! to stop it), and a page of a hostile name that resolves to 127.0.0.1 (DNS rebinding), which
//! an API without tokens on loopback refuses by its `Host`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;

mod forward;
pub mod scram;

pub use forward::{FORWARD_SKEW_MS, ForwardKey};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every `GET`: views, jobs, metrics.
    Read,
    /// Also `POST` and `DELETE`: queue and cancel jobs.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        })
    }
}

/// Errors building a token from configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token `{name}`: sha256 must be 64 hexadecimal digits")]
    BadDigest { name: String },
    #[error("token `{name}`: the token value is empty")]
    EmptyToken { name: String },
}

/// A named token: its scope and the SHA-256 digest of its value, and its SCRAM keys when its
/// value was given (not only its digest).
#[derive(Clone)]
pub struct Token {
    name: String,
    scope: Scope,
    digest: [u8; 32],
    scram: Option<scram::Keys>,
}

/// The salt of every token's SCRAM keys in this process (one salt, so that the server's first
/// message does not depend on which token the client holds).
pub fn scram_salt() -> &'static [u8; 16] {
    static SALT: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    SALT.get_or_init(rand::random)
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token whose value is `secret` (read from the environment, for example).
    pub fn from_secret(name: &str, scope: Scope, secret: &str) -> Result<Self, Error> {
        if secret.is_empty() {
            return Err(Error::EmptyToken { name: name.into() });
        }
        Ok(Self {
            name: name.into(),
            scope,
            digest: Sha256::digest(secret.as_bytes()).into(),
            scram: Some(scram::Keys::derive(secret, scram_salt(), scram::ITERATIONS)),
        })
    }

    /// A token given by the hex SHA-256 digest of its value.
    pub fn from_sha256(name: &str, scope: Scope, hex: &str) -> Result<Self, Error> {
        let bad = || Error::BadDigest { name: name.into() };
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Self {
            name: name.into(),
            scope,
            digest,
            scram: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that matches none configured (401).
    Unknown,
    /// A known token whose scope is too small for the route (403).
    Scope { token: String, needed: Scope },
}

/// The access policy: open (no tokens configured) or bearer tokens with scopes.
#[derive(Debug, Clone, Default)]
pub struct Access {
    tokens: Arc<[Token]>,
}

impl Access {
    /// Anyone may call anything.
    pub fn open() -> Self {
        Self::default()
    }

    pub fn with_tokens(tokens: Vec<Token>) -> Self {
        Self {
            tokens: tokens.into(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scope `method` on `path` needs; `None` for what is open: the probes, and (to read)
    /// the console's page, the API's description and its UI, which hold no data (the console
    /// reads the API with the user's token).
    pub fn needed(method: &Method, path: &str) -> Option<Scope> {
        let reads = method == Method::GET || method == Method::HEAD;
        let page = matches!(path, "/" | "/openapi.json" | "/docs") || path.starts_with("/docs/");
        match path {
            "/healthz" | "/readyz" => None,
            _ if reads && page => None,
            _ if reads => Some(Scope::Read),
            // Queries only: the SQL interface refuses anything that changes state.
            "/v1/sql" if method == Method::POST => Some(Scope::Read),
            _ => Some(Scope::Admin),
        }
    }

    /// Decides a request from its method, path and presented bearer token. Returns the name
    /// of the token that allowed it (`None` when no token was needed).
    pub fn decide(
        &self,
        method: &Method,
        path: &str,
        presented: Option<&str>,
    ) -> Result<Option<&str>, Denied> {
        if self.is_open() {
            return Ok(None);
        }
        let Some(needed) = Self::needed(method, path) else {
            return Ok(None);
        };
        let presented = presented.ok_or(Denied::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare against every token, whatever matched first.
        let mut found: Option<&Token> = None;
        for token in self.tokens.iter() {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = found.or(Some(token));
            }
        }
        let token = found.ok_or(Denied::Unknown)?;
        if token.scope < needed {
            return Err(Denied::Scope {
                token: token.name.clone(),
                needed,
            });
        }
        Ok(Some(&token.name))
    }
}

impl Access {
    /// Whether some token can log in with SCRAM (its value was given, not only its digest).
    pub fn offers_scram(&self) -> bool {
        self.tokens.iter().any(|t| t.scram.is_some())
    }

    /// Finishes a SCRAM exchange for a SQL door: the name of the token whose proof the client's
    /// final message carries, and the server's final message.
    pub fn decide_scram(
        &self,
        exchange: &scram::Exchange,
        client_final: &[u8],
    ) -> Result<(String, String), scram::Error> {
        let candidates: Vec<(&Token, &scram::Keys)> = self
            .tokens
            .iter()
            .filter(|t| t.scope >= Scope::Read)
            .filter_map(|t| Some((t, t.scram.as_ref()?)))
            .collect();
        let keys: Vec<&scram::Keys> = candidates.iter().map(|(_, k)| *k).collect();
        let (i, server_final) = exchange.finish(client_final, &keys)?;
        Ok((candidates[i].0.name.clone(), server_final))
    }
}

impl Access {
    /// Decides a request that another Tandem process forwarded, authorized there by the token
    /// named `token` (see [`ForwardKey`]): allowed if that token's scope allows the route here.
    /// A signed request naming no token is the cluster's own (a serving process asking a
    /// worker for its partials): it may read, as the cluster token may.
    pub fn decide_as(
        &self,
        method: &Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<Option<String>, Denied> {
        if self.is_open() {
            return Ok(None);
        }
        let Some(needed) = Self::needed(method, path) else {
            return Ok(None);
        };
        let Some(name) = token else {
            return if needed == Scope::Read {
                Ok(None)
            } else {
                Err(Denied::Missing)
            };
        };
        let token = self
            .tokens
            .iter()
            .find(|t| t.name == name)
            .ok_or(Denied::Unknown)?;
        if token.scope < needed {
            return Err(Denied::Scope {
                token: token.name.clone(),
                needed,
            });
        }
        Ok(Some(token.name.clone()))
    }
}

/// The bearer token of an `Authorization` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether a request that is not a read came from a page of another site: the browser says so
/// in `Sec-Fetch-Site`, or its `Origin` names another host than the request's `Host`. Clients
/// that are not browsers (curl, scripts, other Tandem processes) send neither. Pure.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return matches!(site, "cross-site" | "same-site");
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => false,
        // An opaque origin (a sandboxed frame, a file) is never this API's page.
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let authority = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .trim_end_matches('/');
            !authority.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
    }
}

/// Whether a `Host` header names the loopback interface: `localhost` (or a name under it),
/// `127.0.0.0/8` or `[::1]`, with any port. Pure.
pub fn loopback_host(host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the middleware in front of every route checks.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) access: Access,
    /// Requests must name a loopback host (an open API on loopback; see the module docs).
    pub(crate) loopback_only: bool,
    /// Verifies requests forwarded by the other processes of a cluster.
    pub(crate) forward_key: Option<ForwardKey>,
}

/// The token that allowed a request (`None`: no token was needed), for the handlers that
/// forward it ([`ForwardKey`]).
#[derive(Debug, Clone)]
pub(crate) struct Authorized(pub(crate) Option<String>);

/// The header a forwarded request carries.
pub(crate) const FORWARDED: &str = "x-tandem-forwarded";

/// The axum middleware in front of every route.
pub(crate) async fn guard(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    if gate.loopback_only {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(loopback_host) {
            metrics::counter!("tandem_http_refused_total", "reason" => "host").increment(1);
            return ApiError::Forbidden(
                "this API has no tokens and answers only requests addressed to localhost: \
                 configure [[http.tokens]] to reach it by another name"
                    .into(),
            )
            .into_response();
        }
    }
    if cross_site(request.method(), request.headers()) {
        metrics::counter!("tandem_http_refused_total", "reason" => "cross_site").increment(1);
        return ApiError::Forbidden("a request from a page of another site may only read".into())
            .into_response();
    }
    let access = gate.access;
    let forwarded = request
        .headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (request, decision) = match (forwarded, &gate.forward_key) {
        // Forwarded by another process of the cluster: signed, without the user's token.
        (Some(signature), Some(key)) if signature.starts_with("v1.") => {
            let (parts, body) = request.into_parts();
            let body = match axum::body::to_bytes(body, usize::MAX).await {
                Ok(body) => body,
                Err(err) => return ApiError::BadBody(err.to_string()).into_response(),
            };
            let target = parts
                .uri
                .path_and_query()
                .map_or(parts.uri.path(), |p| p.as_str());
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let decision = key
                .verify(&signature, parts.method.as_str(), target, &body, now_ms)
                .and_then(|token| {
                    access.decide_as(&parts.method, parts.uri.path(), token.as_deref())
                });
            (
                Request::from_parts(parts, axum::body::Body::from(body)),
                decision,
            )
        }
        _ => {
            let decision = access
                .decide(
                    request.method(),
                    request.uri().path(),
                    bearer(request.headers()),
                )
                .map(|name| name.map(str::to_owned));
            (request, decision)
        }
    };
    match decision {
        Ok(token) => {
            let mut request = request;
            request.extensions_mut().insert(Authorized(token));
            next.run(request).await
        }
        Err(denied) => {
            tracing::debug!(path = %request.uri().path(), ?denied, "request refused");
            ApiError::from(denied).into_response()
        }
    }
}

/// Limits on every request and connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request that takes longer is answered 408.
    pub request_timeout: Duration,
    /// Requests handled at once; more wait (and count against their timeout).
    pub max_concurrent_requests: usize,
    /// A larger body is answered 413.
    pub max_body_bytes: usize,
    /// A connection that has not sent a whole request head this long after it opened, or after
    /// its last response, is closed (so this is also how long a kept-alive connection idles).
    pub header_timeout: Duration,
    /// A connection whose client reads nothing of a response for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; `None`: as many as the process's file limit allows, keeping
    /// room for the store and Kafka (see [`connection_cap`]). More wait to be accepted.
    pub max_connections: Option<usize>,
    /// Open `/stream` responses at most; more are answered 503.
    pub max_streams: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_streams: 128,
        }
    }
}

/// File descriptors kept for everything but HTTP connections: the object store, Kafka clients,
/// archive and checkpoint files, the SQL runtime's reads.
pub const RESERVED_FILES: usize = 512;

/// The most connections served at once under a file limit of `file_limit`: the configured
/// number, but never so many that the store and Kafka could not open files (at least 16).
/// Pure.
pub fn connection_cap(configured: Option<usize>, file_limit: u64) -> usize {
    let room = usize::try_from(file_limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FILES)
        .max(16);
    configured.unwrap_or(4096).min(room).max(1)
}

/// The HTTP front door: who may call, and within which limits.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    pub access: Access,
    pub limits: HttpLimits,
    /// Answer only requests addressed to a loopback host: set for an API without tokens that
    /// is not opened to anyone (`http.allow_anonymous`), against DNS rebinding.
    pub loopback_only: bool,
    /// Signs requests forwarded to, and verifies requests forwarded by, the other processes
    /// of a cluster (from the cluster token).
    pub forward_key: Option<ForwardKey>,
}

#[cfg(test)]
mod tests;
