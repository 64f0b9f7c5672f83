//! `[[outputs]]` wired: each output's rule compiled against its view's SQL row, one task
//! polling the views and one producing the records.
//!
//! ```text
//!  config.outputs ──► Output { view, topic, emit, rule } ──► serving::outputs::run (poll, diff)
//!                                                              │ bounded channel
//!                                                              ▼
//!                                                   KafkaSink::run (idempotent producer)
//! ```

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use tandem_batch_layer::ViewCatalog;
use tandem_serving::fleet::SpeedSide;
use tandem_serving::outputs::{self, KafkaSink, Output, Rule, Timing};
use tandem_shared::clock::Clock;
use tandem_shared::time::Span;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// How often outputs read their views: an alert is at most this late (plus the read).
pub const POLL: Duration = Duration::from_millis(50);
/// Records waiting for the producer; a slower producer slows the polls.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rule(#[from] outputs::rule::Error),
    #[error(transparent)]
    Sink(#[from] outputs::sink::Error),
    #[error("typing view `{view}` for its output's rule: {detail}")]
    Schema { view: String, detail: String },
}

/// The outputs of `config`, their rules compiled.
pub async fn compile(config: &Config) -> Result<Vec<Output>, Error> {
    let mut out = Vec::new();
    for o in &config.outputs {
        let Some(view) = config.views.iter().find(|v| v.name == o.view) else {
            continue; // checked when the configuration was read
        };
        let rule = match &o.when {
            None => None,
            Some(text) => {
                let rows = tandem_batch_layer::tables::results::view_schema(view, &config.schema)
                    .await
                    .map_err(|e| Error::Schema {
                        view: view.name.clone(),
                        detail: e.strip_backtrace(),
                    })?;
                // The row as the view's SQL table has it.
                let mut fields: Vec<Field> =
                    rows.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new("source", DataType::Utf8, false));
                fields.push(Field::new("complete", DataType::Boolean, false));
                Some(Rule::compile(view, Arc::new(Schema::new(fields)), text)?)
            }
        };
        out.push(Output {
            view: view.clone(),
            topic: o.topic.clone(),
            emit: o.emit,
            rule,
        });
    }
    Ok(out)
}

/// Starts the outputs of `config` on `tracker` until `cancel`.
pub async fn start(
    config: &Config,
    catalog: Arc<ViewCatalog>,
    speed: SpeedSide,
    clock: Arc<dyn Clock>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), Error> {
    if config.outputs.is_empty() {
        return Ok(());
    }
    let outputs = compile(config).await?;
    let sink = KafkaSink::new(&config.kafka.brokers, &config.kafka.options)?;
    let lookback = config
        .outputs
        .iter()
        .map(|o| o.lookback)
        .max()
        .unwrap_or(Span::from_millis(15 * 60_000));
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tracing::info!(outputs = outputs.len(), "outputs started");
    tracker.spawn(outputs::run(
        outputs,
        catalog,
        speed,
        clock,
        Timing {
            poll: POLL,
            lookback,
        },
        tx,
        cancel.clone(),
    ));
    tracker.spawn(sink.run(rx, cancel));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(when: &str) -> String {
        format!(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "payments"

[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = {{ card = "string", amount = "decimal(12, 2)" }}

[[views]]
name = "payments_by_card"
window = {{ tumbling = "1m" }}
group_by = ["card"]
aggregates = ["count(*) AS payments", "sum(amount) AS amount_total"]

[[outputs]]
view = "payments_by_card"
topic = "payments_by_card.alerts"
emit = "on_close"
when = "{when}"
"#
        )
    }

    #[tokio::test]
    async fn rules_compile_against_the_views_row_or_say_why_not() {
        let c = Config::parse(&config("payments > 20 OR amount_total > 10000"), "t.toml").unwrap();
        let compiled = compile(&c).await.unwrap();
        assert_eq!(compiled.len(), 1);
        assert_eq!(compiled[0].emit, outputs::Emit::OnClose);
        assert!(compiled[0].rule.is_some());
        for (rule, needle) in [("colour = 'red'", "colour"), ("payments + 1", "boolean")] {
            let c = Config::parse(&config(rule), "t.toml").unwrap();
            let err = compile(&c).await.unwrap_err().to_string();
            assert!(
                err.contains("payments_by_card") && err.contains(needle),
                "{rule}: {err}"
            );
        }
    }

    #[test]
    fn outputs_are_checked_when_the_configuration_is_read() {
        let text = config("payments > 1");
        let unknown = text.replace(
            "view = \"payments_by_card\"\ntopic",
            "view = \"nope\"\ntopic",
        );
        let err = Config::parse(&unknown, "t.toml").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let events_topic = text.replace(
            "topic = \"payments_by_card.alerts\"",
            "topic = \"payments\"",
        );
        let err = Config::parse(&events_topic, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("topic of its own"), "{err}");
        let bad_emit = text.replace("on_close", "sometimes");
        assert!(Config::parse(&bad_emit, "t.toml").is_err());
    }
}
