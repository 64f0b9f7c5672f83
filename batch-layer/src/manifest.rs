//! Manifest chains: the point of publication for everything the batch layer writes.
//!
//! A chain is a directory of JSON manifests named by a zero-padded sequence number. Data objects
//! are written first (immutable, or deterministic so a rewrite is identical); then the next
//! manifest is created with a create-if-absent put. The newest manifest is the published state.
//!
//! Consistency needs of the store: create-if-absent must be atomic (two writers creating the same
//! sequence number: exactly one wins) and a listing must show a created object. The local
//! filesystem, the in-memory store and S3 (conditional writes) provide both. A writer that loses
//! the race has been fenced: it must reload the chain before publishing again.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_shared::layout;

/// Errors reading or publishing a manifest chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Transient or configuration: the store failed.
    #[error("object store at `{path}`: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    /// Internal: a manifest we wrote does not parse.
    #[error("manifest `{path}` is corrupt: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    /// Another writer published this sequence number first.
    #[error("manifest `{path}` already exists: another writer published first")]
    Conflict { path: String },
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

    fn path(&self, seq: u64) -> String {
        format!("{}/{seq:020}.json", self.dir)
    }

    /// Sequence numbers present, ascending.
    pub async fn sequences(&self) -> Result<Vec<u64>> {
        let prefix = Path::from(self.dir.as_str());
        let objects: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| Error::Store {
                    path: self.dir.clone(),
                    source,
                })?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| layout::manifest_seq(o.location.as_ref()))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The newest manifest and its sequence number, if any.
    pub async fn latest<T: DeserializeOwned>(&self) -> Result<Option<(u64, T)>> {
        let Some(&seq) = self.sequences().await?.last() else {
            return Ok(None);
        };
        let path = self.path(seq);
        let bytes = self
            .store
            .get(&Path::from(path.as_str()))
            .await
            .map_err(|source| Error::Store {
                path: path.clone(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| Error::Store {
                path: path.clone(),
                source,
            })?;
        let value =
            serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt { path, source })?;
        Ok(Some((seq, value)))
    }

    /// Publishes `value` as manifest `seq`, failing with [`Error::Conflict`] if it exists.
    pub async fn publish<T: Serialize>(&self, seq: u64, value: &T) -> Result<()> {
        let path = self.path(seq);
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
            Err(source) => Err(Error::Store { path, source }),
        }
    }

    /// Deletes manifests older than `keep_from`. Readers always take the newest, so older ones
    /// are garbage once a newer one is published; failures only leave garbage behind.
    pub async fn prune(&self, keep_from: u64) {
        let Ok(seqs) = self.sequences().await else {
            return;
        };
        for seq in seqs.into_iter().filter(|s| *s < keep_from) {
            let path = Path::from(self.path(seq).as_str());
            if let Err(err) = self.store.delete(&path).await {
                tracing::debug!(%path, %err, "could not prune manifest");
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
        chain.publish(0, &10u32).await.unwrap();
        chain.publish(1, &11u32).await.unwrap();
        assert!(matches!(
            chain.publish(1, &99u32).await,
            Err(Error::Conflict { .. })
        ));
        assert_eq!(chain.latest::<u32>().await.unwrap(), Some((1, 11)));
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
}
