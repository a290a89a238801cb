//! CORS on OTLP/HTTP, so browser SDKs can send straight to the gateway: the Collector's `cors`
//! section (`allowed_origins` with one `*` wildcard each, `allowed_headers`, `max_age`),
//! answered as the Fetch standard asks. It wraps every OTLP/HTTP route, outside
//! authentication: a browser's preflight carries no credentials.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! 204, with the `Access-Control-Allow-*` headers only when the origin, the method (`POST`)
//! and every requested header are allowed; other requests pass through and, from an allowed
//! origin, their response (errors too) carries `Access-Control-Allow-Origin`.

use axum::body::Body;
use axum::response::Response;
use futures::future::{Either, Ready, ready};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use weir_config::gateway::Cors;

/// Request headers a browser may always send (the Collector allows these implicitly).
const ALWAYS_ALLOWED_HEADERS: [&str; 5] = [
    "accept",
    "accept-language",
    "content-type",
    "content-language",
    "origin",
];

/// What a preflight response varies by, so caches keep answers per origin and request.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// One entry of `allowed_origins`.
#[derive(Debug)]
enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// An origin, compared without regard to case.
    Exact(String),
    /// `prefix*suffix`, e.g. `https://*.example.com`.
    Wildcard { prefix: String, suffix: String },
}

impl OriginPattern {
    fn parse(pattern: &str) -> Self {
        let p = pattern.trim().to_ascii_lowercase();
        if p == "*" {
            return Self::Any;
        }
        match p.split_once('*') {
            Some((prefix, suffix)) => Self::Wildcard {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            },
            None => Self::Exact(p),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o == origin,
            Self::Wildcard { prefix, suffix } => {
                origin.len() > prefix.len() + suffix.len()
                    && origin.starts_with(prefix.as_str())
                    && origin.ends_with(suffix.as_str())
            }
        }
    }
}

/// The CORS rules of the OTLP/HTTP listener, compiled from its `cors` section.
#[derive(Debug)]
pub struct CorsPolicy {
    origins: Vec<OriginPattern>,
    /// Lower-case names; `None`: any header (`*`).
    allowed_headers: Option<Vec<String>>,
    max_age: Option<HeaderValue>,
}

impl CorsPolicy {
    /// The policy of a (validated) `cors` section.
    pub fn new(cors: &Cors) -> Self {
        let any_header = cors.allowed_headers.iter().any(|h| h == "*");
        Self {
            origins: cors
                .allowed_origins
                .iter()
                .map(|o| OriginPattern::parse(o))
                .collect(),
            allowed_headers: (!any_header).then(|| {
                ALWAYS_ALLOWED_HEADERS
                    .iter()
                    .map(|h| h.to_string())
                    .chain(cors.allowed_headers.iter().map(|h| h.to_ascii_lowercase()))
                    .collect()
            }),
            max_age: cors.max_age.map(HeaderValue::from),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, when allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        let pattern = self.origins.iter().find(|p| p.matches(&text))?;
        Some(match pattern {
            // As the Collector (rs/cors): `*` answers `*`, a listed origin answers itself.
            OriginPattern::Any => HeaderValue::from_static("*"),
            _ => origin.clone(),
        })
    }

    /// Whether every header of an `Access-Control-Request-Headers` value is allowed.
    fn headers_allowed(&self, requested: &str) -> bool {
        let Some(allowed) = &self.allowed_headers else {
            return true;
        };
        requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }

    /// The answer to a preflight request.
    fn preflight(&self, req: &Request<impl Sized>) -> Response {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let headers = resp.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        let h = req.headers();
        let Some(origin) = h.get(header::ORIGIN).and_then(|o| self.allow_origin(o)) else {
            return resp;
        };
        let method_ok = h
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| m.as_bytes() == b"POST");
        let requested = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let requested_ok = match requested.map(HeaderValue::to_str) {
            None => true,
            Some(Ok(list)) => self.headers_allowed(list),
            Some(Err(_)) => false,
        };
        if !method_ok || !requested_ok {
            return resp;
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        if let Some(list) = requested {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, list.clone());
        }
        if let Some(age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        resp
    }
}

/// Adds CORS to the OTLP/HTTP routes.
#[derive(Clone, Debug)]
pub struct CorsLayer {
    policy: Arc<CorsPolicy>,
}

impl CorsLayer {
    /// A layer applying `policy`.
    pub fn new(policy: Arc<CorsPolicy>) -> Self {
        Self { policy }
    }
}

impl<Inner> Layer<Inner> for CorsLayer {
    type Service = CorsService<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        CorsService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Answers preflights and marks responses to allowed origins.
#[derive(Clone, Debug)]
pub struct CorsService<Inner> {
    inner: Inner,
    policy: Arc<CorsPolicy>,
}

impl<Inner, B> Service<Request<B>> for CorsService<Inner>
where
    Inner: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = Inner::Error;
    type Future = Either<Ready<Result<Response, Inner::Error>>, CorsFuture<Inner::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Either::Right(CorsFuture {
                inner: self.inner.call(req),
                allow_origin: None,
                vary: false,
            });
        };
        let is_preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            return Either::Left(ready(Ok(self.policy.preflight(&req))));
        }
        let allow_origin = self.policy.allow_origin(origin);
        Either::Right(CorsFuture {
            inner: self.inner.call(req),
            allow_origin,
            vary: true,
        })
    }
}

