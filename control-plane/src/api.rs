//! The REST API under `/api/v1` (JSON): policies, rollouts, gateways, the audit log, and the
//! OpenAPI document describing them (`openapi.json`, served at `/api/v1/openapi.json`).
//!
//! Every route needs a bearer token: `viewer` or `admin` to read, `admin` to change anything.
//! The token is checked before the body is read, so a refused request changes nothing.
//! Errors are `{"error": "..."}` with the status the failure calls for.

use crate::auth::Caller;
use crate::graph::{self, windows::Window, windows::Windows};
use crate::state::{ControlPlane, Error};
use crate::store::{GatewayRecord, RolloutOp};
use crate::targeting::Target;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::control_plane::Role;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The most audit entries one request returns.
const AUDIT_MAX: u32 = 10_000;

type AppState = Arc<ControlPlane>;

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: Serialize>(status: StatusCode, body: T) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// What a route needs from the caller's token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Write,
}

/// The caller of a request, or 401 (no valid token) / 403 (a role that may not do this).
pub(crate) fn authorize(
    cp: &ControlPlane,
    headers: &HeaderMap,
    need: Need,
) -> Result<Caller, ApiError> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the authorization header is not valid text",
            )
        })?),
    };
    let Some(caller) = cp.tokens().identify_header(header) else {
        let why = if header.is_none() {
            "missing bearer token: send `authorization: Bearer <token>`"
        } else {
            "invalid bearer token"
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
    };
    match (caller.role, need) {
        (Role::Admin, _) | (Role::Viewer, Need::Read) => Ok(caller),
        (Role::Viewer, Need::Write) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has role viewer: this request changes state and needs an admin token",
                caller.name
            ),
        )),
        (Role::Gateway, _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` has role gateway: it opens the watch stream; the REST API needs a viewer or admin token",
                caller.name
            ),
        )),
    }
}

/// The largest request body accepted (policy documents are far smaller).
const MAX_BODY: usize = 4 << 20;

/// Reads and parses a JSON body, naming the key at fault; read only after the token was
/// checked, so a refused request costs no body read.
async fn body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: larger than {MAX_BODY} bytes, or cut short"),
        )
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {at}{inner}"),
        )
    })
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{text}` is not a valid {what}: expected a whole number"),
        )
    })
}

/// The body of a policy submission or validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentBody {
    /// The policy document, YAML or JSON text.
    document: String,
}

/// The body that starts a rollout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRollout {
    version: u64,
    #[serde(default)]
    target: Option<Target>,
}

/// Every route: path, method and handler. The router is built from this list, and a test
/// checks that the OpenAPI document describes each entry.
pub fn routes() -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    vec![
        ("/healthz", Method::GET, get(healthz)),
        ("/metrics", Method::GET, get(prometheus_metrics)),
        ("/api/v1/openapi.json", Method::GET, get(openapi)),
        ("/api/v1/policies", Method::GET, get(list_policies)),
        ("/api/v1/policies", Method::POST, post(submit_policy)),
        (
            "/api/v1/policies/validate",
            Method::POST,
            post(validate_policy),
        ),
        ("/api/v1/policies/{version}", Method::GET, get(get_policy)),
        (
            "/api/v1/policies/{from}/diff/{to}",
            Method::GET,
            get(diff_policies),
        ),
        ("/api/v1/rollouts", Method::GET, get(list_rollouts)),
        ("/api/v1/rollouts", Method::POST, post(start_rollout)),
        ("/api/v1/rollouts/{id}", Method::GET, get(get_rollout)),
        ("/api/v1/rollouts/{id}/promote", Method::POST, post(promote)),
        ("/api/v1/rollouts/{id}/pause", Method::POST, post(pause)),
        ("/api/v1/rollouts/{id}/resume", Method::POST, post(resume)),
        (
            "/api/v1/rollouts/{id}/rollback",
            Method::POST,
            post(rollback),
        ),
        ("/api/v1/gateways", Method::GET, get(list_gateways)),
        (
            "/api/v1/gateways/{id}",
            Method::DELETE,
            delete(delete_gateway),
        ),
        ("/api/v1/audit", Method::GET, get(audit)),
        ("/api/v1/graph", Method::GET, get(span_graph)),
        ("/api/v1/services/{name}", Method::GET, get(span_service)),
    ]
}

/// The REST router over `cp`, with the web console's pages (`console.rs`).
pub fn router(cp: Arc<ControlPlane>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (path, _, handler) in routes() {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(handler),
            None => by_path.push((path, handler)),
        }
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        // Each route records its own template, so `route` has one value per route rather than
        // one per URL a client made up.
        let handler = handler.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                count_request(path, req, next)
            },
        ));
        router = router.route(path, handler);
    }
    router
        .merge(crate::console::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; see /api/v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route; see /api/v1/openapi.json",
            )
        })
        .with_state(cp)
}

/// Counts a request in `weir_cp_http_requests_total{route, method, status}` and times it in
/// `weir_cp_http_request_duration_seconds{route, method}`.
async fn count_request(
    route: &'static str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!("weir_cp_http_request_duration_seconds", "route" => route, "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("weir_cp_http_requests_total", "route" => route, "method" => method, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

async fn prometheus_metrics(State(cp): State<AppState>) -> Response {
    match cp.render_metrics() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "no metrics recorder in this process")
            .into_response(),
    }
}

