//! View definitions: what a view groups by, filters on, how it windows time and what it aggregates.
//!
//! One [`ViewDefinition`] drives both layers. Filter and aggregate-argument expressions stay SQL
//! text here; each layer hands the same text to DataFusion (the speed layer compiles it to physical
//! expressions over decoded event batches, the batch layer embeds it in a query over the archive),
//! so the two can never disagree on what an expression means. This module only parses the outer
//! shape of an aggregate (`function(argument) AS alias`) with the same SQL parser DataFusion uses.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, SelectItem, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::join_stream::{self, JoinStream, JoinStreamConfig};
use crate::schema::EventSchema;
use crate::table::{self, Join, JoinConfig, OnMissing, TableDefinition};
use crate::time::{EventTime, Span};
use crate::window::{WindowConfig, WindowSpec};

/// Errors in a view definition. Always the user's configuration; every variant names the part of
/// the view that is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("view name `{name}` must be non-empty and use only letters, digits, `_` and `-`")]
    Name { name: String },
    #[error("window: {0}")]
    Window(#[from] crate::window::Error),
    #[error("allowed_lateness: {0}")]
    Lateness(crate::time::Error),
    #[error("group_by `{field}`: not a declared event field or a joined table's column")]
    UnknownGroupField { field: String },
    #[error("group_by `{field}` is listed twice")]
    DuplicateGroupField { field: String },
    #[error("aggregates: a view needs at least one aggregate")]
    NoAggregates,
    #[error("aggregate `{text}`: {problem}")]
    Aggregate { text: String, problem: String },
    #[error("aggregate name `{alias}` is used twice")]
    DuplicateAlias { alias: String },
    /// Boxed: the join errors carry several names.
    #[error(transparent)]
    Join(Box<table::Error>),
    #[error("on_missing: a view without a join has nothing to miss")]
    OnMissingWithoutJoin,
    #[error(transparent)]
    JoinStream(Box<join_stream::Error>),
}

impl From<join_stream::Error> for Error {
    fn from(e: join_stream::Error) -> Self {
        Error::JoinStream(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<table::Error> for Error {
    fn from(e: table::Error) -> Self {
        Error::Join(Box::new(e))
    }
}

/// The TOML shape of a `[[views]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    pub name: String,
    pub window: WindowConfig,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<String>,
    pub aggregates: Vec<String>,
    /// Dimension tables joined to each event (`[{ table = "merchants", on = "merchant_id" }]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<JoinConfig>,
    /// An event a joined table has no row for: kept with NULL columns (default) or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing: Option<OnMissing>,
    /// A second topic matched by key within an interval (see [`crate::join_stream`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_stream: Option<JoinStreamConfig>,
}

/// The aggregate functions a view may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregateFunction {
    /// `count(*)` (no argument) or `count(expr)` (non-null values).
    Count,
    /// `count(DISTINCT expr)`: exact in the batch layer, HyperLogLog in the speed layer.
    CountDistinct,
    Sum,
    Min,
    Max,
    Avg,
    /// `percentile(expr, q)` or `approx_percentile(expr, q)`, `0 <= q <= 1`: exact (continuous,
    /// interpolated) in the batch layer, a quantile sketch in the speed layer.
    Percentile {
        q: f64,
    },
}

impl AggregateFunction {
    /// Whether the speed layer can only estimate this aggregate.
    pub fn is_approximate_in_speed_layer(&self) -> bool {
        matches!(
            self,
            AggregateFunction::CountDistinct | AggregateFunction::Percentile { .. }
        )
    }

