//! `/v1/views`: the views, their rows through the seam, rollups, and coverage.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;

use super::error::ErrorBody;
use super::response::ViewAnswer;
use super::response::{CoverageBody, RollupBody, RollupRows, ViewList, ViewRows, ViewSummary};
use super::{ApiError, AppState, parse_time};
use crate::page::{self, Cursor};
use crate::rollup::{self, Granularity};
use crate::seam::FreshViews;
use crate::seam::{self, DimensionFilter, ViewQuery};
use crate::sql;

/// The configured views, their definitions, batch horizon and drift.
#[utoipa::path(get, path = "/v1/views", tag = "views",
    responses((status = 200, description = "The views", body = ViewList)))]
pub(super) async fn list_views(State(state): State<AppState>) -> Json<ViewList> {
    let views = state
        .catalog
        .views()
        .map(|v| {
            let published = state.catalog.get(&v.name).unwrap_or_default();
            ViewSummary::new(
                v,
                published.coverage.horizon(),
                state.reconciler.report(&v.name),
            )
        })
        .collect();
    Json(ViewList { views })
}

/// `from` and `to` of the routes that answer a range of window starts (described only: the
/// handlers read them with the other parameters, to refuse unknown ones).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct RangeParams {
    /// First window start: RFC 3339 (or epoch milliseconds).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Window starts before this: RFC 3339 (or epoch milliseconds).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// Which page of an answer to return.
#[derive(Debug)]
pub(super) struct Paging {
    limit: usize,
    after: Option<Cursor>,
}

/// Reads `from`, `to`, dimension filters, `limit` and `cursor` of a view query from the query
/// string.
pub(super) fn parse_view_query(
    view: &ViewDefinition,
    params: &BTreeMap<String, String>,
) -> Result<(ViewQuery, Paging), ApiError> {
    let mut from = EventTime::MIN;
    let mut to = EventTime::MAX;
    let mut filters = Vec::new();
    let mut paging = Paging {
        limit: page::DEFAULT_LIMIT,
        after: None,
    };
    for (key, value) in params {
        match key.as_str() {
            "from" => from = parse_time("from", value)?,
            "to" => to = parse_time("to", value)?,
            "limit" => {
                paging.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=page::MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::BadParameter {
                        name: "limit".into(),
                        problem: format!(
                            "`{value}` is not a number of rows from 1 to {}",
                            page::MAX_LIMIT
                        ),
                    })?;
            }
            "cursor" => {
                paging.after = Some(Cursor::decode(value).map_err(|e| ApiError::BadParameter {
                    name: "cursor".into(),
                    problem: e.to_string(),
                })?);
            }
            dim => match view.group_by.iter().position(|g| g == dim) {
                Some(position) => filters.push(DimensionFilter {
                    position,
                    value: value.clone(),
                }),
                None => {
                    return Err(ApiError::BadParameter {
                        name: dim.to_owned(),
                        problem: format!(
                            "not a parameter of view `{}`; use from, to, limit, cursor or a dimension ({})",
                            view.name,
                            if view.group_by.is_empty() {
                                "this view has none".to_owned()
                            } else {
                                view.group_by.join(", ")
                            }
                        ),
                    });
                }
            },
        }
    }
    if from >= to {
        return Err(ApiError::BadParameter {
            name: "from".into(),
            problem: format!("`from` ({from}) must be before `to` ({to})"),
        });
    }
    // Rows before the cursor's window start are not needed.
    if let Some(after) = &paging.after {
        from = from.max(after.start);
    }
    let query = ViewQuery {
        view: view.name.clone(),
        range: StartRange::new(from, to.max(from)),
        filters,
    };
    Ok((query, paging))
}

/// A view's rows of windows starting in `[from, to)`, merged from both layers; with
/// `granularity`, a rollup. Any other parameter named like a group dimension filters by it.
#[utoipa::path(get, path = "/v1/views/{name}", tag = "views",
    params(
        ("name" = String, Path, description = "The view"),
        RangeParams,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100000, description = "Rows per page (not with granularity)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("granularity" = Option<String>, Query, description = "`all`, or a multiple of a tumbling view's window (`1h`): a rollup"),
        ("exact" = Option<bool>, Query, description = "With granularity: recompute complete buckets from the archive"),
    ),
    responses(
        (status = 200, description = "Rows, or a rollup's rows with `granularity`", body = ViewAnswer),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such view", body = ErrorBody),
    ))]
