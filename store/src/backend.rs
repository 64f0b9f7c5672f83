//! Which object store a URL names: the local filesystem (the default), memory, or S3.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

/// Errors opening storage. The user's configuration (or, for a directory that cannot be created,
/// the environment).
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
}

/// Opens `file:///path`, a plain path, `memory://`, or `s3://bucket/prefix` (credentials and
/// region from the usual `AWS_*` environment variables).
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, Error> {
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
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| Error::Open {
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
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_local_and_memory_stores_and_rejects_unknown_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nested", dir.path().display());
        open(&url).unwrap();
        assert!(dir.path().join("nested").is_dir());
        open("memory://").unwrap();
        let err = open("gopher://x").unwrap_err().to_string();
        assert!(err.contains("supported schemes"), "{err}");
    }
}