    /// Whether the argument must be numeric.
    pub fn needs_numeric_argument(&self) -> bool {
        matches!(
            self,
            AggregateFunction::Sum
                | AggregateFunction::Avg
                | AggregateFunction::Min
                | AggregateFunction::Max
                | AggregateFunction::Percentile { .. }
        )
    }
}

impl fmt::Display for AggregateFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregateFunction::Count => f.write_str("count"),
            AggregateFunction::CountDistinct => f.write_str("count distinct"),
            AggregateFunction::Sum => f.write_str("sum"),
            AggregateFunction::Min => f.write_str("min"),
            AggregateFunction::Max => f.write_str("max"),
            AggregateFunction::Avg => f.write_str("avg"),
            AggregateFunction::Percentile { q } => write!(f, "percentile {q}"),
        }
    }
}

/// One parsed aggregate of a view.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    pub function: AggregateFunction,
    /// The argument as SQL text, re-rendered by the parser; `None` for `count(*)`.
    pub argument: Option<String>,
    /// The name of the value in query results.
    pub alias: String,
    /// The text as the user wrote it, for error messages.
    pub text: String,
}

impl AggregateSpec {
    /// Parses `function(argument) [AS alias]`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |problem: String| Error::Aggregate {
            text: text.to_owned(),
            problem,
        };
        let mut parser = Parser::new(&GenericDialect {})
            .try_with_sql(text)
            .map_err(|e| bad(e.to_string()))?;
        let item = parser.parse_select_item().map_err(|e| bad(e.to_string()))?;
        if parser.peek_token().token != Token::EOF {
            return Err(bad(
                "unexpected text after the aggregate; write one aggregate per list entry".into(),
            ));
        }
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(expr) => (expr, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value)),
            _ => {
                return Err(bad(
                    "expected an aggregate such as `sum(amount) AS revenue`".into(),
                ));
            }
        };
        let Expr::Function(call) = &expr else {
            return Err(bad(
                "expected an aggregate function call such as `sum(amount)`".into(),
            ));
        };
        if call.filter.is_some() || call.over.is_some() || !call.within_group.is_empty() {
            return Err(bad(
                "FILTER, OVER and WITHIN GROUP are not supported; use the view's `filter`".into(),
            ));
        }
        let name = call.name.to_string().to_ascii_lowercase();
        let FunctionArguments::List(list) = &call.args else {
            return Err(bad(format!("`{name}` needs an argument list")));
        };
        if !list.clauses.is_empty() {
            return Err(bad(
                "clauses inside the argument list are not supported".into()
            ));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let mut wildcard = false;
        let mut args = Vec::new();
        for arg in &list.args {
            match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => wildcard = true,
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
                _ => return Err(bad("named or qualified arguments are not supported".into())),
            }
        }
        let one_arg = |args: &[Expr]| -> Result<String> {
            match args {
                [a] if !wildcard => Ok(a.to_string()),
                _ => Err(bad(format!("`{name}` takes exactly one argument"))),
            }
        };
        let (function, argument) = match name.as_str() {
            "count" if wildcard && args.is_empty() && !distinct => (AggregateFunction::Count, None),
            "count" if distinct => (AggregateFunction::CountDistinct, Some(one_arg(&args)?)),
            "count" => (AggregateFunction::Count, Some(one_arg(&args)?)),
            "sum" | "min" | "max" | "avg" if distinct => {
                return Err(bad(format!(
                    "DISTINCT is only supported in count(DISTINCT ...), not in `{name}`"
                )));
            }
            "sum" => (AggregateFunction::Sum, Some(one_arg(&args)?)),
            "min" => (AggregateFunction::Min, Some(one_arg(&args)?)),
            "max" => (AggregateFunction::Max, Some(one_arg(&args)?)),
            "avg" | "mean" => (AggregateFunction::Avg, Some(one_arg(&args)?)),
            "percentile" | "approx_percentile" | "approx_percentile_cont" | "percentile_cont" => {
                let [arg, q] = args.as_slice() else {
                    return Err(bad(format!(
                        "`{name}` takes a value and a fraction, such as `{name}(amount, 0.95)`"
                    )));
                };
                if distinct || wildcard {
                    return Err(bad(format!("`{name}` does not take DISTINCT or `*`")));
                }
                let q = fraction(q).ok_or_else(|| {
                    bad(format!(
                        "`{name}`: the fraction must be a number literal in [0, 1]"
                    ))
                })?;
                (AggregateFunction::Percentile { q }, Some(arg.to_string()))
            }
            other => {
                return Err(bad(format!(
                    "unsupported aggregate `{other}`; use count, count(DISTINCT ..), sum, min, max, avg or percentile"
                )));
            }
        };
        Ok(AggregateSpec {
            function,
            argument,
            alias: alias.unwrap_or_else(|| expr.to_string()),
            text: text.to_owned(),
        })
    }
}