pub(super) async fn query_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<ViewAnswer>, ApiError> {
    let view = state.view(&name)?;
    if params.contains_key("granularity") {
        return Ok(Json(ViewAnswer::Rollup(
            rollup_view(&state, view, params).await?,
        )));
    }
    if let Some(name) = ["exact"].into_iter().find(|p| params.contains_key(*p)) {
        return Err(ApiError::BadParameter {
            name: name.into(),
            problem: "only for rollups: give `granularity` too".into(),
        });
    }
    let (query, paging) = parse_view_query(view, &params)?;
    let mut answer = answer_page(&state, view, &query, &paging).await?;
    let (rows, next) = page::cut(answer.rows, paging.after.as_ref(), paging.limit);
    answer.rows = rows;
    Ok(Json(ViewAnswer::Rows(ViewRows::new(
        view,
        answer,
        next.map(|c| c.encode()),
        state.speed.watermark(view),
    ))))
}

/// Windows read at first by [`answer_page`]; each further read doubles.
const FIRST_READ_WINDOWS: i64 = 256;

/// The rows of `query` a page needs: at least one past the page, or all there are. The range
/// is read from its first window with data, a growing span at a time, so that the first page
/// of a year of history reads hours, not the year (the answer is in window-start order). Each
/// read is one answer of the seam; rows that change between reads are what a cursor already
/// tolerates between pages. Sessions (windows of no fixed size) are read in one go.
async fn answer_page(
    state: &AppState,
    view: &ViewDefinition,
    query: &ViewQuery,
    paging: &Paging,
) -> Result<seam::Answer, ApiError> {
    let Some(slide) = view.window.slide() else {
        return Ok(seam::answer(state.catalog.as_ref(), &state.speed, query).await?);
    };
    // Where rows can be: the windows the batch layer covers and those the speed layer holds.
    let published = state.catalog.get(&view.name).unwrap_or_default();
    let speed_starts: Vec<EventTime> = state
        .speed
        .fresh(&view.name, query.range)
        .await
        .map(|f| f.rows.iter().map(|r| r.window.start).collect())
        .unwrap_or_default();
    let ranges = published.coverage.ranges();
    let first = ranges
        .first()
        .map(|r| r.from)
        .into_iter()
        .chain(speed_starts.iter().copied().min())
        .min();
    let last = ranges
        .last()
        .map(|r| r.to)
        .into_iter()
        .chain(speed_starts.iter().map(|s| s.saturating_add(slide)).max())
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(seam::answer(state.catalog.as_ref(), &state.speed, query).await?);
    };
    let end = query.range.to.min(last);
    let mut from = query.range.from.max(first);
    let mut span = slide.millis().saturating_mul(FIRST_READ_WINDOWS);
    let mut answer: Option<seam::Answer> = None;
    loop {
        let to = if from >= end {
            end
        } else {
            EventTime(from.millis().saturating_add(span)).min(end)
        };
        let part = ViewQuery {
            range: StartRange::new(from, to.max(from)),
            ..query.clone()
        };
        let read = seam::answer(state.catalog.as_ref(), &state.speed, &part).await?;
        let whole = match answer.as_mut() {
            None => answer.insert(read),
            Some(whole) => {
                whole.rows.extend(read.rows);
                for p in read.missing_partitions {
                    if !whole.missing_partitions.contains(&p) {
                        whole.missing_partitions.push(p);
                    }
                }
                whole.batch_horizon = read.batch_horizon;
                whole.version = read.version;
                whole
            }
        };
        if to >= end || page::after_count(&whole.rows, paging.after.as_ref()) > paging.limit {
            break;
        }
        from = to;
        span = span.saturating_mul(2);
    }
    match answer {
        Some(answer) => Ok(answer),
        None => Ok(seam::answer(state.catalog.as_ref(), &state.speed, query).await?),
    }
}

