//! Bearer-token validation for resource servers and API gateways (RFC 6750).
//!
//! [`BearerLayer`] is a [`tower::Layer`]: it takes the token from
//! `Authorization: Bearer …`, validates it against any store (one keyed hash and one
//! indexed read), checks the scopes the route requires, and puts the result in the
//! request's extensions, where the [`BearerAuth`] extractor finds it. Refusals follow
//! RFC 6750 §3:
//!
//! | case | answer |
//! |---|---|
//! | no `Authorization` header, or another scheme (e.g. `Basic`) | 401, `WWW-Authenticate: Bearer realm="…"` (RFC 6750 §3.1: no error code) |
//! | several `Authorization` headers, not ASCII, an empty token | 400, `error="invalid_request"` |
//! | unknown, expired, revoked, malformed token | 401, `error="invalid_token"` |
//! | a sender-constrained (DPoP or mTLS) token presented as a plain bearer token | 401, `error="invalid_token"` |
//! | the token lacks a required scope | 403, `error="insufficient_scope", scope="…"` |
//! | the store is temporarily unreachable | 503 with `Retry-After: 1` |
//! | any other store failure | 500 (logged; the client must not discard a good token) |
//!
//! ```no_run
//! use authstore_server::bearer::{BearerAuth, BearerLayer};
//! use axum::{Router, routing::get};
//!
//! # fn app(store: authstore_core::Authstore) -> Result<Router, authstore_core::Error> {
//! async fn me(auth: BearerAuth) -> String {
//!     format!("hello {}", auth.subject().map(|s| s.as_str()).unwrap_or("service"))
//! }
//! let app = Router::new()
//!     .route("/me", get(me))
//!     .layer(BearerLayer::new(store).require_scopes("read")?);
//! # Ok(app) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use authstore_core::{
    AccessToken, Authstore, ClientId, GrantId, PersonalAccessToken, Scopes, Subject, Timestamp,
    TokenKind,
};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a valid bearer token proved: an OAuth access token or a personal access token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BearerAuth {
    /// An OAuth 2.0 access token.
    AccessToken(AccessToken),
    /// A personal access token (accepted only with
    /// [`BearerLayer::accept_personal_access_tokens`]).
    PersonalAccessToken(PersonalAccessToken),
}

impl BearerAuth {
    /// The user the token acts for; `None` for a client acting for itself
    /// (client_credentials).
    pub fn subject(&self) -> Option<&Subject> {
        match self {
            Self::AccessToken(t) => t.subject.as_ref(),
            Self::PersonalAccessToken(p) => Some(&p.user),
        }
    }

    /// The client the token was issued to (`None` for a personal access token).
    pub fn client_id(&self) -> Option<ClientId> {
        match self {
            Self::AccessToken(t) => Some(t.client_id),
            Self::PersonalAccessToken(_) => None,
        }
    }

    /// The grant (`None` for a personal access token).
    pub fn grant_id(&self) -> Option<GrantId> {
        match self {
            Self::AccessToken(t) => Some(t.grant_id),
            Self::PersonalAccessToken(_) => None,
        }
    }

    /// The token's scopes.
    pub fn scope(&self) -> &Scopes {
        match self {
            Self::AccessToken(t) => &t.scope,
            Self::PersonalAccessToken(p) => &p.scope,
        }
    }

    /// When the token expires (`None`: a personal access token without expiry).
    pub fn expires_at(&self) -> Option<Timestamp> {
        match self {
            Self::AccessToken(t) => Some(t.expires_at),
            Self::PersonalAccessToken(p) => p.expires_at,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerAuth {
    type Rejection = Response;

    /// Reads what [`BearerLayer`] stored. A route reached without the layer is a wiring
    /// mistake: it answers 500 and logs it, rather than letting a request through.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<BearerAuth>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("BearerAuth extractor used on a route without BearerLayer");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            })
    }
}

/// A [`tower::Layer`] that admits only requests with a valid bearer token holding the
/// required scopes. Cheap to clone; apply it per route for per-route scopes.
#[derive(Clone)]
pub struct BearerLayer {
    inner: Arc<Config>,
}

struct Config {
    store: Authstore,
    required: Scopes,
    realm: HeaderValue,
    realm_text: String,
    accept_pats: bool,
}

impl std::fmt::Debug for BearerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerLayer")
            .field("required", &self.inner.required)
            .field("realm", &self.inner.realm_text)
            .field("accept_pats", &self.inner.accept_pats)
            .finish()
    }
}

