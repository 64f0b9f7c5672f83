//! One scheduler at a time: a process with the batch role runs jobs only while it holds the
//! scheduler lease ([`tandem_store::lease`]); the others follow and forward job requests.
//!
//! ```text
//!  every ttl/4: Lease::round ─► standing ─► watch (read by the API: here, or forward to whom)
//!      became holder: restore queued jobs from the store, queue backfills, start run()
//!      lost it:       cancel run() (running jobs finish; publication is fenced anyway)
//! ```

use std::sync::Arc;
use std::time::Duration;

use tandem_shared::clock::Clock;
use tandem_store::lease::{Lease, Standing};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Scheduler;

/// Runs `scheduler` whenever this process holds `lease`, until `cancel` fires; every round's
/// standing goes to `standing`.
pub async fn lead(
    scheduler: Scheduler,
    lease: Lease,
    clock: Arc<dyn Clock>,
    standing: watch::Sender<Standing>,
    cancel: CancellationToken,
) {
    let every = (lease.ttl() / 4).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    let mut last = Standing::Vacant;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = clock.now().millis();
        let current = match lease.round(now).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "scheduler lease round failed");
                // Held only until the last term runs out.
                last.clone()
            }
        };
        let holds = current.holds(now);
        if holds && running.is_none() {
            tracing::info!(?current, "scheduler lease taken: running jobs here");
            let requeued = scheduler.restore().await;
            let backfills = scheduler.backfill().len();
            tracing::info!(requeued, backfills, "jobs queued on taking the lease");
            let token = cancel.child_token();
            let run = scheduler.clone().run(token.clone());
            running = Some((token, tokio::spawn(run)));
        } else if !holds && let Some((token, handle)) = running.take() {
            tracing::warn!(?current, "scheduler lease lost: stopping jobs here");
            token.cancel();
            let _ = handle.await;
        }
        standing.send_replace(current.clone());
        last = current;
    }
    if let Some((token, handle)) = running.take() {
        token.cancel();
        let _ = handle.await;
    }
}

/// Keeps `standing` up to date for a process that does not schedule (no batch role), so that
/// its API forwards job requests to the holder.
pub async fn follow(
    lease: Lease,
    clock: Arc<dyn Clock>,
    standing: watch::Sender<Standing>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match lease.observe(clock.now().millis()).await {
            Ok(s) => {
                standing.send_replace(s);
            }
            Err(err) => tracing::warn!(%err, "reading the scheduler lease failed"),
        }
    }
}
