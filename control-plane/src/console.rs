//! The web console: static HTML, CSS and JavaScript compiled into the binary (no CDN, no build
//! step), served under `/console/` on the REST listener. The page holds no data: it signs in
//! with a viewer or admin token and reads everything from the REST API with it.
//!
//! `/console/session` tells the page who a token belongs to (name and role), so it shows the
//! rollout buttons to admins only; the API still checks the role of every change.
//!
//! Docs: `docs/span-metrics.md` (the console section).

use crate::api::{self, Need};
use crate::state::ControlPlane;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;

/// The page: the sign-in form and the empty frame the script fills.
const INDEX_HTML: &str = include_str!("../console/index.html");
/// The console's script.
const CONSOLE_JS: &str = include_str!("../console/console.js");
/// The console's style sheet.
const CONSOLE_CSS: &str = include_str!("../console/console.css");
/// The tab icon.
const FAVICON_SVG: &str = include_str!("../console/favicon.svg");

/// Where the console lives.
pub const PATH: &str = "/console/";

/// Only the console's own files run or load: data the page shows (service and span names come
/// from any client of a gateway) can never become script, and no other site frames the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes, to merge into the REST router.
pub fn router() -> Router<Arc<ControlPlane>> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PATH) }))
        .route("/console", get(|| async { Redirect::to(PATH) }))
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/console/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
        .route("/console/session", get(session))
}

/// A static file with headers that keep it from being sniffed, framed or kept stale after an
/// upgrade.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// `{"name", "role"}` of the bearer token: what the console signs in with. Refused exactly as
/// the REST API refuses a read, with the same error, which the sign-in form shows.
async fn session(State(cp): State<Arc<ControlPlane>>, headers: HeaderMap) -> Response {
    match api::authorize(&cp, &headers, Need::Read) {
        Ok(caller) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({"name": caller.name, "role": caller.role.as_str()})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tokens;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use weir_config::auth::hash_token;
    use weir_config::control_plane::{Backend, Role};

    async fn app() -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = Tokens::new(vec![
            ("ops".into(), Role::Admin, hash_token(b"admin")),
            ("dash".into(), Role::Viewer, hash_token(b"viewer")),
            ("gws".into(), Role::Gateway, hash_token(b"gateway")),
        ]);
        let cp = ControlPlane::open(&Backend::Sqlite(dir.path().join("cp.db")), tokens)
            .await
            .expect("control plane");
        (api::router(cp), dir)
    }

    async fn get(app: &Router, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn serves_the_embedded_files_with_their_types_and_policy() {
        let (app, _dir) = app().await;
        for (path, ty, body) in [
            (PATH, "text/html; charset=utf-8", INDEX_HTML),
            (
                "/console/console.js",
                "text/javascript; charset=utf-8",
                CONSOLE_JS,
            ),
            (
                "/console/console.css",
                "text/css; charset=utf-8",
                CONSOLE_CSS,
            ),
            ("/console/favicon.svg", "image/svg+xml", FAVICON_SVG),
        ] {
            let (status, headers, text) = get(&app, path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(text, body, "{path}");
        }
        for path in ["/", "/console"] {
            let (status, headers, _) = get(&app, path, None).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(headers[header::LOCATION], PATH);
        }
        // The API's own fallback still answers everything else.
        let (status, _, text) = get(&app, "/console/nothing", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(text.contains("no such route"), "{text}");
    }

    #[tokio::test]
    async fn the_session_names_viewer_and_admin_tokens_and_refuses_others_as_the_api_does() {
        let (app, _dir) = app().await;
        let (status, headers, text) = get(&app, "/console/session", Some("admin")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            json!({"name": "ops", "role": "admin"})
        );
        let (_, _, text) = get(&app, "/console/session", Some("viewer")).await;
        assert!(text.contains(r#""role":"viewer""#), "{text}");
        for (token, status, says) in [
            (None, StatusCode::UNAUTHORIZED, "missing bearer token"),
            (
                Some("nope"),
                StatusCode::UNAUTHORIZED,
                "invalid bearer token",
            ),
            (Some("gateway"), StatusCode::FORBIDDEN, "has role gateway"),
        ] {
            let (got, _, text) = get(&app, "/console/session", token).await;
            assert_eq!(got, status, "{token:?}");
            assert!(text.contains(says), "{token:?}: {text}");
            // The same answer as a read of the API.
            let (api_status, _, api_text) = get(&app, "/api/v1/policies", token).await;
            assert_eq!((api_status, api_text), (got, text));
        }
    }
}