impl BearerLayer {
    /// Validates against `store`; no scope required; realm `authstore`; personal access
    /// tokens refused.
    pub fn new(store: Authstore) -> Self {
        Self {
            inner: Arc::new(Config {
                store,
                required: Scopes::default(),
                realm: HeaderValue::from_static("Bearer realm=\"authstore\""),
                realm_text: "authstore".into(),
                accept_pats: false,
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut c = match Arc::try_unwrap(self.inner) {
            Ok(c) => c,
            Err(shared) => Config {
                store: shared.store.clone(),
                required: shared.required.clone(),
                realm: shared.realm.clone(),
                realm_text: shared.realm_text.clone(),
                accept_pats: shared.accept_pats,
            },
        };
        f(&mut c);
        Self { inner: Arc::new(c) }
    }

    /// Requires every scope of `scopes` (space-separated, RFC 6749 §3.3).
    pub fn require_scopes(self, scopes: &str) -> Result<Self, authstore_core::Error> {
        let required = Scopes::parse(scopes)?;
        Ok(self.edit(|c| c.required = required))
    }

    /// The realm named in `WWW-Authenticate` (printable ASCII without `"` or `\`).
    pub fn realm(self, realm: &str) -> Result<Self, authstore_core::Error> {
        if realm.is_empty()
            || realm.len() > 100
            || !realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(authstore_core::Error::invalid(
                "realm",
                "1 to 100 printable ASCII characters without '\"' or '\\'",
            ));
        }
        let value = HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""))
            .map_err(|_| authstore_core::Error::invalid("realm", "not a valid header value"))?;
        let realm = realm.to_owned();
        Ok(self.edit(|c| {
            c.realm = value;
            c.realm_text = realm;
        }))
    }

    /// Also accept personal access tokens (`pat_…`).
    pub fn accept_personal_access_tokens(self, accept: bool) -> Self {
        self.edit(|c| c.accept_pats = accept)
    }
}

impl<S> tower::Layer<S> for BearerLayer {
    type Service = BearerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerService {
            inner,
            config: self.inner.clone(),
        }
    }
}

/// The service [`BearerLayer`] wraps around a route.
#[derive(Clone)]
pub struct BearerService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for BearerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerService")
            .field("required", &self.config.required)
            .finish()
    }
}

