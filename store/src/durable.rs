//! The local filesystem, durably: a write returns only once the file's data and its directory
//! entry are on disk (`fsync` of both).
//!
//! ```text
//!  put / multipart complete ─► LocalFileSystem (a staged file linked or renamed into place)
//!                           ─► fsync the file ─► fsync its directory ─► Ok
//! ```
//!
//! Every publication is a manifest written after its data: without `fsync`, a power loss can
//! keep the manifest's directory entry and lose its bytes (or the data a manifest names), so
//! the newest manifest would read as empty or torn. With it, a manifest that was published is
//! whole after a crash, and so is everything it names. (A manifest torn anyway, by a disk
//! that lies about `fsync`, is skipped by readers: see [`crate::manifest`].)

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// A [`LocalFileSystem`] whose writes are durable when they return.
#[derive(Debug)]
pub struct DurableFiles {
    inner: Arc<LocalFileSystem>,
}

impl DurableFiles {
    pub fn new(inner: LocalFileSystem) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl fmt::Display for DurableFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

/// `fsync`s the file at `path` and the directory holding it.
async fn sync(store: &LocalFileSystem, location: &Path) -> Result<()> {
    let path: PathBuf = store.path_to_filesystem(location)?;
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&path)?.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await;
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "DurableFiles",
        source,
    };
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(failed(Box::new(err))),
        Err(err) => Err(failed(Box::new(err))),
    }
}

/// A multipart upload that syncs the file when it completes.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    store: Arc<LocalFileSystem>,
    location: Path,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        sync(&self.store, &self.location).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for DurableFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        sync(&self.inner, location).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            store: Arc::clone(&self.inner),
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        sync(&self.inner, to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        sync(&self.inner, to).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    #[tokio::test]
    async fn writes_land_and_create_if_absent_still_fences() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableFiles::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = Path::from("a/b/manifest.json");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&path, PutPayload::from_static(b"one"), create.clone())
            .await
            .unwrap();
        assert!(matches!(
            store
                .put_opts(&path, PutPayload::from_static(b"two"), create)
                .await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let read = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(read.as_ref(), b"one");
        assert_eq!(
            std::fs::read(dir.path().join("a/b/manifest.json")).unwrap(),
            b"one"
        );
        let mut upload = store
            .put_multipart_opts(&Path::from("big"), PutMultipartOptions::default())
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from_static(b"part"))
            .await
            .unwrap();
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), b"part");
    }
}
