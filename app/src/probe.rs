//! Readiness probes: conditions no task reports by itself.
//!
//! ```text
//!  every second:    speed layer has read its dimension tables and holds a partition
//!                   assignment?                               ─► "consumer" (speed role)
//!  every 10 s:      object store answers a HEAD within 5 s?    ─► "storage"
//!  every second:    schema registry answering the consumers?   ─► "registry"
//!  every second:    the archive receiving what the broker holds? ─► "archive_progress" (archive role)
//! ```

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tandem_serving::Readiness;
use tandem_speed_layer::SpeedLayer;
use tandem_store::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The object the storage probe asks for; it need not exist.
const PROBE_PATH: &str = "_tandem/readiness-probe";

/// The condition of the consumer from the partitions it holds.
pub fn consumer_condition(assigned: usize) -> Result<(), String> {
    if assigned == 0 {
        return Err("the speed layer's consumer holds no partition assignment".into());
    }
    Ok(())
}

/// Whether the object store answers: a missing object is an answer.
pub async fn storage_condition(store: &dyn ObjectStore, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, store.head(&Path::from(PROBE_PATH))).await {
        Err(_) => Err(format!(
            "the object store did not answer within {timeout:?}"
        )),
        Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
        Ok(Err(err)) => Err(format!("the object store is unreachable: {err}")),
    }
}

fn report(readiness: &Readiness, component: &str, condition: Result<(), String>) {
    match condition {
        Ok(()) => readiness.ready(component),
        Err(reason) => readiness.not_ready(component, reason),
    }
}

/// Runs the probes until `cancel` fires.
pub async fn run(
    readiness: Readiness,
    speed: Option<SpeedLayer>,
    store: Arc<dyn ObjectStore>,
    registry: Option<Arc<Registry>>,
    archive: Option<tandem_batch_layer::ArchiveProgress>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(speed) = &speed {
            // Events wait for the dimension tables they join to be read to their end.
            let condition = if speed.tables_ready() {
                consumer_condition(speed.assigned_partition_count())
            } else {
                Err("the speed layer is reading its dimension tables to their end".into())
            };
            report(&readiness, "consumer", condition);
        }
        // The consumers ask the registry only for unseen schema ids: its condition is their
        // last attempt's (ready when none is configured).
        report(
            &readiness,
            "registry",
            registry.as_ref().map_or(Ok(()), |r| r.condition()),
        );
        if let Some(archive) = &archive {
            report(&readiness, "archive_progress", archive.condition());
        }
        if ticks.is_multiple_of(10) {
            let condition = tokio::select! {
                _ = cancel.cancelled() => return,
                c = storage_condition(store.as_ref(), Duration::from_secs(5)) => c,
            };
            report(&readiness, "storage", condition);
        }
        ticks += 1;
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use tandem_store::fault::FlakyStore;

    use super::*;

    #[test]
    fn no_assignment_is_not_ready() {
        assert!(consumer_condition(0).unwrap_err().contains("no partition"));
        assert!(consumer_condition(3).is_ok());
    }

    #[tokio::test]
    async fn a_reachable_store_is_ready_even_without_the_probe_object() {
        let store = InMemory::new();
        assert!(
            storage_condition(&store, Duration::from_secs(1))
                .await
                .is_ok()
        );
        let failing = FlakyStore::new(Arc::new(InMemory::new()));
        failing.fail_reads(1);
        let err = storage_condition(&failing, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.contains("unreachable"), "{err}");
    }
}
