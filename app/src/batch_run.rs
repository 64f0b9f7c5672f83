//! `tandem batch run`: one recompute from the command line, with a progress bar.
//!
//! Reads the archive and publishes through the same catalog as the running service, so a
//! running Tandem picks the result up at its next refresh. Needs no Kafka.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_batch_layer::recompute::{Progress, Requested};
use tandem_shared::clock::SystemClock;
use tandem_shared::time::EventTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::wiring;

/// Recomputes `view` (or every view) for window starts in `[from, to)`.
pub async fn run(
    config: &Config,
    view: Option<&str>,
    from: Option<EventTime>,
    to: Option<EventTime>,
) -> anyhow::Result<()> {
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        bail!("--from ({f}) must be before --to ({t})");
    }
    let views: Vec<_> = match view {
        Some(name) => vec![
            config
                .views
                .iter()
                .find(|v| v.name == name)
                .cloned()
                .with_context(|| format!("unknown view `{name}`"))?,
        ],
        None => config.views.clone(),
    };
    let store = tandem_store::open(&config.storage)?;
    tandem_store::check_create_if_absent(store.as_ref(), &config.storage.url).await?;
    let catalog = wiring::catalog(config, &store);
    catalog.refresh_all().await?;
    let recompute = wiring::recompute(config, &store, &catalog, Arc::new(SystemClock));
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:40}] {percent:>3}% {msg}")
        .context("progress bar template")?
        .progress_chars("=> ");
    let job = format!("cli-{}", uuid_like());
    for view in views {
        let bar = ProgressBar::new(1000)
            .with_style(style.clone())
            .with_prefix(view.name.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        let started = Instant::now();
        let report = {
            let bar = bar.clone();
            move |p: Progress| {
                if let Some(per_mille) = (p.chunks_done * 1000).checked_div(p.chunks_total) {
                    bar.set_position(per_mille as u64);
                }
                bar.set_message(format!("{} files, {} rows read", p.files_read, p.rows_read));
            }
        };
        let outcome = recompute
            .run_view(
                &view,
                Requested { from, to },
                &format!("{job}-{}", view.name),
                &cancel,
                &report,
            )
            .await;
        match outcome {
            Ok(o) => {
                bar.set_position(1000);
                bar.finish_with_message(format!(
                    "{} windows published, {} files / {} bytes / {} rows read, {} result rows, {:.1}s",
                    o.windows_published,
                    o.files_scanned,
                    o.bytes_scanned,
                    o.rows_read,
                    o.result_rows,
                    started.elapsed().as_secs_f64()
                ));
                match o.covered {
                    Some(c) => println!(
                        "{}: published window starts [{}, {})",
                        view.name, c.from, c.to
                    ),
                    None => println!("{}: nothing was ready to publish", view.name),
                }
                if let Some(n) = o.not_ready {
                    println!(
                        "{}: window starts [{}, {}) are not complete in the archive yet; the speed layer keeps answering them",
                        view.name, n.from, n.to
                    );
                }
            }
            Err(err) => {
                bar.abandon_with_message("failed");
                return Err(err).with_context(|| format!("recomputing `{}`", view.name));
            }
        }
    }
    Ok(())
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}
