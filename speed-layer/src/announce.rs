//! The speed worker's heartbeat: which partitions it owns, with their ownership epochs, and
//! where serving instances can ask for their state.
//!
//! ```text
//!  every interval: SpeedLayer::owned() ─► Member { id, address, owned, partition count, now }
//!                                        ─► Membership::announce (members/<group>/live/<id>)
//!  on cancel: Membership::withdraw (readers stop asking at once instead of at expiry)
//! ```

use std::sync::Arc;
use std::time::Duration;

use tandem_shared::clock::Clock;
use tandem_store::members::{Member, Membership};
use tokio_util::sync::CancellationToken;

use crate::SpeedLayer;

/// What a worker announces besides its partitions.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub id: String,
    /// Base URL of this worker's HTTP API.
    pub address: String,
    pub partition_count: i32,
    pub interval: Duration,
}

/// Announces `speed`'s ownership every `interval` (and at once when it changes) until `cancel`
/// fires, then withdraws the heartbeat.
pub async fn announce(
    speed: SpeedLayer,
    membership: Arc<Membership>,
    announcement: Announcement,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last: Option<(Vec<tandem_store::members::Owned>, i64)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let owned = speed.owned();
        let now = clock.now().millis();
        let due = match &last {
            None => true,
            Some((before, at)) => {
                *before != owned || now - at >= announcement.interval.as_millis() as i64
            }
        };
        if !due {
            continue;
        }
        let member = Member {
            id: announcement.id.clone(),
            address: announcement.address.clone(),
            owned: owned.clone(),
            partition_count: announcement.partition_count,
            heartbeat_ms: now,
            progress_ms: speed.progress().map(|p| p.millis()),
        };
        match membership.announce(&member).await {
            Ok(()) => last = Some((owned, now)),
            Err(err) => tracing::warn!(%err, "announcing this speed worker failed"),
        }
    }
    if let Err(err) = membership.withdraw(&announcement.id).await {
        tracing::warn!(%err, "withdrawing this speed worker's heartbeat failed");
    }
}
