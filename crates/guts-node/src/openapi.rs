//! The REST API's router and its OpenAPI description, from one source
//! (ADR 0020): every `/api/v1` route is registered through utoipa-axum's
//! [`OpenApiRouter`] from its handler's `#[utoipa::path]`, so a route
//! cannot exist undocumented, nor a documented one be missing. The
//! description is serialized once, when the router is built, and served at
//! `GET /api/v1/openapi.json`.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::Shared;

/// The body of every REST error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Guts node REST API",
        description = "The REST API of a Guts node: repositories, their signed identity documents \
            and signed-update logs, seeding over peer-to-peer replication, maintenance, and a \
            stream of ref updates (server-sent events). Errors are JSON `{\"error\": \"...\"}`. \
            Reads are public; changes to the node need the operator token (`Authorization: Bearer`), \
            and changes to a repository the operator's token or an action its delegates signed \
            (`Authorization: GutsAction`). Git itself is served by smart HTTP at `/OWNER/NAME.git`, \
            outside this API.",
        license(name = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "repos", description = "Repositories"),
        (name = "identity", description = "Identity documents and signed-update logs"),
        (name = "p2p", description = "Seeding over peer-to-peer replication"),
        (name = "node", description = "The node itself"),
        (name = "events", description = "Ref updates as server-sent events"),
    )
)]
struct ApiDoc;

/// The two credentials of the API.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token, from DATA_DIR/operator.token (the local CLI sends it)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "gutsAction",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`GutsAction <base64 SignedAction>`: the action, over a fresh nonce \
                 (`GET .../nonce`), signed by enough of the repository's delegates \
                 (`guts-node repo` does it)",
            ))),
        );
    }
}

/// The serialized description, shared by the handler.
#[derive(Clone)]
struct Description(Arc<[u8]>);

/// `GET /api/v1/openapi.json`: this description.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "node",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object, content_type = "application/json"))
)]
async fn openapi_json(Extension(doc): Extension<Description>) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.to_vec()).into_response()
}

/// The REST API's routes, `/api/v1/openapi.json` among them.
pub fn api() -> Router<Shared> {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::rest::routes())
        .merge(crate::maintenance::routes())
        .routes(routes!(crate::http::health))
        .routes(routes!(crate::events::events))
        .routes(routes!(openapi_json))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let json = serde_json::to_vec(&doc).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the OpenAPI description");
        br#"{"error": "the OpenAPI description could not be serialized"}"#.to_vec()
    });
    router.layer(Extension(Description(json.into())))
}
