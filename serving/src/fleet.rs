//! The speed side of an answer when speed workers share the events topic's partitions: every
//! partition is answered by the worker that owns it now, or named as missing.
//!
//! ```text
//!  members (heartbeats, refreshed in the background) ─► owners: partition → (worker, epoch)
//!      │ per worker, in parallel: GET {address}/v1/internal/partials/{view}?from&to&partitions
//!      │   (the partitions it owns by the heartbeats; this process's own worker read in place)
//!      ▼ Arrow IPC: partials merged over the partitions it merged in, named with their epochs
//!  take a reply whole if each of its partitions is wanted, unanswered, and at the highest
//!  epoch known for it; a reply naming an older epoch (the group moved it) is stale
//!      │ unanswered partitions: re-read the members, ask again (a few rounds, moments apart)
//!      ▼
//!  merge over partitions (sketches merge losslessly) ─► FreshRows { rows, missing partitions }
//! ```
//!
//! Invariants:
//! - A partition's events are counted once: exactly one reply that merged it in is taken, one of
//!   its newest owner (highest epoch).
//! - A partition nobody answered for is never silently absent: it is listed in `missing`, and
//!   the API marks the answer's speed rows `partial`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tandem_shared::clock::Clock;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::ViewRow;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::WindowSpec;
use tandem_speed_layer::SpeedLayer;
use tandem_speed_layer::partials::{self, OwnedPartials};
use tandem_speed_layer::state::{Partial, merge_partials, merge_states};
use tandem_store::members::{Member, Membership, owners};
use tokio_util::sync::CancellationToken;

use crate::seam::{FreshRows, FreshStates, FreshViews};

/// Errors asking one worker. Each makes that worker's partitions unanswered for one round.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("asking {address}: {source}")]
    Request {
        address: String,
        source: reqwest::Error,
    },
    #[error("{address} answered {status}")]
    Status {
        address: String,
        status: reqwest::StatusCode,
    },
    #[error("{address} sent more than {MAX_REPLY_BYTES} bytes of partials")]
    TooLarge { address: String },
    #[error("{address} sent partials that cannot be read: {source}")]
    Decode {
        address: String,
        source: partials::Error,
    },
}

/// Largest reply taken from one worker.
const MAX_REPLY_BYTES: usize = 256 << 20;

/// How a serving instance reaches the workers.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// A heartbeat older than this is a dead worker.
    pub member_ttl: Duration,
    /// How often the member list is re-read in the background.
    pub refresh: Duration,
    /// How long one worker may take to answer.
    pub timeout: Duration,
    /// Rounds of asking again for unanswered partitions, and the pause between them.
    pub rounds: usize,
    pub pause: Duration,
    /// The cluster token: requests to the workers are signed with it when their API has
    /// tokens (never sent itself: the workers' addresses come from the store).
    pub token: Option<String>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            member_ttl: Duration::from_secs(6),
            refresh: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            rounds: 3,
            pause: Duration::from_millis(150),
            token: None,
        }
    }
}

/// The speed workers of one consumer group, as one speed layer.
#[derive(Debug)]
pub struct Fleet {
    membership: Arc<Membership>,
    views: BTreeMap<String, ViewDefinition>,
    /// This process's own worker, read without HTTP: its member id and state.
    local: Option<(String, SpeedLayer)>,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    settings: FleetSettings,
    members: RwLock<Vec<Member>>,
    partition_count: AtomicI32,
}

/// What the rounds of asking gathered.
#[derive(Debug, Default)]
struct Gathered {
    /// Partitions answered for, with the epoch of the reply taken.
    answered: BTreeMap<i32, u64>,
    /// Partials of the replies taken (each merged over its partitions).
    partials: Vec<Partial>,
    /// Windows any worker taken had released already.
    released: Coverage,
}

impl Fleet {
    /// `partition_count` is the events topic's, as this process found it at start (workers
    /// announce theirs too; the larger wins).
    pub fn new(
        membership: Arc<Membership>,
        views: &[ViewDefinition],
        local: Option<(String, SpeedLayer)>,
        partition_count: i32,
        clock: Arc<dyn Clock>,
        settings: FleetSettings,
    ) -> Self {
        Self {
            membership,
            views: views.iter().map(|v| (v.name.clone(), v.clone())).collect(),
            local,
            client: reqwest::Client::new(),
            clock,
            settings,
            members: RwLock::new(Vec::new()),
            partition_count: AtomicI32::new(partition_count),
        }
    }

