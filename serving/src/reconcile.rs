//! Reconciliation: when the batch layer publishes, the speed layer lets go of what it covers, and
//! we measure how far the speed layer's answers were from the exact ones.
//!
//! Order matters: the serving layer already answers covered windows from the batch layer (the
//! catalog installs a publication before announcing it), so releasing speed state afterwards can
//! never open a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tandem_batch_layer::ViewCatalog;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::{GroupKey, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_speed_layer::SpeedLayer;
use tokio_util::sync::CancellationToken;

/// How the speed layer compared with the batch layer over the windows released so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DriftReport {
    /// (window, group) pairs present in both layers.
    pub rows_compared: u64,
    /// Pairs only the speed layer had (the batch layer found no events for them).
    pub speed_only_rows: u64,
    /// Pairs only the batch layer had (every event of them was late for the speed layer).
    pub batch_only_rows: u64,
    /// Largest relative difference per value: |speed - batch| / max(|batch|, 1e-12).
    pub max_relative_drift: BTreeMap<String, f64>,
}

impl DriftReport {
    fn absorb(&mut self, other: DriftReport) {
        self.rows_compared += other.rows_compared;
        self.speed_only_rows += other.speed_only_rows;
        self.batch_only_rows += other.batch_only_rows;
        for (k, v) in other.max_relative_drift {
            let e = self.max_relative_drift.entry(k).or_insert(0.0);
            *e = e.max(v);
        }
    }
}

/// Compares the speed layer's released rows with the batch rows of the same windows. Pure.
pub fn measure(view: &ViewDefinition, batch: &[ViewRow], released: &[ViewRow]) -> DriftReport {
    let mut report = DriftReport::default();
    let key = |r: &ViewRow| (r.window.start, r.group.clone());
    let released_windows: std::collections::BTreeSet<EventTime> =
        released.iter().map(|r| r.window.start).collect();
    let batch_by_key: HashMap<(EventTime, GroupKey), &ViewRow> = batch
        .iter()
        .filter(|r| released_windows.contains(&r.window.start))
        .map(|r| (key(r), r))
        .collect();
    let mut matched = 0usize;
    for s in released {
        let Some(b) = batch_by_key.get(&key(s)) else {
            report.speed_only_rows += 1;
            continue;
        };
        matched += 1;
        report.rows_compared += 1;
        for ((name, sv), bv) in view.value_names().zip(&s.values).zip(&b.values) {
            let drift = match (sv.as_f64(), bv.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() / y.abs().max(1e-12),
                (None, None) => 0.0,
                _ => 1.0,
            };
            let e = report
                .max_relative_drift
                .entry(name.to_owned())
                .or_insert(0.0);
            *e = e.max(drift);
        }
    }
    report.batch_only_rows = (batch_by_key.len() - matched) as u64;
    report
}

/// Keeps the speed layer in step with the catalog and records drift per view.
#[derive(Debug, Clone)]
pub struct Reconciler {
    catalog: Arc<ViewCatalog>,
    /// `None` in a process without a speed worker: it only keeps its catalog fresh.
    speed: Option<SpeedLayer>,
    /// Whether released state is measured against the batch layer: only meaningful when this
    /// speed layer owns every partition (a worker of a group holds a share of each window).
    drift: bool,
    reports: Arc<Mutex<BTreeMap<String, DriftReport>>>,
}

impl Reconciler {
    pub fn new(catalog: Arc<ViewCatalog>, speed: impl Into<Option<SpeedLayer>>) -> Self {
        Self {
            catalog,
            speed: speed.into(),
            drift: true,
            reports: Arc::default(),
        }
    }

    /// Whether to measure drift on release (on by default).
    pub fn with_drift(mut self, drift: bool) -> Self {
        self.drift = drift;
        self
    }

    /// Drift measured so far for `view`.
    pub fn report(&self, view: &str) -> Option<DriftReport> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(view)
            .cloned()
    }

    /// Releases every window the batch layer covers from the speed layer, and measures the
    /// released rows against the batch layer's exact rows of the same windows.
    pub async fn reconcile(&self) {
        let Some(speed) = &self.speed else {
            return;
        };
        for view in self.catalog.views() {
            let Some(published) = self.catalog.get(&view.name) else {
                continue;
            };
            if published.coverage.is_empty() {
                continue;
            }
            let Some(released) = speed.release(&view.name, &published.coverage) else {
                continue;
            };
            if released.is_empty() || !self.drift {
                continue;
            }
            let (Some(first), Some(last)) = (
                released.iter().map(|r| r.window.start).min(),
                released.iter().map(|r| r.window.start).max(),
            ) else {
                continue;
            };
            let span = StartRange::new(first, EventTime(last.millis().saturating_add(1)));
            let exact = match self.catalog.rows(&published, span).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(view = %view.name, %err, "released speed state; drift not measured: reading published rows failed");
                    continue;
                }
            };
            let report = measure(view, &exact, &released);
            for (value, drift) in &report.max_relative_drift {
                metrics::gauge!("tandem_reconcile_max_relative_drift", "view" => view.name.clone(), "value" => value.clone())
                    .set(*drift);
            }
            metrics::counter!("tandem_reconcile_rows_compared_total", "view" => view.name.clone())
                .increment(report.rows_compared);
            tracing::info!(view = %view.name, compared = report.rows_compared, drift = ?report.max_relative_drift, "released speed state covered by batch");
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(view.name.clone())
                .or_default()
                .absorb(report);
        }
    }

    /// Reconciles on every publication, and polls the store for publications made elsewhere.
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        let mut changes = self.catalog.subscribe();
        let mut tick = tokio::time::interval(poll);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.reconcile().await;
                }
                _ = tick.tick() => {
                    if let Err(err) = self.catalog.refresh_all().await {
                        tracing::warn!(%err, "refreshing published views failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::row::GroupValue;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;
    use tandem_shared::value::AggregateValue;
    use tandem_shared::window::Window;

    fn row(start: i64, city: &str, n: i64) -> ViewRow {
        ViewRow {
            window: Window {
                start: EventTime(start),
                end: EventTime(start + 1),
            },
            group: vec![GroupValue::Str(city.into())],
            values: vec![AggregateValue::Int(n)],
        }
    }

    #[test]
    fn drift_compares_matching_rows_and_counts_one_sided_ones() {
        let schema = testing::schema(&[("city", FieldType::String)]);
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS n"],
        );
        let batch = vec![row(0, "A", 100), row(0, "B", 5), row(9, "Z", 1)];
        let released = vec![row(0, "A", 98), row(0, "C", 1)];
        let r = measure(&view, &batch, &released);
        assert_eq!(r.rows_compared, 1);
        assert_eq!(r.speed_only_rows, 1);
        assert_eq!(
            r.batch_only_rows, 1,
            "window 9 was not released, so it is not compared"
        );
        assert!((r.max_relative_drift["n"] - 0.02).abs() < 1e-12);
    }
}
