//! Which rows an output sends, and with which sequence number (pure).
//!
//! ```text
//!  rows of one poll (window, group, source, closed, values, rule) ──► Tracker::step
//!      ──► Decision { key, kind, seq }    (and what was sent, per key, kept for the next poll)
//! ```
//!
//! - `on_update`: a row is sent whenever its values change; a batch row that differs from what
//!   was sent before is a `correction`; a batch row equal to it is not sent again.
//! - `on_close`: a speed row once its window is closed (the watermark passed its end), a batch
//!   row when it first appears; then only a `correction` when batch truth differs.
//! - With a rule (`when`), only `alert`s: one per window and group, when the rule first holds
//!   (on any update with `on_update`, on a closed or batch row with `on_close`).
//!
//! Sequence numbers increase per key, within a process and across restarts: each is at least
//! the wall clock in microseconds, so a record sent again after a crash carries a higher number
//! than anything sent before it, and a consumer keeping the highest number per key converges on
//! the latest value.

use std::collections::BTreeMap;

use tandem_shared::row::{GroupKey, Source};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;

use super::Emit;

/// A row's identity on the output topic: its window start and group.
pub type RowKey = (EventTime, GroupKey);

/// What a record says about its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The row changed (`on_update`).
    Update,
    /// The row's window closed, or the batch layer published it (`on_close`).
    Close,
    /// The batch layer published a value different from the one sent before.
    Correction,
    /// The rule first held for the row.
    Alert,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Close => "close",
            Kind::Correction => "correction",
            Kind::Alert => "alert",
        }
    }
}

/// One row of a poll, as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub start: EventTime,
    pub group: &'a GroupKey,
    pub source: Source,
    /// Speed rows: the watermark has passed the window's end. Batch rows: always.
    pub closed: bool,
    pub values: &'a [AggregateValue],
    /// Whether the output's rule holds for the row (`true` without a rule).
    pub rule: bool,
}

/// A record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub key: RowKey,
    pub kind: Kind,
    pub seq: u64,
}

#[derive(Debug, Clone)]
struct Sent {
    values: Vec<AggregateValue>,
    seq: u64,
    alerted: bool,
}

/// What an output has sent, per row.
#[derive(Debug)]
pub struct Tracker {
    emit: Emit,
    alerts: bool,
    sent: BTreeMap<RowKey, Sent>,
}

impl Tracker {
    /// `alerts`: the output has a rule, so it sends alerts only.
    pub fn new(emit: Emit, alerts: bool) -> Self {
        Self {
            emit,
            alerts,
            sent: BTreeMap::new(),
        }
    }