    /// Live members as last read.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the member list from the store.
    pub async fn refresh(&self) -> Vec<Member> {
        let now = self.clock.now().millis();
        match self.membership.live(now, self.settings.member_ttl).await {
            Ok(members) => {
                let most = members.iter().map(|m| m.partition_count).max();
                if let Some(most) = most {
                    self.partition_count.fetch_max(most, Ordering::Relaxed);
                }
                *self.members.write().unwrap_or_else(|e| e.into_inner()) = members.clone();
                members
            }
            Err(err) => {
                tracing::warn!(%err, "reading speed workers' heartbeats failed");
                self.members()
            }
        }
    }

    /// Keeps the member list fresh until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.refresh);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    self.refresh().await;
                }
            }
        }
    }

    /// The group's event-time progress: the least of the workers that own partitions (each
    /// worker's own progress already waits for its slowest partition). `None` before any.
    pub fn progress(&self) -> Option<EventTime> {
        let members = self.members();
        let owning = members.iter().filter(|m| !m.owned.is_empty());
        let mut least: Option<i64> = None;
        for m in owning {
            let p = m.progress_ms?;
            least = Some(least.map_or(p, |l| l.min(p)));
        }
        least.map(EventTime)
    }

    /// Final rows of `view` over every partition, the partitions nobody answered for, and the
    /// windows some worker had already released (for drift measurement: those rows lack
    /// that worker's share). `None` for an unknown view.
    pub async fn rows_with_released(
        &self,
        view: &str,
        range: StartRange,
    ) -> Option<(Vec<ViewRow>, Vec<i32>, Coverage)> {
        let sessions = self.sessions(view)?;
        let (gathered, missing) = self.collect(view, range).await;
        Some((
            merge_partials(gathered.partials, sessions),
            missing,
            gathered.released,
        ))
    }

    /// Partials of `view` over every partition, and the partitions nobody answered for.
    async fn collect(&self, view: &str, range: StartRange) -> (Gathered, Vec<i32>) {
        let count = self.partition_count.load(Ordering::Relaxed).max(0);
        let mut gathered = Gathered::default();
        let mut members = self.members();
        if members.is_empty() {
            members = self.refresh().await;
        }
        for round in 0..self.settings.rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(self.settings.pause).await;
                members = self.refresh().await;
            }
            let owners = owners(&members);
            let wanted: BTreeSet<i32> = (0..count)
                .filter(|p| !gathered.answered.contains_key(p))
                .collect();
            let mut ask: BTreeMap<&str, (&Member, Vec<i32>)> = BTreeMap::new();
            for (p, (m, _)) in owners.iter().filter(|(p, _)| wanted.contains(p)) {
                ask.entry(m.id.as_str())
                    .or_insert((*m, Vec::new()))
                    .1
                    .push(*p);
            }
            if ask.is_empty() {
                if wanted.is_empty() {
                    break;
                }
                continue;
            }
            let replies = futures::future::join_all(
                ask.values()
                    .map(|(m, partitions)| self.ask(m, view, range, partitions)),
            )
            .await;
            // The newest epoch known for each partition: from heartbeats and from replies.
            let mut newest: BTreeMap<i32, u64> =
                owners.iter().map(|(p, (_, e))| (*p, *e)).collect();
            for reply in replies.iter().flatten() {
                for o in &reply.owned {
                    let e = newest.entry(o.partition).or_insert(o.epoch);
                    *e = (*e).max(o.epoch);
                }
            }
            for reply in replies {
                let reply = match reply {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::warn!(%err, round, "a speed worker did not answer");
                        continue;
                    }
                };
                if !gathered.accept(reply, &wanted, &newest) {
                    tracing::debug!(round, "a stale reply was not taken");
                }
            }
            if wanted.iter().all(|p| gathered.answered.contains_key(p)) {
                break;
            }
        }
        let missing: Vec<i32> = (0..count)
            .filter(|p| !gathered.answered.contains_key(p))
            .collect();
        if !missing.is_empty() {
            metrics::counter!("tandem_fleet_partial_answers_total").increment(1);
        }
        (gathered, missing)
    }

    /// One worker's partials of `view` over `partitions`: in place for this process's own
    /// worker.
    async fn ask(
        &self,
        member: &Member,
        view: &str,
        range: StartRange,
        partitions: &[i32],
    ) -> Result<OwnedPartials, Error> {
        if let Some((id, speed)) = &self.local
            && *id == member.id
        {
            return Ok(speed
                .owned_partials(view, range, Some(partitions))
                .unwrap_or_default());
        }
        let address = member.address.trim_end_matches('/');
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        let target = format!(
            "/v1/internal/partials/{view}?from={}&to={}&partitions={}",
            range.from.millis(),
            range.to.millis(),
            list.join(",")
        );
        let mut request = self
            .client
            .get(format!("{address}{target}"))
            .timeout(self.settings.timeout);
        // The address comes from the store: the request is signed with the cluster token
        // rather than carrying it (see `access::ForwardKey`).
        if let Some(token) = &self.settings.token {
            // The wall clock, as the receiver checks it (not this fleet's injected clock).
            let now_ms = tandem_shared::clock::SystemClock.now().millis();
            let signature =
                crate::access::ForwardKey::new(token).sign("GET", &target, now_ms, None, b"");
            request = request.header(crate::access::FORWARDED, signature);
        }
        let at = |source| Error::Request {
            address: address.to_owned(),
            source,
        };
        let response = request.send().await.map_err(at)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Status {
                address: address.to_owned(),
                status,
            });
        }
        // A reply is about the size of the answer; anything far larger is refused rather than
        // held in memory (a worker's reply is bounded like a query's answer).
        if response
            .content_length()
            .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
        {
            return Err(Error::TooLarge {
                address: address.to_owned(),
            });
        }
        let bytes = response.bytes().await.map_err(at)?;
        if bytes.len() > MAX_REPLY_BYTES {
            return Err(Error::TooLarge {
                address: address.to_owned(),
            });
        }
        partials::decode(&bytes).map_err(|source| Error::Decode {
            address: address.to_owned(),
            source,
        })
    }

    fn sessions(&self, view: &str) -> Option<bool> {
        let v = self.views.get(view)?;
        Some(matches!(v.window, WindowSpec::Session { .. }))
    }
}

