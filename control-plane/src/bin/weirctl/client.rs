//! The HTTP client of the REST API: bearer token, private CA, and errors read from the API's
//! problem documents (RFC 9457).

use anyhow::Context as _;
use serde_json::Value;
use std::path::PathBuf;

/// Where and how to reach the control plane, after flags, environment and context.
pub struct Settings {
    /// The REST API's base URL.
    pub server: String,
    /// The bearer token.
    pub token: Option<String>,
    /// A PEM CA certificate to trust.
    pub ca_file: Option<PathBuf>,
}

/// An error the API answered with.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The problem type's slug (`conflict`, `not-found`, ...), when the body was a problem.
    pub kind: Option<String>,
    /// What went wrong: the problem's `detail`, else the body's text.
    pub detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Some(kind) => write!(f, "(HTTP {} {kind}): {}", self.status.as_u16(), self.detail),
            None => write!(f, "(HTTP {}): {}", self.status.as_u16(), self.detail),
        }
    }
}

impl std::error::Error for ApiError {}

/// A client of one control plane.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for `settings` (the CA file is read now).
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("weirctl/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder.build().context("building the HTTP client")?,
            base: settings.server.trim_end_matches('/').to_string(),
            token: settings.token.clone(),
        })
    }

    /// The status and JSON body of a successful request under `/api/v1`; an [`ApiError`]
    /// otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let problem = value.as_ref();
            let detail = problem
                .and_then(|v| v.get("detail"))
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_string(), str::to_string);
            let kind = problem
                .and_then(|v| v.get("type"))
                .and_then(Value::as_str)
                .map(|t| t.rsplit(':').next().unwrap_or(t).to_string());
            return Err(ApiError {
                status,
                kind,
                detail,
            }
            .into());
        }
        let value = value
            .with_context(|| format!("the server answered {status} with something not JSON"))?;
        Ok((status, value))
    }

    /// GET, the JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.1)
    }

    /// POST, the JSON body.
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        Ok(self.call(reqwest::Method::POST, path, body).await?.1)
    }
}
