//! The payload keys of `[schema]`: `format`, `registry`, `message`, `proto`, `envelope` and
//! `include_snapshot`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_shared::event::{Envelope, Format, PayloadFormat};
use tandem_store::registry::RegistrySettings;

use super::{Error, Result};

/// `[schema] registry = { url = "http://registry:8081", username = "...", password_env = "..." }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFile {
    url: String,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
}

/// The payload keys as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct FormatFile {
    pub(super) format: Option<PayloadFormat>,
    pub(super) registry: Option<RegistryFile>,
    /// Protobuf: the message type, `package.Message`.
    pub(super) message: Option<String>,
    /// Protobuf without a registry: a `.proto` file, relative to the config file.
    pub(super) proto: Option<PathBuf>,
    pub(super) envelope: Option<Envelope>,
    pub(super) include_snapshot: Option<bool>,
}

/// The decoder's format and the registry's settings.
pub(super) fn format_settings(
    file: FormatFile,
    tables_need_registry: bool,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Format, Option<RegistrySettings>)> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "schema",
        key,
        problem,
    };
    let payload = file.format.unwrap_or_default();
    let registry = match file.registry {
        None => None,
        Some(r) => {
            let password = match (r.password, r.password_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "registry",
                        "give password or password_env, not both".into(),
                    ));
                }
                (Some(p), None) => Some(p),
                (None, Some(var)) => Some(env(&var).ok_or_else(|| {
                    invalid("registry", format!("environment variable {var} is not set"))
                })?),
                (None, None) => None,
            };
            if password.is_some() && r.username.is_none() {
                return Err(invalid("registry", "a password needs a username".into()));
            }
            Some(RegistrySettings {
                url: r.url,
                username: r.username,
                password,
            })
        }
    };
    if payload == PayloadFormat::Json && registry.is_some() && !tables_need_registry {
        return Err(invalid(
            "registry",
            "JSON payloads carry no schema id; a registry serves `avro` and `protobuf`".into(),
        ));
    }
    if (payload == PayloadFormat::Avro || tables_need_registry) && registry.is_none() {
        return Err(invalid(
            "registry",
            "format `avro` reads writer schemas from a schema registry: set `registry = { url = \"...\" }`".into(),
        ));
    }
    if payload != PayloadFormat::Protobuf && (file.message.is_some() || file.proto.is_some()) {
        let key = if file.message.is_some() {
            "message"
        } else {
            "proto"
        };
        return Err(invalid(key, "a setting of format `protobuf` only".into()));
    }
    if payload == PayloadFormat::Protobuf {
        match (&registry, &file.proto, &file.message) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "proto",
                    "give a registry or a .proto file, not both".into(),
                ));
            }
            (None, None, _) => {
                return Err(invalid(
                    "proto",
                    "format `protobuf` needs a registry or a .proto file (`proto = \"orders.proto\"`)".into(),
                ));
            }
            (None, Some(_), None) => {
                return Err(invalid(
                    "message",
                    "with a .proto file, name the message type (`message = \"shop.Order\"`)".into(),
                ));
            }
            _ => {}
        }
        if file.envelope.is_some() {
            return Err(invalid(
                "envelope",
                "Debezium envelopes are read from JSON or Avro".into(),
            ));
        }
    }
    if file.include_snapshot.is_some() && file.envelope.is_none() {
        return Err(invalid(
            "include_snapshot",
            "a setting of `envelope = \"debezium\"` only".into(),
        ));
    }
    // A relative .proto path is relative to the configuration file.
    let base = Path::new(path).parent().unwrap_or(Path::new("."));
    let format = Format {
        payload,
        envelope: file.envelope,
        include_snapshot: file.include_snapshot.unwrap_or(true),
        registry: registry.is_some(),
        message: file.message,
        proto_file: file
            .proto
            .map(|p| if p.is_relative() { base.join(p) } else { p }),
    };
    Ok((format, registry))
}

