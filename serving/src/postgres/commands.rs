//! What PostgreSQL clients send besides queries: transactions, `SET`, `SHOW`, `DISCARD`, and
//! how each refusal of the SQL engine reads as a PostgreSQL error. Pure.
//!
//! ```text
//!  statement ─► Command::of ─► Some(command): answered by the connection (no query runs)
//!                           └► None: a query for the SQL engine
//!  sql::Error ─► sqlstate ─► ErrorInfo { code, message }
//! ```
//!
//! Tandem is read-only and every query reads the current publication, so a transaction block
//! holds nothing: `BEGIN`, `COMMIT` and `ROLLBACK` only move the connection's transaction
//! status, which drivers (psycopg, JDBC) rely on. A `SET` of a client setting is kept by the
//! connection (`SHOW` reads it back, `statement_timeout` shortens its queries' timeout); the
//! engine's own settings (`datafusion.*`) are the server's and cannot be set.

use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use pgwire::error::ErrorInfo;

use crate::sql::Error;

/// A statement the connection answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Begin,
    Commit,
    Rollback,
    /// `SET name = value` (name in lower case).
    Set {
        name: String,
        value: String,
    },
    /// `SHOW name` (name in lower case, words joined by a space).
    Show(String),
    /// `DISCARD ALL`, `DEALLOCATE`, ...: nothing to do; the tag to answer.
    Nothing(&'static str),
    /// A `SET` this server refuses, with why.
    Refused(String),
}

/// Client settings a `SET` may change, and the name a `ParameterStatus` reports each by (if the
/// protocol reports it).
const CLIENT_SETTINGS: [(&str, Option<&str>); 10] = [
    ("application_name", Some("application_name")),
    ("datestyle", Some("DateStyle")),
    ("intervalstyle", Some("IntervalStyle")),
    ("timezone", Some("TimeZone")),
    ("client_encoding", Some("client_encoding")),
    ("extra_float_digits", Some("extra_float_digits")),
    ("search_path", Some("search_path")),
    ("bytea_output", Some("bytea_output")),
    ("statement_timeout", None),
    ("client_min_messages", None),
];

/// The name a `ParameterStatus` message reports a client setting by, if it reports it.
pub(crate) fn reported_as(name: &str) -> Option<&'static str> {
    CLIENT_SETTINGS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, reported)| *reported)
}

/// Settings a `SET` is accepted for and ignored: PostgreSQL's own planner and session settings
/// that drivers and tools send on connect and that mean nothing here.
fn ignored_setting(name: &str) -> bool {
    matches!(
        name,
        "lock_timeout"
            | "idle_in_transaction_session_timeout"
            | "standard_conforming_strings"
            | "transaction_isolation"
            | "default_transaction_isolation"
            | "default_transaction_read_only"
            | "session characteristics"
            | "jit"
            | "role"
            | "session_authorization"
    ) || name.starts_with("enable_")
}

fn unquoted(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string().trim_matches('\'').to_owned(),
    }
}

impl Command {
    /// The command `statement` is, or `None` for a query.
    pub(crate) fn of(statement: &Statement) -> Option<Command> {
        match statement {
            Statement::StartTransaction { .. } => Some(Command::Begin),
            Statement::Commit { .. } => Some(Command::Commit),
            // Savepoints hold nothing either: the transaction block goes on.
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Some(Command::Nothing("ROLLBACK")),
            Statement::Rollback { .. } => Some(Command::Rollback),
            Statement::Savepoint { .. } => Some(Command::Nothing("SAVEPOINT")),
            Statement::ReleaseSavepoint { .. } => Some(Command::Nothing("RELEASE")),
            Statement::ShowVariable { variable } => Some(Command::Show(
                variable
                    .iter()
                    .map(|i| i.value.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            Statement::Set(set) => Some(Self::set(set)),
            Statement::Discard { .. } => Some(Command::Nothing("DISCARD ALL")),
            Statement::Deallocate { .. } => Some(Command::Nothing("DEALLOCATE")),
            _ => None,
        }
    }

    fn set(set: &Set) -> Command {
        let (name, value) = match set {
            Set::SingleAssignment {
                variable, values, ..
            } => (
                variable.to_string().to_lowercase(),
                values.iter().map(unquoted).collect::<Vec<_>>().join(", "),
            ),
            Set::SetTimeZone { value, .. } => ("timezone".to_owned(), unquoted(value)),
            Set::SetNames { charset_name, .. } => {
                ("client_encoding".to_owned(), charset_name.to_string())
            }
            Set::SetTransaction { .. } | Set::SetSessionParam(_) => {
                return Command::Nothing("SET");
            }
            other => {
                return Command::Refused(format!("{other} is not supported"));
            }
        };
        if name.starts_with("datafusion.") {
            return Command::Refused(format!(
                "{name} is the server's setting and cannot be changed by a client"
            ));
        }
        if name == "statement_timeout" && timeout_millis(&value).is_none() {
            return Command::Refused(format!("invalid value for statement_timeout: {value}"));
        }
        if CLIENT_SETTINGS.iter().any(|(n, _)| *n == name) {
            Command::Set { name, value }
        } else if ignored_setting(&name) {
            Command::Nothing("SET")
        } else {
            Command::Refused(format!("unrecognized configuration parameter \"{name}\""))
        }
    }
}

/// `statement_timeout`'s value in milliseconds: a number (milliseconds) or with a unit (`ms`,
/// `s`, `min`); `0` is none.
pub(crate) fn timeout_millis(value: &str) -> Option<u64> {
    let value = value.trim().to_ascii_lowercase();
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = value.strip_suffix("min") {
        (n, 60_000)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000)
    } else {
        (value.as_str(), 1)
    };
    number.trim().parse::<u64>().ok()?.checked_mul(scale)
}

/// The SQLSTATE of a refused or failed query.
pub(crate) fn sqlstate(error: &Error) -> &'static str {
    match error {
        Error::Syntax { .. } => "42601",
        Error::Plan { message, .. } => {
            let lower = message.to_lowercase();
            if lower.contains("table") && lower.contains("not found") {
                "42P01"
            } else if lower.contains("no field named") || lower.contains("column") {
                "42703"
            } else {
                "42000"
            }
        }
        Error::ReadOnly(_) => "25006",
        Error::Timeout(_) => "57014",
        Error::Memory { .. } => "53200",
        Error::TooManyRows(_) => "54000",
        Error::Busy(_) => "53000",
        Error::Execution(_) => "22000",
        Error::Internal(_) => "XX000",
    }
}

/// A PostgreSQL error for a refused or failed query.
pub(crate) fn error_info(error: &Error) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate(error).to_owned(),
        error.to_string(),
    );
    if let Some(position) = error.position() {
        info.detail = Some(format!(
            "at line {}, column {}",
            position.line, position.column
        ));
    }
    info
}

