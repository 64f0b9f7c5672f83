//! A schema registry stand-in speaking the subset of the Confluent REST API producers and
//! Tandem use, in the test process:
//!
//! - `POST /subjects/{subject}/versions` `{"schema": "...", "schemaType": "PROTOBUF"}` → `{"id": N}`
//!   (the same schema text again returns its id);
//! - `GET /schemas/ids/{id}` → `{"schema": "...", "schemaType": ...}` (no `schemaType` for Avro,
//!   like the real registry), 404 with error code 40403 for an unknown id;
//! - `GET /subjects/{subject}/versions/latest` → `{"subject", "version", "id", "schema"}`.
//!
//! [`SchemaRegistry::set_available`] simulates an outage: every request gets 503 until it is
//! available again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Schemas {
    /// By id (ids start at 1): schema type, text.
    by_id: Vec<(String, String)>,
    /// Per subject: the ids of its versions, oldest first.
    subjects: HashMap<String, Vec<u32>>,
    /// `GET /schemas/ids/{id}` requests per id.
    lookups: HashMap<u32, usize>,
}

#[derive(Debug, Default)]
struct Shared {
    schemas: Mutex<Schemas>,
    down: AtomicBool,
}

/// A running registry stand-in; stops when dropped.
#[derive(Debug)]
pub struct SchemaRegistry {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SchemaRegistry {
    pub async fn start() -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route(
                "/subjects/{subject}/versions",
                axum::routing::post(register),
            )
            .route(
                "/subjects/{subject}/versions/latest",
                axum::routing::get(latest),
            )
            .route("/schemas/ids/{id}", axum::routing::get(by_id))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Registers `text` (`schema_type` "AVRO" or "PROTOBUF") under `subject` over HTTP, as a
    /// producer would; returns its id.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: &str,
        text: &str,
    ) -> anyhow::Result<u32> {
        let response: Value = reqwest::Client::new()
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .json(&json!({"schema": text, "schemaType": schema_type}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = response["id"].as_u64().context("no id in the answer")?;
        Ok(u32::try_from(id)?)
    }

    /// Answer every request with 503 (`false`) or normally again (`true`).
    pub fn set_available(&self, available: bool) {
        self.shared.down.store(!available, Ordering::SeqCst);
    }

    /// How often schema `id` was looked up.
    pub fn lookups(&self, id: u32) -> usize {
        let schemas = self
            .shared
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        schemas.lookups.get(&id).copied().unwrap_or(0)
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error_code": 50302, "message": "registry unavailable (test outage)"})),
    )
        .into_response()
}

fn schema_body(schema_type: &str, text: &str) -> Value {
    let mut body = json!({ "schema": text });
    if schema_type != "AVRO" {
        body["schemaType"] = json!(schema_type);
    }
    body
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    Json(request): Json<Value>,
) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let Some(text) = request["schema"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "no schema"})),
        )
            .into_response();
    };
    let schema_type = request["schemaType"].as_str().unwrap_or("AVRO").to_owned();
    let mut schemas = shared.schemas.lock().unwrap_or_else(|e| e.into_inner());
    let existing = schemas
        .by_id
        .iter()
        .position(|(t, s)| *t == schema_type && s == text);
    let id = match existing {
        Some(i) => i as u32 + 1,
        None => {
            schemas.by_id.push((schema_type, text.to_owned()));
            schemas.by_id.len() as u32
        }
    };
    let versions = schemas.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    Json(json!({ "id": id })).into_response()
}

async fn by_id(State(shared): State<Arc<Shared>>, Path(id): Path<u32>) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let mut schemas = shared.schemas.lock().unwrap_or_else(|e| e.into_inner());
    *schemas.lookups.entry(id).or_default() += 1;
    match id
        .checked_sub(1)
        .and_then(|i| schemas.by_id.get(i as usize))
    {
        Some((schema_type, text)) => Json(schema_body(schema_type, text)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        )
            .into_response(),
    }
}

async fn latest(State(shared): State<Arc<Shared>>, Path(subject): Path<String>) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let schemas = shared.schemas.lock().unwrap_or_else(|e| e.into_inner());
    let Some(versions) = schemas.subjects.get(&subject) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40401, "message": "Subject not found"})),
        )
            .into_response();
    };
    let Some(&id) = versions.last() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (schema_type, text) = &schemas.by_id[id as usize - 1];
    let mut body = schema_body(schema_type, text);
    body["subject"] = json!(subject);
    body["version"] = json!(versions.len());
    body["id"] = json!(id);
    Json(body).into_response()
}
