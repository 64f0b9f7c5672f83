//! Which object store the configuration names: the local filesystem (the default), memory, or
//! S3 (or an S3-compatible server), and the start-up check that it honours create-if-absent.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Errors opening storage. The user's configuration (or, for a directory that cannot be created,
/// the environment); [`Error::CreateIfAbsent`] is the store's own shortcoming.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage.url `{url}`: {problem}")]
    Url { url: String, problem: String },
    #[error("storage.url `{url}`: {source}")]
    Open {
        url: String,
        source: object_store::Error,
    },
    #[error("storage.url `{url}`: cannot create directory: {source}")]
    Directory { url: String, source: std::io::Error },
    /// The store could not be reached for the start-up check.
    #[error("storage.url `{url}`: the start-up check could not reach the store: {source}")]
    Unreachable {
        url: String,
        source: object_store::Error,
    },
    /// The store accepted a second create-if-absent write of one object: publication (a
    /// manifest created only if absent) would not fence concurrent writers.
    #[error(
        "storage.url `{url}`: the store does not honour create-if-absent writes ({problem}); \
         Tandem publishes every manifest through them and cannot run on this store"
    )]
    CreateIfAbsent { url: String, problem: String },
}

/// Where the object store is and, for S3, how to reach it. Values left unset fall back to the
/// usual `AWS_*` environment variables.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageSettings {
    /// `file:///path`, a plain path, `memory://`, or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible server's address (`http://127.0.0.1:9000`), instead of AWS's.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allows `http://` endpoints.
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl StorageSettings {
    /// Settings of the store at `url`, everything else from the environment.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl fmt::Debug for StorageSettings {
    /// Credentials are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("StorageSettings")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .finish()
    }
}

/// Opens the store `settings` name: `file:///path`, a plain path, `memory://`, or
/// `s3://bucket/prefix` (endpoint, region and credentials from the settings, else from the
/// `AWS_*` environment variables).
pub fn open(settings: &StorageSettings) -> Result<Arc<dyn ObjectStore>, Error> {
    let url = settings.url.as_str();
    if url.starts_with("memory:") {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Url {
                url: url.to_owned(),
                problem: "expected s3://bucket/prefix".into(),
            });
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(allow) = settings.allow_http {
            builder = builder.with_allow_http(allow);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token);
        }
        let s3 = builder.build().map_err(|source| Error::Open {
            url: url.to_owned(),
            source,
        })?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    if settings.endpoint.is_some() || settings.access_key_id.is_some() {
        return Err(Error::Url {
            url: url.to_owned(),
            problem: "endpoint and credentials are settings of an s3:// store".into(),
        });
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if url.contains("://") => {
            return Err(Error::Url {
                url: url.to_owned(),
                problem: "supported schemes are file://, memory:// and s3://".into(),
            });
        }
        None => PathBuf::from(url),
    };
    std::fs::create_dir_all(&path).map_err(|source| Error::Directory {
        url: url.to_owned(),
        source,
    })?;
    let store = LocalFileSystem::new_with_prefix(&path).map_err(|source| Error::Open {
        url: url.to_owned(),
        source,
    })?;
    Ok(Arc::new(crate::durable::DurableFiles::new(store)))
}

/// Checks that `store` honours create-if-absent, on which every publication depends: creates a
/// probe object, expects a second create of it to be refused, and removes it. `url` names the
/// store in errors.
pub async fn check_create_if_absent(store: &dyn ObjectStore, url: &str) -> Result<(), Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = Path::from(format!(
        "_probe/create-if-absent-{}-{nanos}",
        std::process::id()
    ));
    let create = |body: &'static [u8]| {
        store.put_opts(
            &path,
            PutPayload::from_static(body),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
    };
    let unreachable = |source| Error::Unreachable {
        url: url.to_owned(),
        source,
    };
    let refused = |problem: String| Error::CreateIfAbsent {
        url: url.to_owned(),
        problem,
    };
    match create(b"first").await {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented { operation, .. }) => {
            return Err(refused(format!("{operation} is not implemented")));
        }
        Err(err) => return Err(unreachable(err)),
    }
    let second = create(b"second").await;
    // Best effort: a probe left behind is harmless (nothing lists `_probe/`).
    let _ = store.delete(&path).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(refused(
            "a second create of the same object succeeded and replaced it".into(),
        )),
        Err(err) => Err(refused(format!(
            "a second create of the same object failed with another error: {err}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_local_and_memory_stores_and_rejects_unknown_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nested", dir.path().display());
        let local = open(&StorageSettings::at(url)).unwrap();
        assert!(dir.path().join("nested").is_dir());
        // A local store syncs every write before it returns (a torn manifest after a power
        // loss otherwise): it is the durable wrapper.
        assert!(local.to_string().starts_with("Durable("), "{local}");
        open(&StorageSettings::at("memory://")).unwrap();
        let err = open(&StorageSettings::at("gopher://x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("supported schemes"), "{err}");
        let misplaced = StorageSettings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..StorageSettings::at("memory://")
        };
        // memory:// takes no settings either way; a local path with S3 settings is a mistake.
        open(&misplaced).unwrap();
        let local = StorageSettings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..StorageSettings::at(format!("file://{}/x", dir.path().display()))
        };
        let err = open(&local).unwrap_err().to_string();
        assert!(err.contains("settings of an s3:// store"), "{err}");
    }

    #[test]
    fn credentials_are_not_printed() {
        let settings = StorageSettings {
            access_key_id: Some("AKIDPUBLIC".into()),
            secret_access_key: Some("s3cr3t-value".into()),
            session_token: Some("t0ken-value".into()),
            ..StorageSettings::at("s3://b/p")
        };
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("AKIDPUBLIC") && shown.contains("<hidden>"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn stores_that_honour_create_if_absent_pass_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let local = open(&StorageSettings::at(dir.path().display().to_string())).unwrap();
        check_create_if_absent(local.as_ref(), "local")
            .await
            .unwrap();
        let probes = dir.path().join("_probe");
        let left = std::fs::read_dir(&probes).map_or(0, |d| d.count());
        assert_eq!(left, 0, "the probe object is removed");
        let memory = open(&StorageSettings::at("memory://")).unwrap();
        check_create_if_absent(memory.as_ref(), "memory://")
            .await
            .unwrap();
    }

    /// A store that ignores the create-if-absent condition (as some S3-compatible servers do):
    /// every put overwrites.
    #[derive(Debug)]
    struct Overwriting(InMemory);

    impl fmt::Display for Overwriting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Overwriting")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Overwriting {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0
                .put_opts(location, payload, PutOptions::default())
                .await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_that_overwrites_on_create_is_refused() {
        let store = Overwriting(InMemory::new());
        let err = check_create_if_absent(&store, "s3://lax/bucket")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::CreateIfAbsent { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("s3://lax/bucket") && text.contains("does not honour create-if-absent"),
            "{text}"
        );
    }
}
