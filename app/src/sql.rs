//! `tandem sql`: one read-only query from the shell, against the configured store.
//!
//! The same engine as `POST /v1/sql`, without a speed layer: views answer what the batch layer
//! has published, `events` the archive up to its last roll. Needs no Kafka.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use tandem_serving::sql::{SqlEngine, render};

use crate::config::Config;
use crate::wiring;

/// How `tandem sql` prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    Csv,
    /// `{"columns": [...], "rows": [[...]]}`, as the HTTP API answers.
    Json,
    /// An Arrow IPC stream (binary).
    Arrow,
}

/// Runs `sql` against the store of `config` and writes the answer to stdout.
pub async fn run(config: &Config, sql: &str, format: Format) -> anyhow::Result<()> {
    let bytes = answer(config, sql, format).await?;
    std::io::stdout()
        .write_all(&bytes)
        .context("writing the answer")?;
    Ok(())
}

/// The answer to `sql` against the store of `config`, rendered in `format`.
pub async fn answer(config: &Config, sql: &str, format: Format) -> anyhow::Result<Vec<u8>> {
    let store = tandem_store::open(&config.storage)?;
    let catalog = wiring::catalog(config, &store);
    catalog.refresh_all().await?;
    let engine = SqlEngine::new(
        catalog,
        None,
        store,
        &config.kafka.topic,
        Arc::new(config.schema.clone()),
        config.http.sql,
    )
    .await?;
    let answer = engine.query(sql).await?;
    let bytes = match format {
        Format::Table => {
            let mut text = datafusion::arrow::util::pretty::pretty_format_batches(&answer.batches)?
                .to_string();
            text.push('\n');
            text.into_bytes()
        }
        Format::Csv => render::csv(&answer)?,
        Format::Json => {
            let mut json = serde_json::to_vec_pretty(&render::json(&answer)?)?;
            json.push(b'\n');
            json
        }
        Format::Arrow => render::arrow_stream(&answer)?,
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEMO;
    use tandem_batch_layer::archive::import::{self, PartitionBatches};
    use tandem_shared::event::EventDecoder;

    /// Orders archived in a file store answer `tandem sql` as counted here; nothing is published,
    /// so the views are empty (no speed layer in the shell).
    #[tokio::test]
    async fn a_query_from_the_shell_reads_the_archive_of_the_configured_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse(DEMO, "demo").unwrap();
        config.storage =
            tandem_store::StorageSettings::at(format!("file://{}", dir.path().display()));
        let store = tandem_store::open(&config.storage).unwrap();
        let decoder = EventDecoder::new(Arc::new(config.schema.clone()));
        let mut batches = PartitionBatches::new(&decoder, 3, 16);
        let cities = ["Lima", "Oslo", "Pune", "Oslo"];
        let t0 = 1_790_000_000_000i64;
        for i in 0..40i64 {
            let city = cities[(i % 4) as usize];
            let json = tandem_shared::testing::orders::order_json(
                i as u64,
                t0 + i * 1_000,
                city,
                "u-1",
                1.5,
                "order_placed",
            );
            let event = decoder.decode(json.as_bytes()).unwrap();
            batches.append(&event, (i % 3) as i32);
        }
        import::import(&store, &config.kafka.topic, 3, &batches.finish())
            .await
            .unwrap();
        let csv = answer(
            &config,
            "SELECT city, count(*) AS n FROM events GROUP BY city ORDER BY city",
            Format::Csv,
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "city,n\nLima,10\nOslo,20\nPune,10\n"
        );
        let view = &config.views[0].name;
        let json = answer(
            &config,
            &format!("SELECT count(*) AS n FROM {view}"),
            Format::Json,
        )
        .await
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["rows"], serde_json::json!([[0]]));
        let table = answer(&config, "SELECT 1 AS one", Format::Table)
            .await
            .unwrap();
        assert!(String::from_utf8(table).unwrap().contains("| one |"));
        let refused = answer(&config, "DROP TABLE events", Format::Csv)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("only queries"), "{refused}");
    }
}
