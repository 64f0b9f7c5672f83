//! A query's errors: each refusal and failure with its kind, the position DataFusion's parser
//! names, and the read-only checks that refuse DDL, DML and COPY before anything runs.

use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::parser::ParserError;
use tandem_shared::error::ErrorKind;

use std::time::Duration;

use super::SqlLimits;
use super::runtime::{self, Refusal};

/// Where in the SQL text a problem is (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// Errors of a SQL query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Syntax {
        message: String,
        position: Option<Position>,
    },
    #[error("{message}")]
    Plan {
        message: String,
        position: Option<Position>,
    },
    #[error("only queries are allowed: {0} is not")]
    ReadOnly(&'static str),
    #[error("the query ran longer than {0:?} (http.query_timeout)")]
    Timeout(Duration),
    #[error("the query needs more memory than {limit} bytes (http.query_memory): {message}")]
    Memory { limit: usize, message: String },
    #[error(
        "the result has more than {0} rows (http.query_rows): add a LIMIT, a narrower filter or an aggregate"
    )]
    TooManyRows(usize),
    #[error("the query failed: {0}")]
    Execution(String),
    /// Transient: every query slot is taken.
    #[error("{0} (http.max_concurrent_queries)")]
    Busy(Refusal),
    /// Reading the store failed, or a table could not be prepared.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Internal(_) => ErrorKind::Internal,
            Error::Busy(_) => ErrorKind::Transient,
            _ => ErrorKind::User,
        }
    }

    /// The position of a syntax or planning error, if DataFusion reported one.
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Syntax { position, .. } | Error::Plan { position, .. } => *position,
            _ => None,
        }
    }
}

/// `Line: L, Column: C` as the SQL parser writes it.
fn parse_position(message: &str) -> Option<Position> {
    let rest = &message[message.rfind("Line: ")? + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Position {
        line: line.trim().parse().ok()?,
        column: column.parse().ok()?,
    })
}

fn position_of(error: &DataFusionError) -> Option<Position> {
    if let Some(span) = error.diagnostic().and_then(|d| d.span) {
        return Some(Position {
            line: span.start.line,
            column: span.start.column,
        });
    }
    parse_position(&error.to_string())
}

/// Sorts a DataFusion error by whose problem it is.
pub(super) fn classify(error: DataFusionError, limits: &SqlLimits) -> Error {
    let position = position_of(&error);
    if let DataFusionError::External(e) = error.find_root()
        && e.downcast_ref::<runtime::PastDeadline>().is_some()
    {
        return Error::Timeout(limits.timeout);
    }
    match error.find_root() {
        DataFusionError::SQL(parser, _) => Error::Syntax {
            message: match parser.as_ref() {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
                other => other.to_string(),
            },
            position,
        },
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Error::Plan {
            message: error.strip_backtrace(),
            position,
        },
        DataFusionError::ResourcesExhausted(message) => Error::Memory {
            limit: limits.memory_bytes,
            message: message.clone(),
        },
        DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_)
        | DataFusionError::External(_)
        | DataFusionError::Internal(_) => Error::Internal(error.strip_backtrace()),
        _ => Error::Execution(error.strip_backtrace()),
    }
}

/// What a refused plan does.
pub(super) fn refused(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Ddl(_) => "a definition (CREATE, DROP, ...)",
        LogicalPlan::Dml(_) => "a change (INSERT, UPDATE, DELETE)",
        LogicalPlan::Copy(_) => "COPY",
        LogicalPlan::Statement(_) => "a statement (SET, transactions, ...)",
        _ => "this statement",
    }
}

/// What a refused statement does, before it is planned (a door that parses statements itself
/// refuses what is not a query as the planner would).
pub(super) fn refused_statement(statement: &ast::Statement) -> &'static str {
    let text = statement.to_string();
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" => {
            "a change (INSERT, UPDATE, DELETE)"
        }
        "COPY" => "COPY",
        "CREATE" | "DROP" | "ALTER" | "GRANT" | "REVOKE" | "COMMENT" => {
            "a definition (CREATE, DROP, ...)"
        }
        _ => "a statement (SET, transactions, ...)",
    }
}
