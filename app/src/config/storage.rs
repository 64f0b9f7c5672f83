//! The `[storage]` table: the object store's URL and, for S3, its endpoint, region and
//! credentials (each credential a value or the name of an environment variable holding it).

use serde::Deserialize;
use tandem_store::StorageSettings;

use super::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StorageFile {
    url: String,
    /// An S3-compatible server's address, instead of AWS's.
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    access_key_id: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_env: Option<String>,
    session_token: Option<String>,
    session_token_env: Option<String>,
}

pub(super) fn storage_settings(
    file: StorageFile,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StorageSettings> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "storage",
        key,
        problem,
    };
    // A credential given as a value, or named by an environment variable that must be set.
    let credential =
        |key: &'static str, value: Option<String>, var: Option<String>| match (value, var) {
            (Some(_), Some(_)) => Err(invalid(key, format!("give {key} or {key}_env, not both"))),
            (Some(v), None) => Ok(Some(v)),
            (None, Some(var)) => env(&var)
                .map(Some)
                .ok_or_else(|| invalid(key, format!("environment variable {var} is not set"))),
            (None, None) => Ok(None),
        };
    let settings = StorageSettings {
        access_key_id: credential("access_key_id", file.access_key_id, file.access_key_id_env)?,
        secret_access_key: credential(
            "secret_access_key",
            file.secret_access_key,
            file.secret_access_key_env,
        )?,
        session_token: credential("session_token", file.session_token, file.session_token_env)?,
        endpoint: file.endpoint,
        region: file.region,
        allow_http: file.allow_http,
        url: file.url,
    };
    let s3 = settings.url.starts_with("s3://");
    let s3_only = [
        ("endpoint", settings.endpoint.is_some()),
        ("region", settings.region.is_some()),
        ("allow_http", settings.allow_http.is_some()),
        ("access_key_id", settings.access_key_id.is_some()),
        ("secret_access_key", settings.secret_access_key.is_some()),
        ("session_token", settings.session_token.is_some()),
    ];
    if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set && !s3) {
        return Err(invalid(key, "a setting of an s3:// store only".into()));
    }
    if settings.access_key_id.is_some() != settings.secret_access_key.is_some() {
        return Err(invalid(
            "access_key_id",
            "give both access_key_id and secret_access_key (or neither, for the environment)"
                .into(),
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const BASE: &str = r#"
[kafka]
topic = "orders"
[schema]
time_field = "ts"
fields = { city = "string" }
"#;

    const VIEW: &str = r#"
[[views]]
name = "v"
window = { tumbling = "1m" }
aggregates = ["count(*) AS n"]
"#;

    fn parse(storage: &str) -> Result<Config, String> {
        let env = |name: &str| (name == "S3_SECRET").then(|| "from-env".to_owned());
        Config::parse_with_env(
            &format!("{BASE}[storage]\n{storage}\n{VIEW}"),
            "t.toml",
            &env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn s3_settings_take_values_or_environment_variables() {
        let c = parse(
            r#"url = "s3://bucket/tandem"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
allow_http = true
access_key_id = "AKID"
secret_access_key_env = "S3_SECRET""#,
        )
        .unwrap();
        let s = &c.storage;
        assert_eq!(s.url, "s3://bucket/tandem");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.allow_http, Some(true));
        assert_eq!(s.access_key_id.as_deref(), Some("AKID"));
        assert_eq!(s.secret_access_key.as_deref(), Some("from-env"));
        assert_eq!(s.session_token, None);
        // Without settings, S3 falls back to the AWS_* environment variables.
        let plain = parse(r#"url = "s3://bucket""#).unwrap();
        assert_eq!(
            plain.storage,
            tandem_store::StorageSettings::at("s3://bucket")
        );
    }

    #[test]
    fn misplaced_or_incomplete_storage_settings_are_refused() {
        for (storage, needle) in [
            (
                r#"url = "s3://b"
access_key_id = "AKID"
secret_access_key_env = "UNSET""#,
                "UNSET is not set",
            ),
            (
                r#"url = "s3://b"
secret_access_key = "x"
secret_access_key_env = "S3_SECRET""#,
                "not both",
            ),
            (
                r#"url = "s3://b"
access_key_id = "AKID""#,
                "give both",
            ),
            (
                r#"url = "file:///tmp/x"
endpoint = "http://127.0.0.1:9000""#,
                "storage.endpoint: a setting of an s3:// store only",
            ),
            (
                r#"url = "s3://b"
endpont = "x""#,
                "unknown field",
            ),
        ] {
            let err = parse(storage).unwrap_err();
            assert!(err.contains(needle), "{storage}: {err}");
        }
    }
}