/// Why a request was refused.
enum Refusal {
    Missing,
    InvalidRequest(&'static str),
    InvalidToken(&'static str),
    InsufficientScope,
    Unavailable,
    Internal,
}

impl Config {
    fn refuse(&self, r: Refusal) -> Response {
        let realm = &self.realm_text;
        let (status, challenge, retry) = match r {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer realm=\"{realm}\""),
                false,
            ),
            Refusal::InvalidRequest(d) => (
                StatusCode::BAD_REQUEST,
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{d}\""
                ),
                false,
            ),
            Refusal::InvalidToken(d) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{d}\""
                ),
                false,
            ),
            Refusal::InsufficientScope => (
                StatusCode::FORBIDDEN,
                format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                    self.required
                ),
                false,
            ),
            Refusal::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Bearer realm=\"{realm}\""),
                true,
            ),
            Refusal::Internal => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        let mut resp = status.into_response();
        let value = HeaderValue::from_str(&challenge).unwrap_or_else(|_| self.realm.clone());
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        if retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }

    async fn check(&self, headers: &axum::http::HeaderMap) -> Result<BearerAuth, Refusal> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(Refusal::Missing)?;
        if values.next().is_some() {
            return Err(Refusal::InvalidRequest(
                "more than one Authorization header",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| Refusal::InvalidRequest("the Authorization header is not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            // Another scheme is no bearer token at all (RFC 6750 §3.1).
            _ if !value
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("bearer ")) =>
            {
                if value.eq_ignore_ascii_case("bearer") {
                    return Err(Refusal::InvalidRequest("the bearer token is empty"));
                }
                return Err(Refusal::Missing);
            }
            _ => return Err(Refusal::InvalidRequest("the bearer token is empty")),
        };
        if token.is_empty() {
            return Err(Refusal::InvalidRequest("the bearer token is empty"));
        }
        let store = &self.store;
        let is_pat = store
            .config()
            .token_format
            .check(TokenKind::PersonalAccessToken, token)
            .is_ok_and(|p| matches!(p, authstore_core::token::Presented::Minted));
        let result = if is_pat {
            if !self.accept_pats {
                crate::metrics::token_validated(false);
                return Err(Refusal::InvalidToken(
                    "personal access tokens are not accepted here",
                ));
            }
            store
                .validate_pat(token)
                .await
                .map(BearerAuth::PersonalAccessToken)
        } else {
            store
                .validate_access_token(token)
                .await
                .map(BearerAuth::AccessToken)
        };
        let auth = match result {
            Ok(a) => a,
            Err(e) if e.is_temporary() => {
                tracing::warn!(code = e.code(), error = %e, "bearer validation: store unavailable");
                return Err(Refusal::Unavailable);
            }
            Err(
                authstore_core::Error::Inactive { .. }
                | authstore_core::Error::MalformedToken { .. },
            ) => {
                crate::metrics::token_validated(false);
                return Err(Refusal::InvalidToken(
                    "the token is invalid, expired or revoked",
                ));
            }
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "bearer validation: store error");
                return Err(Refusal::Internal);
            }
        };
        crate::metrics::token_validated(true);
        if let BearerAuth::AccessToken(t) = &auth {
            if t.cnf.is_some() {
                // RFC 9449 §7.1 / RFC 8705 §3: a bound token needs its proof, which a plain
                // bearer check cannot verify.
                return Err(Refusal::InvalidToken(
                    "the token is sender-constrained: present it with its proof of possession",
                ));
            }
        }
        if !self.required.is_subset(auth.scope()) {
            return Err(Refusal::InsufficientScope);
        }
        Ok(auth)
    }
}

impl<S, B> tower::Service<Request<B>> for BearerService<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            match config.check(req.headers()).await {
                Ok(auth) => {
                    req.extensions_mut().insert(auth);
                    inner.call(req).await
                }
                Err(r) => Ok(config.refuse(r)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestServer;
    use authstore_core::{NewClient, NewPat, SenderConstraint, TokenOptions};
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use std::time::Duration;
    use tower::ServiceExt;

    async fn whoami(auth: BearerAuth) -> String {
        format!(
            "{} {}",
            auth.subject().map(|s| s.as_str()).unwrap_or("-"),
            auth.scope()
        )
    }

    fn app(layer: BearerLayer) -> Router {
        Router::new().route("/r", get(whoami)).layer(layer)
    }

    async fn call(app: &Router, auth: &[&str]) -> (StatusCode, Option<String>, String) {
        let mut b = Request::get("/r");
        for a in auth {
            b = b.header("authorization", *a);
        }
        let resp = app
            .clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, www, String::from_utf8_lossy(&body).into_owned())
    }

    async fn token(t: &TestServer, scope: &str, options: &TokenOptions) -> String {
        let c = t
            .store
            .create_client(NewClient::confidential("rs").scopes(Scopes::parse(scope).unwrap()))
            .await
            .unwrap();
        t.store
            .issue_client_credentials(c.client.id, None, options)
            .await
            .unwrap()
            .access_token
            .secret()
            .to_owned()
    }

