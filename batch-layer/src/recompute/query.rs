//! The SQL a recompute job runs. Pure: no I/O.
//!
//! Window assignment is integer arithmetic on epoch milliseconds, exactly as in
//! [`WindowSpec::windows_of`](tandem_shared::window::WindowSpec::windows_of): a window of size
//! `S` sliding by `E` starts at `floor(t / E) * E - h * E` for `h` in `0 .. S / E`. The view's
//! filter and aggregate arguments are pasted in as the same SQL text the speed layer compiles.
//!
//! Output columns: `window_start`, `window_end` (epoch ms), `g0..` (group values), `a0..`
//! (aggregate values), one row per window and group.

use std::fmt::Write;

use tandem_shared::coverage::StartRange;
use tandem_shared::view::{AggregateFunction, ViewDefinition};

/// The table name the archive is registered under.
pub const EVENTS_TABLE: &str = "events";

/// Quotes an identifier for DataFusion SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn aggregate_sql(function: AggregateFunction, argument: Option<&str>) -> String {
    let arg = argument.unwrap_or("*");
    match function {
        AggregateFunction::Count => format!("count({arg})"),
        AggregateFunction::CountDistinct => format!("count(DISTINCT {arg})"),
        AggregateFunction::Sum => format!("sum({arg})"),
        AggregateFunction::Min => format!("min({arg})"),
        AggregateFunction::Max => format!("max({arg})"),
        AggregateFunction::Avg => format!("avg({arg})"),
        AggregateFunction::Percentile { q } => format!("percentile_cont({arg}, {q:?})"),
    }
}

/// SQL computing `view` exactly for window starts in `starts`, reading events in `scan`.
/// Returns `None` for session windows, which are not fixed-size.
pub fn window_query(
    view: &ViewDefinition,
    time_field: &str,
    starts: StartRange,
    scan: StartRange,
) -> Option<String> {
    let size = view.window.size()?.millis();
    let slide = view.window.slide()?.millis();
    let hops = size / slide;
    let t = ident(time_field);
    let mut sql = String::new();
    let _ = write!(
        sql,
        "SELECT __ws AS window_start, __ws + {size} AS window_end"
    );
    for (i, g) in view.group_by.iter().enumerate() {
        let _ = write!(sql, ", {} AS g{i}", ident(g));
    }
    for (i, a) in view.aggregates.iter().enumerate() {
        let _ = write!(
            sql,
            ", {} AS a{i}",
            aggregate_sql(a.function, a.argument.as_deref())
        );
    }
    // Innermost: events of the scan range with their time as integer milliseconds.
    let events = format!(
        "SELECT *, CAST({t} AS BIGINT) AS __t FROM {EVENTS_TABLE} WHERE CAST({t} AS BIGINT) >= {} AND CAST({t} AS BIGINT) < {}",
        scan.from.millis(),
        scan.to.millis()
    );
    let assigned = if hops == 1 {
        format!(
            "SELECT *, __t - (((__t % {slide}) + {slide}) % {slide}) AS __ws FROM ({events}) e0"
        )
    } else {
        let values: Vec<String> = (0..hops).map(|h| format!("({h})")).collect();
        format!(
            "SELECT *, __t - (((__t % {slide}) + {slide}) % {slide}) - __h * {slide} AS __ws FROM ({events}) e0 \
             CROSS JOIN (SELECT column1 AS __h FROM (VALUES {})) hop",
            values.join(", ")
        )
    };
    let _ = write!(
        sql,
        " FROM ({assigned}) e WHERE __ws >= {} AND __ws < {}",
        starts.from.millis(),
        starts.to.millis()
    );
    if let Some(filter) = &view.filter {
        let _ = write!(sql, " AND ({filter})");
    }
    sql.push_str(" GROUP BY __ws");
    for g in &view.group_by {
        let _ = write!(sql, ", {}", ident(g));
    }
    Some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::schema::{EventSchema, FieldType};
    use tandem_shared::time::EventTime;
    use tandem_shared::view::ViewConfig;
    use tandem_shared::window::WindowConfig;

    #[test]
    fn tumbling_query_groups_by_integer_window_start() {
        let schema = EventSchema::new(
            "ts",
            vec![
                ("city".into(), FieldType::String),
                ("amount".into(), FieldType::Float64),
            ],
            None,
        )
        .unwrap();
        let view = ViewDefinition::from_config(
            &ViewConfig {
                name: "v".into(),
                window: WindowConfig {
                    tumbling: Some("1m".into()),
                    ..Default::default()
                },
                group_by: vec!["city".into()],
                filter: Some("amount > 0".into()),
                allowed_lateness: None,
                aggregates: vec![
                    "count(*) AS n".into(),
                    "count(DISTINCT city) AS c".into(),
                    "percentile(amount, 0.5) AS p".into(),
                ],
            },
            &schema,
        )
        .unwrap();
        let range = StartRange::new(EventTime(0), EventTime(120_000));
        let sql = window_query(&view, "ts", range, range).unwrap();
        assert_eq!(
            sql,
            "SELECT __ws AS window_start, __ws + 60000 AS window_end, \"city\" AS g0, count(*) AS a0, \
             count(DISTINCT city) AS a1, percentile_cont(amount, 0.5) AS a2 FROM (SELECT *, \
             __t - (((__t % 60000) + 60000) % 60000) AS __ws FROM (SELECT *, CAST(\"ts\" AS BIGINT) AS __t \
             FROM events WHERE CAST(\"ts\" AS BIGINT) >= 0 AND CAST(\"ts\" AS BIGINT) < 120000) e0) e \
             WHERE __ws >= 0 AND __ws < 120000 AND (amount > 0) GROUP BY __ws, \"city\""
        );
    }
}
