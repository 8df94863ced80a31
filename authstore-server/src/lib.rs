//! # authstore-server
//!
//! authstore's OAuth 2.0 authorization server as an axum [`Router`], and a bearer-token
//! [`tower::Layer`] for resource servers and gateways ([`bearer`]).
//!
//! ```no_run
//! # async fn run(store: authstore_core::Authstore) -> Result<(), Box<dyn std::error::Error>> {
//! use authstore_server::{ServerConfig, router, serve};
//! let config = ServerConfig::new("http://127.0.0.1:8080")?;
//! let app = router(store, config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! ## Endpoints
//!
//! | path | what |
//! |---|---|
//! | `GET /.well-known/oauth-authorization-server` | RFC 8414 metadata |
//! | `GET /authorize` | authorization endpoint (code flow with PKCE), login and consent pages |
//! | `POST /authorize/login`, `POST /authorize/login/otp`, `POST /authorize/consent` | the forms of those pages: password, second factor (TOTP or recovery code), consent (CSRF-protected) |
//! | `POST /token` | token endpoint: `authorization_code`, `client_credentials`, `refresh_token` |
//! | `POST /introspect` | RFC 7662 token introspection (client authentication required) |
//! | `POST /revoke` | RFC 7009 token revocation |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (the database answers) |
//! | `GET /metrics` | Prometheus metrics |
//!
//! The server never logs a token, secret, code or password: request spans carry the method
//! and the route template only, never a query string, body or credential header.

mod authorize;
pub mod bearer;
mod client_auth;
mod cookies;
mod csrf;
mod error;
mod form;
mod health;
mod introspect;
mod limits;
mod maintenance;
mod metadata;
mod metrics;
mod mfa;
mod pages;
mod revoke;
mod state;
#[cfg(test)]
mod testing;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use authstore_core::Authstore;
use axum::Router;

pub use error::ServerError;
pub use limits::RateLimit;
pub use maintenance::{Maintenance, MaintenanceConfig, spawn_maintenance};

use state::AppState;

/// The paths the server answers on (the metadata document and the pages use the same).
pub mod paths {
    /// RFC 8414 metadata.
    pub const METADATA: &str = "/.well-known/oauth-authorization-server";
    /// Authorization endpoint.
    pub const AUTHORIZE: &str = "/authorize";
    /// The login form's target.
    pub const LOGIN: &str = "/authorize/login";
    /// The second-factor form's target (TOTP or recovery code, after the password).
    pub const LOGIN_OTP: &str = "/authorize/login/otp";
    /// The consent form's target.
    pub const CONSENT: &str = "/authorize/consent";
    /// Token endpoint.
    pub const TOKEN: &str = "/token";
    /// Introspection endpoint (RFC 7662).
    pub const INTROSPECT: &str = "/introspect";
    /// Revocation endpoint (RFC 7009).
    pub const REVOKE: &str = "/revoke";
    /// Liveness.
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness.
    pub const READYZ: &str = "/readyz";
    /// Prometheus metrics.
    pub const METRICS: &str = "/metrics";
}

/// How the server behaves. Build with [`ServerConfig::new`], then set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The issuer identifier (RFC 8414): an `http` or `https` URL without query or fragment.
    /// Endpoint URLs in the metadata are built from it, login cookies are `Secure` when it is
    /// `https`, and redirects carry it as `iss` (RFC 9207).
    pub issuer: url::Url,
    /// Per client, at the token, introspection and revocation endpoints (after the client
    /// authenticated). Default 100 per second, burst 200.
    pub client_rate_limit: RateLimit,
    /// Per remote address, at the token, introspection and revocation endpoints. Default 200
    /// per second, burst 400.
    pub address_rate_limit: RateLimit,
    /// Per remote address, at the login form (each attempt costs an Argon2id hash). Default
    /// 1 per second, burst 10.
    pub login_rate_limit: RateLimit,
    /// A request that takes longer gets 408. Default 10 s.
    pub request_timeout: Duration,
    /// Largest request body; larger gets 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Largest total size of request headers; larger gets 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Serve `/metrics` (Prometheus text format). Default on. If the process already
    /// installed another `metrics` recorder, `/metrics` answers 404 and the metrics go to
    /// that recorder.
    pub metrics: bool,
    /// Answer `/metrics` to any peer, not only loopback ones. Default off: scrape from the
    /// same host, or put the scraper behind a proxy that adds authentication.
    pub metrics_allow_remote: bool,
}

impl ServerConfig {
    /// The defaults, for `issuer` (checked: `http` or `https`, a host, no query, no
    /// fragment; a trailing `/` is removed).
    pub fn new(issuer: &str) -> Result<Self, ServerError> {
        Ok(Self {
            issuer: parse_issuer(issuer)?,
            client_rate_limit: RateLimit::per_second(100, 200),
            address_rate_limit: RateLimit::per_second(200, 400),
            login_rate_limit: RateLimit::per_second(1, 10),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            metrics: true,
            metrics_allow_remote: false,
        })
    }

    /// The issuer as the string the metadata and `iss` parameters carry (no trailing `/`).
    pub fn issuer_str(&self) -> &str {
        self.issuer.as_str().trim_end_matches('/')
    }

    /// The absolute URL of one of [`paths`].
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.issuer_str(), path)
    }
}

fn parse_issuer(issuer: &str) -> Result<url::Url, ServerError> {
    let bad = |reason: &str| ServerError::Config {
        reason: format!("issuer {issuer:?} {reason}"),
    };
    let url = url::Url::parse(issuer).map_err(|_| bad("is not an absolute URL"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("must use http or https"));
    }
    if url.host().is_none() {
        return Err(bad("has no host"));
    }
    if url.path().contains(';') {
        return Err(bad(
            "must not have ';' in its path (it could not be a cookie path)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment (RFC 8414 §2)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url)
}

/// The whole server as a [`Router`]: every endpoint, with the request limits, metrics and
/// request spans of `config`. Serve it with [`serve`] (which provides the peer address the
/// rate limits need), or merge it into your own application.
pub fn router(store: Authstore, config: ServerConfig) -> Result<Router, ServerError> {
    let state = AppState::new(store, config)?;
    Ok(state::build(state))
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// requests in flight to finish (at most [`ServeOptions::shutdown_grace`]). Each request
/// sees its peer address (for rate limits, login attempts and login sessions). Uses
/// [`ServeOptions::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ServeOptions::default()).await
}

/// Connection-level limits of [`serve_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// A client must send a request's whole header within this time, or the connection is
    /// closed (slow-header attacks hold connections open otherwise: the request timeout only
    /// starts once the header is in). Default 10 s.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog. Default 4096.
    pub max_connections: usize,
    /// After `shutdown`, how long requests in flight may take before the server stops
    /// anyway. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// [`serve`] with explicit connection limits.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed; stop rather than spin
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("requests still in flight after the shutdown grace period: stopping");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_is_checked() {
        assert_eq!(
            ServerConfig::new("http://127.0.0.1:8080/")
                .unwrap()
                .issuer_str(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ServerConfig::new("https://auth.example.com/tenant")
                .unwrap()
                .endpoint(paths::TOKEN),
            "https://auth.example.com/tenant/token"
        );
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://x",
            "http://x/?a=b",
            "http://x/#f",
            "http://u:p@x",
            "http://x/a;b",
        ] {
            assert!(ServerConfig::new(bad).is_err(), "{bad}");
        }
    }
}
