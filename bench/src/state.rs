//! State bytes per group for each aggregate kind: as the speed layer accounts them (the figure
//! its memory limit and `tandem_speed_state_bytes` use) and as resident memory grows, with one
//! event and with 100 events per group (sketches grow with their input up to their bound).
//!
//! ```text
//!  report ─► per kind and events per group: tandem-bench speed-state (a fresh process)
//!              VmRSS before ─► replay GROUPS × N events of one window ─► VmRSS after
//! ```

use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use tandem_shared::event::EventDecoder;
use tandem_speed_layer::SpeedLayer;
use tandem_speed_layer::replay::{Polled, replay};

use super::harness::CONFIG;
use super::measure::rss_mib;
use tandem::config::Config;

/// Groups per measurement: enough that page and allocator granularity vanish in the average.
const GROUPS: u64 = 20_000;

/// One aggregate kind and the expression measured.
const KINDS: [(&str, &str); 8] = [
    ("count", "count(*)"),
    ("sum (float)", "sum(amount)"),
    ("sum (decimal)", "sum(price)"),
    ("min (float)", "min(amount)"),
    ("avg (float)", "avg(amount)"),
    ("avg (decimal)", "avg(price)"),
    ("count(DISTINCT)", "count(DISTINCT user_id)"),
    ("percentile", "percentile(amount, 0.99)"),
];

/// Options of `tandem-bench speed-state` (one measurement, in a process of its own).
#[derive(Debug, Clone)]
pub struct StateBench {
    pub aggregate: String,
    pub per_group: u64,
}

/// Measures one view with the one aggregate, [`GROUPS`] groups of one window with `per_group`
/// events each, and prints `accounted A resident R` (bytes per group).
pub fn measure(opts: &StateBench) -> anyhow::Result<()> {
    let config = Config::parse(
        &format!(
            r#"{CONFIG}
[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = {{ g = "string", user_id = "string", amount = "float64", price = "decimal(12, 2)" }}

[[views]]
name = "v"
window = {{ tumbling = "1h" }}
group_by = ["g"]
aggregates = ["{}"]
"#,
            opts.aggregate
        ),
        "bench",
    )?;
    let speed = SpeedLayer::compile(&config.views, &config.schema)?;
    let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
    let chunk = |from: u64| -> Vec<Vec<u8>> {
        (from..(from + 1_000).min(GROUPS * opts.per_group))
            .map(|i| {
                let (g, n) = (i % GROUPS, i / GROUPS);
                format!(
                    r#"{{"ts":1795255200000,"g":"g-{g:05}","user_id":"u-{n}","amount":{}.5,"price":"{}.25"}}"#,
                    (n * 7 + g) % 997,
                    n % 991
                )
                .into_bytes()
            })
            .collect()
    };
    // Warm up allocator and expression paths on a throwaway layer, so the baseline holds them.
    let warm = SpeedLayer::compile(&config.views, &config.schema)?;
    replay(&warm, &decoder, &polled(&chunk(0), 0), None);
    drop(warm);
    let before = rss_mib();
    let mut from = 0;
    while from < GROUPS * opts.per_group {
        let payloads = chunk(from);
        replay(&speed, &decoder, &polled(&payloads, from), None);
        from += payloads.len() as u64;
    }
    let after = rss_mib();
    println!(
        "accounted {:.0} resident {:.0}",
        speed.state_bytes() as f64 / GROUPS as f64,
        (after - before) * 1_048_576.0 / GROUPS as f64
    );
    Ok(())
}

/// Prints the table of [`KINDS`], each measured in a fresh process.
pub(super) fn report() -> anyhow::Result<()> {
    println!(
        "state bytes per group, key and entry included ({GROUPS} groups of one window, each measurement a fresh process):"
    );
    println!(
        "| aggregate | accounted | resident, 1 event per group | accounted, 100 events | resident, 100 events |"
    );
    println!("|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let run = |expr: &str, per_group: u64| -> anyhow::Result<(String, String)> {
        let out = Command::new(&exe)
            .args(["speed-state", "--aggregate", expr])
            .args(["--per-group", &per_group.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["accounted", a, "resident", r] => Ok(((*a).to_owned(), (*r).to_owned())),
            _ => Err(anyhow::anyhow!(
                "speed-state {expr}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
            .context("measuring state bytes"),
        }
    };
    for (name, expr) in KINDS {
        let (a1, r1) = run(expr, 1)?;
        let (a100, r100) = run(expr, 100)?;
        println!("| {name} | {a1} | {r1} | {a100} | {r100} |");
    }
    Ok(())
}

/// Payloads as messages of partition 0, from offset `from` on.
fn polled(payloads: &[Vec<u8>], from: u64) -> Vec<Polled<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| Polled {
            partition: 0,
            offset: from as i64 + i as i64,
            payload,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_is_measured() {
        for (_, expr) in KINDS {
            measure(&StateBench {
                aggregate: expr.to_owned(),
                per_group: 1,
            })
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }
}