    /// The records `rows` call for; `now_us` is the wall clock in microseconds.
    pub fn step<'a>(
        &mut self,
        rows: impl IntoIterator<Item = Seen<'a>>,
        now_us: u64,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for row in rows {
            let key = (row.start, row.group.clone());
            let before = self.sent.get(&key);
            let ready = match self.emit {
                Emit::OnUpdate => true,
                Emit::OnClose => row.closed || row.source == Source::Batch,
            };
            let kind = if self.alerts {
                let alerted = before.is_some_and(|s| s.alerted);
                (ready && row.rule && !alerted).then_some(Kind::Alert)
            } else {
                match before {
                    _ if !ready => None,
                    None if self.emit == Emit::OnUpdate => Some(Kind::Update),
                    None => Some(Kind::Close),
                    Some(s) if s.values == row.values => None,
                    Some(_) if row.source == Source::Batch => Some(Kind::Correction),
                    Some(_) if self.emit == Emit::OnUpdate => Some(Kind::Update),
                    // A closed speed row changed by a late event within the lateness: its
                    // value moves until the batch layer settles it.
                    Some(_) => Some(Kind::Update),
                }
            };
            let Some(kind) = kind else {
                continue;
            };
            let seq = before.map_or(now_us, |s| (s.seq + 1).max(now_us));
            self.sent.insert(
                key.clone(),
                Sent {
                    values: row.values.to_vec(),
                    seq,
                    alerted: kind == Kind::Alert || before.is_some_and(|s| s.alerted),
                },
            );
            out.push(Decision { key, kind, seq });
        }
        out
    }

    /// Forgets rows of windows starting before `start` (they no longer change within reach).
    pub fn forget_before(&mut self, start: EventTime) {
        self.sent = self.sent.split_off(&(start, GroupKey::new()));
    }

    /// Rows remembered.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::row::GroupValue;

    fn city(name: &str) -> GroupKey {
        vec![GroupValue::Str(name.into())]
    }

    fn seen<'a>(
        start: i64,
        group: &'a GroupKey,
        source: Source,
        closed: bool,
        values: &'a [AggregateValue],
    ) -> Seen<'a> {
        Seen {
            start: EventTime(start),
            group,
            source,
            closed,
            values,
            rule: true,
        }
    }

    const N1: [AggregateValue; 1] = [AggregateValue::Int(1)];
    const N2: [AggregateValue; 1] = [AggregateValue::Int(2)];
    const N3: [AggregateValue; 1] = [AggregateValue::Int(3)];

    fn kinds(d: &[Decision]) -> Vec<Kind> {
        d.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn on_update_sends_every_change_then_a_correction_only_when_batch_differs() {
        let a = city("A");
        let b = city("B");
        let mut t = Tracker::new(Emit::OnUpdate, false);
        let d = t.step([seen(0, &a, Source::Speed, false, &N1)], 10);
        assert_eq!(kinds(&d), [Kind::Update]);
        assert_eq!(d[0].seq, 10);
        // Unchanged: nothing; changed: an update with a higher sequence number.
        assert!(
            t.step([seen(0, &a, Source::Speed, false, &N1)], 11)
                .is_empty()
        );
        let d = t.step([seen(0, &a, Source::Speed, false, &N2)], 5);
        assert_eq!((kinds(&d), d[0].seq), (vec![Kind::Update], 11));
        // Batch agrees with A (nothing sent) and differs for B (a correction).
        t.step([seen(0, &b, Source::Speed, true, &N1)], 20);
        let d = t.step(
            [
                seen(0, &a, Source::Batch, true, &N2),
                seen(0, &b, Source::Batch, true, &N3),
            ],
            30,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].key.1.clone(), d[0].kind),
            (b.clone(), Kind::Correction)
        );
        // A later publication that changes A (a late event archived since) corrects it again.
        let d = t.step([seen(0, &a, Source::Batch, true, &N3)], 40);
        assert_eq!(kinds(&d), [Kind::Correction]);
    }

    #[test]
    fn on_close_waits_for_the_watermark_or_the_batch_layer() {
        let a = city("A");
        let b = city("B");
        let mut t = Tracker::new(Emit::OnClose, false);
        assert!(
            t.step([seen(0, &a, Source::Speed, false, &N1)], 1)
                .is_empty()
        );
        let d = t.step([seen(0, &a, Source::Speed, true, &N2)], 2);
        assert_eq!(kinds(&d), [Kind::Close]);
        // A window the speed layer never closed, published by the batch layer: sent as closed.
        let d = t.step([seen(60, &b, Source::Batch, true, &N3)], 3);
        assert_eq!(kinds(&d), [Kind::Close]);
        // Batch truth for A differs from what was sent: a correction.
        let d = t.step([seen(0, &a, Source::Batch, true, &N3)], 4);
        assert_eq!(kinds(&d), [Kind::Correction]);
        assert!(
            t.step([seen(0, &a, Source::Batch, true, &N3)], 5)
                .is_empty()
        );
    }

    #[test]
    fn an_alert_fires_once_per_window_and_group_when_the_rule_first_holds() {
        let a = city("A");
        let mut t = Tracker::new(Emit::OnUpdate, true);
        let mut row = seen(0, &a, Source::Speed, false, &N1);
        row.rule = false;
        assert!(t.step([row], 1).is_empty());
        let d = t.step([seen(0, &a, Source::Speed, false, &N2)], 2);
        assert_eq!(kinds(&d), [Kind::Alert]);
        // Still holding, changed, or confirmed by batch: never again.
        assert!(
            t.step([seen(0, &a, Source::Speed, false, &N3)], 3)
                .is_empty()
        );
        assert!(
            t.step([seen(0, &a, Source::Batch, true, &N3)], 4)
                .is_empty()
        );
        // Another window of the same group alerts on its own.
        assert_eq!(
            kinds(&t.step([seen(60, &a, Source::Speed, false, &N3)], 5)),
            [Kind::Alert]
        );
        // An on_close alert waits for the close.
        let mut t = Tracker::new(Emit::OnClose, true);
        assert!(
            t.step([seen(0, &a, Source::Speed, false, &N3)], 1)
                .is_empty()
        );
        assert_eq!(
            kinds(&t.step([seen(0, &a, Source::Speed, true, &N3)], 2)),
            [Kind::Alert]
        );
    }

    #[test]
    fn old_windows_are_forgotten() {
        let a = city("A");
        let mut t = Tracker::new(Emit::OnUpdate, false);
        t.step(
            [
                seen(0, &a, Source::Speed, false, &N1),
                seen(60, &a, Source::Speed, false, &N1),
            ],
            1,
        );
        t.forget_before(EventTime(60));
        assert_eq!(t.len(), 1);
        // A forgotten row seen again is sent again (at least once), with a higher number.
        let d = t.step([seen(0, &a, Source::Speed, false, &N1)], 2);
        assert_eq!((kinds(&d), d[0].seq), (vec![Kind::Update], 2));
    }
}
