//! `[speed]`: the speed layer's settings, with their defaults (written here, once).
//!
//! ```text
//!  [speed] TOML ──serde (defaults, durations and sizes parse themselves)──► SpeedSettings
//!      ──check──► Invalid { key, problem }   (the app names the file and the section)
//! ```

use serde::Deserialize;
use tandem_shared::settings::{ByteSize, Invalid};
use tandem_shared::time::Span;

/// The `[speed]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeedSettings {
    /// Most messages folded into one micro-batch.
    pub max_batch: usize,
    /// How often each partition's window state is checkpointed.
    pub checkpoint_interval: Span,
    /// Events more than this ahead of their Kafka record's timestamp are dead-lettered.
    pub max_future: Span,
    /// Budget of window state; consumption pauses above it until the batch layer releases
    /// windows.
    pub memory_budget: ByteSize,
    /// With `[schema] id_field`: how long (in event time) an id is remembered to drop its
    /// copies; by default the longest window plus its allowed lateness.
    pub dedup_horizon: Option<Span>,
}

impl Default for SpeedSettings {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            checkpoint_interval: Span::from_millis(10_000),
            max_future: Span::from_millis(3_600_000),
            memory_budget: ByteSize(1 << 30),
            dedup_horizon: None,
        }
    }
}

impl SpeedSettings {
    /// The settings' own limits.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.max_batch == 0 {
            return Err(Invalid::new("max_batch", "must be at least 1"));
        }
        if self.checkpoint_interval.millis() == 0 {
            return Err(Invalid::new(
                "checkpoint_interval",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
