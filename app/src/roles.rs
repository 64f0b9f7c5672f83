//! Which parts of Tandem one process runs: `tandem run --role speed,archive,batch,serve`.
//!
//! ```text
//!  speed    consume the events topic in the speed workers' group; announce owned partitions
//!  archive  consume it in the archive's group; write the master dataset
//!  batch    run recompute jobs (scheduled and requested)
//!  serve    answer the public API, asking every speed worker for its partitions
//! ```
//!
//! Every process serves `/healthz`, `/readyz`, `/metrics` and the internal partials route; the
//! public API only with `serve`. Processes with the same role share its work through Kafka's
//! consumer groups (speed, archive).

use std::collections::BTreeSet;
use std::fmt;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// One role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Speed,
    Archive,
    Batch,
    Serve,
}

impl Role {
    const ALL: [Role; 4] = [Role::Speed, Role::Archive, Role::Batch, Role::Serve];

    fn name(self) -> &'static str {
        match self {
            Role::Speed => "speed",
            Role::Archive => "archive",
            Role::Batch => "batch",
            Role::Serve => "serve",
        }
    }

    /// The readiness components this role's tasks and probes report.
    fn components(self) -> &'static [&'static str] {
        match self {
            Role::Speed => &["speed", "consumer"],
            Role::Archive => &["archive"],
            Role::Batch => &["scheduler"],
            Role::Serve => &[],
        }
    }
}

/// The roles of one process; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Default for Roles {
    /// All four: one process runs Tandem.
    fn default() -> Self {
        Self(Role::ALL.into_iter().collect())
    }
}

impl Roles {
    /// Parses a comma-separated list such as `speed,serve`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut roles = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let role = Role::ALL
                .into_iter()
                .find(|r| r.name() == part)
                .ok_or_else(|| {
                    format!("unknown role `{part}`: use speed, archive, batch and serve")
                })?;
            roles.insert(role);
        }
        if roles.is_empty() {
            return Err("give at least one role: speed, archive, batch or serve".into());
        }
        Ok(Self(roles))
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// All four roles in this one process.
    pub fn is_all(&self) -> bool {
        self.0.len() == Role::ALL.len()
    }

    /// Readiness components of these roles, and those every process has.
    pub fn components(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self
            .0
            .iter()
            .flat_map(|r| r.components().iter().copied())
            .collect();
        out.extend(["reconciler", "storage", "registry"]);
        out
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// Paths every process answers, whatever its roles.
fn always_served(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || path.starts_with("/v1/internal/")
}

/// Middleware of a process without the `serve` role: the public API answers 404 saying so.
pub async fn without_serve(request: Request, next: Next) -> Response {
    if always_served(request.uri().path()) {
        return next.run(request).await;
    }
    let body = serde_json::json!({"error": {
        "code": "not_found",
        "message": "this process does not run the serve role: query a process started with --role serve",
    }});
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_name_their_components() {
        let r = Roles::parse("speed, serve").unwrap();
        assert!(r.has(Role::Speed) && r.has(Role::Serve) && !r.has(Role::Batch));
        assert!(!r.is_all());
        assert_eq!(r.to_string(), "speed,serve");
        assert_eq!(
            r.components(),
            ["speed", "consumer", "reconciler", "storage", "registry"]
        );
        assert!(Roles::default().is_all());
        assert_eq!(
            Roles::parse("speed,archive,batch,serve").unwrap(),
            Roles::default()
        );
        assert!(Roles::parse("speed,query").unwrap_err().contains("`query`"));
        assert!(Roles::parse(" , ").is_err());
    }

    #[test]
    fn probes_and_the_internal_route_are_always_served() {
        assert!(always_served("/readyz"));
        assert!(always_served("/v1/internal/partials/orders"));
        assert!(!always_served("/v1/views/orders"));
        assert!(!always_served("/v1/jobs"));
    }
}
