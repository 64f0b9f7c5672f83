//! The schema registry: writer schemas by id, over the Confluent REST API.
//!
//! ```text
//!  consumer: decoder.read(payload) ─► Unresolved(id) ─► read_resolved ─► Registry::resolve(id)
//!     GET {url}/schemas/ids/{id} ─► 200: the schema, learnt by the decoder; the payload is read again
//!                                ─► 404 / other 4xx: no such schema (the message is dead-lettered)
//!                                ─► unreachable / 5xx: retry with backoff until it answers
//!                                   (consumption waits; `condition` says why for /readyz)
//! ```
//!
//! Schemas are immutable per id, so the decoder keeps what it learns (a bounded number of ids;
//! a "no such schema" answer only for a minute, so an id registered late is read once it
//! exists): the registry is asked about once per id and process. A registry that is down never
//! costs an event: the consumer waits.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tandem_shared::event::{EventDecoder, Read, RegisteredSchema, SchemaId, SchemaType};
use tokio_util::sync::CancellationToken;

/// Where the registry is and how to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Base URL, e.g. `http://registry:8081`.
    pub url: String,
    /// HTTP basic authentication.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Errors building the client. Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("schema registry url `{url}`: {detail}")]
    Url { url: String, detail: String },
    #[error("schema registry client: {0}")]
    Client(#[source] reqwest::Error),
}

/// What one request learnt.
#[derive(Debug)]
enum Answer {
    Schema(RegisteredSchema),
    /// The registry answered that there is no such schema.
    Missing(String),
    /// No answer worth keeping: try again.
    Unreachable(String),
}

/// The registry's `GET /schemas/ids/{id}` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    schema_type: Option<SchemaType>,
}

/// A schema registry client shared by the consumers of one process.
pub struct Registry {
    settings: RegistrySettings,
    client: reqwest::Client,
    /// Why the registry is not answering, while it is not.
    trouble: Mutex<Option<String>>,
    /// Longest wait between attempts.
    max_backoff: Duration,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Result<Self, Error> {
        let parsed = url::Url::parse(&settings.url).map_err(|err| Error::Url {
            url: settings.url.clone(),
            detail: err.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Url {
                url: settings.url.clone(),
                detail: "not an http or https URL".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            settings: RegistrySettings {
                url: settings.url.trim_end_matches('/').to_owned(),
                ..settings
            },
            client,
            trouble: Mutex::new(None),
            max_backoff: Duration::from_secs(5),
        })
    }

    /// The same client retrying at most every `max`, for tests of outages.
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// `Err(why)` while the last attempt to reach the registry failed.
    pub fn condition(&self) -> Result<(), String> {
        match &*self.trouble.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    fn set_trouble(&self, trouble: Option<String>) {
        metrics::gauge!("tandem_registry_unreachable").set(if trouble.is_some() {
            1.0
        } else {
            0.0
        });
        *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = trouble;
    }

    /// The writer schema `id`, or the registry's reason there is none; asks again (with
    /// backoff) while the registry is unreachable. `None` once `cancel` fires.
    pub async fn resolve(
        &self,
        id: SchemaId,
        cancel: &CancellationToken,
    ) -> Option<Result<RegisteredSchema, String>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let answer = tokio::select! {
                _ = cancel.cancelled() => return None,
                answer = self.fetch(id) => answer,
            };
            match answer {
                Answer::Schema(schema) => {
                    metrics::counter!("tandem_registry_fetches_total", "outcome" => "found")
                        .increment(1);
                    self.set_trouble(None);
                    tracing::info!(id, registry = %self.settings.url, "writer schema fetched");
                    return Some(Ok(schema));
                }
                Answer::Missing(why) => {
                    metrics::counter!("tandem_registry_fetches_total", "outcome" => "missing")
                        .increment(1);
                    self.set_trouble(None);
                    tracing::warn!(id, %why, "the schema registry has no such schema: its messages are dead-lettered");
                    return Some(Err(why));
                }
                Answer::Unreachable(why) => {
                    metrics::counter!("tandem_registry_fetches_total", "outcome" => "unreachable")
                        .increment(1);
                    let why = format!(
                        "schema registry {} unreachable while fetching schema id {id}: {why}; consumption waits for it",
                        self.settings.url
                    );
                    tracing::warn!(id, retry_in = ?backoff, "{why}");
                    self.set_trouble(Some(why));
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    async fn fetch(&self, id: SchemaId) -> Answer {
        let url = format!("{}/schemas/ids/{id}", self.settings.url);
        let mut request = self.client.get(&url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(user) = &self.settings.username {
            request = request.basic_auth(user, self.settings.password.as_ref());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(err) => return Answer::Unreachable(err.to_string()),
        };
        let status = response.status();
        let body = match response.text().await {
            Ok(body) => body,
            Err(err) => return Answer::Unreachable(err.to_string()),
        };
        if status.is_success() {
            return match serde_json::from_str::<SchemaBody>(&body) {
                Ok(b) => Answer::Schema(RegisteredSchema {
                    schema_type: b.schema_type.unwrap_or(SchemaType::Avro),
                    text: b.schema,
                }),
                Err(err) => {
                    Answer::Missing(format!("the registry's answer is not a schema: {err}"))
                }
            };
        }
        // 401/403 are a configuration problem that a retry may fix once credentials change;
        // 404 (and other 4xx) is an answer about this id.
        if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 408 | 429) {
            return Answer::Unreachable(format!("HTTP {status}: {}", truncate(&body)));
        }
        Answer::Missing(format!("HTTP {status}: {}", truncate(&body)))
    }
}

fn truncate(body: &str) -> &str {
    let end = body.char_indices().nth(200).map_or(body.len(), |(i, _)| i);
    &body[..end]
}

/// Reads `payload`, fetching the writer schema first when the decoder has not seen it.
/// `None` when `cancel` fired while waiting for the registry: the message is not read.
pub async fn read_resolved<'a>(
    decoder: &EventDecoder,
    registry: Option<&Registry>,
    payload: Option<&'a [u8]>,
    record_time: Option<i64>,
    cancel: &CancellationToken,
) -> Option<Read<'a>> {
    loop {
        match decoder.read_record(payload, Vec::new(), record_time) {
            Read::Unresolved(id) => {
                let answer = match registry {
                    Some(registry) => registry.resolve(id, cancel).await?,
                    None => Err("no schema registry is configured".to_owned()),
                };
                decoder.learn(id, answer);
            }
            read => return Some(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;

    use super::*;

    /// A registry that fails `outage` requests with 503, then knows schema 1 only.
    async fn serve(outage: usize) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/schemas/ids/{id}",
                axum::routing::get(
                    |State((calls, outage)): State<(Arc<AtomicUsize>, usize)>,
                     Path(id): Path<u32>| async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < outage {
                            return (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned());
                        }
                        match id {
                            1 => (
                                StatusCode::OK,
                                r#"{"schema":"{\"type\":\"record\",\"name\":\"A\",\"fields\":[]}"}"#
                                    .to_owned(),
                            ),
                            _ => (
                                StatusCode::NOT_FOUND,
                                r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                            ),
                        }
                    },
                ),
            )
            .with_state((Arc::clone(&calls), outage));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), calls)
    }