fn fraction(expr: &Expr) -> Option<f64> {
    let Expr::Value(v) = expr else { return None };
    let Value::Number(n, _) = &v.value else {
        return None;
    };
    let q: f64 = n.parse().ok()?;
    (0.0..=1.0).contains(&q).then_some(q)
}

/// A validated view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewDefinition {
    pub name: String,
    pub window: WindowSpec,
    /// Declared event fields the view groups by, in output order.
    pub group_by: Vec<String>,
    /// SQL boolean expression over the event fields; rows where it is not true are skipped.
    pub filter: Option<String>,
    pub allowed_lateness: Span,
    pub aggregates: Vec<AggregateSpec>,
    /// Dimension tables joined to each event, in order; their columns are named
    /// `table.field` in the filter, `group_by` and aggregates.
    pub joins: Vec<Join>,
    pub on_missing: OnMissing,
    /// A second topic joined by key within an interval; its columns are named
    /// `payments.amount`, as a table's are.
    pub join_stream: Option<JoinStream>,
    /// Content hash of everything that determines the view's results: changing the window,
    /// filter, grouping, aggregates or the schema of the fields gives a new version.
    pub version: ViewVersion,
}

/// A view's definition version, `v` followed by 16 hex digits.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct ViewVersion(pub String);

