//! Speed workers of one consumer group: who owns which partitions, where to ask for their state,
//! and the ownership epochs that order their assignments.
//!
//! ```text
//!  worker, on every assignment ──claim_epoch──► members/<group>/epochs/<seq>   (create-if-absent:
//!                                                each assignment gets a new, higher epoch)
//!  worker, every heartbeat ─────announce─────► members/<group>/live/<id>.json   (overwritten)
//!  serving instance ────────────live─────────► heartbeats younger than the time-to-live
//! ```
//!
//! The epoch is the group's generation as Tandem sees it: librdkafka's own generation id is
//! not reachable through the client's safe interface, so every assignment a worker receives
//! claims the next number of a manifest chain. Two workers can briefly both answer for one
//! partition (a worker the group has dropped, a stall, has not yet noticed); the higher epoch is
//! the newer owner, and a reply from the older one is stale.
//!
//! A heartbeat is the one kind of object that is overwritten: it is a liveness signal, never a
//! publication, and readers only ever act on a recent one.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tandem_shared::layout;

use crate::manifest::{self, ManifestChain};
use crate::object;

/// Errors of the membership protocol. All transient (the store).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(transparent)]
    Object(#[from] object::Error),
    #[error("member record `{path}` is not valid: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error("no epoch claimed after {0} conflicting attempts")]
    Contended(usize),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Partitions a worker owns, with the epoch of the assignment that gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub partition: i32,
    pub epoch: u64,
}

/// One worker's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique per worker (the static group instance id when configured).
    pub id: String,
    /// Base URL of the worker's HTTP API, where serving instances ask for partial state.
    pub address: String,
    pub owned: Vec<Owned>,
    /// Partitions of the events topic, as the worker last saw them.
    pub partition_count: i32,
    /// Wall-clock time of the heartbeat, epoch ms.
    pub heartbeat_ms: i64,
    /// The worker's event-time progress (its slowest partition), epoch ms; `None` before any.
    #[serde(default)]
    pub progress_ms: Option<i64>,
}

/// A claimed epoch: who claimed it (for debugging a chain by eye).
#[derive(Debug, Serialize, Deserialize)]
struct EpochClaim {
    member: String,
}

/// The membership records of one consumer group.
#[derive(Debug, Clone)]
pub struct Membership {
    store: Arc<dyn ObjectStore>,
    group: String,
    epochs: ManifestChain,
}

/// Epoch claims kept behind the newest (older ones are pruned).
const EPOCHS_KEPT: u64 = 256;

impl Membership {
    pub fn new(store: Arc<dyn ObjectStore>, group: &str) -> Self {
        let epochs = ManifestChain::new(Arc::clone(&store), layout::member_epoch_dir(group));
        Self {
            store,
            group: group.to_owned(),
            epochs,
        }
    }

    /// Claims the next ownership epoch: higher than every epoch claimed before it.
    pub async fn claim_epoch(&self, member: &str) -> Result<u64> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let seq = self.epochs.next_seq().await?;
            let claim = EpochClaim {
                member: member.to_owned(),
            };
            match self.epochs.publish(seq, &claim).await {
                Ok(()) => {
                    if seq % 64 == 0 && seq >= EPOCHS_KEPT {
                        self.epochs.prune(seq - EPOCHS_KEPT).await;
                    }
                    return Ok(seq);
                }
                Err(manifest::Error::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Contended(ATTEMPTS))
    }

    /// Writes (replaces) the member's heartbeat.
    pub async fn announce(&self, member: &Member) -> Result<()> {
        let path = layout::member(&self.group, &member.id);
        let bytes = serde_json::to_vec(member).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        object::write(&self.store, &path, bytes).await?;
        Ok(())
    }

    /// Removes the member's heartbeat (a clean shutdown), so nobody waits for it to expire.
    pub async fn withdraw(&self, id: &str) -> Result<()> {
        object::delete(&self.store, &layout::member(&self.group, id)).await?;
        Ok(())
    }

