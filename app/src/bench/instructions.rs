//! Instructions per event: the speed layer's consume work counted by callgrind, a figure that
//! repeats where CPU time moves by 2× on a shared machine.
//!
//! ```text
//!  tandem bench speed-core --profile P --events N      (generates payloads, then `measured`)
//!      measured: payloads ─► speed_layer::replay, micro-batches of --batch (8,000) over 8 partitions
//!  valgrind --tool=callgrind --toggle-collect='*instructions::measured*' tandem bench speed-core
//!      ─► instructions inside `measured` only (generation and set-up are not counted)
//! ```
//!
//! The work counted is the consume thread's after librdkafka hands over a micro-batch: JSON
//! decoding into Arrow, every view's filter and argument expressions, window assignment and
//! state updates. librdkafka's fetching and the checkpoints are not in it (`tandem bench speed`
//! measures them in CPU time). `scripts/instructions` prints the same count broken down by
//! function.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tandem_shared::coverage::StartRange;
use tandem_shared::event::EventDecoder;
use tandem_shared::time::EventTime;
use tandem_speed_layer::SpeedLayer;
use tandem_speed_layer::replay::{Polled, Replayed, replay};

use super::profile::Profile;

const PARTITIONS: i32 = 8;
/// Event times: 30 minutes ending at a fixed instant, so every run sees the same events.
const END: i64 = 1_795_255_200_000;
const SPAN: i64 = 30 * 60_000;

/// Options of `tandem bench speed-core`.
#[derive(Debug, Clone, Copy)]
pub struct CoreBench {
    pub profile: Profile,
    pub events: u64,
    /// Payloads per micro-batch (of all partitions).
    pub batch: usize,
}

/// The profile's events, in event-time order, always the same for the same count.
fn payloads(profile: Profile, events: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(1);
    (0..events)
        .map(|i| {
            let ts = END - SPAN + (i as i64 * SPAN) / events.max(1) as i64;
            profile.event(&mut rng, i, ts).0.into_bytes()
        })
        .collect()
}

/// The counted work: every payload through the speed layer, `batch` payloads per micro-batch,
/// payload `i` on partition `i % 8` (a poll returns messages of many partitions).
#[inline(never)]
pub fn measured(
    speed: &SpeedLayer,
    decoder: &EventDecoder,
    payloads: &[Vec<u8>],
    batch: usize,
) -> Replayed {
    let mut total = Replayed::default();
    let messages: Vec<Polled<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| Polled {
            partition: (i % PARTITIONS as usize) as i32,
            offset: (i / PARTITIONS as usize) as i64,
            payload,
        })
        .collect();
    for chunk in messages.chunks(batch.max(1)) {
        let done = replay(speed, decoder, chunk, None);
        total.applied += done.applied;
        total.malformed += done.malformed;
        total.late += done.late;
        total.bytes += done.bytes;
    }
    total
}

/// `tandem bench speed-core`: runs [`measured`] once and prints what it did (the line
/// [`count`] reads).
pub fn core(opts: CoreBench) -> anyhow::Result<()> {
    let config = opts.profile.config()?;
    let speed = SpeedLayer::compile(&config.views, &config.schema)?;
    let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
    let payloads = payloads(opts.profile, opts.events);
    let started = std::time::Instant::now();
    let done = measured(&speed, &decoder, &payloads, opts.batch);
    if done.applied != opts.events || done.malformed != 0 {
        bail!("{done:?}: every generated event should apply");
    }
    println!(
        "events {} bytes {} state_bytes {} seconds {:.3}",
        done.applied,
        done.bytes,
        speed.state_bytes(),
        started.elapsed().as_secs_f64()
    );
    // What reading it back costs: each view queried over all its windows (a hopping view's
    // window merges its panes here; every view merges its partitions).
    let all = StartRange::new(EventTime::MIN, EventTime::MAX);
    for view in &config.views {
        let asked = std::time::Instant::now();
        let rows = speed.query(&view.name, all).map_or(0, |r| r.len());
        println!(
            "query {} rows {rows} ms {:.1}",
            view.name,
            asked.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// What callgrind counted.
#[derive(Debug, Clone)]
pub(super) struct Counted {
    pub(super) instructions: u64,
    pub(super) events: u64,
    pub(super) bytes: u64,
}

impl Counted {
    pub(super) fn per_event(&self) -> f64 {
        self.instructions as f64 / self.events.max(1) as f64
    }
    pub(super) fn per_byte(&self) -> f64 {
        self.instructions as f64 / self.bytes.max(1) as f64
    }
}

/// Whether valgrind can be run here.
pub(super) fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `tandem bench speed-core` under callgrind, counting only [`measured`]; the profile is
/// written to `out`.
pub(super) fn count(profile: Profile, events: u64, out: &Path) -> anyhow::Result<Counted> {
    let exe = std::env::current_exe()?;
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*instructions::measured*")
        .arg(&exe)
        .args(["bench", "speed-core", "--profile", profile.name()])
        .args(["--events", &events.to_string()])
        .output()
        .context("running valgrind")?;
    if !output.status.success() {
        bail!(
            "callgrind run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> anyhow::Result<u64> {
        stdout
            .split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .context("speed-core printed no summary")?
            .parse()
            .context("speed-core summary")
    };
    let text = std::fs::read_to_string(out)?;
    Ok(Counted {
        instructions: instructions_of(&text).context("no totals in the callgrind output")?,
        events: field("events")?,
        bytes: field("bytes")?,
    })
}

/// The instruction total of a callgrind output file.
fn instructions_of(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_a_callgrind_file() {
        let text = "version: 1\ncreator: callgrind\nevents: Ir\nfn=main\n1 5\nsummary: 123456\ntotals: 123456\n";
        assert_eq!(instructions_of(text), Some(123_456));
        assert_eq!(instructions_of("events: Ir\n"), None);
    }

    #[test]
    fn the_counted_work_applies_every_event_of_both_profiles() {
        for profile in [Profile::Simple, Profile::Mix] {
            let config = profile.config().unwrap_or_else(|e| panic!("{e}"));
            let speed = SpeedLayer::compile(&config.views, &config.schema)
                .unwrap_or_else(|e| panic!("{e}"));
            let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
            let payloads = payloads(profile, 3_000);
            let done = measured(&speed, &decoder, &payloads, 1_000);
            assert_eq!((done.applied, done.malformed, done.late), (3_000, 0, 0));
            assert!(speed.state_bytes() > 0);
            assert_eq!(payloads, super::payloads(profile, 3_000), "deterministic");
        }
    }
}
