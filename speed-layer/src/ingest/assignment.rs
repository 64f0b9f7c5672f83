//! Who owns which partition: the consumer's callbacks (rebalances with checkpoint hand-over,
//! ownership epochs when workers share the group, caught-up flags from statistics), and the
//! changes they report applied to event-time progress on the consume thread.
//!
//! ```text
//!  librdkafka rebalance (inside poll) ─► revoke: settle side topics, final checkpoint, give up
//!                                      ─► assign: claim an epoch, restore the newest checkpoint,
//!                                         assign at its offset
//!  statistics ─► caught-up flags        changes ─► track_partitions ─► PartitionProgress
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tandem_shared::time::EventTime;
use tandem_store::members::Membership;

use super::SETTLE;
use super::routing::Source;
use crate::SpeedLayer;
use crate::checkpoint::Checkpointer;
use crate::dead_letter::SideTopics;
use crate::watermark::PartitionProgress;

/// A change of the consumer's partition assignment, for the watermark tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssignmentChange {
    Assigned(Source, Option<EventTime>),
    Revoked(Source),
}

/// Consumer callbacks: lag and caught-up tracking from statistics, and rebalances with
/// checkpoint hand-over. Callbacks run inside `poll`, on the consume thread.
pub(crate) struct SpeedContext {
    group: String,
    speed: SpeedLayer,
    checkpointer: Option<Arc<Checkpointer>>,
    membership: Option<(Arc<Membership>, String)>,
    runtime: tokio::runtime::Handle,
    changes: Mutex<Vec<AssignmentChange>>,
    caught_up: Mutex<HashMap<Source, bool>>,
    /// The topics consumed: the events', then joined streams' second topics.
    topics: Vec<String>,
    /// The side-topic producer (shared with the loop), settled before a revoked partition's
    /// final checkpoint.
    side: Arc<SideTopics>,
}

impl std::fmt::Debug for SpeedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedContext")
            .field("group", &self.group)
            .finish()
    }
}

impl ClientContext for SpeedContext {
    fn stats(&self, statistics: Statistics) {
        let positions = tandem_store::kafka::record_lag(&self.group, &statistics);
        let mut caught_up = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
        for p in positions {
            if let Some(topic) = self.topic(&p.topic) {
                caught_up.insert((topic, p.partition), p.caught_up);
            }
        }
    }
}

impl SpeedContext {
    /// The callbacks of a consumer in `group`, on the current runtime (checkpoint uploads and
    /// epoch claims run there while the consume thread waits).
    pub(super) fn new(
        group: String,
        topics: Vec<String>,
        speed: SpeedLayer,
        checkpointer: Option<Arc<Checkpointer>>,
        membership: Option<(Arc<Membership>, String)>,
        side: Arc<SideTopics>,
    ) -> Self {
        Self {
            topics,
            group,
            speed,
            checkpointer,
            membership,
            runtime: tokio::runtime::Handle::current(),
            changes: Mutex::default(),
            caught_up: Mutex::default(),
            side,
        }
    }

