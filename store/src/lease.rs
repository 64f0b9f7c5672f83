//! A lease in the object store, built on create-if-absent only: which process runs the batch
//! job scheduler.
//!
//! ```text
//!  leases/scheduler/<term>.json   { holder, address, expires_ms }   one object per term
//!
//!  round(now):  newest term ─► decide (pure)
//!                 none, or expired ─────────────► take: create term + 1 (one contender wins)
//!                 ours, past half its life ─────► renew: create term + 1
//!                 ours ─────────────────────────► held until expires_ms − margin
//!                 another's, not expired ───────► follow (its address takes requests)
//! ```
//!
//! A term is never overwritten: renewing creates the next one, so two contenders can never
//! both believe they won the same term, and the store needs no compare-and-swap (a local file
//! system has none). The holder counts the lease as held only until `margin` before it
//! expires, so that a contender whose clock runs slightly ahead does not take it while the
//! holder still acts; clocks must agree within that margin.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::manifest::{self, ManifestChain};

/// Errors of a lease round. Transient (the store); the caller keeps its last standing only
/// until that standing expires.
pub type Error = manifest::Error;

/// One term of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub holder: String,
    /// Base URL of the holder's HTTP API.
    pub address: String,
    pub expires_ms: i64,
}

/// Where this process stands after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nobody holds the lease (or it could not be read).
    Vacant,
    /// This process holds it until `until_ms` (already less the margin).
    Held { term: u64, until_ms: i64 },
    /// Another process holds it.
    Other { term: u64, holder: Term },
}

impl Standing {
    /// Whether this process holds the lease at `now_ms`.
    pub fn holds(&self, now_ms: i64) -> bool {
        matches!(self, Standing::Held { until_ms, .. } if now_ms < *until_ms)
    }
}

/// What a round does. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Create this term for ourselves.
    Claim(u64),
    /// Ours, not yet due for renewal.
    Keep,
    /// Another's, live.
    Follow,
}

fn decide(newest: Option<(u64, &Term)>, me: &str, now_ms: i64, ttl_ms: i64) -> Step {
    match newest {
        None => Step::Claim(0),
        Some((term, t)) if t.holder == me => {
            if now_ms >= t.expires_ms - ttl_ms / 2 {
                Step::Claim(term + 1)
            } else {
                Step::Keep
            }
        }
        Some((term, t)) => {
            if now_ms >= t.expires_ms {
                Step::Claim(term + 1)
            } else {
                Step::Follow
            }
        }
    }
}

/// One process's view of one lease.
#[derive(Debug, Clone)]
pub struct Lease {
    chain: ManifestChain,
    holder: String,
    address: String,
    ttl: Duration,
}

/// Terms kept behind the newest.
const TERMS_KEPT: u64 = 16;