#[cfg(test)]
mod tests {
    use tandem_shared::event::OP_FIELD;
    use tandem_shared::schema::FieldType;

    use super::super::Config;
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/tandem.toml");

    fn with_schema_keys(keys: &str) -> String {
        EXAMPLE.replace(
            "time_field = \"ts\"",
            &format!("time_field = \"ts\"\n{keys}"),
        )
    }

    fn parse(keys: &str) -> std::result::Result<Config, String> {
        let env = |name: &str| match name {
            "REGISTRY_PASSWORD" => Some("s3cret".to_owned()),
            "UNSET" => None,
            _ => Some("test-token".to_owned()),
        };
        Config::parse_with_env(&with_schema_keys(keys), "conf/t.toml", &env)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn json_is_the_default_and_avro_needs_a_registry() {
        let c = parse("").unwrap();
        assert_eq!(c.format, Format::default());
        assert!(c.registry.is_none());
        let e = parse("format = \"avro\"").unwrap_err();
        assert!(
            e.contains("schema.registry") && e.contains("registry"),
            "{e}"
        );
        let c = parse(
            "format = \"avro\"\nregistry = { url = \"http://registry:8081\", username = \"tandem\", password_env = \"REGISTRY_PASSWORD\" }",
        )
        .unwrap();
        assert_eq!(c.format.payload, PayloadFormat::Avro);
        assert!(c.format.registry);
        let registry = c.registry.unwrap();
        assert_eq!(registry.password.as_deref(), Some("s3cret"));
        assert!(!format!("{registry:?}").contains("s3cret"));
        let e = parse("registry = { url = \"http://registry:8081\" }").unwrap_err();
        assert!(e.contains("JSON payloads"), "{e}");
        let e = parse(
            "format = \"avro\"\nregistry = { url = \"http://r\", username = \"u\", password_env = \"UNSET\" }",
        )
        .unwrap_err();
        assert!(e.contains("UNSET"), "{e}");
    }

    #[test]
    fn protobuf_needs_a_registry_or_a_proto_file_with_a_message() {
        let e = parse("format = \"protobuf\"").unwrap_err();
        assert!(e.contains("schema.proto"), "{e}");
        let e = parse("format = \"protobuf\"\nproto = \"orders.proto\"").unwrap_err();
        assert!(e.contains("schema.message"), "{e}");
        let c = parse("format = \"protobuf\"\nproto = \"orders.proto\"\nmessage = \"shop.Order\"")
            .unwrap();
        // Relative to the configuration file.
        assert_eq!(
            c.format.proto_file.as_deref(),
            Some(Path::new("conf/orders.proto"))
        );
        let c = parse("format = \"protobuf\"\nregistry = { url = \"http://r:8081\" }").unwrap();
        assert!(c.format.framed());
        let e = parse("message = \"shop.Order\"").unwrap_err();
        assert!(e.contains("protobuf"), "{e}");
        let e = parse(
            "format = \"protobuf\"\nregistry = { url = \"http://r\" }\nenvelope = \"debezium\"",
        )
        .unwrap_err();
        assert!(e.contains("schema.envelope"), "{e}");
    }

    #[test]
    fn debezium_adds_the_operation_field() {
        let c = parse("envelope = \"debezium\"\ninclude_snapshot = false").unwrap();
        assert_eq!(c.format.envelope, Some(Envelope::Debezium));
        assert!(!c.format.include_snapshot);
        assert_eq!(c.schema.field_type(OP_FIELD), Some(FieldType::String));
        let e = parse("include_snapshot = false").unwrap_err();
        assert!(e.contains("include_snapshot"), "{e}");
        let typed = with_schema_keys("envelope = \"debezium\"").replace(
            "fields = { order_id",
            "fields = { _op = \"int64\", order_id",
        );
        let e = Config::parse_with_env(&typed, "t.toml", &|_| Some("t".into())).unwrap_err();
        assert!(e.to_string().contains("_op"), "{e}");
    }
}
