//! `[[outputs]]`: views pushed to Kafka topics.
//!
//! ```toml
//! [[outputs]]
//! view = "payments_by_card"
//! topic = "payments_by_card.results"
//! emit = "on_close"                 # or "on_update" (default): every change of a row
//! when = "payments > 20 OR amount_total > 10000"   # optional: alerts only, once per row
//! lookback = "15m"                  # windows starting this long ago are still followed
//! ```

use serde::Deserialize;
use tandem_serving::outputs::Emit;
use tandem_shared::time::Span;
use tandem_shared::view::ViewDefinition;

use super::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutputFile {
    view: String,
    topic: String,
    #[serde(default = "on_update")]
    emit: Emit,
    when: Option<String>,
    lookback: Option<String>,
}

fn on_update() -> Emit {
    Emit::OnUpdate
}

/// One output, checked against the views and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    pub view: String,
    pub topic: String,
    pub emit: Emit,
    /// SQL over a row (its dimensions, values by alias, `source`): alerts only.
    pub when: Option<String>,
    pub lookback: Span,
}

pub(super) fn outputs(
    files: Vec<OutputFile>,
    views: &[ViewDefinition],
    reserved_topics: &[&str],
    path: &str,
) -> Result<Vec<OutputConfig>> {
    let invalid = |key, problem: String| Error::Invalid {
        path: path.to_owned(),
        section: "outputs",
        key,
        problem,
    };
    files
        .into_iter()
        .map(|f| {
            if !views.iter().any(|v| v.name == f.view) {
                return Err(invalid("view", format!("no view is named `{}`", f.view)));
            }
            if f.topic.trim().is_empty() || reserved_topics.contains(&f.topic.as_str()) {
                return Err(invalid(
                    "topic",
                    format!(
                        "`{}`: an output needs a topic of its own (not the events, dead-letter or late-events topic)",
                        f.topic
                    ),
                ));
            }
            if f.when.as_deref().is_some_and(|w| w.trim().is_empty()) {
                return Err(invalid("when", "an empty rule: leave `when` out".into()));
            }
            let lookback = Span::parse(f.lookback.as_deref().unwrap_or("15m"))
                .map_err(|e| invalid("lookback", e.to_string()))?;
            Ok(OutputConfig {
                view: f.view,
                topic: f.topic,
                emit: f.emit,
                when: f.when,
                lookback,
            })
        })
        .collect()
}
