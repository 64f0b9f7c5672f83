//! `[archive]` and `[batch]`: the batch layer's settings, with their defaults (written here,
//! once).
//!
//! ```text
//!  [archive] TOML ──serde (defaults; durations and sizes parse themselves)──► ArchiveSettings
//!  [batch]   TOML ──────────────────────────────────────────────────────────► BatchSettings
//!      ──check──► Invalid { key, problem }   (the app names the file and the section)
//!  BatchSettings::scheduler() ──► SchedulerConfig
//! ```

use std::str::FromStr;

use serde::Deserialize;
use tandem_shared::settings::{ByteSize, Invalid};
use tandem_shared::time::Span;

use crate::archive::SEAL_AT;
use crate::recompute::DEFAULT_MEMORY;
use crate::scheduler::SchedulerConfig;

/// The `[archive]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Longest time an event waits in a buffer before its file is written.
    pub roll_interval: Span,
    /// Buffered bytes of one partition that trigger a roll.
    pub roll_bytes: ByteSize,
    /// Files a partition manifest lists before it seals them into a file list.
    pub seal_files: usize,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            roll_interval: Span::from_millis(30_000),
            roll_bytes: ByteSize(64 << 20),
            seal_files: SEAL_AT,
        }
    }
}

impl ArchiveSettings {
    /// The settings' own limits.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.roll_interval.millis() == 0 {
            return Err(Invalid::new("roll_interval", "must be greater than zero"));
        }
        if self.roll_bytes.bytes() == 0 {
            return Err(Invalid::new("roll_bytes", "must be at least 1"));
        }
        if self.seal_files == 0 {
            return Err(Invalid::new("seal_files", "must be at least 1"));
        }
        Ok(())
    }
}

/// The `[batch]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Cron expression (sec min hour day month weekday) of scheduled recompute jobs.
    pub schedule: Option<String>,
    /// `"datafusion"` (in this process, the default) or `"ballista"`.
    pub engine: Option<String>,
    /// The Ballista scheduler, `df://host:port` (with `engine = "ballista"`).
    pub ballista_url: Option<String>,
    /// Jobs waiting to run, at most.
    pub job_queue: usize,
    pub max_concurrent_jobs: usize,
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Span,
    /// Retired segments, old view versions and finished job records are kept this long.
    pub retention: Span,
    /// How often published views are compacted and old objects collected.
    pub maintenance_interval: Span,
    /// Memory every recompute query of the process shares.
    pub memory: ByteSize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            schedule: None,
            engine: None,
            ballista_url: None,
            job_queue: 64,
            max_concurrent_jobs: 2,
            max_attempts: 3,
            retry_backoff: Span::from_millis(2_000),
            retention: Span::from_millis(7 * 86_400_000),
            maintenance_interval: Span::from_millis(600_000),
            memory: ByteSize(DEFAULT_MEMORY),
        }
    }
}

impl BatchSettings {
    /// The settings' own limits (the engine is checked where the build's features are known).
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(expr) = &self.schedule
            && let Err(err) = cron::Schedule::from_str(expr)
        {
            return Err(Invalid::new(
                "schedule",
                format!(
                    "`{expr}` is not a cron expression (sec min hour day month weekday): {err}"
                ),
            ));
        }
        for (key, value) in [
            ("job_queue", self.job_queue),
            ("max_concurrent_jobs", self.max_concurrent_jobs),
            ("max_attempts", self.max_attempts as usize),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        if self.maintenance_interval.millis() == 0 {
            return Err(Invalid::new(
                "maintenance_interval",
                "must be greater than zero",
            ));
        }
        if self.memory.bytes() == 0 {
            return Err(Invalid::new(
                "memory",
                "expected a positive size such as \"1GiB\"",
            ));
        }
        Ok(())
    }

    /// The job scheduler's settings.
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            schedule: self.schedule.clone(),
            queue_capacity: self.job_queue,
            max_concurrent: self.max_concurrent_jobs,
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff.as_duration(),
            retention: self.retention,
            maintenance_interval: self.maintenance_interval.as_duration(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_checks_and_zero_does_not() {
        assert_eq!(ArchiveSettings::default().check(), Ok(()));
        assert_eq!(BatchSettings::default().check(), Ok(()));
        let zero = BatchSettings {
            job_queue: 0,
            ..BatchSettings::default()
        };
        assert_eq!(zero.check().unwrap_err().key, "job_queue");
        let never = BatchSettings {
            schedule: Some("every ten minutes".into()),
            ..BatchSettings::default()
        };
        assert_eq!(never.check().unwrap_err().key, "schedule");
    }
}
