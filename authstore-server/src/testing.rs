//! In-process test harness: the real router on the memory backend with a manual clock,
//! driven with `tower::ServiceExt::oneshot`. Requests come from 127.0.0.1 (a mocked peer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use authstore_core::{
    Authstore, Config, ManualClock, PasswordParams, Timestamp, TokenKey, TokenKeyring,
};
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::ServerConfig;

/// 2026-01-01T00:00:00Z.
pub(crate) const START: Timestamp = Timestamp::from_unix_micros(1_767_225_600_000_000);

/// A server on a fresh memory store.
pub(crate) struct TestServer {
    pub(crate) app: Router,
    pub(crate) store: Authstore,
    pub(crate) clock: ManualClock,
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct TestResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl TestResponse {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    pub(crate) fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// With `edit` applied to the server configuration (issuer `http://127.0.0.1:8080`).
    pub(crate) fn with_config(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let clock = ManualClock::new(START);
        let store = Authstore::new(
            Arc::new(authstore_memory::MemoryStore::new()),
            TokenKeyring::new(TokenKey::from_bytes("k1", [7; 32]).unwrap()),
        )
        .with_clock(Arc::new(clock.clone()))
        .with_config(Config {
            password_params: PasswordParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            danger_allow_weak_password_params: true,
            ..Config::default()
        })
        .unwrap();
        let mut config = ServerConfig::new("http://127.0.0.1:8080").unwrap();
        config.request_timeout = Duration::from_secs(30);
        edit(&mut config);
        let app = crate::router(store.clone(), config)
            .unwrap()
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        Self { app, store, clock }
    }

    /// Sends one request.
    pub(crate) async fn send(&self, req: Request<Body>) -> TestResponse {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        TestResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// `POST path` with a form body and extra headers.
    pub(crate) async fn post_form(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut b = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    /// `GET path` with extra headers.
    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        let mut b = Request::get(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }
}

/// `Basic base64(id:secret)` (both form-encoded first, as RFC 6749 §2.3.1 says).
pub(crate) fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}
