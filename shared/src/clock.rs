//! Wall-clock time, injected into both layers so that idleness, future-event checks, archive
//! completeness and job timestamps are testable without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::time::EventTime;

/// A source of wall-clock time in epoch milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> EventTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EventTime {
        EventTime(chrono::Utc::now().timestamp_millis())
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: EventTime) -> Self {
        Self(Arc::new(AtomicI64::new(start.millis())))
    }

    pub fn set(&self, t: EventTime) {
        self.0.store(t.millis(), Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EventTime {
        EventTime(self.0.load(Ordering::SeqCst))
    }
}
