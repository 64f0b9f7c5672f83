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

/// The bearer token of an `Authorization` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The axum middleware in front of every route.
pub(crate) async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    let decision = access.decide(
        request.method(),
        request.uri().path(),
        bearer(request.headers()),
    );
    match decision {
        Ok(_) => next.run(request).await,
        Err(denied) => {
            tracing::debug!(path = %request.uri().path(), ?denied, "request refused");
            ApiError::from(denied).into_response()
        }
    }
}

/// Limits on every request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request that takes longer is answered 408.
    pub request_timeout: Duration,
    /// Requests handled at once; more wait (and count against their timeout).
    pub max_concurrent_requests: usize,
    /// A larger body is answered 413.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            max_body_bytes: 1 << 20,
        }
    }
}

/// The HTTP front door: who may call, and within which limits.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    pub access: Access,
    pub limits: HttpLimits,
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