/// A PostgreSQL error with `code`.
pub(crate) fn error(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("ERROR".to_owned(), code.to_owned(), message.into())
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn command(sql: &str) -> Option<Command> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        Command::of(&statements[0])
    }

    #[test]
    fn what_clients_send_on_connect_is_answered_by_the_connection() {
        assert_eq!(command("BEGIN"), Some(Command::Begin));
        assert_eq!(command("START TRANSACTION READ ONLY"), Some(Command::Begin));
        assert_eq!(command("COMMIT"), Some(Command::Commit));
        assert_eq!(command("ROLLBACK"), Some(Command::Rollback));
        assert_eq!(
            command("SAVEPOINT _pg3_1"),
            Some(Command::Nothing("SAVEPOINT"))
        );
        assert_eq!(
            command("ROLLBACK TO SAVEPOINT _pg3_1"),
            Some(Command::Nothing("ROLLBACK"))
        );
        assert_eq!(
            command("RELEASE SAVEPOINT _pg3_1"),
            Some(Command::Nothing("RELEASE"))
        );
        assert_eq!(
            command("SET search_path TO public"),
            Some(Command::Set {
                name: "search_path".into(),
                value: "public".into()
            })
        );
        assert_eq!(
            command("SET application_name = 'grafana'"),
            Some(Command::Set {
                name: "application_name".into(),
                value: "grafana".into()
            })
        );
        assert_eq!(
            command("SET DateStyle = 'ISO'"),
            Some(Command::Set {
                name: "datestyle".into(),
                value: "ISO".into()
            })
        );
        assert_eq!(
            command("SET extra_float_digits = 3"),
            Some(Command::Set {
                name: "extra_float_digits".into(),
                value: "3".into()
            })
        );
        assert_eq!(
            command("SET TIME ZONE 'UTC'"),
            Some(Command::Set {
                name: "timezone".into(),
                value: "UTC".into()
            })
        );
        assert_eq!(
            command("SHOW transaction isolation level"),
            Some(Command::Show("transaction isolation level".into()))
        );
        assert_eq!(
            command("SHOW search_path"),
            Some(Command::Show("search_path".into()))
        );
        assert_eq!(command("SELECT 1"), None);
    }

    #[test]
    fn the_engines_settings_and_unknown_ones_are_refused() {
        assert!(matches!(
            command("SET datafusion.execution.target_partitions = 64"),
            Some(Command::Refused(_))
        ));
        assert!(matches!(
            command("SET no_such_setting = 1"),
            Some(Command::Refused(_))
        ));
        assert!(matches!(
            command("SET statement_timeout = 'soon'"),
            Some(Command::Refused(_))
        ));
        assert_eq!(command("SET jit = off"), Some(Command::Nothing("SET")));
    }

    #[test]
    fn statement_timeouts_read_as_postgresql_writes_them() {
        assert_eq!(timeout_millis("5000"), Some(5_000));
        assert_eq!(timeout_millis("250ms"), Some(250));
        assert_eq!(timeout_millis("2s"), Some(2_000));
        assert_eq!(timeout_millis("1min"), Some(60_000));
        assert_eq!(timeout_millis("0"), Some(0));
        assert_eq!(timeout_millis("soon"), None);
    }

    #[test]
    fn each_refusal_has_its_sqlstate() {
        use std::time::Duration;
        let syntax = Error::Syntax {
            message: "x".into(),
            position: None,
        };
        assert_eq!(sqlstate(&syntax), "42601");
        assert_eq!(sqlstate(&Error::ReadOnly("COPY")), "25006");
        assert_eq!(sqlstate(&Error::Timeout(Duration::from_secs(1))), "57014");
        assert_eq!(
            sqlstate(&Error::Memory {
                limit: 1,
                message: String::new()
            }),
            "53200"
        );
        assert_eq!(sqlstate(&Error::TooManyRows(10)), "54000");
        let missing = Error::Plan {
            message: "table 'tandem.public.nope' not found".into(),
            position: None,
        };
        assert_eq!(sqlstate(&missing), "42P01");
    }
}
