//! Instructions per event: the speed layer's consume work counted by callgrind, a figure that
//! repeats where CPU time moves by 2× on a shared machine.
//!
//! ```text
//!  tandem-bench speed-core --profile P --events N      (generates payloads, then `measured`)
//!      measured: payloads ─► speed_layer::replay, micro-batches of --batch (8,000) over --partitions (8)
//!  valgrind --tool=callgrind --toggle-collect='*instructions::measured*' tandem-bench speed-core
//!      ─► instructions inside `measured` only (generation and set-up are not counted)
//! ```
//!
//! The work counted is the consume thread's after librdkafka hands over a micro-batch: JSON
//! decoding into Arrow, every view's filter and argument expressions, window assignment and
//! state updates. librdkafka's fetching and the checkpoints are not in it (`tandem-bench speed`
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

use super::producers::event_span_ms;
use super::profile::{Keying, Profile};

/// Event times start at a fixed instant (a minute boundary), so every run sees the same events.
const START: i64 = 1_795_255_200_000;

/// Options of `tandem-bench speed-core`.
#[derive(Debug, Clone, Copy)]
pub struct CoreBench {
    pub profile: Profile,
    pub events: u64,
    /// Payloads per micro-batch (of all partitions).
    pub batch: usize,
    /// Partitions the payloads are spread over (8 by default; state is kept per partition, so
    /// more partitions mean more state for the same events).
    pub partitions: u32,
    /// Events per second of event time (see [`super::speed::SpeedBench::event_rate`]).
    pub event_rate: u64,
    /// How events are keyed to partitions.
    pub keying: Keying,
}

/// The workload's events in event-time order, always the same for the same options: each
/// payload with its partition (its key's hash, as a keyed Kafka producer places it).
fn payloads(opts: &CoreBench) -> Vec<(i32, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(1);
    let span = event_span_ms(opts.events, opts.event_rate);
    let partitions = u64::from(opts.partitions.max(1));
    (0..opts.events)
        .map(|i| {
            let ts = START + (i as i64 * span) / opts.events.max(1) as i64;
            let event = opts.profile.event(&mut rng, i, ts);
            // A fixed hash (not the process's random one): the same partitions every run.
            let key = opts.keying.key(i, &event);
            let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            ((hash % partitions) as i32, event.json.into_bytes())
        })
        .collect()
}

/// The payloads as one consumer polls them: offsets counted per partition.
fn polled(payloads: &[(i32, Vec<u8>)]) -> Vec<Polled<'_>> {
    let mut next = std::collections::HashMap::<i32, i64>::new();
    payloads
        .iter()
        .map(|(partition, payload)| {
            let offset = next.entry(*partition).or_default();
            *offset += 1;
            Polled {
                partition: *partition,
                offset: *offset - 1,
                payload,
            }
        })
        .collect()
}

/// The counted work: every message through the speed layer, `batch` messages per micro-batch
/// (a poll returns messages of many partitions).
#[inline(never)]
pub fn measured(
    speed: &SpeedLayer,
    decoder: &EventDecoder,
    messages: &[Polled<'_>],
    batch: usize,
) -> Replayed {
    let mut total = Replayed::default();
    for chunk in messages.chunks(batch.max(1)) {
        let done = replay(speed, decoder, chunk, None);
        total.applied += done.applied;
        total.malformed += done.malformed;
        total.late += done.late;
        total.bytes += done.bytes;
    }
    total
}

/// `tandem-bench speed-core`: runs [`measured`] once and prints what it did (the line
/// [`count`] reads).
pub fn core(opts: CoreBench) -> anyhow::Result<()> {
    let config = opts.profile.config()?;
    let speed = SpeedLayer::compile(&config.views, &config.schema)?
        .with_dedup_horizon(config.speed.dedup_horizon);
    crate::profile::load_tables(&speed)?;
    let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
    let payloads = payloads(&opts);
    let messages = polled(&payloads);
    let started = std::time::Instant::now();
    let done = measured(&speed, &decoder, &messages, opts.batch);
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

/// Runs `tandem-bench speed-core` under callgrind (8 partitions), counting only [`measured`];
/// the profile is written to `out`.
pub(super) fn count(
    profile: Profile,
    events: u64,
    event_rate: u64,
    keying: Keying,
    out: &Path,
) -> anyhow::Result<Counted> {
    let exe = std::env::current_exe()?;
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*instructions::measured*")
        .arg(&exe)
        .args(["speed-core", "--profile", profile.name()])
        .args(["--events", &events.to_string()])
        .args(["--event-rate", &event_rate.to_string()])
        .args(["--key", keying.name()])
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
    fn the_counted_work_applies_every_event_of_every_profile() {
        for profile in [
            Profile::Simple,
            Profile::Mix,
            Profile::Dedup,
            Profile::Enriched,
        ] {
            let config = profile.config().unwrap_or_else(|e| panic!("{e}"));
            let speed = SpeedLayer::compile(&config.views, &config.schema)
                .unwrap_or_else(|e| panic!("{e}"))
                .with_dedup_horizon(config.speed.dedup_horizon);
            crate::profile::load_tables(&speed).unwrap_or_else(|e| panic!("{e}"));
            let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
            let opts = CoreBench {
                profile,
                events: 3_000,
                batch: 1_000,
                partitions: 8,
                event_rate: 50_000,
                keying: Keying::User,
            };
            let payloads = payloads(&opts);
            let done = measured(&speed, &decoder, &polled(&payloads), opts.batch);
            assert_eq!((done.applied, done.malformed, done.late), (3_000, 0, 0));
            assert!(speed.state_bytes() > 0);
            // Every order id is distinct: the de-duplicating profile remembers each one.
            let remembered = if profile == Profile::Dedup { 3_000 } else { 0 };
            assert_eq!(speed.dedup_memory().0, remembered, "{profile:?}");
            assert_eq!(payloads, super::payloads(&opts), "deterministic");
        }
    }
}
