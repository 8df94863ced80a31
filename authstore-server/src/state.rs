//! Shared state and the router's assembly.

use std::ops::Deref;
use std::sync::Arc;

use authstore_core::Authstore;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
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
    app.layer(middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::header_size,
        ))
        // Every answer that did not choose its own caching (413, 408, 431 from the layers
        // above included) must not be cached: they are about credentials.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // Method and route template only: a URI's query or a header can hold a secret.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str())
                .unwrap_or("unmatched");
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state)
}
