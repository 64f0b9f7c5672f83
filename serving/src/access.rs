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

/// A named token: its scope and the SHA-256 digest of its value.
#[derive(Clone)]
pub struct Token {
    name: String,
    scope: Scope,
    digest: [u8; 32],
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

/// Signs requests one Tandem process forwards to another (job requests go to the holder of the
/// scheduler lease, at an address read from the store), with the cluster token as the key:
/// the user's bearer token is never sent on, so whoever can write an address into the store
/// cannot collect tokens. The signature covers the method, path, body, time and the name of
/// the token that authorized the request where it arrived; the receiver allows what that token
/// may do. Pure.
#[derive(Clone)]
pub struct ForwardKey {
    key: Arc<[u8]>,
}

impl fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForwardKey(<hidden>)")
    }
}

/// How far a forwarded request's time may be from the receiver's clock.
pub const FORWARD_SKEW_MS: i64 = 60_000;

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl ForwardKey {
    /// The key of a cluster whose processes share `secret` (the cluster token).
    pub fn new(secret: &str) -> Self {
        Self {
            key: Sha256::digest(secret.as_bytes()).to_vec().into(),
        }
    }

    fn mac(&self, method: &str, target: &str, at_ms: i64, token: &str, body: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| {
            // HMAC takes keys of any length.
            unreachable!("an HMAC key of any length is valid")
        });
        let body_digest: [u8; 32] = Sha256::digest(body).into();
        for part in [
            "tandem-forward-v1".as_bytes(),
            method.as_bytes(),
            target.as_bytes(),
            at_ms.to_string().as_bytes(),
            token.as_bytes(),
            &body_digest,
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The header value for a request (`target`: path and query) authorized by `token` here.
    pub fn sign(
        &self,
        method: &str,
        target: &str,
        at_ms: i64,
        token: Option<&str>,
        body: &[u8],
    ) -> String {
        let token = token.unwrap_or_default();
        format!(
            "v1.{at_ms}.{}.{}",
            hex_of(token.as_bytes()),
            hex_of(&self.mac(method, target, at_ms, token, body))
        )
    }

    /// The name of the token that authorized a forwarded request (`None`: none was needed
    /// where it arrived), if `header` signs exactly this request and is fresh at `now_ms`.
    pub fn verify(
        &self,
        header: &str,
        method: &str,
        target: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<String>, Denied> {
        let mut parts = header.split('.');
        let (Some("v1"), Some(at), Some(token), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Denied::Unknown);
        };
        let at_ms: i64 = at.parse().map_err(|_| Denied::Unknown)?;
        if now_ms.abs_diff(at_ms) > FORWARD_SKEW_MS.unsigned_abs() {
            return Err(Denied::Unknown);
        }
        let token = bytes_of_hex(token)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Denied::Unknown)?;
        let presented = bytes_of_hex(mac).ok_or(Denied::Unknown)?;
        let expected = self.mac(method, target, at_ms, &token, body);
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(Denied::Unknown);
        }
        Ok((!token.is_empty()).then_some(token))
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
mod tests {
    use super::*;

    fn policy() -> Access {
        Access::with_tokens(vec![
            Token::from_secret("dashboards", Scope::Read, "read-secret").unwrap(),
            Token::from_sha256(
                "ops",
                Scope::Admin,
                // sha256("admin-secret")
                &hex(&Sha256::digest(b"admin-secret")),
            )
            .unwrap(),
        ])
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn scopes_follow_method_and_probes_stay_open() {
        let access = policy();
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        assert_eq!(access.decide(&get, "/healthz", None), Ok(None));
        assert_eq!(access.decide(&get, "/readyz", None), Ok(None));
        // The console's page, the API description and its UI hold no data.
        for open in ["/", "/openapi.json", "/docs", "/docs/index.html"] {
            assert_eq!(access.decide(&get, open, None), Ok(None), "{open}");
        }
        assert_eq!(access.decide(&get, "/docsx", None), Err(Denied::Missing));
        assert_eq!(access.decide(&post, "/", None), Err(Denied::Missing));
        assert_eq!(access.decide(&get, "/v1/views", None), Err(Denied::Missing));
        assert_eq!(access.decide(&get, "/metrics", None), Err(Denied::Missing));
        assert_eq!(
            access.decide(&get, "/v1/views", Some("wrong")),
            Err(Denied::Unknown)
        );
        assert_eq!(
            access.decide(&get, "/v1/views", Some("read-secret")),
            Ok(Some("dashboards"))
        );
        assert_eq!(
            access.decide(&post, "/v1/jobs", Some("read-secret")),
            Err(Denied::Scope {
                token: "dashboards".into(),
                needed: Scope::Admin
            })
        );
        // SQL is a query: a read token may post it, a request without a token may not.
        assert_eq!(
            access.decide(&post, "/v1/sql", Some("read-secret")),
            Ok(Some("dashboards"))
        );
        assert_eq!(access.decide(&post, "/v1/sql", None), Err(Denied::Missing));
        assert_eq!(
            access.decide(&delete, "/v1/jobs/x", Some("admin-secret")),
            Ok(Some("ops"))
        );
        assert_eq!(
            access.decide(&get, "/v1/jobs", Some("admin-secret")),
            Ok(Some("ops"))
        );
        // A prefix or extension of a token is not the token.
        assert_eq!(
            access.decide(&get, "/v1/views", Some("read-secre")),
            Err(Denied::Unknown)
        );
        assert_eq!(
            access.decide(&get, "/v1/views", Some("read-secretx")),
            Err(Denied::Unknown)
        );
    }

    #[test]
    fn forwarded_requests_carry_a_signature_not_the_users_token() {
        let key = ForwardKey::new("cluster-secret");
        let now = 1_790_000_000_000;
        let signed = key.sign("POST", "/v1/jobs", now, Some("ops"), b"{}");
        assert!(!signed.contains("admin-secret"));
        assert_eq!(
            key.verify(&signed, "POST", "/v1/jobs", b"{}", now + 1_000),
            Ok(Some("ops".to_owned()))
        );
        // Anything changed, a stale signature, or another cluster's key: refused.
        for (method, target, body, at) in [
            ("DELETE", "/v1/jobs", &b"{}"[..], now),
            ("POST", "/v1/jobs/x", &b"{}"[..], now),
            ("POST", "/v1/jobs", &b"{\"view\":\"v\"}"[..], now),
            ("POST", "/v1/jobs", &b"{}"[..], now + 2 * FORWARD_SKEW_MS),
        ] {
            assert_eq!(
                key.verify(&signed, method, target, body, at),
                Err(Denied::Unknown),
                "{method} {target}"
            );
        }
        assert_eq!(
            ForwardKey::new("other").verify(&signed, "POST", "/v1/jobs", b"{}", now),
            Err(Denied::Unknown)
        );
        assert_eq!(
            key.verify("v1.garbage", "POST", "/v1/jobs", b"{}", now),
            Err(Denied::Unknown)
        );
        // The receiver allows what the named token may do there.
        let access = policy();
        assert_eq!(
            access.decide_as(&Method::POST, "/v1/jobs", Some("ops")),
            Ok(Some("ops".to_owned()))
        );
        assert!(matches!(
            access.decide_as(&Method::POST, "/v1/jobs", Some("dashboards")),
            Err(Denied::Scope { .. })
        ));
        assert_eq!(
            access.decide_as(&Method::POST, "/v1/jobs", None),
            Err(Denied::Missing)
        );
        // The cluster's own request (no token named) may read.
        assert_eq!(
            access.decide_as(&Method::GET, "/v1/internal/partials/v", None),
            Ok(None)
        );
    }

    #[test]
    fn requests_from_other_sites_may_only_read() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            h
        };
        let post = Method::POST;
        // curl and scripts send neither header.
        assert!(!cross_site(&post, &headers(&[("host", "localhost:8080")])));
        // The console itself: same origin.
        assert!(!cross_site(
            &post,
            &headers(&[
                ("host", "localhost:8080"),
                ("origin", "http://localhost:8080"),
                ("sec-fetch-site", "same-origin")
            ])
        ));
        assert!(!cross_site(
            &post,
            &headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080")
            ])
        ));
        // A form on another site posting text/plain.
        assert!(cross_site(
            &post,
            &headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://evil.example")
            ])
        ));
        assert!(cross_site(
            &post,
            &headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])
        ));
        assert!(cross_site(
            &Method::DELETE,
            &headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])
        ));
        // Reads are never refused for it.
        assert!(!cross_site(
            &Method::GET,
            &headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])
        ));
    }

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:80",
            "console.localhost:1",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]:8080",
            "::1",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:8080",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn connections_leave_room_for_the_store_and_kafka() {
        assert_eq!(connection_cap(None, 1024), 1024 - RESERVED_FILES);
        assert_eq!(connection_cap(None, 1 << 20), 4096);
        assert_eq!(connection_cap(Some(100), 1024), 100);
        assert_eq!(connection_cap(Some(5000), 1024), 1024 - RESERVED_FILES);
        // A tiny limit still serves a few connections.
        assert_eq!(connection_cap(None, 256), 16);
    }

    #[test]
    fn an_open_policy_allows_everything() {
        let access = Access::open();
        assert_eq!(access.decide(&Method::DELETE, "/v1/jobs/x", None), Ok(None));
    }

    #[test]
    fn bearer_headers_are_read_leniently_but_only_as_bearer() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn digests_must_be_hex_of_the_right_length() {
        assert!(Token::from_sha256("t", Scope::Read, "abc").is_err());
        assert!(Token::from_sha256("t", Scope::Read, &"zz".repeat(32)).is_err());
        assert!(Token::from_sha256("t", Scope::Read, &"Ab".repeat(32)).is_ok());
        assert!(Token::from_secret("t", Scope::Read, "").is_err());
        let debug = format!(
            "{:?}",
            Token::from_secret("t", Scope::Read, "s3cret").unwrap()
        );
        assert!(
            !debug.contains("s3cret") && debug.contains("\"t\""),
            "{debug}"
        );
    }
}
