//! Garbage collection: files of interrupted rolls that no manifest lists.
//!
//! Every roll writes an intent naming its files (and the file list it seals, if any) before it
//! writes them, and deletes the intent after its manifest is published. An intent left behind by a crash names files that may be
//! garbage: those its partition's manifest does not list. They are deleted once per partition,
//! after this writer's first publication: earlier owners are fenced by then, so none of their
//! intents can still be published.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tandem_shared::layout;
use tandem_store::object;

use super::Archive;

/// The files a roll is about to write.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Intent {
    pub(super) files: Vec<String>,
}

/// Files named by `intent` that the manifest does not list. Pure.
fn unlisted<'a>(intent: &'a Intent, listed: &HashSet<&str>) -> Vec<&'a str> {
    intent
        .files
        .iter()
        .map(String::as_str)
        .filter(|f| !listed.contains(f))
        .collect()
}

impl Archive {
    /// Deletes the files of interrupted rolls of `partition` and their intents, once.
    pub(super) async fn collect_garbage(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.cleaned {
            return;
        }
        state.cleaned = true;
        let manifest = state.manifest.clone();
        let dir = layout::archive_intent_dir(&self.config.topic, partition);
        let intents = match object::list(&self.store, &dir).await {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(partition, %err, "cannot list roll intents");
                return;
            }
        };
        if intents.is_empty() {
            return;
        }
        // A crash is rare: only then are the sealed lists read, since an interrupted roll's
        // files may have been sealed into one by the manifest it did publish.
        let files = match manifest.all_files(&self.store).await {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(partition, %err, "cannot read the archive's file lists");
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.cleaned = false;
                }
                return;
            }
        };
        let listed: HashSet<&str> = files
            .iter()
            .map(|f| f.path.as_str())
            .chain(manifest.lists.iter().map(|l| l.path.as_str()))
            .collect();
        for meta in intents {
            let Ok(bytes) = object::read(&self.store, meta.location.as_ref()).await else {
                continue;
            };
            if let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) {
                for file in unlisted(&intent, &listed) {
                    match object::delete(&self.store, file).await {
                        Ok(false) => {}
                        Ok(true) => {
                            metrics::counter!("tandem_archive_garbage_files_deleted_total")
                                .increment(1);
                            tracing::info!(file, "deleted an unpublished archive file");
                        }
                        Err(err) => tracing::warn!(file, %err, "cannot delete garbage"),
                    }
                }
            }
            let _ = object::delete(&self.store, meta.location.as_ref()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_the_manifest_does_not_list_are_garbage() {
        let intent = Intent {
            files: vec!["a".into(), "b".into(), "c".into()],
        };
        let listed: HashSet<&str> = ["b", "z"].into_iter().collect();
        assert_eq!(unlisted(&intent, &listed), ["a", "c"]);
    }
}
