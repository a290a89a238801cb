//! The REST API under `/api/v1` (JSON): policies, rollouts, gateways, the audit log, and the
//! OpenAPI document describing them, generated from these handlers' annotations and the types
//! they take and answer (`openapi.rs`, served at `/api/v1/openapi.json`).
//!
//! Every route needs a bearer token: `viewer` or `admin` to read, `admin` to change anything.
//! The token is checked before the body is read, so a refused request changes nothing.
//! Errors are RFC 9457 problem documents (`application/problem+json`): `type` (a
//! `urn:weir:problem:<slug>` URI a client can branch on), `title`, `status` and `detail`.

mod openapi;
mod problem;

use crate::auth::Caller;
use crate::graph::{self, windows::Window, windows::Windows};
use crate::state::{ControlPlane, Error};
use crate::store::{AuditEntry, GatewayRecord, PolicyMeta, PolicyRecord, Rollout, RolloutOp};
use crate::targeting::Target;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use problem::{ApiError, Problem, ProblemDocument, problems_only};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::control_plane::Role;

/// The most audit entries one request returns.
const AUDIT_MAX: u32 = 10_000;

type AppState = Arc<ControlPlane>;

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
                Problem::Unauthorized,
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
        return Err(ApiError::new(Problem::Unauthorized, why));
    };
    match (caller.role, need) {
        (Role::Admin, _) | (Role::Viewer, Need::Read) => Ok(caller),
        (Role::Viewer, Need::Write) => Err(ApiError::new(
            Problem::Forbidden,
            format!(
                "token `{}` has role viewer: this request changes state and needs an admin token",
                caller.name
            ),
        )),
        (Role::Gateway, _) => Err(ApiError::new(
            Problem::Forbidden,
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
            Problem::TooLarge,
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
            Problem::MalformedRequest,
            format!("request body: {at}{inner}"),
        )
    })
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            Problem::MalformedRequest,
            format!("`{text}` is not a valid {what}: expected a whole number"),
        )
    })
}

/// The body of a policy submission or validation.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DocumentBody {
    /// The policy document, YAML or JSON text (docs/policy.md).
    document: String,
}

/// The body that starts a rollout.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRollout {
    /// The stored policy version to release.
    #[schema(minimum = 1)]
    version: u64,
    /// Which gateways, in which stages; every gateway at once when left out.
    #[serde(default)]
    target: Option<Target>,
}

/// `/healthz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
}

/// Stored policy versions.
#[derive(Serialize, utoipa::ToSchema)]
struct PolicyList {
    /// Oldest first, without their documents.
    policies: Vec<PolicyMeta>,
}

/// What `POST /policies` answers: the stored version, and whether this very document was
/// stored already (then nothing changed and the answer is 200 instead of 201).
#[derive(Serialize, utoipa::ToSchema)]
struct Submitted {
    #[serde(flatten)]
    meta: PolicyMeta,
    /// True when this very text was stored already: nothing changed.
    unchanged: bool,
}

/// The verdict on a document.
#[derive(Serialize, utoipa::ToSchema)]
struct Validation {
    /// Whether the gateway's validator accepts it.
    valid: bool,
    /// Its `version:`, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// `yaml` or `json`, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    /// `key.path: reason`, when invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A diff between two versions.
#[derive(Serialize, utoipa::ToSchema)]
struct Diff {
    /// The old version.
    from: u64,
    /// The new version.
    to: u64,
    /// A unified diff, headers `--- version A` / `+++ version B`.
    diff: String,
}

/// Every rollout.
#[derive(Serialize, utoipa::ToSchema)]
struct RolloutList {
    /// Newest first.
    rollouts: Vec<Rollout>,
}

/// A gateway with the version it should run now.
#[derive(Serialize, utoipa::ToSchema)]
struct GatewayView {
    #[serde(flatten)]
    record: GatewayRecord,
    /// The version the rollouts say it should run.
    desired_version: Option<u64>,
}

/// Every gateway seen.
#[derive(Serialize, utoipa::ToSchema)]
struct GatewayList {
    /// Every gateway the control plane has a record of.
    gateways: Vec<GatewayView>,
}

/// Audit log entries.
#[derive(Serialize, utoipa::ToSchema)]
struct AuditLog {
    /// Newest first.
    entries: Vec<AuditEntry>,
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
                Problem::NoSuchRoute,
                "no such route; see /api/v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Problem::MethodNotAllowed,
                "method not allowed on this route; see /api/v1/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn(problems_only))
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

/// Prometheus metrics of this process; no token needed, like `/healthz`.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses(
    (status = 200, description = "The Prometheus text exposition.", body = String, content_type = "text/plain"),
    (status = 404, description = "No metrics recorder in this process.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn prometheus_metrics(State(cp): State<AppState>) -> Response {
    match cp.render_metrics() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => {
            ApiError::new(Problem::NotFound, "no metrics recorder in this process").into_response()
        }
    }
}

/// Liveness and storage reachability; no token needed. The storage check is reused for a
/// second, so probes cost at most one query a second.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses(
    (status = 200, description = "Storage answers.", body = Health),
    (status = 500, description = "Storage does not answer.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn healthz(State(cp): State<AppState>) -> ApiResult {
    cp.health().await?;
    ok(StatusCode::OK, Health { status: "ok" })
}

/// This document; no token needed.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()), responses(
    (status = 200, description = "The OpenAPI 3.1 document.", body = Object),
))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