pin_project! {
    /// The inner response, with `Access-Control-Allow-Origin` when the origin is allowed.
    pub struct CorsFuture<F> {
        #[pin]
        inner: F,
        allow_origin: Option<HeaderValue>,
        // The request had an Origin: the response depends on it.
        vary: bool,
    }
}

impl<F, E> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        if *this.vary {
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = this.allow_origin.take() {
            resp.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The header names this module sets, for tests that check none leak.
#[cfg(test)]
const CORS_RESPONSE_HEADERS: [http::header::HeaderName; 4] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], headers: &[&str]) -> CorsPolicy {
        CorsPolicy::new(&Cors {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_headers: headers.iter().map(|s| s.to_string()).collect(),
            max_age: Some(600),
        })
    }

    fn preflight(p: &CorsPolicy, origin: &str, method: &str, headers: Option<&str>) -> Response {
        let mut req = Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/traces")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method);
        if let Some(h) = headers {
            req = req.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        p.preflight(&req.body(()).unwrap())
    }

    fn has_cors_headers(resp: &Response) -> bool {
        CORS_RESPONSE_HEADERS
            .iter()
            .any(|h| resp.headers().contains_key(h))
    }

    #[test]
    fn wildcard_origins_match_subdomains_only() {
        let p = policy(&["https://*.example.com", "http://localhost:3000"], &[]);
        let ok = |o: &str| p.allow_origin(&HeaderValue::from_str(o).unwrap()).is_some();
        assert!(ok("https://app.example.com"));
        assert!(ok("https://a.b.example.com"));
        assert!(ok("HTTPS://App.Example.com"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("https://example.com"));
        assert!(!ok("https://evil-example.com"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com.evil.net"));
        assert!(!ok("http://localhost:3001"));
    }

    #[test]
    fn an_allowed_preflight_gets_the_allow_headers() {
        let p = policy(&["https://*.example.com"], &["x-tenant"]);
        let resp = preflight(
            &p,
            "https://app.example.com",
            "POST",
            Some("content-type, X-Tenant"),
        );
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, X-Tenant"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
    }

    #[test]
    fn a_refused_preflight_gets_no_cors_headers() {
        let p = policy(&["https://*.example.com"], &[]);
        for resp in [
            preflight(&p, "https://evil.net", "POST", None),
            preflight(&p, "https://app.example.com", "PUT", None),
            preflight(&p, "https://app.example.com", "POST", Some("x-secret")),
        ] {
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            assert!(!has_cors_headers(&resp), "{:?}", resp.headers());
        }
        let any = policy(&["*"], &["*"]);
        let resp = preflight(&any, "https://evil.net", "POST", Some("x-secret"));
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
