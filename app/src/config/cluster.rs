//! `[cluster]`: how one Tandem process finds the others when the roles run in several
//! processes (speed workers sharing the events topic's partitions, serving instances answering
//! for all of them, one batch scheduler at a time).
//!
//! ```toml
//! [cluster]
//! instance = "speed-1"                 # unique and stable per process (static group membership)
//! advertise = "http://speed-1:8080"    # where the others reach this process's API
//! heartbeat = "1s"                     # how often a speed worker announces its partitions
//! member_ttl = "6s"                    # a heartbeat older than this is a dead worker
//! token_env = "TANDEM_CLUSTER_TOKEN"   # a bearer token (read scope) sent to the others
//! static_membership = true             # the instance is the speed consumer's group.instance.id
//! ```
//!
//! Static membership lets a restarted speed worker (same instance name) take its partitions back
//! at once instead of after the session timeout; it is off by default because not every
//! Kafka-protocol broker implements it (tansu 0.6.0 stops assigning partitions at all).
//!
//! A process runs as part of a cluster when `[cluster]` is configured or its roles are split
//! (`--role` short of all four); then every setting has a default: the instance is
//! `<host name>-<HTTP port>`, the address `http://` and the bound address (the host name when
//! bound to all interfaces), and the token the `TANDEM_CLUSTER_TOKEN` environment variable.

use serde::Deserialize;
use tandem_shared::time::Span;

use super::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    instance: Option<String>,
    advertise: Option<String>,
    heartbeat: Option<Span>,
    member_ttl: Option<Span>,
    token_env: Option<String>,
    static_membership: Option<bool>,
}

/// Where the token processes send each other comes from when `cluster.token_env` is not set.
pub const CLUSTER_TOKEN_ENV: &str = "TANDEM_CLUSTER_TOKEN";

/// The `[cluster]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `None`: derived from the host name and the HTTP port at start.
    pub instance: Option<String>,
    /// `None`: `http://` and the address the API is bound to.
    pub advertise: Option<String>,
    pub heartbeat: Span,
    pub member_ttl: Span,
    pub token: Option<String>,
    pub static_membership: bool,
}

impl Default for ClusterConfig {
    /// Every setting's default (the section present but empty).
    fn default() -> Self {
        Self {
            instance: None,
            advertise: None,
            heartbeat: Span::from_millis(1_000),
            member_ttl: Span::from_millis(6_000),
            token: None,
            static_membership: false,
        }
    }
}

/// An instance name names objects in the store and the Kafka group member: a plain word.
pub fn check_instance(id: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || !id.chars().all(plain) {
        return Err(format!(
            "`{id}`: use letters, digits, `-`, `_` and `.` only"
        ));
    }
    Ok(())
}

pub(super) fn cluster_config(
    file: ClusterFile,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClusterConfig> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "cluster",
        key,
        problem,
    };
    let defaults = ClusterConfig::default();
    let heartbeat = file.heartbeat.unwrap_or(defaults.heartbeat);
    let member_ttl = file.member_ttl.unwrap_or(defaults.member_ttl);
    if heartbeat.millis() <= 0 {
        return Err(invalid("heartbeat", "must be greater than zero".into()));
    }
    if member_ttl.millis() < 2 * heartbeat.millis() {
        return Err(invalid(
            "member_ttl",
            format!(
                "must be at least twice the heartbeat ({heartbeat}), or live workers look dead"
            ),
        ));
    }
    if let Some(id) = &file.instance {
        check_instance(id).map_err(|problem| invalid("instance", problem))?;
    }
    if let Some(url) = &file.advertise
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(invalid(
            "advertise",
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    let token = match &file.token_env {
        None => None,
        Some(name) => Some(env(name).ok_or_else(|| {
            invalid(
                "token_env",
                format!("environment variable `{name}` is not set"),
            )
        })?),
    };
    Ok(ClusterConfig {
        instance: file.instance,
        advertise: file.advertise,
        heartbeat,
        member_ttl,
        token,
        static_membership: file.static_membership.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig> {
        let file: ClusterFile = toml::from_str(text).unwrap();
        cluster_config(file, "t.toml", &|name| {
            (name == "TOKEN").then(|| "secret".to_owned())
        })
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse("").unwrap();
        assert_eq!(c.heartbeat, Span::parse("1s").unwrap());
        assert_eq!(c.member_ttl, Span::parse("6s").unwrap());
        assert_eq!((c.instance, c.advertise, c.token), (None, None, None));
        let c = parse(
            "instance = \"speed-1\"\nadvertise = \"http://speed-1:8080\"\nheartbeat = \"2s\"\n\
             member_ttl = \"10s\"\ntoken_env = \"TOKEN\"\nstatic_membership = true",
        )
        .unwrap();
        assert_eq!(c.instance.as_deref(), Some("speed-1"));
        assert_eq!(c.token.as_deref(), Some("secret"));
        assert!(c.static_membership);
    }

    /// The configuration the Kubernetes manifests ship parses, with its `[cluster]` section.
    #[test]
    fn the_kubernetes_config_map_holds_a_valid_configuration() {
        let map = include_str!("../../../deploy/kubernetes/configmap.yaml");
        let (_, body) = map.split_once("tandem.toml: |\n").unwrap();
        let text: String = body
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let config =
            crate::config::Config::parse_with_env(&text, "configmap.yaml", &|_| Some("t".into()))
                .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.token.as_deref(), Some("t"));
        assert_eq!(cluster.member_ttl, Span::from_millis(6_000));
        assert!(cluster.static_membership);
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (text, key) in [
            ("member_ttl = \"1s\"", "member_ttl"),
            ("heartbeat = \"0s\"", "heartbeat"),
            ("instance = \"a/b\"", "instance"),
            ("advertise = \"speed-1:8080\"", "advertise"),
            ("token_env = \"UNSET\"", "token_env"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("cluster.{key}")), "{text}: {err}");
        }
    }
}
