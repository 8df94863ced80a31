//! Prometheus metrics: the recorder, the request middleware, `/metrics`, and the helpers
//! the endpoints call. Metric names:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `authstore_http_requests_total` | counter | `route`, `method`, `status` |
//! | `authstore_http_request_duration_seconds` | histogram | `route` |
//! | `authstore_tokens_issued_total` | counter | `grant_type` |
//! | `authstore_tokens_validated_total` | counter | `result` (`active`, `inactive`) |
//! | `authstore_tokens_revoked_total` | counter | `kind` (`token`, `grant`) |
//! | `authstore_replay_detected_total` | counter | `kind` (`code`, `refresh_token`) |
//! | `authstore_logins_total` | counter | `result` (`success`, `failure`, `locked`, `rate_limited`, `second_factor`: a right password that now needs the second factor) |
//! | `authstore_cleanup_runs_total` | counter | `result` (`ok`, `error`) |
//! | `authstore_cleanup_deleted_total` | counter | `kind` |

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once. `None` when another recorder was
/// installed first (the application's own): metrics then go there.
pub(crate) fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed: /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// Middleware: counts each request and its latency by route template (never by URI).
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>().map(|p| p.as_str()));
    // Standard methods only: a client can invent any method name, and each would be a new
    // series kept forever.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = status_label(resp.status());
    metrics::histogram!("authstore_http_request_duration_seconds", "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("authstore_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    resp
}

/// The `route` label: the route template, borrowed (no allocation per request) for the
/// server's own routes.
fn route_label(matched: Option<&str>) -> SharedString {
    use crate::paths::*;
    const KNOWN: [&str; 12] = [
        METADATA,
        AUTHORIZE,
        LOGIN,
        LOGIN_OTP,
        CONSENT,
        TOKEN,
        INTROSPECT,
        REVOKE,
        HEALTHZ,
        READYZ,
        METRICS,
        "unmatched",
    ];
    let route = matched.unwrap_or("unmatched");
    match KNOWN.iter().find(|k| **k == route) {
        Some(k) => SharedString::const_str(k),
        None => SharedString::from(route.to_owned()),
    }
}

