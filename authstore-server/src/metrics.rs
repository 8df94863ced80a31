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
//! | `authstore_logins_total` | counter | `result` (`success`, `failure`, `locked`, `rate_limited`) |
//! | `authstore_cleanup_runs_total` | counter | `result` (`ok`, `error`) |
//! | `authstore_cleanup_deleted_total` | counter | `kind` |

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("authstore_http_request_duration_seconds", "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("authstore_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    resp
}

/// `GET /metrics`.
pub(crate) async fn render(State(state): State<AppState>) -> Response {
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