    fn registry(url: &str) -> Registry {
        Registry::new(RegistrySettings {
            url: url.to_owned(),
            username: None,
            password: None,
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .with_max_backoff(Duration::from_millis(50))
    }

    #[tokio::test]
    async fn waits_out_an_outage_and_reports_it_meanwhile() {
        let (url, calls) = serve(4).await;
        let registry = Arc::new(registry(&url));
        let cancel = CancellationToken::new();
        let r = Arc::clone(&registry);
        let c = cancel.clone();
        let fetch = tokio::spawn(async move { r.resolve(1, &c).await });
        // While the registry fails, the condition says so.
        let mut saw_trouble = false;
        for _ in 0..100 {
            if let Err(why) = registry.condition() {
                assert!(why.contains("schema id 1"), "{why}");
                saw_trouble = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(saw_trouble);
        let answer = fetch.await.unwrap_or_else(|e| panic!("{e}"));
        let schema = answer.and_then(Result::ok).map(|s| s.schema_type);
        assert_eq!(schema, Some(SchemaType::Avro));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(registry.condition(), Ok(()));
        // An unknown id is an answer, not an outage.
        let missing = registry.resolve(2, &cancel).await;
        assert!(matches!(missing, Some(Err(why)) if why.contains("404")));
    }

    #[tokio::test]
    async fn cancelling_stops_the_wait_and_bad_urls_are_refused() {
        let cancel = CancellationToken::new();
        // Nothing listens on port 9 of localhost.
        let registry = registry("http://127.0.0.1:9");
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        assert!(registry.resolve(1, &cancel).await.is_none());
        assert!(registry.condition().is_err());
        for url in ["registry:8081", "ftp://registry"] {
            let settings = RegistrySettings {
                url: url.into(),
                username: None,
                password: Some("secret".into()),
            };
            assert!(!format!("{settings:?}").contains("secret"));
            assert!(Registry::new(settings).is_err(), "{url}");
        }
    }
}