/// Every stored version, oldest first, without documents.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", responses(
    (status = 200, description = "The versions.", body = PolicyList),
    (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn list_policies(State(cp): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    ok(
        StatusCode::OK,
        PolicyList {
            policies: cp.policies().await?,
        },
    )
}

/// Submit a new policy version. It is validated with the gateway's own validator, and its
/// `version:` must be greater than every stored version; the same text again changes nothing
/// (200, `unchanged: true`). Storing releases nothing: start a rollout for that.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = DocumentBody, responses(
    (status = 201, description = "Stored as a new version.", body = Submitted),
    (status = 200, description = "This very document is stored already: nothing changed.", body = Submitted),
    (status = 400, description = "The body is malformed, or the document invalid: the detail names the key path and the reason.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 401, description = "Missing or invalid bearer token; nothing changed.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A viewer or gateway token; nothing changed.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 409, description = "The version is not greater than the latest stored one (and the text differs from that version's); the detail names the latest.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 413, description = "The body is larger than 4 MiB, or the document larger than 1 MiB.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 503, description = "Too many validations at once; retry later.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn submit_policy(State(cp): State<AppState>, headers: HeaderMap, request: Body) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    let doc: DocumentBody = body(request).await?;
    match cp.submit_policy(&doc.document, &caller).await {
        Ok(meta) => {
            tracing::info!(
                version = meta.version,
                by = caller.name,
                "policy version stored"
            );
            ok(
                StatusCode::CREATED,
                Submitted {
                    meta,
                    unchanged: false,
                },
            )
        }
        // Its version is taken: when by this very text, applying it again changes nothing
        // (what `kubectl apply` of an unchanged object says); else the conflict stands.
        Err(Error::Conflict(why)) => {
            let sha = hex::encode(Sha256::digest(doc.document.as_bytes()));
            match cp.policies().await?.into_iter().find(|p| p.sha256 == sha) {
                Some(meta) => ok(
                    StatusCode::OK,
                    Submitted {
                        meta,
                        unchanged: true,
                    },
                ),
                None => Err(Error::Conflict(why).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Validate a document with the gateway's validator, storing nothing.
#[utoipa::path(post, path = "/api/v1/policies/validate", tag = "policies", request_body = DocumentBody, responses(
    (status = 200, description = "The verdict.", body = Validation),
    (status = 400, description = "The body is malformed.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 413, description = "The body is larger than 4 MiB, or the document larger than 1 MiB.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 503, description = "Too many validations at once; retry later.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn validate_policy(
    State(cp): State<AppState>,
    headers: HeaderMap,
    request: Body,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let doc: DocumentBody = body(request).await?;
    let verdict = match cp.validate(&doc.document).await {
        Ok(v) => Validation {
            valid: true,
            version: Some(v.version),
            format: Some(v.format),
            error: None,
        },
        Err(Error::Invalid(why)) => Validation {
            valid: false,
            version: None,
            format: None,
            error: Some(why),
        },
        // Too large or too busy is not a verdict on the document.
        Err(e) => return Err(e.into()),
    };
    ok(StatusCode::OK, verdict)
}

/// One stored version, with its document as submitted.
#[utoipa::path(get, path = "/api/v1/policies/{version}", tag = "policies",
    params(("version" = u64, Path, description = "The policy version.")),
    responses(
        (status = 200, description = "The version.", body = PolicyRecord),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such version.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn get_policy(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let version: u64 = number(&version, "policy version")?;
    ok(StatusCode::OK, cp.policy(version).await?)
}

/// A unified diff from one version to another.
#[utoipa::path(get, path = "/api/v1/policies/{from}/diff/{to}", tag = "policies",
    params(
        ("from" = u64, Path, description = "The old version."),
        ("to" = u64, Path, description = "The new version."),
    ),
    responses(
        (status = 200, description = "The diff.", body = Diff),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such version.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "The two documents are too large to diff here.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Too many diffs at once; retry later.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn diff_policies(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path((from, to)): Path<(String, String)>,
) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    let from: u64 = number(&from, "policy version")?;
    let to: u64 = number(&to, "policy version")?;
    let diff = cp.diff(from, to).await?;
    ok(StatusCode::OK, Diff { from, to, diff })
}

/// Every rollout, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", responses(
    (status = 200, description = "The rollouts.", body = RolloutList),
    (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn list_rollouts(State(cp): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&cp, &headers, Need::Read)?;
    ok(
        StatusCode::OK,
        RolloutList {
            rollouts: cp.rollouts().await?,
        },
    )
}

/// Start a rollout of a stored version: to every gateway at once, or by label selector,
/// stable-hash percentage, instance list, or stages of these.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts", request_body = StartRollout, responses(
    (status = 201, description = "Started.", body = Rollout),
    (status = 400, description = "The body is malformed or the target invalid (the key is named).", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 404, description = "The version is not stored: submit it first.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 409, description = "The version is already released to every gateway.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 413, description = "The body is larger than 4 MiB.", body = ProblemDocument, content_type = "application/problem+json"),
))]
async fn start_rollout(State(cp): State<AppState>, headers: HeaderMap, request: Body) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    let req: StartRollout = body(request).await?;
    let rollout = cp
        .start_rollout(req.version, req.target.unwrap_or_default(), &caller)
        .await?;
    ok(StatusCode::CREATED, rollout)
}

/// One rollout.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout id.")),
    responses(
        (status = 200, description = "The rollout.", body = Rollout),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
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

/// Release the next stage (after the last: every gateway, and the rollout is completed).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/promote", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout id.")),
    responses(
        (status = 200, description = "The rollout after the change.", body = Rollout),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not active (paused, completed or rolled back).", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn promote(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Promote).await
}

/// Hold the rollout at its current stage.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout id.")),
    responses(
        (status = 200, description = "The rollout after the change.", body = Rollout),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not active.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn pause(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Pause).await
}

/// Undo a pause.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout id.")),
    responses(
        (status = 200, description = "The rollout after the change.", body = Rollout),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Not paused.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn resume(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Resume).await
}

/// Return every gateway the rollout reached to its previous version.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/rollback", tag = "rollouts",
    params(("id" = i64, Path, description = "The rollout id.")),
    responses(
        (status = 200, description = "The rollout after the change.", body = Rollout),
        (status = 400, description = "Not a whole number.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such rollout.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "Rolled back already, superseded, or nothing to return to.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn rollback(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(cp, headers, id, RolloutOp::Rollback).await
}

/// Every gateway seen: labels, versions, last ACK/NACK, last seen, and the version it should
/// run now.
#[utoipa::path(get, path = "/api/v1/gateways", tag = "gateways", responses(
    (status = 200, description = "The gateways.", body = GatewayList),
    (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
    (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
))]
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
    ok(StatusCode::OK, GatewayList { gateways })
}

/// Remove a gateway's record (audited as `gateway.delete`).
#[utoipa::path(delete, path = "/api/v1/gateways/{id}", tag = "gateways",
    params(("id" = String, Path, description = "The gateway's instance id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A viewer or gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such gateway.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "It has an open watch stream.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
async fn delete_gateway(
    State(cp): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = authorize(&cp, &headers, Need::Write)?;
    cp.delete_gateway(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The audit log, newest first: every change, who made it (the token's configured name and
/// role) and when.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many entries (default 100).")),
    responses(
        (status = 200, description = "The entries.", body = AuditLog),
        (status = 400, description = "A bad limit.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
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
                    Problem::MalformedRequest,
                    format!("limit: {l} is out of range: give 1 to {AUDIT_MAX}"),
                ));
            }
            l
        }
    };
    ok(
        StatusCode::OK,
        AuditLog {
            entries: cp.audit_log(limit).await?,
        },
    )
}

/// The `window` query parameter: `1m` (default), `5m` or `15m`.
fn window(query: &HashMap<String, String>) -> Result<Window, ApiError> {
    match query.get("window") {
        None => Ok(Window::OneMinute),
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::new(
                Problem::MalformedRequest,
                format!("window: `{w}` is not a window: give 1m, 5m or 15m"),
            )
        }),
    }
}

/// The span metrics windows, or 503 when this control plane reads none.
fn span_windows(cp: &ControlPlane) -> Result<&Windows, ApiError> {
    cp.span_metrics().ok_or_else(|| {
        ApiError::new(
            Problem::NotConfigured,
            "this control plane reads no span metrics: add a `span_metrics` section (brokers, topic) to its config",
        )
    })
}

/// The service graph from the gateways' span metrics: every service with its success rate
/// over the last 1, 5 and 15 minutes, and the edges (caller to callee) with calls in the
/// window, their health and latency.
#[utoipa::path(get, path = "/api/v1/graph", tag = "graph",
    params(("window" = Option<String>, Query, description = "1m (default), 5m or 15m.")),
    responses(
        (status = 200, description = "The graph.", body = graph::Graph),
        (status = 400, description = "A bad window.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "This control plane reads no span metrics.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
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

/// One service's operations (rate, error rate, p50/p95/p99) and its callers and callees.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "graph",
    params(
        ("name" = String, Path, description = "The service.name."),
        ("window" = Option<String>, Query, description = "1m (default), 5m or 15m."),
    ),
    responses(
        (status = 200, description = "The service.", body = graph::ServiceView),
        (status = 400, description = "A bad window.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A gateway token.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No span metrics of that service in the last 15 minutes.", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "This control plane reads no span metrics.", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
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
            Problem::NotFound,
            format!("no span metrics of service `{name}` in the last 15 minutes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(openapi::document()).expect("the document is JSON");
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
