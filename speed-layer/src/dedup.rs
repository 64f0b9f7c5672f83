//! De-duplication: an event whose id this partition has seen within the horizon is dropped
//! before any view counts it. Pure.
//!
//! ```text
//!  micro-batch rows of a partition ─► Seen::admit(id, event time)
//!      ├ new id ─► remembered until progress passes its event time + horizon ─► the views
//!      └ an id remembered ─► dropped (tandem_speed_duplicates_total)
//!  checkpoint ◄─► every remembered (id, event time), with the windows and the offset
//! ```
//!
//! Copies of one event carry the same key, so they meet in one partition; the horizon is event
//! time (`[speed] dedup_horizon`, by default the longest window plus its allowed lateness: a
//! copy within it lands in a window the speed layer still holds). Ids are kept whole, never as
//! hashes, so a new event is never taken for a copy; the cost is the id's bytes plus about 90
//! bytes of allocation, map and queue entries per id (see [`Seen::bytes`]). A copy that arrives after the
//! horizon is counted by the speed layer; the batch layer's exact answer (which de-duplicates
//! the whole archive) replaces the window, and reconciliation drift shows the difference.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tandem_shared::time::{EventTime, Span};

/// What one id costs besides its bytes and its expiry slots, estimated from the layouts: one
/// shared allocation (its reference counts, 16 B, and the allocator's header, about 16 B) and
/// the map's entry (the key's pointer and length, the time and a control byte at a load factor
/// of 7/8: about 30 B).
const ID_OVERHEAD: usize = 62;
/// One slot of the expiry queue: the shared id's pointer and length, and its share of a tree
/// node and of the vector it sits in.
const QUEUE_SLOT: usize = 24;

/// The ids one partition has seen within the horizon.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Id → the latest event time it was seen with. Hashed once per event with an id, so the
    /// map uses foldhash (seeded per process) as the group maps do.
    ids: HashMap<Arc<[u8]>, i64, foldhash::fast::RandomState>,
    /// Event time → the ids seen with it (the same allocations as the map's keys), to forget
    /// them in time order.
    expiry: BTreeMap<i64, Vec<Arc<[u8]>>>,
    bytes: usize,
}

impl Seen {
    /// Whether the event with `id` at `time` is new; remembers it if so. `cutoff`: ids whose
    /// event time is before it are forgotten first (progress minus the horizon).
    pub(crate) fn admit(&mut self, id: &[u8], time: EventTime, cutoff: EventTime) -> bool {
        self.forget_before(cutoff);
        if let Some((key, seen)) = self.ids.get_key_value(id) {
            // A copy. Keep the id as long as its latest copy needs.
            if time.millis() > *seen {
                let key = Arc::clone(key);
                self.ids.insert(Arc::clone(&key), time.millis());
                self.expiry.entry(time.millis()).or_default().push(key);
                self.bytes += QUEUE_SLOT;
            }
            return false;
        }
        if time < cutoff {
            // Older than anything remembered: it cannot be told from a copy already forgotten,
            // so it is counted (the batch layer decides exactly).
            return true;
        }
        let key: Arc<[u8]> = Arc::from(id);
        self.ids.insert(Arc::clone(&key), time.millis());
        self.expiry.entry(time.millis()).or_default().push(key);
        self.bytes += id.len() + ID_OVERHEAD + QUEUE_SLOT;
        true
    }

    /// Forgets the ids whose latest event time is before `cutoff`.
    pub(crate) fn forget_before(&mut self, cutoff: EventTime) {
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() >= cutoff.millis() {
                break;
            }
            let (time, ids) = entry.remove_entry();
            for id in ids {
                self.bytes = self.bytes.saturating_sub(QUEUE_SLOT);
                // Only if this was its latest time: a later copy keeps it.
                if self.ids.get(&*id) == Some(&time) {
                    self.ids.remove(&*id);
                    self.bytes = self.bytes.saturating_sub(id.len() + ID_OVERHEAD);
                }
            }
        }
    }

    /// Ids remembered.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// An estimate of the memory held, for the state-bytes gauge and the memory budget.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every remembered id with its latest event time, for a checkpoint.
    pub(crate) fn snapshot(&self) -> Vec<(Vec<u8>, i64)> {
        let mut out: Vec<(Vec<u8>, i64)> =
            self.ids.iter().map(|(id, t)| (id.to_vec(), *t)).collect();
        out.sort_unstable_by_key(|(_, t)| *t);
        out
    }

    /// The ids of a checkpoint.
    pub(crate) fn restore(entries: Vec<(Vec<u8>, i64)>) -> Self {
        let mut seen = Self::default();
        for (id, time) in entries {
            seen.admit(&id, EventTime(time), EventTime::MIN);
        }
        seen
    }
}

/// The horizon by default: the longest window (a session's gap) plus its allowed lateness, over
/// `views`.
pub(crate) fn default_horizon(views: &[tandem_shared::view::ViewDefinition]) -> Span {
    use tandem_shared::window::WindowSpec;
    views
        .iter()
        .map(|v| {
            let window = match &v.window {
                WindowSpec::Tumbling { size } => *size,
                WindowSpec::Hopping { size, .. } => *size,
                WindowSpec::Session { gap } => *gap,
            };
            Span::from_millis(window.millis() + v.allowed_lateness.millis())
        })
        .max_by_key(|s| s.millis())
        .unwrap_or(Span::from_millis(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> EventTime {
        EventTime(ms)
    }

    #[test]
    fn a_copy_within_the_horizon_is_dropped_and_a_new_id_never_is() {
        let mut seen = Seen::default();
        assert!(seen.admit(b"a", t(1_000), t(0)));
        assert!(!seen.admit(b"a", t(1_000), t(0)), "a copy");
        assert!(seen.admit(b"b", t(1_000), t(0)), "another id");
        // A copy later in event time keeps its id longer.
        assert!(!seen.admit(b"a", t(5_000), t(500)));
        seen.forget_before(t(2_000));
        assert_eq!(seen.len(), 1, "b is forgotten, a is kept by its later copy");
        assert!(!seen.admit(b"a", t(5_000), t(2_000)));
        assert!(
            seen.admit(b"b", t(3_000), t(2_000)),
            "b was forgotten: counted again"
        );
        // An event older than the cutoff is counted (cannot be told from a forgotten copy).
        assert!(seen.admit(b"c", t(100), t(2_000)));
        assert!(seen.admit(b"c", t(100), t(2_000)));
        // Many ids, every one distinct: none is ever dropped.
        let mut seen = Seen::default();
        for i in 0..100_000u64 {
            assert!(seen.admit(&i.to_le_bytes(), t(i as i64), t(i as i64 - 10_000)));
        }
        assert!(seen.len() <= 10_001, "{} ids held", seen.len());
    }

    #[test]
    fn a_checkpoint_restores_every_id() {
        let mut seen = Seen::default();
        for i in 0..1_000i64 {
            seen.admit(format!("order-{i}").as_bytes(), t(i), t(0));
        }
        let mut restored = Seen::restore(seen.snapshot());
        assert_eq!(restored.len(), 1_000);
        assert_eq!(restored.bytes(), seen.bytes());
        for i in 0..1_000i64 {
            assert!(!restored.admit(format!("order-{i}").as_bytes(), t(i), t(0)));
        }
    }
}
