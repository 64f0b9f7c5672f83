//! The speed side of an answer when speed workers share the events topic's partitions: every
//! partition is answered by the worker that owns it now, or named as missing.
//!
//! ```text
//!  members (heartbeats, refreshed in the background) ─► owners: partition → (worker, epoch)
//!      │ per worker, in parallel: GET {address}/v1/internal/partials/{view}?from&to
//!      │   (this process's own worker is read in place)
//!      ▼ Arrow IPC: partials per owned partition, each with its ownership epoch
//!  accept a partition's partials from the reply with the highest epoch known for it; a reply
//!  that no longer owns a partition, or owns it at an older epoch, is stale
//!      │ unanswered partitions: re-read the members, ask again (a few rounds, moments apart)
//!      ▼
//!  merge over partitions (sketches merge losslessly) ─► FreshRows { rows, missing partitions }
//! ```
//!
//! Invariants:
//! - A partition's events are counted once: its partials are taken from exactly one reply, the
//!   one of its newest owner (highest epoch) among the replies.
//! - A partition nobody answered for is never silently absent: it is listed in `missing`, and
//!   the API marks the answer's speed rows `partial`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tandem_shared::clock::Clock;
use tandem_shared::coverage::StartRange;
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
    #[error("{address} sent partials that cannot be read: {source}")]
    Decode {
        address: String,
        source: partials::Error,
    },
}

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
    /// Sent as `Authorization: Bearer …` to the workers, when their API has tokens.
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

/// What one round of asking gathered.
#[derive(Debug, Default)]
struct Gathered {
    /// Partition → (epoch, partials) of the reply accepted for it.
    answered: BTreeMap<i32, (u64, Vec<Partial>)>,
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

    /// Partials of `view` over every partition, and the partitions nobody answered for.
    async fn collect(&self, view: &str, range: StartRange) -> (Vec<Partial>, Vec<i32>) {
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
            let ask: BTreeMap<&str, &Member> = owners
                .iter()
                .filter(|(p, _)| wanted.contains(p))
                .map(|(_, (m, _))| (m.id.as_str(), *m))
                .collect();
            if ask.is_empty() {
                if wanted.is_empty() {
                    break;
                }
                continue;
            }
            let replies =
                futures::future::join_all(ask.values().map(|m| self.ask(m, view, range))).await;
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
                gathered.accept(reply, &wanted, &newest);
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
        let partials = gathered
            .answered
            .into_values()
            .flat_map(|(_, partials)| partials)
            .collect();
        (partials, missing)
    }

    /// One worker's partials of `view`: in place for this process's own worker.
    async fn ask(
        &self,
        member: &Member,
        view: &str,
        range: StartRange,
    ) -> Result<OwnedPartials, Error> {
        if let Some((id, speed)) = &self.local
            && *id == member.id
        {
            return Ok(speed.owned_partials(view, range).unwrap_or_default());
        }
        let address = member.address.trim_end_matches('/');
        let url = format!("{address}/v1/internal/partials/{view}");
        let mut request = self
            .client
            .get(&url)
            .query(&[("from", range.from.millis()), ("to", range.to.millis())])
            .timeout(self.settings.timeout);
        if let Some(token) = &self.settings.token {
            request = request.bearer_auth(token);
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
        let bytes = response.bytes().await.map_err(at)?;
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
    /// Takes a reply's partials of the partitions it answers for: wanted, not yet answered, and
    /// owned at the newest epoch known. Pure.
    fn accept(
        &mut self,
        reply: OwnedPartials,
        wanted: &BTreeSet<i32>,
        newest: &BTreeMap<i32, u64>,
    ) {
        let mut taken: BTreeMap<i32, (u64, Vec<Partial>)> = reply
            .owned
            .iter()
            .filter(|o| {
                wanted.contains(&o.partition)
                    && !self.answered.contains_key(&o.partition)
                    && newest.get(&o.partition).is_none_or(|e| o.epoch >= *e)
            })
            .map(|o| (o.partition, (o.epoch, Vec::new())))
            .collect();
        for (partition, partial) in reply.partials {
            if let Some((_, list)) = taken.get_mut(&partition) {
                list.push(partial);
            }
        }
        self.answered.extend(taken);
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
            let (partials, missing) = self.collect(view, range).await;
            Some(FreshRows {
                rows: merge_partials(partials, sessions),
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
            let (partials, missing) = self.collect(view, range).await;
            Some(FreshRows {
                rows: merge_states(partials, sessions),
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
            SpeedSide::Group(fleet) => fleet
                .progress()
                .map(|p| p.saturating_sub(view.allowed_lateness)),
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

    fn reply(owned: &[(i32, u64)], rows: &[(i32, u64)]) -> OwnedPartials {
        OwnedPartials {
            owned: owned
                .iter()
                .map(|&(partition, epoch)| Owned { partition, epoch })
                .collect(),
            partials: rows.iter().map(|&(p, n)| (p, partial(n))).collect(),
        }
    }

    #[test]
    fn each_partition_is_taken_once_from_its_newest_owner() {
        let wanted: BTreeSet<i32> = (0..3).collect();
        // Partition 1 moved from the old worker (epoch 2) to the new one (epoch 5).
        let newest = BTreeMap::from([(0, 2), (1, 5), (2, 5)]);
        let mut g = Gathered::default();
        g.accept(
            reply(&[(0, 2), (1, 2)], &[(0, 10), (1, 99)]),
            &wanted,
            &newest,
        );
        g.accept(
            reply(&[(1, 5), (2, 5)], &[(1, 7), (2, 3)]),
            &wanted,
            &newest,
        );
        // A late duplicate of partition 2 (same epoch) is not counted twice.
        g.accept(reply(&[(2, 5)], &[(2, 3)]), &wanted, &newest);
        let got: BTreeMap<i32, (u64, usize)> = g
            .answered
            .iter()
            .map(|(p, (e, list))| (*p, (*e, list.len())))
            .collect();
        assert_eq!(got, BTreeMap::from([(0, (2, 1)), (1, (5, 1)), (2, (5, 1))]));
        let rows = merge_partials(
            g.answered.into_values().flat_map(|(_, l)| l).collect(),
            false,
        );
        assert_eq!(
            rows[0].values,
            [tandem_shared::value::AggregateValue::Int(20)],
            "10 + 7 + 3: the stale 99 is not counted"
        );
    }

    #[test]
    fn partitions_nobody_answers_for_are_left_unanswered() {
        let wanted: BTreeSet<i32> = (0..4).collect();
        let newest = BTreeMap::from([(0, 1), (1, 1), (2, 4), (3, 4)]);
        let mut g = Gathered::default();
        g.accept(reply(&[(0, 1), (1, 1)], &[(0, 1)]), &wanted, &newest);
        // Owner of 2 and 3 has given partition 3 up already; its reply names only 2.
        g.accept(reply(&[(2, 4)], &[]), &wanted, &newest);
        let answered: Vec<i32> = g.answered.keys().copied().collect();
        assert_eq!(answered, [0, 1, 2]);
    }
}