    /// Members whose heartbeat is younger than `ttl` at `now_ms`. Unreadable records are skipped
    /// (a heartbeat being replaced, or garbage) and logged.
    pub async fn live(&self, now_ms: i64, ttl: Duration) -> Result<Vec<Member>> {
        let objects = object::list(&self.store, &layout::member_dir(&self.group)).await?;
        let mut members = Vec::with_capacity(objects.len());
        for meta in objects {
            let path = meta.location.to_string();
            let bytes = match object::read(&self.store, &path).await {
                Ok(b) => b,
                Err(err) => {
                    tracing::debug!(%err, "member heartbeat vanished while listing");
                    continue;
                }
            };
            match serde_json::from_slice::<Member>(&bytes) {
                Ok(m) if now_ms.saturating_sub(m.heartbeat_ms) < ttl.as_millis() as i64 => {
                    members.push(m)
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%path, %err, "unreadable member heartbeat skipped"),
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }
}

/// Which member answers for each partition: the owner with the highest epoch. A partition no
/// live member owns is absent. Pure.
pub fn owners(members: &[Member]) -> std::collections::BTreeMap<i32, (&Member, u64)> {
    let mut owners: std::collections::BTreeMap<i32, (&Member, u64)> = Default::default();
    for m in members {
        for o in &m.owned {
            match owners.get(&o.partition) {
                Some((_, epoch)) if *epoch >= o.epoch => {}
                _ => {
                    owners.insert(o.partition, (m, o.epoch));
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn member(id: &str, owned: &[(i32, u64)], heartbeat_ms: i64) -> Member {
        Member {
            id: id.to_owned(),
            address: format!("http://{id}"),
            owned: owned
                .iter()
                .map(|&(partition, epoch)| Owned { partition, epoch })
                .collect(),
            partition_count: 4,
            heartbeat_ms,
            progress_ms: None,
        }
    }

    #[tokio::test]
    async fn epochs_rise_and_concurrent_claims_never_share_one() {
        let m = Membership::new(Arc::new(InMemory::new()), "g");
        let a = m.claim_epoch("a").await.unwrap();
        let b = m.claim_epoch("b").await.unwrap();
        assert!(b > a);
        let claims: Vec<u64> = futures::future::join_all((0..8).map(|i| {
            let m = m.clone();
            async move { m.claim_epoch(&format!("w{i}")).await.unwrap() }
        }))
        .await;
        let mut unique = claims.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), claims.len(), "{claims:?}");
        assert!(claims.iter().all(|c| *c > b));
    }

    #[tokio::test]
    async fn only_fresh_heartbeats_are_live_and_a_withdrawn_member_is_gone() {
        let m = Membership::new(Arc::new(InMemory::new()), "g");
        m.announce(&member("a", &[(0, 1)], 10_000)).await.unwrap();
        m.announce(&member("b", &[(1, 1)], 1_000)).await.unwrap();
        let ttl = Duration::from_secs(5);
        let live = m.live(12_000, ttl).await.unwrap();
        assert_eq!(
            live.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // A newer heartbeat replaces the old one.
        m.announce(&member("b", &[(1, 2)], 11_000)).await.unwrap();
        assert_eq!(m.live(12_000, ttl).await.unwrap().len(), 2);
        m.withdraw("a").await.unwrap();
        let live = m.live(12_000, ttl).await.unwrap();
        assert_eq!(live, [member("b", &[(1, 2)], 11_000)]);
    }

    #[test]
    fn the_newest_epoch_owns_a_partition() {
        let stale = member("old", &[(0, 3), (1, 3)], 0);
        let fresh = member("new", &[(1, 7), (2, 7)], 0);
        let members = [stale, fresh];
        let owners = owners(&members);
        let who: Vec<(i32, &str, u64)> = owners
            .iter()
            .map(|(p, (m, e))| (*p, m.id.as_str(), *e))
            .collect();
        assert_eq!(who, [(0, "old", 3), (1, "new", 7), (2, "new", 7)]);
    }
}
