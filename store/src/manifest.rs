//! Manifest chains: the point of publication for everything Tandem writes.
//!
//! A chain is a directory of JSON manifests named by a zero-padded sequence number
//! ([`layout::manifest_file`]). Data objects are written first (immutable, or deterministic so a
//! rewrite is identical); then the next manifest is created with a create-if-absent put. The
//! newest manifest is the published state. The archive (one chain per partition), the view
//! catalog (one per view version) and the speed layer's checkpoints (one per partition and
//! consumer group) all publish this way.
//!
//! # What the store must guarantee
//! - Create-if-absent is atomic: of two writers creating the same sequence number, exactly one
//!   wins and the other gets `AlreadyExists`.
//! - A listing shows every object whose creation returned (read-after-write for listings).
//!
//! The local filesystem, the in-memory store and S3 (conditional writes) provide both. A writer
//! that loses the race has been fenced: it must reload the chain before publishing again.
//!
//! # Torn manifests
//! A manifest that does not parse was never a publication: a write that a crash tore (the
//! local store syncs every write, see [`crate::durable`], but a disk can lie). Readers take the
//! newest manifest that parses, and report the newest sequence number present, so that a
//! writer publishes after the torn one instead of failing to create it forever (which wedged
//! a partition, or stopped start-up, although the previous manifest was kept).
//!
//! # Pruning
//! Readers always take the newest manifest, so older ones are garbage once a newer one is
//! published. Writers keep the previous manifest too ([`ManifestChain::prune`] with
//! `seq - 1`), for a reader that listed the chain just before the newest was created.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_shared::error::ErrorKind;
use tandem_shared::layout;

use crate::object;

/// Errors reading or publishing a manifest chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] object::Error),
    /// A manifest does not parse (or a value does not serialize).
    #[error("manifest `{path}` is corrupt: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    /// Another writer published this sequence number first.
    #[error("manifest `{path}` already exists: another writer published first")]
    Conflict { path: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Corrupt { .. } => ErrorKind::Internal,
            // Reloading and publishing again can succeed.
            Error::Conflict { .. } => ErrorKind::Transient,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A chain of manifests in one directory.
#[derive(Debug, Clone)]
pub struct ManifestChain {
    store: Arc<dyn ObjectStore>,
    dir: String,
}

impl ManifestChain {
    pub fn new(store: Arc<dyn ObjectStore>, dir: impl Into<String>) -> Self {
        Self {
            store,
            dir: dir.into(),
        }
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Sequence numbers present, ascending.
    pub async fn sequences(&self) -> Result<Vec<u64>> {
        let objects = object::list(&self.store, &self.dir).await?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| layout::manifest_seq(o.location.as_ref()))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The sequence number the next publication takes.
    pub async fn next_seq(&self) -> Result<u64> {
        Ok(self.sequences().await?.last().map_or(0, |s| s + 1))
    }

    /// The newest manifest that parses, and the newest sequence number present (the one to
    /// publish after; a torn manifest is skipped, see the module docs), if any manifest is
    /// there. Every manifest torn is [`Error::Corrupt`].
    pub async fn latest<T: DeserializeOwned>(&self) -> Result<Option<(u64, T)>> {
        let seqs = self.sequences().await?;
        let Some(&newest) = seqs.last() else {
            return Ok(None);
        };
        let mut torn = None;
        for &seq in seqs.iter().rev() {
            let path = layout::manifest_file(&self.dir, seq);
            let bytes = match object::read(&self.store, &path).await {
                Ok(bytes) => bytes,
                // Pruned since the listing: an older one than the one we want.
                Err(err) if seq != newest && err.is_not_found() => continue,
                Err(err) => return Err(err.into()),
            };
            match serde_json::from_slice(&bytes) {
                Ok(value) => {
                    if seq != newest {
                        tracing::error!(
                            dir = %self.dir,
                            read = seq,
                            torn = newest,
                            "the newest manifest is torn (a crashed write): reading the one before, and publishing after it"
                        );
                    }
                    return Ok(Some((newest, value)));
                }
                Err(source) => {
                    metrics::counter!("tandem_store_torn_manifests_total").increment(1);
                    torn.get_or_insert(Error::Corrupt { path, source });
                }
            }
        }
        Err(torn.unwrap_or_else(|| Error::Corrupt {
            path: self.dir.clone(),
            source: serde_json::Error::io(std::io::Error::other("no manifest parses")),
        }))
    }

    /// Publishes `value` as manifest `seq`, failing with [`Error::Conflict`] if it exists.
    pub async fn publish<T: Serialize>(&self, seq: u64, value: &T) -> Result<()> {
        let path = layout::manifest_file(&self.dir, seq);
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&Path::from(path.as_str()), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict { path }),
            Err(source) => Err(object::Error { path, source }.into()),
        }
    }

    /// Deletes manifests older than `keep_from`. Failures only leave garbage behind.
    pub async fn prune(&self, keep_from: u64) {
        let Ok(seqs) = self.sequences().await else {
            return;
        };
        for seq in seqs.into_iter().filter(|s| *s < keep_from) {
            let path = layout::manifest_file(&self.dir, seq);
            if let Err(err) = object::delete(&self.store, &path).await {
                tracing::debug!(%err, "could not prune manifest");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn newest_manifest_wins_and_a_sequence_is_published_once() {
        let chain = ManifestChain::new(Arc::new(InMemory::new()), "x/_manifest");
        assert_eq!(chain.latest::<u32>().await.unwrap(), None);
        assert_eq!(chain.next_seq().await.unwrap(), 0);
        chain.publish(0, &10u32).await.unwrap();
        chain.publish(1, &11u32).await.unwrap();
        assert!(matches!(
            chain.publish(1, &99u32).await,
            Err(Error::Conflict { .. })
        ));
        assert_eq!(chain.latest::<u32>().await.unwrap(), Some((1, 11)));
        assert_eq!(chain.next_seq().await.unwrap(), 2);
        chain.prune(1).await;
        assert_eq!(chain.sequences().await.unwrap(), [1]);
    }

    #[tokio::test]
    async fn local_filesystem_honours_create_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let chain = ManifestChain::new(Arc::new(store), "m");
        chain.publish(3, &"a").await.unwrap();
        assert!(matches!(
            chain.publish(3, &"b").await,
            Err(Error::Conflict { .. })
        ));
        assert_eq!(
            chain.latest::<String>().await.unwrap(),
            Some((3, "a".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_torn_newest_manifest_is_skipped_and_published_after() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let chain = ManifestChain::new(Arc::clone(&store), "m");
        chain.publish(0, &10u32).await.unwrap();
        chain.publish(1, &11u32).await.unwrap();
        // A crash tore manifest 2 (it exists, but half written).
        object::write(&store, &layout::manifest_file("m", 2), "{\"half")
            .await
            .unwrap();
        // Readers get manifest 1; a writer is told to publish after 2, and can.
        assert_eq!(chain.latest::<u32>().await.unwrap(), Some((2, 11)));
        chain.publish(3, &13u32).await.unwrap();
        assert_eq!(chain.latest::<u32>().await.unwrap(), Some((3, 13)));
    }

    #[tokio::test]
    async fn a_corrupt_manifest_is_an_internal_error() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        object::write(&store, &layout::manifest_file("m", 0), "not json")
            .await
            .unwrap();
        let err = ManifestChain::new(store, "m")
            .latest::<u32>()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    }
}