/// `GET /v1/views/{name}?granularity=1h|all[&exact=true]`: see [`crate::rollup`].
pub(super) async fn rollup_view(
    state: &AppState,
    view: &ViewDefinition,
    mut params: BTreeMap<String, String>,
) -> Result<RollupRows, ApiError> {
    let text = params.remove("granularity").unwrap_or_default();
    let granularity =
        Granularity::parse(&text, view).map_err(|problem| ApiError::BadParameter {
            name: "granularity".into(),
            problem,
        })?;
    let exact = match params.remove("exact").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadParameter {
                name: "exact".into(),
                problem: format!("`{other}` is not true or false"),
            });
        }
    };
    if let Some(name) = ["limit", "cursor"]
        .into_iter()
        .find(|p| params.contains_key(*p))
    {
        return Err(ApiError::BadParameter {
            name: name.into(),
            problem: "a rollup answers in one response: narrow the range or coarsen the granularity instead".into(),
        });
    }
    let (mut query, _) = parse_view_query(view, &params)?;
    query.range = granularity.widen(query.range);
    let answer = rollup::states(state.catalog.as_ref(), &state.speed, view, &query).await?;
    let mut rolled = rollup::roll(view, granularity, query.range, answer.rows);
    if rolled.len() > page::MAX_LIMIT {
        return Err(ApiError::BadParameter {
            name: "granularity".into(),
            problem: format!(
                "the rollup has {} rows, more than {}: narrow the range or coarsen the granularity",
                rolled.len(),
                page::MAX_LIMIT
            ),
        });
    }
    if exact {
        let engine = state.sql.as_ref().ok_or_else(|| ApiError::BadParameter {
            name: "exact".into(),
            problem: "this process has no SQL engine to recompute from the archive".into(),
        })?;
        rolled = rollup::exact::recompute(engine, view, granularity, query.range, rolled)
            .await
            .map_err(|e| match e {
                // The query is Tandem's own: a planning failure is a bug, not the caller's.
                rollup::exact::Error::Sql(
                    e @ (sql::Error::Timeout(_)
                    | sql::Error::Memory { .. }
                    | sql::Error::TooManyRows(_)),
                ) => ApiError::Sql(e),
                other => ApiError::Internal(format!("exact rollup: {other}")),
            })?;
    }
    let rows = rolled
        .into_iter()
        .map(|r| RollupBody::new(view, r))
        .collect();
    Ok(RollupRows {
        view: view.name.clone(),
        version: answer.version,
        granularity: text,
        batch_horizon: answer.batch_horizon,
        rows,
        missing_partitions: answer.missing_partitions,
    })
}

/// Which window starts of a range each layer answers.
#[utoipa::path(get, path = "/v1/views/{name}/coverage", tag = "views",
    params(
        ("name" = String, Path, description = "The view"),
        RangeParams,
    ),
    responses(
        (status = 200, description = "The layers' ranges", body = CoverageBody),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such view", body = ErrorBody),
    ))]
pub(super) async fn view_coverage(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CoverageBody>, ApiError> {
    let view = state.view(&name)?;
    let mut range = StartRange::new(EventTime::MIN, EventTime::MAX);
    for (key, value) in &params {
        match key.as_str() {
            "from" => range.from = parse_time("from", value)?,
            "to" => range.to = parse_time("to", value)?,
            other => {
                return Err(ApiError::BadParameter {
                    name: other.to_owned(),
                    problem: "unknown parameter: give from and to".into(),
                });
            }
        }
    }
    let published = state.catalog.get(&name).unwrap_or_default();
    let speed_starts: Vec<EventTime> = state
        .speed
        .fresh(&name, range)
        .await
        .map(|f| f.rows)
        .unwrap_or_default()
        .iter()
        .filter(|r| !published.coverage.covers(&r.group, r.window.start))
        .map(|r| r.window.start)
        .collect();
    Ok(Json(CoverageBody {
        view: name.clone(),
        sources: crate::sources::sources(
            range,
            &published.coverage,
            &published.incomplete,
            &speed_starts,
            view.window.slide(),
        ),
    }))
}
