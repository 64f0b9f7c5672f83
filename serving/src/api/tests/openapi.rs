//! The OpenAPI description against the routes: every route of the API's route table (the
//! module docs, written by hand) is described, every described operation is served, and the
//! description is served with Swagger UI.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{app, call};

/// (method, path template) of every row of the route table in `api/mod.rs`'s docs.
fn route_table() -> BTreeSet<(String, String)> {
    let docs = include_str!("../mod.rs");
    let mut routes = BTreeSet::new();
    for line in docs.lines().filter(|l| l.starts_with("//! | ")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(&method) = cells
            .get(1)
            .filter(|m| matches!(**m, "GET" | "POST" | "DELETE"))
        else {
            continue;
        };
        for path in cells[2].split('`').skip(1).step_by(2) {
            let path = path.split('?').next().unwrap_or(path);
            routes.insert((method.to_lowercase(), path.to_owned()));
        }
    }
    routes
}

async fn document() -> Value {
    let (status, body) = call(&app(), "GET", "/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    body
}

fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[tokio::test]
async fn every_route_is_described_and_every_description_is_served() {
    let document = document().await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let described = operations(&document);
    let table = route_table();
    assert!(table.len() >= 12, "the route table was not read: {table:?}");
    // The description, its UI and the console's page are the routes not described themselves.
    let served_elsewhere: BTreeSet<(String, String)> =
        [("get", "/openapi.json"), ("get", "/docs"), ("get", "/")]
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
    let missing: Vec<_> = table
        .difference(&described)
        .filter(|r| !served_elsewhere.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}"
    );
    let undocumented: Vec<_> = described.difference(&table).collect();
    assert!(
        undocumented.is_empty(),
        "described but not in the route table: {undocumented:?}"
    );

    // Every described operation reaches a handler: never the fallback's `not_found`, never 405.
    let app = app();
    for (method, path) in &described {
        let uri = path
            .replace("{name}", "orders_by_city")
            .replace("{id}", "no-such-job");
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .body(Body::from("{}"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        if status == StatusCode::NOT_FOUND && !uri.ends_with("/stream") {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_ne!(
                body["error"]["code"], "not_found",
                "{method} {uri}: no route"
            );
        }
    }
    // An unknown route is the fallback's JSON 404.
    let (status, body) = call(&app, "GET", "/v1/nothing", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn the_description_names_its_schemas_and_the_ui_is_embedded() {
    let document = document().await;
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "ViewRows",
        "RollupRows",
        "JobRecord",
        "ErrorBody",
        "CoverageBody",
        "JsonAnswer",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    // Range parameters are described once and appear on each route that takes them.
    for path in [
        "/v1/views/{name}",
        "/v1/views/{name}/coverage",
        "/v1/views/{name}/stream",
    ] {
        let params = document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap();
        for name in ["from", "to"] {
            let p = params.iter().find(|p| p["name"] == name);
            assert!(
                p.is_some_and(|p| p["in"] == "query" && p["schema"]["format"] == "date-time"),
                "{path} {name}: {params:?}"
            );
        }
    }
    // Admin and read routes say they take a bearer token; the probes do not.
    assert!(document["paths"]["/v1/jobs"]["post"]["security"].is_array());
    assert!(document["paths"]["/healthz"]["get"]["security"].is_null());
    let request = Request::builder()
        .uri("/docs/")
        .body(Body::empty())
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("swagger-ui"), "{html}");
    // Its assets come from the binary, not from a CDN.
    assert!(!html.contains("https://"), "{html}");
}
