//! Reconciliation: when the batch layer publishes, the speed layer lets go of what it covers, and
//! we measure how far the speed layer's answers were from the exact ones.
//!
//! Order matters: the serving layer already answers covered windows from the batch layer (the
//! catalog installs a publication before announcing it), so releasing speed state afterwards can
//! never open a gap.
//!
//! ```text
//!  one process:   publication ─► release covered windows at once ─► drift: released rows vs batch
//!  group member:  publication ─► (speed role) release only `release_after` it was first seen
//!                              ─► (serve role) drift: the group's rows of newly covered windows,
//!                                  asked of every worker before they release them, vs batch;
//!                                  windows a worker already released are left out
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_batch_layer::{PublishedView, ViewCatalog};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::{GroupKey, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;
use tandem_speed_layer::SpeedLayer;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;

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
            let drift = match (sv, bv) {
                // Exact money: the difference in units, so equal decimals drift exactly 0 and
                // a cent on a large sum still shows.
                (AggregateValue::Decimal(x), AggregateValue::Decimal(y)) if x.scale == y.scale => {
                    x.units.abs_diff(y.units) as f64 / (y.units.unsigned_abs() as f64).max(1e-12)
                }
                _ => match (sv.as_f64(), bv.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() / y.abs().max(1e-12),
                    (None, None) => 0.0,
                    _ => 1.0,
                },
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

/// Publications' coverage seen and not yet released, oldest first, with when each was seen.
type Pending = VecDeque<(Instant, Coverage)>;

/// Where drift is measured.
#[derive(Debug, Clone)]
enum Drift {
    /// On release, from the rows this process's speed layer lets go (it owns every partition).
    Released,
    /// From the whole group's rows (asked of every worker) of windows newly covered, before
    /// the workers release them.
    Group(Arc<Fleet>),
    Off,
}

/// Keeps the speed layer in step with the catalog and records drift per view.
#[derive(Debug, Clone)]
pub struct Reconciler {
    catalog: Arc<ViewCatalog>,
    /// `None` in a process without a speed worker: it releases nothing.
    speed: Option<SpeedLayer>,
    drift: Drift,
    /// How long after a publication is first seen its coverage is released (zero: at once).
    release_after: Duration,
    /// Per view: publications' coverage seen and not yet released, with when they were seen.
    pending: Arc<Mutex<BTreeMap<String, Pending>>>,
    /// Per view: coverage whose drift was measured from the group's rows.
    measured: Arc<Mutex<BTreeMap<String, Coverage>>>,
    reports: Arc<Mutex<BTreeMap<String, DriftReport>>>,
}

impl Reconciler {
    /// Releases at once and measures drift on release (a process that owns every partition);
    /// without a speed layer, only keeps the catalog fresh.
    pub fn new(catalog: Arc<ViewCatalog>, speed: impl Into<Option<SpeedLayer>>) -> Self {
        let speed = speed.into();
        Self {
            catalog,
            drift: if speed.is_some() {
                Drift::Released
            } else {
                Drift::Off
            },
            speed,
            release_after: Duration::ZERO,
            pending: Arc::default(),
            measured: Arc::default(),
            reports: Arc::default(),
        }
    }

    /// A member of a group of processes: this process's speed worker (if any) releases a
    /// publication's coverage only `release_after` it was first seen, so that serving
    /// instances can measure drift over the whole group first; drift is measured from
    /// `fleet`'s rows when given (a serving process), not at all otherwise.
    pub fn in_group(mut self, fleet: Option<Arc<Fleet>>, release_after: Duration) -> Self {
        self.drift = fleet.map_or(Drift::Off, Drift::Group);
        self.release_after = release_after;
        self
    }

    /// The first reconciliation of a process: what the batch layer covered before it started is
    /// released at once (nobody is measuring it) and not measured.
    pub async fn start(&self) {
        let now = Instant::now();
        let long_ago = now.checked_sub(self.release_after).unwrap_or(now);
        for view in self.catalog.views() {
            let Some(published) = self.catalog.get(&view.name) else {
                continue;
            };
            self.measured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(view.name.clone(), published.coverage.clone());
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    view.name.clone(),
                    VecDeque::from([(long_ago, published.coverage.clone())]),
                );
        }
        self.reconcile().await;
    }

    /// Drift measured so far for `view`.
    pub fn report(&self, view: &str) -> Option<DriftReport> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(view)
            .cloned()
    }

    /// Releases what the batch layer covers from the speed layer (at once, or once due in a
    /// group), and measures drift against the batch layer's exact rows of the same windows.
    pub async fn reconcile(&self) {
        for view in self.catalog.views() {
            let Some(published) = self.catalog.get(&view.name) else {
                continue;
            };
            if published.coverage.is_empty() {
                continue;
            }
            if let Drift::Group(fleet) = &self.drift {
                self.measure_group(fleet, view, &published).await;
            }
            let Some(speed) = &self.speed else {
                continue;
            };
            let Some(due) = self.due(&view.name, &published.coverage, Instant::now()) else {
                continue;
            };
            let Some(released) = speed.release(&view.name, &due) else {
                continue;
            };
            if released.is_empty() || !matches!(self.drift, Drift::Released) {
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
            self.record(view, measure(view, &exact, &released));
        }
    }

    /// The coverage to release now: the newest one seen at least `release_after` ago.
    fn due(&self, view: &str, coverage: &Coverage, now: Instant) -> Option<Coverage> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let queue = pending.entry(view.to_owned()).or_default();
        if queue.back().is_none_or(|(_, c)| c != coverage) {
            queue.push_back((now, coverage.clone()));
        }
        let mut due = None;
        while let Some((seen, _)) = queue.front() {
            if now.duration_since(*seen) < self.release_after {
                break;
            }
            due = queue.pop_front().map(|(_, c)| c);
        }
        due
    }

    /// Measures drift over windows the batch layer newly covers, from the group's rows of them
    /// (windows some worker already released are left out: their rows lack its share).
    async fn measure_group(&self, fleet: &Fleet, view: &ViewDefinition, published: &PublishedView) {
        let new: Vec<StartRange> = {
            let measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
            let done = measured.get(&view.name).cloned().unwrap_or_default();
            published
                .coverage
                .ranges()
                .iter()
                .flat_map(|r| done.gaps(*r))
                .collect()
        };
        let (Some(first), Some(last)) = (new.first(), new.last()) else {
            return;
        };
        let span = StartRange::new(first.from, last.to);
        let Some((rows, missing, released)) = fleet.rows_with_released(&view.name, span).await
        else {
            return;
        };
        if !missing.is_empty() {
            tracing::debug!(view = %view.name, ?missing, "drift not measured yet: partitions missing");
            return;
        }
        // Newly covered for the row's group, and not released by a worker yet.
        let keep = |r: &ViewRow| {
            new.iter().any(|n| n.contains(r.window.start))
                && published.coverage.covers(&r.group, r.window.start)
                && !released.covers(&r.group, r.window.start)
        };
        let speed_rows: Vec<ViewRow> = rows.into_iter().filter(|r| keep(r)).collect();
        {
            let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
            let done = measured.entry(view.name.clone()).or_default();
            for r in &new {
                done.insert(*r);
            }
        }
        if speed_rows.is_empty() {
            return;
        }
        match self.catalog.rows(published, span).await {
            Ok(exact) => {
                let exact: Vec<ViewRow> = exact.into_iter().filter(|r| keep(r)).collect();
                self.record(view, measure(view, &exact, &speed_rows));
            }
            Err(err) => {
                tracing::warn!(view = %view.name, %err, "drift not measured: reading published rows failed");
            }
        }
    }

    fn record(&self, view: &ViewDefinition, report: DriftReport) {
        for (value, drift) in &report.max_relative_drift {
            metrics::gauge!("tandem_reconcile_max_relative_drift", "view" => view.name.clone(), "value" => value.clone())
                .set(*drift);
        }
        metrics::counter!("tandem_reconcile_rows_compared_total", "view" => view.name.clone())
            .increment(report.rows_compared);
        tracing::info!(view = %view.name, compared = report.rows_compared, drift = ?report.max_relative_drift, "speed state measured against batch");
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(view.name.clone())
            .or_default()
            .absorb(report);
    }

    /// Reconciles on every publication, and polls the store for publications made elsewhere
    /// (then reconciles again: delayed releases fall due, group drift is retried).
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
                    self.reconcile().await;
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

    #[test]
    fn decimal_drift_is_exact() {
        let schema = testing::schema(&[
            ("city", FieldType::String),
            (
                "price",
                FieldType::Decimal {
                    precision: 38,
                    scale: 2,
                },
            ),
        ]);
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["sum(price) AS revenue"],
        );
        let cents = |start: i64, units: i128| {
            let mut r = row(start, "A", 0);
            r.values = vec![AggregateValue::Decimal(
                tandem_shared::decimal::Decimal::new(units, 2),
            )];
            r
        };
        // Equal sums beyond a float's 15 digits: exactly 0.
        let big = 123_456_789_012_345_678_901_i128;
        let r = measure(&view, &[cents(0, big)], &[cents(0, big)]);
        assert_eq!(r.max_relative_drift["revenue"], 0.0);
        // One cent apart: a float sees the same number, the units do not.
        assert_eq!((big as f64), ((big + 1) as f64));
        let r = measure(&view, &[cents(0, big)], &[cents(0, big + 1)]);
        assert!(r.max_relative_drift["revenue"] > 0.0);
    }

    #[test]
    fn a_group_member_releases_a_publication_only_once_it_is_due() {
        let catalog = Arc::new(ViewCatalog::new(
            Arc::new(object_store::memory::InMemory::new()),
            Vec::new(),
        ));
        let minutes = |a: i64, b: i64| {
            Coverage::from_ranges([StartRange::new(
                EventTime(a * 60_000),
                EventTime(b * 60_000),
            )])
        };
        let at_once = Reconciler::new(Arc::clone(&catalog), None);
        let t0 = Instant::now();
        assert_eq!(at_once.due("v", &minutes(0, 5), t0), Some(minutes(0, 5)));

        let grace = Duration::from_secs(30);
        let member = Reconciler::new(catalog, None).in_group(None, grace);
        assert_eq!(member.due("v", &minutes(0, 5), t0), None);
        // A newer publication seen 10 s later; the first is due after 30 s, the second after 40.
        assert_eq!(
            member.due("v", &minutes(0, 10), t0 + Duration::from_secs(10)),
            None
        );
        assert_eq!(
            member.due("v", &minutes(0, 10), t0 + Duration::from_secs(31)),
            Some(minutes(0, 5))
        );
        assert_eq!(
            member.due("v", &minutes(0, 10), t0 + Duration::from_secs(35)),
            None
        );
        assert_eq!(
            member.due("v", &minutes(0, 10), t0 + Duration::from_secs(41)),
            Some(minutes(0, 10))
        );
    }
}
