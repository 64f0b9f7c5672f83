//! The Delta Lake transaction log, as Tandem writes it: the actions (protocol reader 1, writer
//! 2), a commit as JSON lines, and a table's state replayed from its commits. Pure: no I/O.
//!
//! ```text
//!  _delta_log/00000000000000000000.json  protocol, metaData, add…, txn, commitInfo
//!  _delta_log/00000000000000000001.json  add…, remove…, txn, commitInfo
//!       │ decode (unknown actions kept out), in version order
//!       ▼
//!  TableState: live files (path → add), the latest txn version per app id, metadata
//! ```
//!
//! A commit is one object per version, written create-if-absent (the log's point of
//! publication, as a manifest is Tandem's); `txn` (app id, version) lets a writer that retries
//! a commit see that it landed, so a reader sees each file once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Errors reading a log. Internal: a commit Tandem cannot read is corrupt or of a newer
/// protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("delta log version {version}, line {line}: {detail}")]
    Corrupt {
        version: u64,
        line: usize,
        detail: String,
    },
    #[error("delta log version {version} needs reader version {reader}; Tandem reads 1")]
    Protocol { version: u64, reader: i32 },
}

/// The protocol versions Tandem's tables need: no table features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub min_reader_version: i32,
    pub min_writer_version: i32,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            min_reader_version: 1,
            min_writer_version: 2,
        }
    }
}

/// The file format of a table's data files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFormat {
    pub provider: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A table's identity and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub id: String,
    pub format: FileFormat,
    /// The table's schema as Delta's JSON struct type (see `super::schema`).
    pub schema_string: String,
    pub partition_columns: Vec<String>,
    #[serde(default)]
    pub configuration: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
}

/// A data file added to the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Relative to the table's root.
    pub path: String,
    pub partition_values: BTreeMap<String, Option<String>>,
    pub size: i64,
    pub modification_time: i64,
    pub data_change: bool,
    /// JSON statistics (`numRecords`, `minValues`, `maxValues`, `nullCount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

/// A data file removed from the table (compacted, expired or replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remove {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<i64>,
    pub data_change: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_file_metadata: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_values: Option<BTreeMap<String, Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// An application's progress, committed with its files: the latest `version` of `app_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Txn {
    pub app_id: String,
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<i64>,
}

/// One action of a commit (externally tagged: `{"add": {…}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "protocol")]
    Protocol(Protocol),
    #[serde(rename = "metaData")]
    Metadata(Metadata),
    #[serde(rename = "add")]
    Add(Add),
    #[serde(rename = "remove")]
    Remove(Remove),
    #[serde(rename = "txn")]
    Txn(Txn),
    /// Provenance for people and tools (operation, time); the table's state ignores it.
    #[serde(rename = "commitInfo")]
    CommitInfo(serde_json::Value),
}

/// The action names [`Action`] knows; others (`cdc`, `domainMetadata`, …) are skipped when
/// read: a table Tandem writes has none.
const KNOWN: [&str; 6] = ["protocol", "metaData", "add", "remove", "txn", "commitInfo"];