/// The `status` label, borrowed for the statuses the server answers with.
fn status_label(status: StatusCode) -> SharedString {
    const KNOWN: [(u16, &str); 17] = [
        (200, "200"),
        (204, "204"),
        (302, "302"),
        (303, "303"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (503, "503"),
        (504, "504"),
    ];
    let code = status.as_u16();
    match KNOWN.iter().find(|(c, _)| *c == code) {
        Some((_, s)) => SharedString::const_str(s),
        None => SharedString::from(code.to_string()),
    }
}

/// `GET /metrics`: to loopback peers only, unless `metrics_allow_remote` (the page tells
/// login failure rates and traffic, which is not for everyone).
pub(crate) async fn render(State(state): State<AppState>, req: Request) -> Response {
    let local = crate::limits::peer_ip(&req).is_some_and(|ip| ip.is_loopback());
    if !local && !state.config.metrics_allow_remote {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match &state.metrics {
        Some(h) => {
            h.run_upkeep();
            let mut resp = h.render().into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not served by this process\n",
        )
            .into_response(),
    }
}

/// Tokens issued by a grant type.
pub(crate) fn tokens_issued(grant_type: &'static str) {
    metrics::counter!("authstore_tokens_issued_total", "grant_type" => grant_type).increment(1);
}

/// A token looked at by introspection or the bearer layer.
pub(crate) fn token_validated(active: bool) {
    let result = if active { "active" } else { "inactive" };
    metrics::counter!("authstore_tokens_validated_total", "result" => result).increment(1);
}

/// A revocation (`token` at /revoke, `grant` when a whole grant went).
pub(crate) fn tokens_revoked(kind: &'static str) {
    metrics::counter!("authstore_tokens_revoked_total", "kind" => kind).increment(1);
}

/// A replayed code or reused refresh token (its grant was revoked).
pub(crate) fn replay_detected(kind: &'static str) {
    metrics::counter!("authstore_replay_detected_total", "kind" => kind).increment(1);
}

/// A login attempt at the login page.
pub(crate) fn login(result: &'static str) {
    metrics::counter!("authstore_logins_total", "result" => result).increment(1);
}

/// One cleanup pass.
pub(crate) fn cleanup(report: Result<&authstore_core::backend::CleanupReport, ()>) {
    match report {
        Ok(r) => {
            metrics::counter!("authstore_cleanup_runs_total", "result" => "ok").increment(1);
            for (kind, n) in [
                ("authorization_codes", r.authorization_codes),
                ("access_tokens", r.access_tokens),
                ("refresh_tokens", r.refresh_tokens),
                ("grants", r.grants),
                ("personal_access_tokens", r.personal_access_tokens),
                ("authorization_sessions", r.authorization_sessions),
                ("login_failures", r.login_failures),
                ("login_sessions", r.login_sessions),
                ("one_time_tokens", r.one_time_tokens),
                ("ceremonies", r.ceremonies),
            ] {
                metrics::counter!("authstore_cleanup_deleted_total", "kind" => kind).increment(n);
            }
        }
        Err(()) => {
            metrics::counter!("authstore_cleanup_runs_total", "result" => "error").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestServer;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::{Method, Request, StatusCode};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    /// Labels: the server's own routes and statuses come from static strings; anything
    /// else is still labelled with its own value.
    #[test]
    fn route_and_status_labels() {
        use axum::http::StatusCode;
        for (matched, label) in [
            (Some("/token"), "/token"),
            (Some("/introspect"), "/introspect"),
            (Some("/authorize/login/otp"), "/authorize/login/otp"),
            (None, "unmatched"),
            (
                Some("/.well-known/oauth-authorization-server/{*issuer_path}"),
                "/.well-known/oauth-authorization-server/{*issuer_path}",
            ),
        ] {
            assert_eq!(&*super::route_label(matched), label);
        }
        for code in [200, 302, 401, 404, 408, 413, 418, 429, 431, 500, 503, 599] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(&*super::status_label(status), code.to_string());
        }
    }

    #[tokio::test]
    async fn methods_are_bounded_and_remote_peers_get_nothing() {
        let t = TestServer::new();
        for i in 0..5 {
            let m = Method::from_bytes(format!("X{i}INVENTED").as_bytes()).unwrap();
            t.send(
                Request::builder()
                    .method(m)
                    .uri("/healthz")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        }
        let page = t.get("/metrics", &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.body.contains("authstore_http_requests_total"),
            "{}",
            page.body
        );
        assert!(page.body.contains("method=\"other\""), "{}", page.body);
        assert!(
            !page.body.contains("INVENTED"),
            "an invented method became a label"
        );

        // The same server seen from another host: no metrics.
        let remote = crate::router(
            t.store.clone(),
            crate::ServerConfig::new("http://127.0.0.1:8080").unwrap(),
        )
        .unwrap()
        .layer(MockConnectInfo(SocketAddr::from(([203, 0, 113, 9], 5000))));
        let resp = remote
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let mut open = crate::ServerConfig::new("http://127.0.0.1:8080").unwrap();
        open.metrics_allow_remote = true;
        let remote = crate::router(t.store.clone(), open)
            .unwrap()
            .layer(MockConnectInfo(SocketAddr::from(([203, 0, 113, 9], 5000))));
        let resp = remote
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_authorization_pages_are_rate_limited_per_address() {
        let t =
            TestServer::with_config(|c| c.address_rate_limit = crate::RateLimit::per_second(1, 3));
        let before = t.store.stats().await.unwrap();
        let mut limited = 0;
        for _ in 0..6 {
            let r = t
                .get("/authorize?response_type=code&client_id=nope", &[])
                .await;
            if r.status == StatusCode::TOO_MANY_REQUESTS {
                assert!(r.header("retry-after").is_some());
                limited += 1;
            }
        }
        assert!(limited >= 2, "{limited}");
        assert_eq!(t.store.stats().await.unwrap(), before);
    }
}
