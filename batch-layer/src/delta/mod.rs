//! Delta Lake tables over what Tandem publishes (ADR 0009): the transaction log of a table
//! whose data files Tandem already wrote and named in its own manifests.
//!
//! ```text
//!  manifest published (Tandem's point of publication)
//!       │ the files it adds and removes, and the (app id, version) it is
//!       ▼
//!  DeltaLog::load ─► TableState (txn per app id) ─► already committed? done
//!       │ no
//!       ▼
//!  commit <next version>.json, create-if-absent ─► another writer took the version: reload
//!                                                   and try again (the txn says if it was us)
//! ```
//!
//! - `log`: actions, commits and the state replayed from them (pure).
//! - `schema`: Arrow schemas as Delta's schema string (pure).
//!
//! The archive commits each roll here (`crate::archive`'s `delta`); views do not yet (issue 33).

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tandem_shared::error::ErrorKind;
use tandem_store::object;

pub mod log;
pub mod schema;

pub use log::{Action, Add, Metadata, Protocol, Remove, TableState, Txn};

/// Errors of a table's log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] object::Error),
    #[error(transparent)]
    Log(#[from] log::Error),
    /// Another writer committed version `version` first: reload and decide again.
    #[error("delta log `{root}`: version {version} was committed by another writer")]
    Conflict { root: String, version: u64 },
    #[error("delta log `{root}`: commit {version} is not UTF-8")]
    Encoding { root: String, version: u64 },
    /// Transient: what a commit should name could not be read (the manifests' file lists).
    #[error("delta log: reading the files to commit: {0}")]
    Files(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::Conflict { .. } | Error::Files(_) => ErrorKind::Transient,
            Error::Log(_) | Error::Encoding { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One Delta table's log, rooted at `root` in the store.
#[derive(Debug, Clone)]
pub struct DeltaLog {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl DeltaLog {
    pub fn new(store: Arc<dyn ObjectStore>, root: impl Into<String>) -> Self {
        Self {
            store,
            root: root.into(),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The table's state after every commit in its log (an empty state for no log).
    pub async fn load(&self) -> Result<TableState> {
        let mut state = TableState::default();
        self.catch_up(&mut state).await?;
        Ok(state)
    }

    /// Applies the commits after `state`'s version.
    pub async fn catch_up(&self, state: &mut TableState) -> Result<()> {
        let dir = Path::from(format!("{}/_delta_log", self.root));
        // Only the names after the state's commit: versions are zero-padded, so they sort.
        let listed: Vec<object_store::ObjectMeta> = match state.version {
            None => self.store.list(Some(&dir)).try_collect().await,
            Some(at) => {
                let after = Path::from(log::commit_path(&self.root, at));
                self.store
                    .list_with_offset(Some(&dir), &after)
                    .try_collect()
                    .await
            }
        }
        .map_err(|source| object::Error {
            path: dir.to_string(),
            source,
        })?;
        let mut versions: Vec<u64> = listed
            .iter()
            .filter_map(|m| log::version_of(m.location.as_ref()))
            .filter(|v| state.version.is_none_or(|at| *v > at))
            .collect();
        versions.sort_unstable();
        for version in versions {
            let path = log::commit_path(&self.root, version);
            let bytes = object::read(&self.store, &path).await?;
            let text = std::str::from_utf8(&bytes).map_err(|_| Error::Encoding {
                root: self.root.clone(),
                version,
            })?;
            state.apply(version, log::decode(version, text)?)?;
        }
        Ok(())
    }

    /// Commits `actions` as the version after `state`'s, create-if-absent; the state then
    /// includes it. [`Error::Conflict`] when another writer took that version.
    pub async fn commit(&self, state: &mut TableState, actions: Vec<Action>) -> Result<u64> {
        let version = state.next_version();
        let path = log::commit_path(&self.root, version);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(log::encode(&actions).into_bytes());
        match self
            .store
            .put_opts(&Path::from(path.as_str()), payload, opts)
            .await
        {
            Ok(_) => {
                state.apply(version, actions)?;
                Ok(version)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                root: self.root.clone(),
                version,
            }),
            Err(source) => Err(object::Error { path, source }.into()),
        }
    }

    /// Commits `actions` as application `app`'s `version` unless the log already has it (a
    /// retry after a crash or a lost answer): catches up and tries the next version while other
    /// writers take versions first, up to `attempts` times. Returns the log version it landed
    /// at, `None` if it had landed before.
    pub async fn commit_once(
        &self,
        state: &mut TableState,
        app: &str,
        version: i64,
        mut actions: Vec<Action>,
        attempts: usize,
    ) -> Result<Option<u64>> {
        actions.push(Action::Txn(Txn {
            app_id: app.to_owned(),
            version,
            last_updated: None,
        }));
        let mut last = None;
        for _ in 0..attempts.max(1) {
            self.catch_up(state).await?;
            if state.txn(app).is_some_and(|v| v >= version) {
                return Ok(None);
            }
            match self.commit(state, actions.clone()).await {
                Ok(at) => return Ok(Some(at)),
                Err(conflict @ Error::Conflict { .. }) => last = Some(conflict),
                Err(other) => return Err(other),
            }
        }
        Err(last.unwrap_or(Error::Conflict {
            root: self.root.clone(),
            version: state.next_version(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn add(path: &str) -> Action {
        Action::Add(Add {
            path: path.into(),
            partition_values: Default::default(),
            size: 1,
            modification_time: 0,
            data_change: true,
            stats: None,
        })
    }

    #[tokio::test]
    async fn writers_racing_for_versions_each_land_once_and_a_retry_lands_never_twice() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let log = DeltaLog::new(Arc::clone(&store), "archive/orders");
        // Two writers (partitions 0 and 1) with states loaded before either committed.
        let mut a = log.load().await.unwrap_or_default();
        let mut b = a.clone();
        let first = log
            .commit_once(&mut a, "p0", 1, vec![add("p0-1.parquet")], 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Some(0));
        // b's version 0 is taken: it catches up and lands at 1.
        let second = log
            .commit_once(&mut b, "p1", 1, vec![add("p1-1.parquet")], 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second, Some(1));
        // p0 retries its sequence 1 (it never heard the answer): nothing is added twice.
        let mut fresh = TableState::default();
        let retry = log
            .commit_once(&mut fresh, "p0", 1, vec![add("p0-1.parquet")], 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(retry, None);
        let state = log.load().await.unwrap_or_default();
        assert_eq!(state.version, Some(1));
        assert_eq!(
            state.files.keys().collect::<Vec<_>>(),
            ["p0-1.parquet", "p1-1.parquet"]
        );
        assert_eq!((state.txn("p0"), state.txn("p1")), (Some(1), Some(1)));
        // A plain commit on a stale state is told it lost the version.
        let mut stale = TableState::default();
        assert!(matches!(
            log.commit(&mut stale, vec![add("x.parquet")]).await,
            Err(Error::Conflict { version: 0, .. })
        ));
    }
}
