//! Shared state and the router's assembly.

use std::ops::Deref;
use std::sync::Arc;

use authstore_core::Authstore;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use zeroize::Zeroizing;

use crate::limits::Limits;
use crate::{
    ServerConfig, ServerError, authorize, health, introspect, limits, metadata, paths, revoke,
    token,
};

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pub(crate) store: Authstore,
    pub(crate) config: ServerConfig,
    /// Cookies get `Secure` (and the `__Host-` prefix) under an `https` issuer.
    pub(crate) secure_cookies: bool,
    /// Keys the CSRF tokens of the login and consent forms (derived from the token key).
    pub(crate) csrf_key: Zeroizing<[u8; 32]>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Option<PrometheusHandle>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(store: Authstore, config: ServerConfig) -> Result<Self, ServerError> {
        if config.max_body_bytes < 1024 || config.max_header_bytes < 1024 {
            return Err(ServerError::Config {
                reason: "max_body_bytes and max_header_bytes must be at least 1024".into(),
            });
        }
        if config.request_timeout.is_zero() {
            return Err(ServerError::Config {
                reason: "request_timeout must be more than zero".into(),
            });
        }
        let csrf_key = store.derive_key("authstore-server 2026-11 csrf");
        let limits = Limits::new(
            config.client_rate_limit,
            config.address_rate_limit,
            config.login_rate_limit,
        );
        let metrics = if config.metrics {
            crate::metrics::install()
        } else {
            None
        };
        Ok(Self(Arc::new(Shared {
            secure_cookies: config.issuer.scheme() == "https",
            store,
            config,
            csrf_key,
            limits,
            metrics,
        })))
    }
}

pub(crate) fn build(state: AppState) -> Router {
    let oauth = Router::new()
        .merge(token::routes())
        .merge(introspect::routes())
        .merge(revoke::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::by_address,
        ));
    let mut app = Router::new()
        .merge(oauth)
        // The pages write (an authorization session per GET, a login attempt per POST):
        // they get the per-address limit too (the login form has its own, stricter one).
        .merge(
            authorize::routes().route_layer(middleware::from_fn_with_state(
                state.clone(),
                limits::by_address,
            )),
        )
        .merge(metadata::routes())
        .route(paths::HEALTHZ, get(health::healthz))
        .route(paths::READYZ, get(health::readyz));
    if state.config.metrics {
        app = app.route(paths::METRICS, get(crate::metrics::render));
    }
    let timeout = state.config.request_timeout;
    let max_body = state.config.max_body_bytes;
    // One composed layer, applied once: `Router::layer` wraps every route in each layer it
    // is given, boxing each level, and every request then clones the boxed stack level by
    // level (measured with callgrind: ~25k instructions of ~130k per introspection went to
    // those clones and their drops). The same layers in one `ServiceBuilder` are one box.
    // Order, outermost first (as the `Router::layer` calls were, last call outermost):
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // Method and route template only: a URI's query or a header can hold a secret.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str())
                .unwrap_or("unmatched");
            tracing::info_span!("request", method = %req.method(), route)
        }))
        // Every answer that did not choose its own caching (413, 408, 431 from the layers
        // below included) must not be cached: they are about credentials.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::header_size,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // The timeout layer answers with a default body: give it axum's.
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(max_body))
        // The body limit wraps the request body; the layers below take axum's.
        .map_request(|req: Request<_>| req.map(Body::new))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(crate::metrics::track));
    app.layer(stack).with_state(state)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::body::{Body, Bytes, HttpBody};
    use axum::http::{Request, StatusCode};

    use crate::paths::{INTROSPECT, TOKEN};
    use crate::testing::TestServer;

    /// A request body that never arrives.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    /// The composed layer stack: each limit answers with its status, every such answer
    /// carries `Cache-Control: no-store`, and what reaches a route is counted.
    #[tokio::test(start_paused = true)]
    async fn every_limit_answers_uncached_and_counted() {
        let t = TestServer::with_config(|c| {
            c.request_timeout = Duration::from_secs(2);
            c.max_header_bytes = 1024;
            c.max_body_bytes = 1024;
        });
        let before = t.store.stats().await.unwrap();

        // Headers over 1 KiB: 431.
        let big = "x".repeat(2000);
        let r = t.post_form(TOKEN, "a=b", &[("x-big", &big)]).await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // A body announced over 1 KiB: 413 before the handler.
        let body = "a".repeat(2000);
        let len = body.len().to_string();
        let r = t
            .post_form(INTROSPECT, &body, &[("content-length", &len)])
            .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // A body that never comes: 408 once the request timeout passes (paused time moves
        // on by itself when nothing else can run).
        let req = Request::post(TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::new(Stalled))
            .unwrap();
        let r = t.send(req).await;
        assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // No route: 404, through the same layers.
        let r = t.get("/nothing-here", &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // The metrics layer is the innermost: it counts what reached the routes (the
        // answers of the limits above are not counted, as before the layers were composed).
        let page = t.get("/metrics", &[]).await.body;
        assert!(
            page.lines()
                .any(|l| l.starts_with("authstore_http_requests_total{")
                    && l.contains(r#"route="unmatched",method="GET",status="404""#)),
            "{page}"
        );
        assert!(
            page.contains(r#"authstore_http_request_duration_seconds_count{route="unmatched"}"#)
        );
        assert_eq!(t.store.stats().await.unwrap(), before);
    }
}