/// A commit's object: one JSON action per line.
pub fn encode(actions: &[Action]) -> String {
    let mut out = String::new();
    for action in actions {
        // Serializing these plain structs cannot fail.
        out.push_str(&serde_json::to_string(action).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// The actions of commit `version`'s object.
pub fn decode(version: u64, text: &str) -> Result<Vec<Action>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let corrupt = |detail: String| Error::Corrupt {
            version,
            line: i + 1,
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| corrupt(e.to_string()))?;
        let known = value
            .as_object()
            .and_then(|o| o.keys().next())
            .is_some_and(|k| KNOWN.contains(&k.as_str()));
        if known {
            out.push(serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?);
        }
    }
    Ok(out)
}

/// The path of commit `version` below a table's root.
pub fn commit_path(root: &str, version: u64) -> String {
    format!("{root}/_delta_log/{version:020}.json")
}

/// The version a log object's name says (`None`: not a commit, e.g. a checkpoint).
pub fn version_of(name: &str) -> Option<u64> {
    let stem = name.rsplit('/').next()?.strip_suffix(".json")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// A table as its log says it is after some version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableState {
    /// The latest version applied; `None` for a table with no commit yet.
    pub version: Option<u64>,
    pub protocol: Option<Protocol>,
    pub metadata: Option<Metadata>,
    /// Live data files by path.
    pub files: BTreeMap<String, Add>,
    /// Per application, the latest version it committed.
    pub txns: BTreeMap<String, i64>,
}

impl TableState {
    /// Applies commit `version` (the next one) to the state.
    pub fn apply(&mut self, version: u64, actions: Vec<Action>) -> Result<(), Error> {
        for action in actions {
            match action {
                Action::Protocol(p) => {
                    if p.min_reader_version > 1 {
                        return Err(Error::Protocol {
                            version,
                            reader: p.min_reader_version,
                        });
                    }
                    self.protocol = Some(p);
                }
                Action::Metadata(m) => self.metadata = Some(m),
                Action::Add(a) => {
                    self.files.insert(a.path.clone(), a);
                }
                Action::Remove(r) => {
                    self.files.remove(&r.path);
                }
                Action::Txn(t) => {
                    let latest = self.txns.entry(t.app_id).or_insert(t.version);
                    *latest = (*latest).max(t.version);
                }
                Action::CommitInfo(_) => {}
            }
        }
        self.version = Some(version);
        Ok(())
    }

    /// The version to commit next.
    pub fn next_version(&self) -> u64 {
        self.version.map_or(0, |v| v + 1)
    }

    /// The latest version `app` committed, if any.
    pub fn txn(&self, app: &str) -> Option<i64> {
        self.txns.get(app).copied()
    }
}

/// Statistics of a data file, as Delta's `stats` JSON: its row count (readers skip files by
/// it and by the time bounds: `min`/`max` of the time column).
pub fn stats(rows: u64, time: Option<(&str, String, String)>) -> String {
    let mut stats = serde_json::json!({ "numRecords": rows });
    if let Some((column, min, max)) = time {
        stats["minValues"] = serde_json::json!({ column: min });
        stats["maxValues"] = serde_json::json!({ column: max });
    }
    stats.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(path: &str) -> Action {
        Action::Add(Add {
            path: path.into(),
            partition_values: [("hour".to_owned(), Some("2026-12-07T10".to_owned()))].into(),
            size: 10,
            modification_time: 1,
            data_change: true,
            stats: Some(stats(3, None)),
        })
    }

    fn txn(app: &str, version: i64) -> Action {
        Action::Txn(Txn {
            app_id: app.into(),
            version,
            last_updated: Some(5),
        })
    }

    #[test]
    fn commits_round_trip_and_replay_to_the_live_files_and_app_versions() {
        let first = vec![
            Action::Protocol(Protocol::default()),
            Action::Metadata(Metadata {
                id: "t".into(),
                format: FileFormat {
                    provider: "parquet".into(),
                    options: BTreeMap::new(),
                },
                schema_string: "{}".into(),
                partition_columns: vec!["hour".into()],
                configuration: BTreeMap::new(),
                created_time: Some(1),
            }),
            add("a.parquet"),
            txn("p0", 1),
            Action::CommitInfo(serde_json::json!({"operation": "WRITE"})),
        ];
        let second = vec![
            add("b.parquet"),
            Action::Remove(Remove {
                path: "a.parquet".into(),
                deletion_timestamp: Some(2),
                data_change: true,
                extended_file_metadata: None,
                partition_values: None,
                size: None,
            }),
            txn("p0", 2),
            txn("p1", 7),
        ];
        let text = encode(&first);
        assert_eq!(text.lines().count(), 5);
        assert!(text.starts_with(r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#));
        assert!(text.contains(r#"{"add":{"path":"a.parquet","partitionValues":{"hour":"2026-12-07T10"},"size":10,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":3}"}}"#), "{text}");
        assert_eq!(decode(0, &text).unwrap_or_default(), first);

        let mut state = TableState::default();
        assert_eq!(state.next_version(), 0);
        for (v, actions) in [(0, &first), (1, &second)] {
            let read = decode(v, &encode(actions)).unwrap_or_default();
            state.apply(v, read).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(state.next_version(), 2);
        assert_eq!(state.files.keys().collect::<Vec<_>>(), ["b.parquet"]);
        assert_eq!(
            (state.txn("p0"), state.txn("p1"), state.txn("p2")),
            (Some(2), Some(7), None)
        );
    }

    #[test]
    fn other_writers_actions_are_skipped_and_newer_readers_refused() {
        let text =
            "{\"domainMetadata\":{\"domain\":\"x\"}}\n{\"txn\":{\"appId\":\"a\",\"version\":3}}\n";
        assert_eq!(
            decode(4, text).unwrap_or_default(),
            vec![txn_no_time("a", 3)]
        );
        let mut state = TableState::default();
        let newer = decode(
            0,
            "{\"protocol\":{\"minReaderVersion\":3,\"minWriterVersion\":7}}\n",
        )
        .unwrap_or_default();
        assert!(matches!(
            state.apply(0, newer),
            Err(Error::Protocol { reader: 3, .. })
        ));
        assert!(matches!(
            decode(2, "{\"add\": 5}\n"),
            Err(Error::Corrupt {
                version: 2,
                line: 1,
                ..
            })
        ));
        assert_eq!(
            version_of("t/_delta_log/00000000000000000012.json"),
            Some(12)
        );
        assert_eq!(
            version_of("t/_delta_log/00000000000000000012.checkpoint.parquet"),
            None
        );
        assert_eq!(
            commit_path("archive/orders", 12),
            "archive/orders/_delta_log/00000000000000000012.json"
        );
    }

    fn txn_no_time(app: &str, version: i64) -> Action {
        Action::Txn(Txn {
            app_id: app.into(),
            version,
            last_updated: None,
        })
    }
}
