//! The SQL a recompute job runs. Pure: no I/O.
//!
//! Window assignment is integer arithmetic on epoch milliseconds, exactly as in
//! [`WindowSpec::windows_of`](tandem_shared::window::WindowSpec::windows_of): a window of size
//! `S` sliding by `E` starts at `floor(t / E) * E - h * E` for `h` in `0 .. S / E`. The view's
//! filter and aggregate arguments are pasted in as the same SQL text the speed layer compiles.
//!
//! Output columns: `window_start`, `window_end` (epoch ms), `g0..` (group values), `a0..`
//! (aggregate values), one row per window and group. Fixed-size windows add each window's
//! state for rollups after the values (see [`state_columns`]).

use std::fmt::Write;

use tandem_shared::coverage::StartRange;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::{AggregateFunction, ViewDefinition};
use tandem_shared::window::WindowSpec;

/// The table name the archive is registered under.
pub const EVENTS_TABLE: &str = "events";

/// Quotes an identifier for DataFusion SQL.
pub(crate) fn ident(name: &str) -> String {
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

/// The columns, after the values, that hold what a rollup needs to combine windows beyond their
/// exact values: for `avg` its count `p{i}` and sum `s{i}` (written exactly as a `sum` value
/// would be, so that a view that also sums the argument shares the expression), for `count(DISTINCT ..)` and
/// percentiles the serialized sketch `p{i}`. Count, sum, min and max need none.
pub(crate) fn state_columns(view: &ViewDefinition) -> String {
    use super::sketches::{HLL, KLL};
    let mut sql = String::new();
    for (i, a) in view.aggregates.iter().enumerate() {
        let arg = a.argument.as_deref().unwrap_or("*");
        let _ = match a.function {
            AggregateFunction::Avg => write!(sql, ", count({arg}) AS p{i}, sum({arg}) AS s{i}"),
            AggregateFunction::CountDistinct => write!(sql, ", {HLL}({arg}) AS p{i}"),
            AggregateFunction::Percentile { .. } => write!(sql, ", {KLL}({arg}) AS p{i}"),
            _ => Ok(()),
        };
    }
    sql
}

/// The events a query reads. With an id field, an event id produced more than once counts once
/// (the first copy by partition and offset); events without an id are all kept.
pub(crate) fn events_source(id_field: Option<&str>) -> String {
    events_source_from(id_field, EVENTS_TABLE)
}

/// The name a joined dimension table's archive is registered under.
pub fn dimension_table(table: &str) -> String {
    format!("__table_{table}")
}

/// `source` (events) joined with each of `view`'s dimension tables as of the event's time:
/// the row of the event's key with the latest validity time at or before the event's time
/// (ties by the later partition and offset), NULL for a deleted key or none. Appends per
/// table a struct named as the table and its columns flat, named qualified, as the speed
/// layer's join does (`tandem_shared::table::joined_fields`); with `on_missing = "drop"`,
/// an event without a row for every join is left out.
pub(crate) fn joined_source(view: &ViewDefinition, time_field: &str, source: String) -> String {
    use tandem_shared::table::{OnMissing, TableDefinition};
    let t = ident(time_field);
    let mut sql = source;
    for (i, join) in view.joins.iter().enumerate() {
        let table: &TableDefinition = &join.table;
        let vf = ident(&table.schema().time_field);
        let live = if table.envelope.is_some() {
            format!(
                "({op} IS NULL OR {op} <> 'd')",
                op = ident(tandem_shared::event::OP_FIELD)
            )
        } else {
            "TRUE".to_owned()
        };
        let mut columns = String::new();
        let mut children = Vec::new();
        for (field, _) in &table.fields {
            let value = format!("CASE WHEN t{i}.__live THEN t{i}.{} END", ident(field));
            children.push(format!("'{}', {value}", field.replace('\'', "''")));
            let _ = write!(columns, ", {value} AS {}", ident(&table.qualified(field)));
        }
        let drop = if view.on_missing == OnMissing::Drop {
            format!(" AND __m{i}")
        } else {
            String::new()
        };
        sql = format!(
            "(SELECT * FROM (SELECT e.*, named_struct({children}) AS {name}{columns}, \
             COALESCE(t{i}.__live, FALSE) AS __m{i}, \
             row_number() OVER (PARTITION BY e.\"_kafka_partition\", e.\"_kafka_offset\" \
             ORDER BY t{i}.__vf DESC NULLS LAST, t{i}.__p DESC NULLS LAST, t{i}.__o DESC NULLS LAST) AS __r{i} \
             FROM {sql} e LEFT JOIN (SELECT *, {key} AS __k, CAST({vf} AS BIGINT) AS __vf, \
             \"_kafka_partition\" AS __p, \"_kafka_offset\" AS __o, {live} AS __live FROM {table_sql}) t{i} \
             ON e.{on} = t{i}.__k AND t{i}.__vf <= CAST(e.{t} AS BIGINT)) j{i} WHERE __r{i} = 1{drop})",
            children = children.join(", "),
            name = ident(&table.name),
            key = ident(&table.key),
            on = ident(&join.on),
            table_sql = dimension_table(&table.name),
        );
    }
    if let Some(stream) = &view.join_stream {
        sql = stream_joined(stream, &t, sql);
    }
    sql
}

/// `source` joined with a joined stream's second topic (registered as a table is, under
/// [`dimension_table`]): every second-topic event of the same key whose time `s` is in
/// `[t, t + within]` (`JoinStream::matches`); with `left`, an event without one once, its
/// columns NULL. Appends the side's struct and flat columns as the speed layer does.
fn stream_joined(
    stream: &tandem_shared::join_stream::JoinStream,
    t: &str,
    source: String,
) -> String {
    use tandem_shared::join_stream::JoinKind;
    let side = &stream.side;
    let mut columns = String::new();
    let mut children = Vec::new();
    for (field, _) in &side.fields {
        children.push(format!(
            "'{}', s.{}",
            field.replace('\'', "''"),
            ident(field)
        ));
        let _ = write!(
            columns,
            ", s.{} AS {}",
            ident(field),
            ident(&side.qualified(field))
        );
    }
    let kind = match stream.kind {
        JoinKind::Inner => "INNER",
        JoinKind::Left => "LEFT",
    };
    format!(
        "(SELECT e.*, named_struct({children}) AS {name}{columns} \
         FROM {source} e {kind} JOIN (SELECT *, {on} AS __sk, CAST({st} AS BIGINT) AS __st FROM {table}) s \
         ON e.{on} = s.__sk AND s.__st >= CAST(e.{t} AS BIGINT) AND s.__st <= CAST(e.{t} AS BIGINT) + {within})",
        children = children.join(", "),
        name = ident(&side.name),
        on = ident(&stream.on),
        st = ident(&side.schema().time_field),
        table = dimension_table(&side.name),
        within = stream.within.millis(),
    )
}

/// [`events_source`] reading `table` (a table name or a parenthesized query).
fn events_source_from(id_field: Option<&str>, table: &str) -> String {
    match id_field {
        None => table.to_owned(),
        Some(id) => {
            let id = ident(id);
            format!(
                "(SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {id} ORDER BY \"_kafka_partition\", \"_kafka_offset\") AS __copy \
                 FROM {table}) d WHERE __copy = 1 OR {id} IS NULL)"
            )
        }
    }
}

/// SQL computing `view` exactly for window starts in `starts`, reading events in `scan`.
/// Returns `None` for session windows, which are not fixed-size.
pub(crate) fn window_query(
    view: &ViewDefinition,
    time_field: &str,
    id_field: Option<&str>,
    starts: StartRange,
    scan: StartRange,
) -> Option<String> {
    windows(
        view,
        time_field,
        &joined_source(view, time_field, events_source(id_field)),
        starts,
        scan,
        true,
    )
}

/// SQL computing `view`'s values exactly over buckets of `bucket` (a multiple of its tumbling
/// window) whose starts are in `range` (bucket-aligned), or with `None` over `range` as one
/// bucket (the global window): a rollup recomputed from the raw events. Only the archive's
/// files that hold `range` are read: the time field is bounded by literals the `events` table
/// prunes by. No rollup state columns.
pub(crate) fn rollup_query(
    view: &ViewDefinition,
    time_field: &str,
    id_field: Option<&str>,
    range: StartRange,
    bucket: Option<Span>,
) -> String {
    let t = ident(time_field);
    let bounded = format!(
        "(SELECT * FROM {EVENTS_TABLE} WHERE {t} >= TIMESTAMP '{}' AND {t} < TIMESTAMP '{}')",
        range.from.to_rfc3339(),
        range.to.to_rfc3339()
    );
    let source = joined_source(view, time_field, events_source_from(id_field, &bounded));
    let size = bucket.unwrap_or(Span::from_millis(
        range.to.millis().saturating_sub(range.from.millis()),
    ));
    let mut coarse = view.clone();
    coarse.window = WindowSpec::Tumbling { size };
    match bucket {
        Some(_) => windows(&coarse, time_field, &source, range, range, false).unwrap_or_default(),
        None => {
            // One bucket: every event of the range, whatever its offset from the epoch.
            let mut sql = format!(
                "SELECT {} AS window_start, {} AS window_end",
                range.from.millis(),
                range.to.millis()
            );
            sql.push_str(&output_columns(view));
            let _ = write!(sql, " FROM {source} e WHERE TRUE");
            if let Some(filter) = &view.filter {
                let _ = write!(sql, " AND ({filter})");
            }
            if !view.group_by.is_empty() {
                let groups: Vec<String> = view.group_by.iter().map(|g| ident(g)).collect();
                let _ = write!(sql, " GROUP BY {}", groups.join(", "));
            }
            sql
        }
    }
}

/// `, g0, .., a0, ..`: the group dimensions and the aggregates, named as the output columns.
fn output_columns(view: &ViewDefinition) -> String {
    let mut sql = String::new();
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
    sql
}

fn windows(
    view: &ViewDefinition,
    time_field: &str,
    source: &str,
    starts: StartRange,
    scan: StartRange,
    states: bool,
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
    sql.push_str(&output_columns(view));
    if states {
        sql.push_str(&state_columns(view));
    }
    // Innermost: events of the scan range with their time as integer milliseconds.
    let events = format!(
        "SELECT *, CAST({t} AS BIGINT) AS __t FROM {source} e WHERE CAST({t} AS BIGINT) >= {} AND CAST({t} AS BIGINT) < {}",
        scan.from.millis(),
        scan.to.millis()
    );
    // Floor of t to the slide grid. When every scanned time is non-negative (the scan range says
    // so), `t % slide` already is the floor's remainder; before the epoch it needs correcting.
    let floor = if scan.from.millis() >= 0 {
        format!("__t - __t % {slide}")
    } else {
        format!("__t - (((__t % {slide}) + {slide}) % {slide})")
    };
    let assigned = if hops == 1 {
        format!("SELECT *, {floor} AS __ws FROM ({events}) e0")
    } else {
        let values: Vec<String> = (0..hops).map(|h| format!("({h})")).collect();
        format!(
            "SELECT *, {floor} - __h * {slide} AS __ws FROM ({events}) e0 \
             CROSS JOIN (SELECT column1 AS __h FROM (VALUES {})) hop",
            values.join(", ")
        )
    };
    let _ = write!(sql, " FROM ({assigned}) e WHERE ");
    let aligned = starts.from.millis() % slide == 0 && starts.to.millis() % slide == 0;
    if hops == 1 && aligned && scan == starts {
        // Tumbling: the time range of the scan already selects exactly these windows.
        sql.push_str("TRUE");
    } else {
        let _ = write!(
            sql,
            "__ws >= {} AND __ws < {}",
            starts.from.millis(),
            starts.to.millis()
        );
    }
    if let Some(filter) = &view.filter {
        let _ = write!(sql, " AND ({filter})");
    }
    sql.push_str(" GROUP BY __ws");
    for g in &view.group_by {
        let _ = write!(sql, ", {}", ident(g));
    }
    Some(sql)
}

/// SQL computing every session of `view` among events at or after `scan_from`: per group, events
/// ordered by time start a new session when they follow the previous one by `gap` or more; a
/// session's window is `[first, last + gap)`. The view's filter applies before sessionization, as
/// in the speed layer. Sessions are keyed by a running count of session starts per group.
pub(crate) fn session_query(
    view: &ViewDefinition,
    time_field: &str,
    id_field: Option<&str>,
    scan_from: EventTime,
) -> Option<String> {
    let WindowSpec::Session { gap } = view.window else {
        return None;
    };
    let gap = gap.millis();
    let t = ident(time_field);
    let groups: Vec<String> = view.group_by.iter().map(|g| ident(g)).collect();
    let over = if groups.is_empty() {
        "ORDER BY __t".to_owned()
    } else {
        format!("PARTITION BY {} ORDER BY __t", groups.join(", "))
    };
    let filter = view
        .filter
        .as_ref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    let mut sql = String::new();
    let _ = write!(
        sql,
        "SELECT min(__t) AS window_start, max(__t) + {gap} AS window_end"
    );
    for (i, g) in groups.iter().enumerate() {
        let _ = write!(sql, ", {g} AS g{i}");
    }
    for (i, a) in view.aggregates.iter().enumerate() {
        let _ = write!(
            sql,
            ", {} AS a{i}",
            aggregate_sql(a.function, a.argument.as_deref())
        );
    }
    let _ = write!(
        sql,
        " FROM (SELECT *, sum(__new) OVER ({over} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __sid FROM \
         (SELECT *, CASE WHEN __t - lag(__t) OVER ({over}) < {gap} THEN 0 ELSE 1 END AS __new FROM \
         (SELECT *, CAST({t} AS BIGINT) AS __t FROM {} e WHERE CAST({t} AS BIGINT) >= {}{filter}) e0) e1) e2 \
         GROUP BY __sid",
        joined_source(view, time_field, events_source(id_field)),
        scan_from.millis()
    );
    for g in &groups {
        let _ = write!(sql, ", {g}");
    }
    Some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::testing;

    #[test]
    fn tumbling_query_groups_by_integer_window_start() {
        let view = testing::view(
            &testing::orders_schema(),
            "v",
            testing::tumbling("1m"),
            &["city"],
            Some("amount > 0"),
            &[
                "count(*) AS n",
                "count(DISTINCT city) AS c",
                "percentile(amount, 0.5) AS p",
            ],
        );
        let range = StartRange::new(EventTime(0), EventTime(120_000));
        let sql = window_query(&view, "ts", None, range, range).unwrap();
        assert_eq!(
            sql,
            "SELECT __ws AS window_start, __ws + 60000 AS window_end, \"city\" AS g0, count(*) AS a0, \
             count(DISTINCT city) AS a1, percentile_cont(amount, 0.5) AS a2, tandem_hll(city) AS p1, \
             tandem_kll(amount) AS p2 FROM (SELECT *, \
             __t - __t % 60000 AS __ws FROM (SELECT *, CAST(\"ts\" AS BIGINT) AS __t \
             FROM events e WHERE CAST(\"ts\" AS BIGINT) >= 0 AND CAST(\"ts\" AS BIGINT) < 120000) e0) e \
             WHERE TRUE AND (amount > 0) GROUP BY __ws, \"city\""
        );
    }
}
