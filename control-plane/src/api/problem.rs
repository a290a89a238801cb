//! Error responses: RFC 9457 problem documents (`application/problem+json`) with a
//! machine-readable `type`, for every error of the REST API, extractor rejections included.

use crate::state::Error;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of an error response (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong, for a client to act on without parsing prose: an error response's `type`
/// is `urn:weir:problem:<slug>`, its `title` names the kind, its `detail` this occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No valid bearer token (401).
    Unauthorized,
    /// The token's role may not do this (403).
    Forbidden,
    /// The request is not well-formed: body, path or query (400).
    MalformedRequest,
    /// Well-formed, but what it asks for is invalid, e.g. a policy document or target (400).
    Invalid,
    /// What the request names does not exist (404).
    NotFound,
    /// No route has this path (404).
    NoSuchRoute,
    /// The route does not take this method (405).
    MethodNotAllowed,
    /// The request conflicts with the stored state (409).
    Conflict,
    /// The body or the work asked for is too large (413).
    TooLarge,
    /// Too busy now; retry later (503).
    Busy,
    /// This control plane is not configured to serve this, e.g. the service graph without a
    /// `span_metrics` section (503).
    NotConfigured,
    /// Storage failed (500).
    Storage,
    /// Any other failure (the status says which).
    Other,
}

impl Problem {
    /// The last part of the problem type URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::MalformedRequest => "malformed-request",
            Self::Invalid => "invalid",
            Self::NotFound => "not-found",
            Self::NoSuchRoute => "no-such-route",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::TooLarge => "too-large",
            Self::Busy => "busy",
            Self::NotConfigured => "not-configured",
            Self::Storage => "storage",
            Self::Other => "other",
        }
    }

    /// The short, occurrence-independent summary (`title`).
    pub fn title(self) -> &'static str {
        match self {
            Self::Unauthorized => "Missing or invalid bearer token",
            Self::Forbidden => "The token's role does not allow this",
            Self::MalformedRequest => "Malformed request",
            Self::Invalid => "Invalid request",
            Self::NotFound => "Not found",
            Self::NoSuchRoute => "No such route",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflicts with the stored state",
            Self::TooLarge => "Too large",
            Self::Busy => "Busy, retry later",
            Self::NotConfigured => "Not configured on this control plane",
            Self::Storage => "Storage failed",
            Self::Other => "Request failed",
        }
    }

    /// The status this kind of problem is answered with (Other: the caller's).
    fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MalformedRequest | Self::Invalid => StatusCode::BAD_REQUEST,
            Self::NotFound | Self::NoSuchRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy | Self::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage | Self::Other => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem type URI.
    pub fn type_uri(self) -> String {
        format!("urn:weir:problem:{}", self.slug())
    }
}

/// An error response: an RFC 9457 problem document (`application/problem+json` with `type`,
/// `title`, `status` and `detail`).
#[derive(Debug)]
pub struct ApiError {
    problem: Problem,
    status: StatusCode,
    detail: String,
}

impl ApiError {
    /// An error of kind `problem`, with what went wrong this time.
    pub fn new(problem: Problem, detail: impl Into<String>) -> Self {
        Self {
            problem,
            status: problem.status(),
            detail: detail.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let problem = match &e {
            Error::Storage(_) => Problem::Storage,
            Error::Invalid(_) => Problem::Invalid,
            Error::Conflict(_) => Problem::Conflict,
            Error::NotFound(_) => Problem::NotFound,
            Error::TooLarge(_) => Problem::TooLarge,
            Error::Busy(_) => Problem::Busy,
        };
        if problem == Problem::Storage {
            tracing::error!(error = %e, "request failed");
        }
        Self::new(problem, e.to_string())
    }
}

/// The body of an error response, as the OpenAPI document describes it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    /// What kind of failure, for a client to act on: `urn:weir:problem:<slug>` (unauthorized,
    /// forbidden, malformed-request, invalid, not-found, no-such-route, method-not-allowed,
    /// conflict, too-large, busy, storage, other).
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:weir:problem:[a-z-]+$")]
    pub type_uri: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time, and what to do.
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ProblemDocument {
            type_uri: self.problem.type_uri(),
            title: self.problem.title().to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let mut resp = (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], text).into_response();
        match self.problem {
            Problem::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Problem::Busy => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// The largest error body from elsewhere (axum's extractors) rewritten as a problem document.
const MAX_FOREIGN_ERROR_BODY: usize = 64 << 10;

/// Rewrites an error response that is not yet a problem document (an extractor's plain-text
/// rejection, say) into one, so that every error of this API has one shape.
pub async fn problems_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let problem = match status {
        StatusCode::BAD_REQUEST => Problem::MalformedRequest,
        StatusCode::NOT_FOUND => Problem::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Problem::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => Problem::TooLarge,
        StatusCode::SERVICE_UNAVAILABLE => Problem::Busy,
        _ => Problem::Other,
    };
    let text = axum::body::to_bytes(resp.into_body(), MAX_FOREIGN_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    ApiError {
        problem,
        status,
        detail,
    }
    .into_response()
}