impl Gathered {
    /// Takes a reply whole if every partition it merged in is wanted, not yet answered, and
    /// owned at the newest epoch known; otherwise not at all (it is stale, or overlaps a reply
    /// already taken). Returns whether it was taken. Pure.
    fn accept(
        &mut self,
        reply: OwnedPartials,
        wanted: &BTreeSet<i32>,
        newest: &BTreeMap<i32, u64>,
    ) -> bool {
        let fresh = reply.owned.iter().all(|o| {
            wanted.contains(&o.partition)
                && !self.answered.contains_key(&o.partition)
                && newest.get(&o.partition).is_none_or(|e| o.epoch >= *e)
        });
        if !fresh {
            return false;
        }
        self.answered
            .extend(reply.owned.iter().map(|o| (o.partition, o.epoch)));
        self.partials.extend(reply.partials);
        self.released.union(&reply.released);
        true
    }
}

impl FreshViews for Fleet {
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>> {
        Box::pin(async move {
            let sessions = self.sessions(view)?;
            let (gathered, missing) = self.collect(view, range).await;
            Some(FreshRows {
                rows: merge_partials(gathered.partials, sessions),
                missing,
            })
        })
    }
}

impl FreshStates for Fleet {
    fn fresh_states<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<Partial>>> {
        Box::pin(async move {
            let sessions = self.sessions(view)?;
            let (gathered, missing) = self.collect(view, range).await;
            Some(FreshRows {
                rows: merge_states(gathered.partials, sessions),
                missing,
            })
        })
    }
}

/// The speed layer as the serving layer sees it: this process's own (it owns every
/// partition), or a group of workers.
#[derive(Debug, Clone)]
pub enum SpeedSide {
    Local(SpeedLayer),
    Group(Arc<Fleet>),
}