impl Lease {
    /// The lease whose terms live in `dir`, as seen by `holder` (reachable at `address`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        dir: impl Into<String>,
        holder: impl Into<String>,
        address: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            chain: ManifestChain::new(store, dir),
            holder: holder.into(),
            address: address.into(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn margin_ms(&self) -> i64 {
        (self.ttl.as_millis() as i64 / 5).max(1)
    }

    /// The newest term, whoever holds it.
    pub async fn newest(&self) -> Result<Option<(u64, Term)>, Error> {
        self.chain.latest::<Term>().await
    }

    /// Where another process stands, read-only: who holds the lease at `now_ms`.
    pub async fn observe(&self, now_ms: i64) -> Result<Standing, Error> {
        Ok(match self.newest().await? {
            Some((term, t)) if now_ms < t.expires_ms => Standing::Other { term, holder: t },
            _ => Standing::Vacant,
        })
    }

    /// Takes, renews or follows the lease (see the module docs).
    pub async fn round(&self, now_ms: i64) -> Result<Standing, Error> {
        let newest = self.newest().await?;
        let ttl_ms = self.ttl.as_millis() as i64;
        let step = decide(
            newest.as_ref().map(|(s, t)| (*s, t)),
            &self.holder,
            now_ms,
            ttl_ms,
        );
        match (step, newest) {
            (Step::Keep, Some((term, t))) => Ok(Standing::Held {
                term,
                until_ms: t.expires_ms - self.margin_ms(),
            }),
            (Step::Follow, Some((term, holder))) => Ok(Standing::Other { term, holder }),
            // `decide` keeps or follows only an existing term.
            (Step::Keep | Step::Follow, None) => Ok(Standing::Vacant),
            (Step::Claim(term), _) => {
                let t = Term {
                    holder: self.holder.clone(),
                    address: self.address.clone(),
                    expires_ms: now_ms + ttl_ms,
                };
                match self.chain.publish(term, &t).await {
                    Ok(()) => {
                        if term >= TERMS_KEPT && term % TERMS_KEPT == 0 {
                            self.chain.prune(term - TERMS_KEPT).await;
                        }
                        Ok(Standing::Held {
                            term,
                            until_ms: t.expires_ms - self.margin_ms(),
                        })
                    }
                    // Another contender created this term first: it holds the lease.
                    Err(manifest::Error::Conflict { .. }) => Ok(match self.newest().await? {
                        Some((term, holder)) if holder.holder != self.holder => {
                            Standing::Other { term, holder }
                        }
                        _ => Standing::Vacant,
                    }),
                    Err(err) => Err(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn term(holder: &str, expires_ms: i64) -> Term {
        Term {
            holder: holder.into(),
            address: format!("http://{holder}"),
            expires_ms,
        }
    }

    #[test]
    fn decisions() {
        let ttl = 10_000;
        assert_eq!(decide(None, "a", 0, ttl), Step::Claim(0));
        let mine = term("a", 10_000);
        assert_eq!(decide(Some((3, &mine)), "a", 1_000, ttl), Step::Keep);
        assert_eq!(decide(Some((3, &mine)), "a", 5_000, ttl), Step::Claim(4));
        let theirs = term("b", 10_000);
        assert_eq!(decide(Some((3, &theirs)), "a", 9_999, ttl), Step::Follow);
        assert_eq!(decide(Some((3, &theirs)), "a", 10_000, ttl), Step::Claim(4));
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_only_after_expiry() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ttl = Duration::from_secs(10);
        let a = Lease::new(Arc::clone(&store), "l", "a", "http://a", ttl);
        let b = Lease::new(Arc::clone(&store), "l", "b", "http://b", ttl);
        let got_a = a.round(0).await.unwrap();
        assert!(got_a.holds(0) && !got_a.holds(8_000), "{got_a:?}");
        let got_b = b.round(100).await.unwrap();
        assert!(matches!(&got_b, Standing::Other { holder, .. } if holder.holder == "a"));
        assert!(!got_b.holds(100));
        // A renews at half-life; B still follows after A's first term would have expired.
        assert!(a.round(6_000).await.unwrap().holds(6_000));
        assert!(!b.round(11_000).await.unwrap().holds(11_000));
        // A stops renewing (it died): B takes over once the term expires.
        let taken = b.round(16_000).await.unwrap();
        assert!(taken.holds(16_000), "{taken:?}");
        assert!(!a.round(16_500).await.unwrap().holds(16_500));
        assert_eq!(
            a.observe(16_500).await.unwrap(),
            Standing::Other {
                term: 2,
                holder: term("b", 26_000)
            }
        );
    }

    #[tokio::test]
    async fn contenders_for_a_vacant_lease_get_exactly_one_holder() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ttl = Duration::from_secs(10);
        let leases: Vec<Lease> = (0..6)
            .map(|i| Lease::new(Arc::clone(&store), "l", format!("p{i}"), "http://x", ttl))
            .collect();
        let standings = futures::future::join_all(leases.iter().map(|l| l.round(1_000))).await;
        let holders = standings
            .iter()
            .filter(|s| s.as_ref().unwrap().holds(1_000))
            .count();
        assert_eq!(holders, 1, "{standings:?}");
    }
}
