//! What the decoder learnt about writer schema ids, bounded.
//!
//! ```text
//!  payload's schema id ─► known plan ─► read
//!                      ─► an answer "no such schema" younger than MISS_TTL ─► dead-letter
//!                      ─► nothing (never asked, forgotten, or the answer expired) ─► ask the registry
//! ```
//!
//! A schema id is four bytes any producer may write: a producer writing random ids would
//! otherwise grow the cache by an entry per id, forever, and an id registered after its first
//! message was refused would be refused for the life of the process. So the cache holds at most
//! `capacity` ids (the oldest learnt is forgotten first, and asked again if it comes back), and
//! a registry's "no such schema" is believed for [`MISS_TTL`] only. A schema itself never
//! changes, so a known plan (or a schema that does not fit the declared fields) does not expire.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{DecodeError, SchemaId};

/// How long the registry's "no such schema" for an id is believed.
pub(crate) const MISS_TTL: Duration = Duration::from_secs(60);

/// Schema ids remembered at most, per decoder.
pub(crate) const CAPACITY: usize = 4096;

#[derive(Debug)]
enum Entry<T> {
    /// A plan, or why the schema cannot be read as the declared fields (permanent).
    Learnt(Result<Arc<T>, DecodeError>),
    /// The registry said there is no such schema, at `at`.
    Missing { error: DecodeError, at: Instant },
}

#[derive(Debug)]
struct Entries<T> {
    map: HashMap<SchemaId, Entry<T>>,
    /// Ids in the order they were learnt: the first is forgotten first.
    order: VecDeque<SchemaId>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

/// The bounded cache (see the module docs).
#[derive(Debug)]
pub(crate) struct SchemaCache<T> {
    entries: RwLock<Entries<T>>,
    capacity: usize,
}

impl<T> Default for SchemaCache<T> {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl<T> SchemaCache<T> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: RwLock::default(),
            capacity: capacity.max(1),
        }
    }

    /// What is known of `id` at `now`: `None` means ask the registry.
    pub(crate) fn get(
        &self,
        id: SchemaId,
        now: impl Fn() -> Instant,
    ) -> Option<Result<Arc<T>, DecodeError>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.map.get(&id)? {
            Entry::Learnt(plan) => Some(plan.clone()),
            Entry::Missing { error, at } => {
                (now().saturating_duration_since(*at) < MISS_TTL).then(|| Err(error.clone()))
            }
        }
    }

    /// Remembers a plan (or why the schema cannot be read).
    pub(crate) fn learn(&self, id: SchemaId, plan: Result<Arc<T>, DecodeError>) {
        self.insert(id, Entry::Learnt(plan));
    }

    /// Remembers the registry's "no such schema" as of `at`.
    pub(crate) fn missing(&self, id: SchemaId, error: DecodeError, at: Instant) {
        self.insert(id, Entry::Missing { error, at });
    }

    fn insert(&self, id: SchemaId, entry: Entry<T>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.map.insert(id, entry).is_none() {
            entries.order.push_back(id);
        }
        while entries.map.len() > self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.map.remove(&oldest);
        }
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(id: SchemaId) -> DecodeError {
        DecodeError::UnknownSchema {
            id,
            detail: "HTTP 404".into(),
        }
    }

    #[test]
    fn random_ids_cannot_grow_the_cache_past_its_capacity() {
        let cache: SchemaCache<u32> = SchemaCache::with_capacity(3);
        let t0 = Instant::now();
        cache.learn(1, Ok(Arc::new(10)));
        for id in 100..200 {
            cache.missing(id, missing(id), t0);
        }
        assert_eq!(cache.len(), 3);
        // The oldest went first: the plan learnt before the flood is forgotten (and would be
        // asked for again), the latest misses are kept.
        assert!(cache.get(1, || t0).is_none());
        assert!(cache.get(199, || t0).is_some());
    }

    #[test]
    fn a_miss_is_believed_for_a_while_and_a_plan_for_good() {
        let cache: SchemaCache<u32> = SchemaCache::default();
        let t0 = Instant::now();
        cache.missing(7, missing(7), t0);
        cache.learn(8, Ok(Arc::new(80)));
        assert!(matches!(cache.get(7, || t0), Some(Err(_))));
        let later = t0 + MISS_TTL;
        assert!(
            cache.get(7, || later).is_none(),
            "an expired miss asks the registry again"
        );
        assert_eq!(*cache.get(8, || later).unwrap().unwrap(), 80);
        // Asked again, the registry now knows it.
        cache.learn(7, Ok(Arc::new(70)));
        assert_eq!(*cache.get(7, || later).unwrap().unwrap(), 70);
        assert_eq!(cache.len(), 2);
    }
}