async fn healthz(State(cp): State<AppState>) -> ApiResult {
    cp.health().await?;
    ok(StatusCode::OK, json!({"status": "ok"}))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_policies(State(cp): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    ok(StatusCode::OK, json!({"policies": cp.policies().await?}))
}

async fn submit_policy(State(cp): State<AppState>, headers: HeaderMap, request: Body) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    let doc: DocumentBody = body(request).await?;
    let meta = cp.submit_policy(&doc.document, &caller).await?;
    tracing::info!(
        version = meta.version,
        by = caller.name,
        "policy version stored"
    );
    ok(StatusCode::CREATED, meta)
}

async fn validate_policy(
    State(cp): State<AppState>,
    headers: HeaderMap,
    request: Body,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let doc: DocumentBody = body(request).await?;
    match cp.validate(&doc.document).await {
        Ok(v) => ok(
            StatusCode::OK,
            json!({"valid": true, "version": v.version, "format": v.format}),
        ),
        Err(Error::Invalid(why)) => ok(StatusCode::OK, json!({"valid": false, "error": why})),
        // Too large or too busy is not a verdict on the document.
        Err(e) => Err(e.into()),
    }
}

async fn get_policy(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let version: u64 = number(&version, "policy version")?;
    ok(StatusCode::OK, cp.policy(version).await?)
}

async fn diff_policies(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path((from, to)): Path<(String, String)>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let from: u64 = number(&from, "policy version")?;
    let to: u64 = number(&to, "policy version")?;
    let diff = cp.diff(from, to).await?;
    ok(
        StatusCode::OK,
        json!({"from": from, "to": to, "diff": diff}),
    )
}

async fn list_rollouts(State(cp): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    ok(StatusCode::OK, json!({"rollouts": cp.rollouts().await?}))
}

async fn start_rollout(State(cp): State<AppState>, headers: HeaderMap, request: Body) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    let req: StartRollout = body(request).await?;
    let rollout = cp
        .start_rollout(req.version, req.target.unwrap_or_default(), &caller)
        .await?;
    ok(StatusCode::CREATED, rollout)
}

async fn get_rollout(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let id: i64 = number(&id, "rollout id")?;
    ok(StatusCode::OK, cp.rollout(id).await?)
}

async fn change(cp: AppState, headers: HeaderMap, id: String, op: RolloutOp) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    let id: i64 = number(&id, "rollout id")?;
    ok(StatusCode::OK, cp.change_rollout(id, op, &caller).await?)
}

async fn promote(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Promote).await
}

async fn pause(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Pause).await
}

async fn resume(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Resume).await
}

async fn rollback(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Rollback).await
}

/// A gateway with the version it should run now.
#[derive(Serialize)]
struct GatewayView {
    #[serde(flatten)]
    record: GatewayRecord,
    desired_version: Option<u64>,
}

async fn list_gateways(State(cp): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let gateways: Vec<GatewayView> = cp
        .gateways()
        .await?
        .into_iter()
        .map(|(record, desired_version)| GatewayView {
            record,
            desired_version,
        })
        .collect();
    ok(StatusCode::OK, json!({"gateways": gateways}))
}

async fn delete_gateway(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    cp.delete_gateway(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn audit(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => {
            let l: u32 = number(l, "limit")?;
            if l == 0 || l > AUDIT_MAX {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit: {l} is out of range: give 1 to {AUDIT_MAX}"),
                ));
            }
            l
        }
    };
    ok(
        StatusCode::OK,
        json!({"entries": cp.audit_log(limit).await?}),
    )
}

/// The `window` query parameter: `1m` (default), `5m` or `15m`.
fn window(query: &HashMap<String, String>) -> Result<Window, ApiError> {
    match query.get("window") {
        None => Ok(Window::OneMinute),
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("window: `{w}` is not a window: give 1m, 5m or 15m"),
            )
        }),
    }
}

/// The span metrics windows, or 503 when this control plane reads none.
fn span_windows(cp: &ControlPlane) -> Result<&Windows, ApiError> {
    cp.span_metrics().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this control plane reads no span metrics: add a `span_metrics` section (brokers, topic) to its config",
        )
    })
}

async fn span_graph(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let window = window(&query)?;
    let windows = span_windows(&cp)?;
    ok(
        StatusCode::OK,
        graph::graph(windows, window, graph::now_secs()),
    )
}

async fn span_service(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let window = window(&query)?;
    let windows = span_windows(&cp)?;
    match graph::service(windows, &name, window, graph::now_secs()) {
        Some(view) => ok(StatusCode::OK, view),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no span metrics of service `{name}` in the last 15 minutes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.")),
            Some(true)
        );
        let paths = doc["paths"].as_object().expect("paths");
        let routes = routes();
        for (path, method, _) in &routes {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("openapi.json lacks path {path}"))
                [method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "openapi.json lacks {method} {path}");
            assert!(op["responses"].is_object(), "{method} {path}: no responses");
        }
        // And describes nothing the router does not serve.
        for (path, ops) in paths {
            for method in ops.as_object().expect("path item").keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    routes
                        .iter()
                        .any(|(p, m, _)| p == path && m.as_str().eq_ignore_ascii_case(method)),
                    "openapi.json describes {method} {path}, which the router does not serve"
                );
            }
        }
    }
}
