//! The API's OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]` attributes
//! (the same `OpenApiRouter` registers each handler and its description, so a route cannot be
//! served undescribed), served at `/openapi.json` and browsable at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{AppState, internal, jobs, probes, query, stream, views};

/// Where the description is served.
pub(super) const DOCUMENT: &str = "/openapi.json";
/// Where Swagger UI is served (its assets are embedded in the binary).
pub(super) const DOCS: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem",
        description = "Windowed analytics, fresh from the speed layer and exact from the batch layer, \
                       merged per window. Every error is JSON `{\"error\": {\"code\", \"message\"}}`.",
    ),
    tags(
        (name = "views", description = "Rows of views, rollups, coverage and live streams"),
        (name = "jobs", description = "Batch recompute jobs"),
        (name = "sql", description = "Read-only SQL over the views and the archive"),
        (name = "probes", description = "Health, readiness and metrics"),
        (name = "internal", description = "Between Tandem processes: a speed worker's partial state"),
    ),
)]
struct ApiDoc;

/// Every handler, registered with axum and described in one step: the routes and their
/// description.
pub(super) fn documented() -> (axum::Router<AppState>, Document) {
    let (router, mut document) = handlers().split_for_parts();
    Guarded.modify(&mut document);
    (router, document)
}

fn handlers() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(views::list_views))
        .routes(routes!(views::query_view))
        .routes(routes!(views::view_coverage))
        .routes(routes!(stream::stream_view))
        .routes(routes!(jobs::list_jobs, jobs::submit_job))
        .routes(routes!(jobs::get_job, jobs::cancel_job))
        .routes(routes!(query::run_sql))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::render_metrics))
        .routes(routes!(internal::partials_of_view))
}

/// What the front door adds to every route: bearer tokens (when configured) and limits, with
/// their JSON errors. The probes and the description itself need no token.
struct Guarded;

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(ErrorBody::schema()))
                .build(),
        )
        .build()
        .into()
}

impl Modify for Guarded {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .schemas
            .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = matches!(path.as_str(), "/healthz" | "/readyz");
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                };
                if !open {
                    add(
                        "401",
                        "No bearer token, or an unknown one (when tokens are configured)",
                    );
                    add("403", "The token's scope does not allow this route");
                }
                add("408", "The request took longer than `http.request_timeout`");
                add(
                    "413",
                    "The request body is larger than `http.max_body_bytes`",
                );
                add("500", "The server failed; the message says where");
                add(
                    "503",
                    "Too many concurrent requests, or a component is unavailable",
                );
                if !open {
                    operation.security =
                        Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                            "bearer",
                            Vec::<String>::new(),
                        )]);
                }
            }
        }
    }
}
