//! Fault injection: deterministic crash points for recovery tests, and (with the `testing`
//! feature) an object store that fails on purpose.
//!
//! A crash point is a named place in a publication protocol (`archive.after_files`,
//! `checkpoint.after_object`, …). With `TANDEM_CRASH_AT=<point>` in the environment the process
//! aborts there, so a test can kill Tandem between two steps of a protocol instead of hoping a
//! SIGKILL lands in the right place. Without the variable a crash point costs one environment
//! lookup.

/// Aborts the process if `TANDEM_CRASH_AT` names `point`.
pub fn crash_point(point: &str) {
    if std::env::var("TANDEM_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("TANDEM_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

#[cfg(any(test, feature = "testing"))]
pub use flaky::FlakyStore;

#[cfg(any(test, feature = "testing"))]
mod flaky {
    use std::fmt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    /// Wraps a store and fails its next `n` reads (`get`), or every write to matching paths
    /// while a write outage lasts, with a generic, transient error; everything else passes
    /// through. For tests of retry decisions and outages.
    #[derive(Debug)]
    pub struct FlakyStore {
        inner: Arc<dyn ObjectStore>,
        failing_reads: AtomicUsize,
        failing_writes: Mutex<Option<String>>,
        failed_writes: AtomicUsize,
    }

    impl FlakyStore {
        pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
            Self {
                inner,
                failing_reads: AtomicUsize::new(0),
                failing_writes: Mutex::new(None),
                failed_writes: AtomicUsize::new(0),
            }
        }

        /// Starts a write outage: every put to a path containing `pattern` fails (`""`: every
        /// put) until [`FlakyStore::end_write_outage`].
        pub fn start_write_outage(&self, pattern: &str) {
            *self
                .failing_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(pattern.to_owned());
        }

        pub fn end_write_outage(&self) {
            *self
                .failing_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }

        /// Writes failed by outages so far.
        pub fn failed_writes(&self) -> usize {
            self.failed_writes.load(Ordering::SeqCst)
        }

        fn write_fails(&self, location: &Path) -> Option<object_store::Error> {
            let failing = self
                .failing_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let pattern = failing.as_deref()?;
            if !location.as_ref().contains(pattern) {
                return None;
            }
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            Some(object_store::Error::Generic {
                store: "flaky",
                source: format!("injected outage writing {location}").into(),
            })
        }

        /// Makes the next `n` reads fail.
        pub fn fail_reads(&self, n: usize) {
            self.failing_reads.store(n, Ordering::SeqCst);
        }

        /// Reads still set to fail.
        pub fn failing_reads(&self) -> usize {
            self.failing_reads.load(Ordering::SeqCst)
        }
    }

    impl fmt::Display for FlakyStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "FlakyStore({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FlakyStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Result<PutResult> {
            if let Some(err) = self.write_fails(location) {
                return Err(err);
            }
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            if let Some(err) = self.write_fails(location) {
                return Err(err);
            }
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            let failed = self
                .failing_reads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failed {
                return Err(object_store::Error::Generic {
                    store: "flaky",
                    source: format!("injected read failure of {location}").into(),
                });
            }
            self.inner.get_opts(location, options).await
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

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use object_store::memory::InMemory;

    use super::FlakyStore;
    use crate::object;

    #[tokio::test]
    async fn the_flaky_store_fails_exactly_the_reads_it_was_told_to() {
        let flaky = Arc::new(FlakyStore::new(Arc::new(InMemory::new())));
        let store: Arc<dyn ObjectStore> = flaky.clone();
        object::write(&store, "a", "x").await.unwrap();
        flaky.fail_reads(2);
        for _ in 0..2 {
            let err = object::read(&store, "a").await.unwrap_err();
            assert!(err.kind().is_retryable(), "{err}");
        }
        assert_eq!(&object::read(&store, "a").await.unwrap()[..], b"x");
        assert_eq!(flaky.failing_reads(), 0);

        flaky.start_write_outage("_manifest");
        object::write(&store, "data/b", "y").await.unwrap();
        let err = object::write(&store, "x/_manifest/0", "z")
            .await
            .unwrap_err();
        assert!(err.kind().is_retryable(), "{err}");
        flaky.end_write_outage();
        object::write(&store, "x/_manifest/0", "z").await.unwrap();
        assert_eq!(flaky.failed_writes(), 1);
    }
}
