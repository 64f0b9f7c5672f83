//! The `[http]` table: bearer tokens (values from the environment or as SHA-256 digests) and
//! request limits, validated into the serving layer's `HttpPolicy`.

use std::collections::BTreeSet;

use tandem_serving::sql::SqlLimits;
use tandem_serving::{Access, HttpPolicy, HttpSettings, Token};
use tandem_shared::settings::Invalid;

use super::{Error, Result};

/// HTTP settings: the access policy and limits, and whether an open API may listen beyond
/// loopback.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    pub policy: HttpPolicy,
    pub allow_anonymous: bool,
    /// Bounds on each `POST /v1/sql` query.
    pub sql: SqlLimits,
}

pub(super) fn http_config(
    file: HttpSettings,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HttpConfig> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "http",
        key,
        problem,
    };
    file.check()
        .map_err(|Invalid { key, problem }| invalid(key, problem))?;
    let mut tokens = Vec::with_capacity(file.tokens.len());
    let mut names = BTreeSet::new();
    for t in &file.tokens {
        if !names.insert(t.name.as_str()) {
            return Err(invalid(
                "tokens",
                format!("a token named `{}` is already defined", t.name),
            ));
        }
        let token = match (&t.env, &t.sha256) {
            (Some(var), None) => {
                let value = env(var).ok_or_else(|| {
                    invalid(
                        "tokens",
                        format!("token `{}`: environment variable {var} is not set", t.name),
                    )
                })?;
                Token::from_secret(&t.name, t.scope, &value)
            }
            (None, Some(hex)) => Token::from_sha256(&t.name, t.scope, hex),
            _ => {
                return Err(invalid(
                    "tokens",
                    format!("token `{}`: give exactly one of env or sha256", t.name),
                ));
            }
        }
        .map_err(|e| invalid("tokens", e.to_string()))?;
        tokens.push(token);
    }
    Ok(HttpConfig {
        policy: HttpPolicy {
            // An API without tokens answers only requests addressed to loopback, unless it is
            // opened to anyone.
            loopback_only: tokens.is_empty() && !file.allow_anonymous,
            // Set from the cluster token when the process joins a cluster.
            forward_key: None,
            access: Access::with_tokens(tokens),
            limits: file.limits(),
        },
        allow_anonymous: file.allow_anonymous,
        sql: file.sql(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Config, DEMO};
    use tandem_serving::sql::SqlLimits;

    #[test]
    fn tokens_come_from_the_environment_or_a_digest_and_limits_have_defaults() {
        let text = format!(
            "{DEMO}\n[http]\nrequest_timeout = \"5s\"\nmax_body_bytes = \"64KiB\"\n\
             [[http.tokens]]\nname = \"dashboards\"\nscope = \"read\"\nenv = \"TOKEN_A\"\n\
             [[http.tokens]]\nname = \"ops\"\nscope = \"admin\"\nsha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        let env = |name: &str| (name == "TOKEN_A").then(|| "secret-a".to_owned());
        let c = Config::parse_with_env(&text, "t.toml", &env).unwrap();
        let access = &c.http.policy.access;
        assert!(!access.is_open());
        let get = axum::http::Method::GET;
        assert_eq!(
            access.decide(&get, "/v1/views", Some("secret-a")),
            Ok(Some("dashboards"))
        );
        assert_eq!(c.http.policy.limits.max_body_bytes, 64 << 10);
        assert_eq!(c.http.policy.limits.request_timeout.as_secs(), 5);
        assert_eq!(c.http.policy.limits.max_concurrent_requests, 512);
        assert!(!c.http.allow_anonymous);
        assert_eq!(c.http.sql, SqlLimits::default());
        let sql = text.replace(
            "[http]\n",
            "[http]\nquery_timeout = \"2s\"\nquery_memory = \"8MiB\"\nquery_rows = 10\n\
             max_concurrent_queries = 2\nquery_threads = 3\nheader_timeout = \"3s\"\n\
             idle_timeout = \"7s\"\nmax_connections = 99\nmax_streams = 5\n",
        );
        let c = Config::parse_with_env(&sql, "t.toml", &env).unwrap();
        assert_eq!(
            c.http.sql,
            SqlLimits {
                timeout: std::time::Duration::from_secs(2),
                memory_bytes: 8 << 20,
                max_rows: 10,
                runtime: tandem_serving::sql::SqlRuntimeLimits {
                    threads: 3,
                    max_concurrent: 2,
                    ..SqlLimits::default().runtime
                },
            }
        );
        let limits = &c.http.policy.limits;
        assert_eq!(limits.header_timeout.as_secs(), 3);
        assert_eq!(limits.idle_timeout.as_secs(), 7);
        assert_eq!(limits.max_connections, Some(99));
        assert_eq!(limits.max_streams, 5);
        for bad in [
            "query_timeout = \"0s\"",
            "query_memory = 0",
            "query_rows = 0",
            "max_concurrent_queries = 0",
            "query_threads = 0",
            "header_timeout = \"0s\"",
            "max_connections = 0",
        ] {
            let text = text.replace("[http]\n", &format!("[http]\n{bad}\n"));
            assert!(
                Config::parse_with_env(&text, "t.toml", &env).is_err(),
                "{bad}"
            );
        }

        let no_env = |_: &str| None;
        let e = Config::parse_with_env(&text, "t.toml", &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOKEN_A") && e.contains("dashboards"), "{e}");
        let both = text.replace("env = \"TOKEN_A\"", "env = \"TOKEN_A\"\nsha256 = \"00\"");
        let e = Config::parse_with_env(&both, "t.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one"), "{e}");
        let scope = text.replace("scope = \"read\"", "scope = \"root\"");
        assert!(Config::parse_with_env(&scope, "t.toml", &env).is_err());
        // Without an [http] table the API is open, with default limits.
        let c = Config::parse(DEMO, "demo").unwrap();
        assert!(c.http.policy.access.is_open());
    }
}