    #[tokio::test]
    async fn rfc6750_answers() {
        let t = TestServer::new();
        let app = app(BearerLayer::new(t.store.clone())
            .require_scopes("read")
            .unwrap()
            .realm("api")
            .unwrap());
        let good = token(&t, "read write", &TokenOptions::default()).await;
        let narrow = token(&t, "write", &TokenOptions::default()).await;

        let (s, www, body) = call(&app, &[&format!("Bearer {good}")]).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body, "- read write");
        assert!(www.is_none());
        // The scheme is case-insensitive (RFC 7235 §2.1).
        assert_eq!(
            call(&app, &[&format!("bearer {good}")]).await.0,
            StatusCode::OK
        );

        let (s, www, _) = call(&app, &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(www.unwrap(), "Bearer realm=\"api\"");

        // Another scheme, or none: no bearer token was presented (RFC 6750 §3.1).
        for other in [format!("Basic {good}"), good.clone(), "Digest x=y".into()] {
            let (s, www, _) = call(&app, &[&other]).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{other}");
            assert_eq!(www.unwrap(), "Bearer realm=\"api\"", "{other}");
        }
        for bad in ["Bearer ", "Bearer", "bearer    "] {
            let (s, www, _) = call(&app, &[bad]).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(www.unwrap().contains("error=\"invalid_request\""));
        }
        let twice = format!("Bearer {good}");
        assert_eq!(
            call(&app, &[&twice, &twice]).await.0,
            StatusCode::BAD_REQUEST
        );

        for bad in [
            "at_notatoken",
            "' OR '1'='1",
            "at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let (s, www, _) = call(&app, &[&format!("Bearer {bad}")]).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}");
            assert!(www.unwrap().contains("error=\"invalid_token\""));
        }

        let (s, www, _) = call(&app, &[&format!("Bearer {narrow}")]).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let www = www.unwrap();
        assert!(
            www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"read\""),
            "{www}"
        );

        // Revocation is visible at once.
        t.store.revoke_token(&good, None, None).await.unwrap();
        assert_eq!(
            call(&app, &[&format!("Bearer {good}")]).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn expiry_pats_and_bound_tokens() {
        let t = TestServer::new();
        let layer = BearerLayer::new(t.store.clone());
        let at = token(&t, "read", &TokenOptions::default()).await;
        assert_eq!(
            call(&app(layer.clone()), &[&format!("Bearer {at}")])
                .await
                .0,
            StatusCode::OK
        );
        t.clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(
            call(&app(layer.clone()), &[&format!("Bearer {at}")])
                .await
                .0,
            StatusCode::UNAUTHORIZED,
            "expired"
        );

        let user = authstore_core::Subject::new("user-1").unwrap();
        let pat = t
            .store
            .issue_pat(NewPat {
                user: user.clone(),
                name: "ci".into(),
                scope: Scopes::parse("read").unwrap(),
                expires_in: None,
            })
            .await
            .unwrap();
        let pat = format!("Bearer {}", pat.secret.secret());
        assert_eq!(
            call(&app(layer.clone()), &[&pat]).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (s, _, body) = call(
            &app(layer.clone().accept_personal_access_tokens(true)),
            &[&pat],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, "user-1 read");

        let bound = token(
            &t,
            "read",
            &TokenOptions {
                cnf: Some(SenderConstraint::DpopJkt(
                    "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
                )),
                ..Default::default()
            },
        )
        .await;
        let (s, www, _) = call(&app(layer), &[&format!("Bearer {bound}")]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(www.unwrap().contains("sender-constrained"));
    }

    #[test]
    fn realm_is_checked() {
        let t = TestServer::new();
        for bad in ["", "a\"b", "a\\b", "\u{e9}", &"x".repeat(101)] {
            assert!(
                BearerLayer::new(t.store.clone()).realm(bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            BearerLayer::new(t.store.clone())
                .require_scopes("a\"b")
                .is_err()
        );
    }
}
