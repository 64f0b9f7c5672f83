//! Reading and writing single objects, with the path carried in every error.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use tandem_shared::error::ErrorKind;

/// An object-store operation failed. Transient, except a missing object, which means a manifest
/// names something that is gone (internal).
#[derive(Debug, thiserror::Error)]
#[error("object store at `{path}`: {source}")]
pub struct Error {
    pub path: String,
    pub source: object_store::Error,
}

impl Error {
    fn at(path: &str) -> impl FnOnce(object_store::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.source, object_store::Error::NotFound { .. })
    }

    pub fn kind(&self) -> ErrorKind {
        match self.source {
            object_store::Error::NotFound { .. } => ErrorKind::Internal,
            _ => ErrorKind::Transient,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole object at `path`.
pub async fn read(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Bytes> {
    store
        .get(&Path::from(path))
        .await
        .map_err(Error::at(path))?
        .bytes()
        .await
        .map_err(Error::at(path))
}

/// Writes (or overwrites) the object at `path`.
pub async fn write(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    payload: impl Into<PutPayload>,
) -> Result<()> {
    store
        .put(&Path::from(path), payload.into())
        .await
        .map(|_| ())
        .map_err(Error::at(path))
}

/// Deletes the object at `path`. Returns `false` if the store reports it missing (not an error;
/// some stores, the in-memory one among them, report nothing).
pub async fn delete(store: &Arc<dyn ObjectStore>, path: &str) -> Result<bool> {
    match store.delete(&Path::from(path)).await {
        Ok(()) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(source) => Err(Error::at(path)(source)),
    }
}

/// Every object below `dir`, recursively.
pub async fn list(store: &Arc<dyn ObjectStore>, dir: &str) -> Result<Vec<ObjectMeta>> {
    store
        .list(Some(&Path::from(dir)))
        .try_collect()
        .await
        .map_err(Error::at(dir))
}