impl fmt::Display for ViewVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, which `std`'s hasher is not.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl ViewDefinition {
    /// The view's watermark at event-time progress `progress` (the speed layer's, or how far
    /// the archive is complete): a window that ends at or before it is closed, so the speed
    /// layer takes no more of its events and the batch layer may publish it as exact. The one
    /// place the rule "progress − allowed lateness" is written. A joined stream holds it back
    /// by `within` more: an event's matches may arrive until its time plus `within`, and its
    /// joined rows (or its left row) count in its own time's window.
    pub fn watermark(&self, progress: EventTime) -> EventTime {
        let held = self.join_stream.as_ref().map_or(Span::ZERO, |j| j.within);
        progress
            .saturating_sub(self.allowed_lateness)
            .saturating_sub(held)
    }

    /// Every side the view joins, each archived under its own topic: its dimension tables,
    /// then a joined stream's second topic.
    pub fn joined_sides(&self) -> impl Iterator<Item = &std::sync::Arc<TableDefinition>> {
        self.joins
            .iter()
            .map(|j| &j.table)
            .chain(self.join_stream.iter().map(|s| &s.side))
    }

    /// How far a joined stream's buffers may forget at `progress`: rows before it are late
    /// for the join (progress − allowed lateness, the view's watermark before `within`).
    pub fn join_horizon(&self, progress: EventTime) -> EventTime {
        progress.saturating_sub(self.allowed_lateness)
    }

    /// The type of a column the view's expressions may name: an event column, a joined
    /// table's or the joined stream's qualified column.
    pub fn column_type(&self, schema: &EventSchema, name: &str) -> Option<arrow_schema::DataType> {
        table::column_type(schema, &self.joins, name).or_else(|| {
            let side = &self.join_stream.as_ref()?.side;
            side.columns()
                .find(|(q, _)| q == name)
                .map(|(_, t)| t.arrow_type())
        })
    }

    pub fn from_config(config: &ViewConfig, schema: &EventSchema) -> Result<Self> {
        Self::with_tables(config, schema, &[])
    }

    /// [`ViewDefinition::from_config`] with the declared dimension tables its `join` may name.
    pub fn with_tables(
        config: &ViewConfig,
        schema: &EventSchema,
        tables: &[std::sync::Arc<TableDefinition>],
    ) -> Result<Self> {
        let name_ok = !config.name.is_empty()
            && config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(Error::Name {
                name: config.name.clone(),
            });
        }
        let window = WindowSpec::try_from(&config.window)?;
        let allowed_lateness = match &config.allowed_lateness {
            Some(s) => Span::parse(s).map_err(Error::Lateness)?,
            None => Span::ZERO,
        };
        let joins = table::joins(&config.join, schema, tables)?;
        if joins.is_empty() && config.on_missing.is_some() {
            return Err(Error::OnMissingWithoutJoin);
        }
        let stream = config
            .join_stream
            .as_ref()
            .map(|c| JoinStream::from_config(c, schema))
            .transpose()?;
        if let Some(stream) = &stream {
            let name = &stream.side.name;
            if joins.iter().any(|j| &j.table.name == name) {
                return Err(join_stream::Error::Clash { name: name.clone() }.into());
            }
            table::check_shadowing(schema, name)?;
        }
        let stream_column = |field: &str| {
            stream
                .as_ref()
                .is_some_and(|s| s.side.columns().any(|(q, _)| q == field))
        };
        let mut seen = HashSet::new();
        for field in &config.group_by {
            let joined =
                table::column_type(schema, &joins, field).is_some() || stream_column(field);
            if schema.field_type(field).is_none() && !joined {
                return Err(Error::UnknownGroupField {
                    field: field.clone(),
                });
            }
            if !seen.insert(field) {
                return Err(Error::DuplicateGroupField {
                    field: field.clone(),
                });
            }
        }
        if config.aggregates.is_empty() {
            return Err(Error::NoAggregates);
        }
        let aggregates = config
            .aggregates
            .iter()
            .map(|text| AggregateSpec::parse(text))
            .collect::<Result<Vec<_>>>()?;
        let mut aliases = HashSet::new();
        for a in &aggregates {
            if !aliases.insert(&a.alias) {
                return Err(Error::DuplicateAlias {
                    alias: a.alias.clone(),
                });
            }
        }
        let filter = config
            .filter
            .as_ref()
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty());
        let fingerprint = format!(
            "window={window};group={:?};filter={:?};aggs={:?};schema={}{}",
            config.group_by,
            filter,
            aggregates
                .iter()
                .map(|a| format!("{}|{:?}|{}", a.function, a.argument, a.alias))
                .collect::<Vec<_>>(),
            schema.describe(),
            joins
                .iter()
                .map(|j| format!(";join={}|{}", j.on, j.table.describe()))
                .chain(config.on_missing.map(|m| format!(";on_missing={m:?}")))
                .chain(stream.as_ref().map(|s| format!(";{}", s.describe())))
                .collect::<String>()
        );
        Ok(ViewDefinition {
            name: config.name.clone(),
            window,
            group_by: config.group_by.clone(),
            filter,
            allowed_lateness,
            aggregates,
            joins,
            on_missing: config.on_missing.unwrap_or_default(),
            join_stream: stream,
            version: ViewVersion(format!("v{:016x}", fnv1a(fingerprint.as_bytes()))),
        })
    }

    /// Names of the values in query results, in aggregate order.
    pub fn value_names(&self) -> impl Iterator<Item = &str> {
        self.aggregates.iter().map(|a| a.alias.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn schema() -> std::sync::Arc<EventSchema> {
        testing::orders_schema()
    }

    fn config() -> ViewConfig {
        let mut c = testing::view_config(
            "orders_by_city",
            testing::tumbling("1m"),
            &["city"],
            Some("amount > 0"),
            &["count(*) AS orders", "sum(amount) AS revenue"],
        );
        c.allowed_lateness = Some("10s".into());
        c
    }

    #[test]
    fn parses_every_supported_aggregate() {
        let cases = [
            ("count(*) AS n", AggregateFunction::Count, None, "n"),
            (
                "COUNT(user_id)",
                AggregateFunction::Count,
                Some("user_id"),
                "COUNT(user_id)",
            ),
            (
                "count(DISTINCT user_id) AS users",
                AggregateFunction::CountDistinct,
                Some("user_id"),
                "users",
            ),
            (
                "sum(amount * 2) AS doubled",
                AggregateFunction::Sum,
                Some("amount * 2"),
                "doubled",
            ),
            (
                "min(amount) min_amount",
                AggregateFunction::Min,
                Some("amount"),
                "min_amount",
            ),
            (
                "max(amount) AS m",
                AggregateFunction::Max,
                Some("amount"),
                "m",
            ),
            (
                "avg(amount) AS a",
                AggregateFunction::Avg,
                Some("amount"),
                "a",
            ),
            (
                "approx_percentile(amount, 0.95) AS p95",
                AggregateFunction::Percentile { q: 0.95 },
                Some("amount"),
                "p95",
            ),
        ];
        for (text, function, argument, alias) in cases {
            let spec = AggregateSpec::parse(text).unwrap();
            assert_eq!(spec.function, function, "{text}");
            assert_eq!(spec.argument.as_deref(), argument, "{text}");
            assert_eq!(spec.alias, alias, "{text}");
        }
    }

    #[test]
    fn rejects_unsupported_aggregates_with_the_reason() {
        for (text, needle) in [
            ("median(amount)", "unsupported aggregate `median`"),
            ("sum(amount), count(*)", "one aggregate per list entry"),
            ("amount + 1", "aggregate function call"),
            ("sum(DISTINCT amount)", "DISTINCT is only supported"),
            ("percentile(amount, 1.5)", "fraction"),
            ("sum(a, b)", "exactly one argument"),
            ("count(*) FILTER (WHERE amount > 1)", "FILTER"),
            ("sum(", ""),
        ] {
            let err = AggregateSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(
                err.contains(text),
                "error should quote the aggregate: {err}"
            );
        }
    }

    #[test]
    fn validates_grouping_and_aliases_against_the_schema() {
        let v = ViewDefinition::from_config(&config(), &schema()).unwrap();
        assert_eq!(v.allowed_lateness.millis(), 10_000);
        // The watermark trails progress by the allowed lateness, saturating at the earliest time.
        assert_eq!(v.watermark(EventTime(60_000)), EventTime(50_000));
        assert_eq!(v.watermark(EventTime::MIN), EventTime::MIN);
        assert_eq!(v.value_names().collect::<Vec<_>>(), ["orders", "revenue"]);

        let mut c = config();
        c.group_by = vec!["country".into()];
        assert_eq!(
            ViewDefinition::from_config(&c, &schema()),
            Err(Error::UnknownGroupField {
                field: "country".into()
            })
        );
        let mut c = config();
        c.aggregates.push("count(*) AS orders".into());
        assert!(matches!(
            ViewDefinition::from_config(&c, &schema()),
            Err(Error::DuplicateAlias { .. })
        ));
        let mut c = config();
        c.name = "bad name".into();
        assert!(matches!(
            ViewDefinition::from_config(&c, &schema()),
            Err(Error::Name { .. })
        ));
    }

    #[test]
    fn version_changes_with_the_definition_but_not_with_lateness() {
        let base = ViewDefinition::from_config(&config(), &schema())
            .unwrap()
            .version;
        let mut c = config();
        c.allowed_lateness = Some("1m".into());
        assert_eq!(
            ViewDefinition::from_config(&c, &schema()).unwrap().version,
            base
        );
        c.filter = Some("amount > 1".into());
        assert_ne!(
            ViewDefinition::from_config(&c, &schema()).unwrap().version,
            base
        );
        assert!(base.0.starts_with('v') && base.0.len() == 17);
    }
}