    /// A topic's index among the consumed ones.
    fn topic(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == name)
    }

    fn push(&self, change: AssignmentChange) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }

    /// The ownership epoch of a new assignment: claimed in the store when this worker shares
    /// its group (retried briefly), 0 otherwise.
    fn claim_epoch(&self) -> u64 {
        let Some((membership, id)) = &self.membership else {
            return 0;
        };
        for attempt in 0..5u32 {
            match self.runtime.block_on(membership.claim_epoch(id)) {
                Ok(epoch) => return epoch,
                Err(err) => {
                    tracing::warn!(%err, attempt, "claiming an ownership epoch failed");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
            }
        }
        // Serving instances then prefer any other claimant of these partitions; one that still
        // answers for them is a worker the group dropped, whose state is older.
        tracing::error!("no ownership epoch claimed; announcing epoch 0");
        0
    }

    /// Restores each partition and returns the list with the offsets to start from. A joined
    /// stream's second topic resumes where the checkpoint of the events' partition with its
    /// number says (both are assigned together: the same number of partitions, range
    /// assignment), so the events' partitions are restored first.
    fn on_assign(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mut out = TopicPartitionList::new();
        let epoch = if tpl.count() > 0 {
            self.claim_epoch()
        } else {
            0
        };
        let listed = tpl.elements();
        let mut elements: Vec<(usize, &str, i32)> = listed
            .iter()
            .filter_map(|e| Some((self.topic(e.topic())?, e.topic(), e.partition())))
            .collect();
        elements.sort_unstable();
        for (topic, name, partition) in elements {
            let (offset, max) = if topic == 0 {
                let snapshot = match &self.checkpointer {
                    None => None,
                    Some(c) => match c.load(partition) {
                        Ok(s) => s,
                        Err(err) => {
                            // Without the checkpoint the partition is rebuilt from the topic:
                            // correct within the topic's retention.
                            tracing::error!(partition, %err, "cannot load checkpoint; rebuilding from the topic");
                            None
                        }
                    },
                };
                let offset = self.speed.assign(partition, snapshot, epoch);
                (offset, self.speed.max_event_time(partition))
            } else {
                if !self.speed.assigned(partition) {
                    tracing::error!(
                        topic = name,
                        partition,
                        "a joined stream's partition without the events' partition of its number: its events join nothing"
                    );
                }
                let second = self.speed.second(partition, topic).unwrap_or_default();
                (second.next_offset, second.max_event_time)
            };
            let start = offset.map_or(Offset::Beginning, Offset::Offset);
            tracing::info!(topic = name, partition, ?start, "partition assigned");
            if let Err(err) = out.add_partition_offset(name, partition, start) {
                tracing::error!(partition, %err, "cannot set the start offset");
            }
            self.push(AssignmentChange::Assigned((topic, partition), max));
        }
        out
    }

    /// Checkpoints and drops each revoked partition.
    fn on_revoke(&self, tpl: &TopicPartitionList) {
        for elem in tpl.elements() {
            let partition = elem.partition();
            let Some(topic) = self.topic(elem.topic()) else {
                continue;
            };
            if topic > 0 {
                // Its position is in the events' partition's checkpoint.
                self.push(AssignmentChange::Revoked((topic, partition)));
                continue;
            }
            // Without every side-topic message delivered, the next owner starts from the
            // previous checkpoint and sends them again.
            let settled = match self.side.settle(SETTLE) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(partition, %err, "no final checkpoint of the revoked partition");
                    false
                }
            };
            if settled
                && let Some(c) = &self.checkpointer
                && let Some(snapshot) = self.speed.snapshot(partition, false)
                && let Err(err) = c.submit(&snapshot, true)
            {
                // The next owner restores the previous checkpoint and re-reads the rest.
                tracing::error!(partition, %err, "final checkpoint failed");
            }
            self.speed.revoke(partition);
            self.push(AssignmentChange::Revoked((0, partition)));
            tracing::info!(partition, "partition revoked");
        }
    }
}

impl ConsumerContext for SpeedContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let with_offsets = self.on_assign(tpl);
                if let Err(err) = consumer.assign(&with_offsets) {
                    tracing::error!(%err, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(tpl);
                if let Err(err) = consumer.unassign() {
                    tracing::error!(%err, "unassign failed");
                }
            }
            other => {
                tracing::error!(?other, "rebalance error; giving up the assignment");
                self.on_revoke(tpl);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Applies assignment changes and caught-up flags reported by the consumer callbacks.
pub(super) fn track_partitions(
    context: &SpeedContext,
    progress: &mut PartitionProgress<Source>,
    now: EventTime,
) {
    let changes = std::mem::take(&mut *context.changes.lock().unwrap_or_else(|e| e.into_inner()));
    for change in changes {
        match change {
            AssignmentChange::Assigned(p, max) => {
                progress.assign(p, now);
                if let Some(t) = max {
                    progress.observe(p, t, now);
                }
            }
            AssignmentChange::Revoked(p) => progress.revoke(p),
        }
    }
    let caught_up = context.caught_up.lock().unwrap_or_else(|e| e.into_inner());
    for (p, done) in caught_up.iter() {
        progress.set_caught_up(*p, *done);
    }
}