impl From<SpeedLayer> for SpeedSide {
    fn from(speed: SpeedLayer) -> Self {
        SpeedSide::Local(speed)
    }
}

impl SpeedSide {
    /// This process's own speed layer, if it runs one.
    pub fn local(&self) -> Option<&SpeedLayer> {
        match self {
            SpeedSide::Local(speed) => Some(speed),
            SpeedSide::Group(fleet) => fleet.local.as_ref().map(|(_, s)| s),
        }
    }

    /// The view's watermark (see [`SpeedLayer::watermark`]); for a group, from the least
    /// progress the workers announced.
    pub fn watermark(&self, view: &ViewDefinition) -> Option<EventTime> {
        match self {
            SpeedSide::Local(speed) => speed.watermark(&view.name),
            SpeedSide::Group(fleet) => fleet.progress().map(|progress| view.watermark(progress)),
        }
    }
}

impl FreshViews for SpeedSide {
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>> {
        match self {
            SpeedSide::Local(speed) => speed.fresh(view, range),
            SpeedSide::Group(fleet) => fleet.fresh(view, range),
        }
    }
}

impl FreshStates for SpeedSide {
    fn fresh_states<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<Partial>>> {
        match self {
            SpeedSide::Local(speed) => speed.fresh_states(view, range),
            SpeedSide::Group(fleet) => fleet.fresh_states(view, range),
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::row::GroupValue;
    use tandem_shared::window::Window;
    use tandem_speed_layer::aggregate::{ArgumentType, PartialAggregate};
    use tandem_store::members::Owned;

    use super::*;

    fn partial(n: u64) -> Partial {
        let mut acc = PartialAggregate::new(
            tandem_shared::view::AggregateFunction::Count,
            ArgumentType::Other,
        );
        for _ in 0..n {
            acc.update_row();
        }
        Partial {
            window: Window {
                start: EventTime(0),
                end: EventTime(60_000),
            },
            group: vec![GroupValue::Str("A".into())],
            accs: vec![acc],
        }
    }

    fn reply(owned: &[(i32, u64)], n: u64) -> OwnedPartials {
        OwnedPartials {
            owned: owned
                .iter()
                .map(|&(partition, epoch)| Owned { partition, epoch })
                .collect(),
            partials: vec![partial(n)],
            released: Coverage::new(),
        }
    }

    #[test]
    fn each_partition_is_taken_once_from_its_newest_owner() {
        let wanted: BTreeSet<i32> = (0..3).collect();
        // Partition 1 moved from the old worker (epoch 2) to the new one (epoch 5).
        let newest = BTreeMap::from([(0, 2), (1, 5), (2, 5)]);
        let mut g = Gathered::default();
        // The old worker still merges partition 1 in: stale, not taken at all.
        assert!(!g.accept(reply(&[(0, 2), (1, 2)], 99), &wanted, &newest));
        assert!(g.accept(reply(&[(1, 5), (2, 5)], 10), &wanted, &newest));
        // Asked again for partition 0 alone, it answers.
        assert!(g.accept(reply(&[(0, 2)], 7), &wanted, &newest));
        // A late duplicate of partition 2 is not counted twice.
        assert!(!g.accept(reply(&[(2, 5)], 3), &wanted, &newest));
        assert_eq!(g.answered, BTreeMap::from([(0, 2), (1, 5), (2, 5)]));
        let rows = merge_partials(g.partials, false);
        assert_eq!(
            rows[0].values,
            [tandem_shared::value::AggregateValue::Int(17)],
            "10 + 7: the stale 99 and the duplicate 3 are not counted"
        );
    }

    #[test]
    fn a_partition_nobody_answers_for_is_left_unanswered() {
        let wanted: BTreeSet<i32> = (0..4).collect();
        let newest = BTreeMap::from([(0, 1), (1, 1), (2, 4), (3, 4)]);
        let mut g = Gathered::default();
        assert!(g.accept(reply(&[(0, 1), (1, 1)], 1), &wanted, &newest));
        // The owner of 2 and 3 has given partition 3 up already; its reply names only 2.
        assert!(g.accept(reply(&[(2, 4)], 1), &wanted, &newest));
        let answered: Vec<i32> = g.answered.keys().copied().collect();
        assert_eq!(answered, [0, 1, 2]);
    }
}
