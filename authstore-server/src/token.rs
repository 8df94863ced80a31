//! `POST /token`: the token endpoint (RFC 6749 §3.2) for the `authorization_code` grant
//! with PKCE (§4.1.3, RFC 7636), `client_credentials` (§4.4) and `refresh_token` (§6).
//!
//! Every rule about codes, PKCE, scopes, rotation and replay lives in the core
//! ([`authstore_core::Authstore`]); this module parses the request strictly, authenticates
//! the client, calls the store, and answers in the shape of RFC 6749 §5.1 and §5.2, always
//! with `Cache-Control: no-store`.

use authstore_core::{
    CodeRedemption, Error as CoreError, IssuedTokens, RefreshRequest, Scopes, TokenOptions,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use crate::client_auth::{Public, authenticate};
use crate::error::{OAuthError, no_store};
use crate::form::FormParams;
use crate::state::AppState;
use crate::{metrics, paths};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(paths::TOKEN, post(token))
}

/// Reads the body of a back-channel request (token, introspection, revocation) as a strict
/// form. A body over the limit is 413, one that cannot be read 400, both as OAuth errors
/// (so they carry `Cache-Control: no-store` like every other answer of these endpoints).
pub(crate) fn read_form(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<FormParams, OAuthError> {
    let body = body.map_err(|rejection| {
        OAuthError::new(
            rejection.status(),
            "invalid_request",
            "the request body could not be read (too large, or the connection failed)",
        )
    })?;
    Ok(FormParams::from_body(headers, &body)?)
}

/// The grant types this endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantKind {
    AuthorizationCode,
    ClientCredentials,
    RefreshToken,
}

impl GrantKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "authorization_code" => Some(Self::AuthorizationCode),
            "client_credentials" => Some(Self::ClientCredentials),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// The success body of RFC 6749 §5.1. Borrows the secrets so that serialising writes them
/// once, straight into the response body.
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    scope: String,
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::error::answer(
        handle(&state, &headers, body).await,
        "token request refused",
    )
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = read_form(headers, body)?;
    let grant_type = form.require("grant_type")?;
    let kind = GrantKind::parse(grant_type).ok_or_else(|| {
        OAuthError::unsupported_grant_type(
            "grant_type must be authorization_code, client_credentials or refresh_token",
        )
    })?;
    let client = authenticate(state, headers, &form, Public::Allowed).await?;
    let options = TokenOptions::default();
    let issued = match kind {
        GrantKind::AuthorizationCode => {
            let code = form.require("code")?;
            state
                .store
                .redeem_code(CodeRedemption {
                    code,
                    client_id: client.id,
                    redirect_uri: form.get("redirect_uri"),
                    code_verifier: form.get("code_verifier"),
                    options: &options,
                })
                .await
        }
        GrantKind::ClientCredentials => {
            let scope = parse_scope(&form)?;
            state
                .store
                .issue_client_credentials_for(&client, scope.as_ref(), &options)
                .await
        }
        GrantKind::RefreshToken => {
            let refresh_token = form.require("refresh_token")?;
            let scope = parse_scope(&form)?;
            state
                .store
                .refresh(RefreshRequest {
                    refresh_token,
                    client_id: client.id,
                    scope: scope.as_ref(),
                    options: &options,
                })
                .await
        }
    };
    let issued = issued.map_err(|e| grant_error(&e))?;
    metrics::tokens_issued(kind.as_str());
    tracing::debug!(
        client_id = %client.id,
        grant_type = kind.as_str(),
        grant_id = %issued.grant_id,
        "tokens issued"
    );
    Ok(success(&issued))
}

/// The optional `scope` parameter; a syntactically bad one is `invalid_scope`.
fn parse_scope(form: &FormParams) -> Result<Option<Scopes>, OAuthError> {
    form.get("scope")
        .map(|s| Scopes::parse(s).map_err(|e| OAuthError::invalid_scope(e.to_string())))
        .transpose()
}

/// A store error at the token endpoint; replays are counted.
fn grant_error(e: &CoreError) -> OAuthError {
    match e {
        CoreError::CodeReplay { .. } => metrics::replay_detected("code"),
        CoreError::RefreshReuse { .. } => metrics::replay_detected("refresh_token"),
        _ => {}
    }
    OAuthError::from_core(e)
}

fn success(t: &IssuedTokens) -> Response {
    let body = TokenBody {
        access_token: t.access_token.secret(),
        token_type: t.token_type,
        expires_in: t.expires_in.as_secs(),
        refresh_token: t.refresh_token.as_ref().map(|r| r.secret()),
        scope: t.scope.to_string(),
    };
    let mut resp = axum::Json(body).into_response();
    no_store(&mut resp);
    resp
}

/// Helpers the endpoint tests of this crate share: clients, codes, requests.
#[cfg(test)]
pub(crate) mod test_support {
    use authstore_core::{
        AuthContext, ClientId, CodeRequest, GrantType, NewClient, PkceChallenge, RedirectUri,
        Scopes, Subject, TokenEndpointAuthMethod,
    };

    use crate::testing::{TestResponse, TestServer, basic};

    pub(crate) const REDIRECT: &str = "https://app.example.com/cb";
    /// RFC 7636 appendix B.
    pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    pub(crate) const SUBJECT: &str = "user-42";

    /// A registered client and how it authenticates.
    #[derive(Debug, Clone)]
    pub(crate) struct Registered {
        pub(crate) id: ClientId,
        pub(crate) secret: Option<String>,
        pub(crate) method: TokenEndpointAuthMethod,
    }

    impl Registered {
        pub(crate) fn id_str(&self) -> String {
            self.id.to_string()
        }

        pub(crate) fn secret(&self) -> &str {
            self.secret.as_deref().unwrap()
        }
    }

    /// A confidential client allowed every grant type, scopes `read write admin`.
    pub(crate) async fn confidential(
        t: &TestServer,
        method: TokenEndpointAuthMethod,
    ) -> Registered {
        let mut new = NewClient::confidential("app")
            .redirect_uri(RedirectUri::new(REDIRECT).unwrap())
            .grant_type(GrantType::AuthorizationCode)
            .grant_type(GrantType::RefreshToken)
            .grant_type(GrantType::ClientCredentials)
            .scopes(Scopes::parse("read write admin").unwrap());
        new.token_endpoint_auth_method = Some(method);
        let created = t.store.create_client(new).await.unwrap();
        Registered {
            id: created.client.id,
            secret: Some(created.secret.unwrap().secret().to_owned()),
            method,
        }
    }

    /// A public client (code + refresh), scopes `read write admin`.
    pub(crate) async fn public(t: &TestServer) -> Registered {
        let new = NewClient::public("spa", RedirectUri::new(REDIRECT).unwrap())
            .grant_type(GrantType::AuthorizationCode)
            .grant_type(GrantType::RefreshToken)
            .scopes(Scopes::parse("read write admin").unwrap());
        let created = t.store.create_client(new).await.unwrap();
        Registered {
            id: created.client.id,
            secret: None,
            method: TokenEndpointAuthMethod::None,
        }
    }

    /// An authorization code for `client` (scope `read write`), with a PKCE challenge of
    /// `verifier` if given.
    pub(crate) async fn code(t: &TestServer, client: ClientId, verifier: Option<&str>) -> String {
        let issued = t
            .store
            .issue_code(CodeRequest {
                client_id: client,
                subject: Subject::new(SUBJECT).unwrap(),
                redirect_uri: REDIRECT.into(),
                scope: Scopes::parse("read write").unwrap(),
                code_challenge: verifier.map(|v| PkceChallenge::from_verifier(v).unwrap()),
                nonce: None,
                auth: AuthContext {
                    acr: Some("urn:example:loa:2".into()),
                    amr: vec!["pwd".into(), "otp".into()],
                    mfa_verified: true,
                },
            })
            .await
            .unwrap();
        issued.code.secret().to_owned()
    }

    /// Form-encodes a value.
    pub(crate) fn enc(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// `POST path` with `params`, authenticated as `client` by its registered method.
    pub(crate) async fn post_as(
        t: &TestServer,
        path: &str,
        client: &Registered,
        params: &str,
    ) -> TestResponse {
        match client.method {
            TokenEndpointAuthMethod::ClientSecretBasic => {
                let auth = basic(&client.id_str(), client.secret());
                t.post_form(path, params, &[("authorization", &auth)]).await
            }
            TokenEndpointAuthMethod::ClientSecretPost => {
                let body = format!(
                    "{params}&client_id={}&client_secret={}",
                    client.id,
                    enc(client.secret())
                );
                t.post_form(path, &body, &[]).await
            }
            _ => {
                let body = format!("{params}&client_id={}", client.id);
                t.post_form(path, &body, &[]).await
            }
        }
    }

    /// Redeems `code` at `/token` as `client`.
    pub(crate) async fn redeem(
        t: &TestServer,
        client: &Registered,
        code: &str,
        verifier: Option<&str>,
    ) -> TestResponse {
        let mut params = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            enc(code),
            enc(REDIRECT)
        );
        if let Some(v) = verifier {
            params.push_str(&format!("&code_verifier={}", enc(v)));
        }
        post_as(t, crate::paths::TOKEN, client, &params).await
    }

    /// Refreshes at `/token` as `client`, optionally with a `scope`.
    pub(crate) async fn refresh(
        t: &TestServer,
        client: &Registered,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> TestResponse {
        let mut params = format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(refresh_token)
        );
        if let Some(s) = scope {
            params.push_str(&format!("&scope={}", enc(s)));
        }
        post_as(t, crate::paths::TOKEN, client, &params).await
    }

    /// Introspects `token` as `caller`; asserts a 200 answer and returns its JSON.
    pub(crate) async fn introspect(
        t: &TestServer,
        caller: &Registered,
        token: &str,
    ) -> serde_json::Value {
        let r = post_as(
            t,
            crate::paths::INTROSPECT,
            caller,
            &format!("token={}", enc(token)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        r.json()
    }

    /// Whether `token` introspects active for `caller`.
    pub(crate) async fn active(t: &TestServer, caller: &Registered, token: &str) -> bool {
        introspect(t, caller, token).await["active"] == true
    }

    pub(crate) async fn stats(t: &TestServer) -> authstore_core::backend::Stats {
        t.store.stats().await.unwrap()
    }

    /// The `error` of an OAuth error answer, after checking its status and `no-store`.
    pub(crate) fn oauth_error(r: &TestResponse, status: u16) -> String {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.body);
        r.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    /// A string field of a JSON answer.
    pub(crate) fn field(r: &TestResponse, name: &str) -> String {
        r.json()[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {}", r.body))
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use authstore_core::{ClientUpdate, GrantType, TokenEndpointAuthMethod as M};
    use axum::body::Body;
    use axum::http::Request;

    use super::test_support::*;
    use crate::RateLimit;
    use crate::paths::TOKEN;
    use crate::testing::{TestResponse, TestServer, basic};

    fn assert_success(r: &TestResponse, with_refresh: bool, scope: &str) {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("pragma"), Some("no-cache"));
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let j = r.json();
        assert!(j["access_token"].as_str().unwrap().starts_with("at_"));
        assert_eq!(j["token_type"], "Bearer");
        assert_eq!(j["expires_in"], 3600);
        assert_eq!(j["scope"], scope);
        assert_eq!(
            j["refresh_token"]
                .as_str()
                .is_some_and(|s| s.starts_with("rt_")),
            with_refresh,
            "{}",
            r.body
        );
    }

    #[tokio::test]
    async fn authorization_code_with_each_client_auth_method() {
        let t = TestServer::new();
        for client in [
            confidential(&t, M::ClientSecretBasic).await,
            confidential(&t, M::ClientSecretPost).await,
            public(&t).await,
        ] {
            // Confidential clients redeem without PKCE; the public one must use it.
            let verifier = (client.method == M::None).then_some(VERIFIER);
            let c = code(&t, client.id, verifier).await;
            let r = redeem(&t, &client, &c, verifier).await;
            assert_success(&r, true, "read write");
            let at = t
                .store
                .validate_access_token(&field(&r, "access_token"))
                .await
                .unwrap();
            assert_eq!(at.client_id, client.id);
            assert_eq!(at.subject.unwrap().as_str(), SUBJECT);
        }
    }

    #[tokio::test]
    async fn client_credentials_with_each_client_auth_method() {
        let t = TestServer::new();
        for client in [
            confidential(&t, M::ClientSecretBasic).await,
            confidential(&t, M::ClientSecretPost).await,
        ] {
            let r = post_as(&t, TOKEN, &client, "grant_type=client_credentials").await;
            assert_success(&r, false, "admin read write");
            let r = post_as(
                &t,
                TOKEN,
                &client,
                "grant_type=client_credentials&scope=read",
            )
            .await;
            assert_success(&r, false, "read");
            let at = t
                .store
                .validate_access_token(&field(&r, "access_token"))
                .await
                .unwrap();
            assert_eq!(at.client_id, client.id);
            assert!(at.subject.is_none());
            let r = post_as(
                &t,
                TOKEN,
                &client,
                "grant_type=client_credentials&scope=read+delete",
            )
            .await;
            assert_eq!(oauth_error(&r, 400), "invalid_scope");
            let r = post_as(
                &t,
                TOKEN,
                &client,
                "grant_type=client_credentials&scope=read%22x",
            )
            .await;
            assert_eq!(oauth_error(&r, 400), "invalid_scope");
        }
        // A public client cannot use client_credentials (core refuses).
        let p = public(&t).await;
        let before = stats(&t).await;
        let r = post_as(&t, TOKEN, &p, "grant_type=client_credentials").await;
        assert_eq!(oauth_error(&r, 400), "unauthorized_client");
        // Neither can a confidential client not registered for it.
        let c = confidential(&t, M::ClientSecretBasic).await;
        t.store
            .update_client(
                c.id,
                ClientUpdate {
                    grant_types: Some([GrantType::AuthorizationCode].into()),
                    ..ClientUpdate::default()
                },
            )
            .await
            .unwrap();
        let before2 = stats(&t).await;
        let r = post_as(&t, TOKEN, &c, "grant_type=client_credentials").await;
        assert_eq!(oauth_error(&r, 400), "unauthorized_client");
        assert_eq!(stats(&t).await, before2);
        assert_eq!(before.access_tokens, before2.access_tokens);
    }

    #[tokio::test]
    async fn refresh_with_each_client_auth_method() {
        let t = TestServer::new();
        for client in [
            confidential(&t, M::ClientSecretBasic).await,
            confidential(&t, M::ClientSecretPost).await,
            public(&t).await,
        ] {
            let c = code(&t, client.id, Some(VERIFIER)).await;
            let first = redeem(&t, &client, &c, Some(VERIFIER)).await;
            assert_success(&first, true, "read write");
            let rt = field(&first, "refresh_token");
            let second = refresh(&t, &client, &rt, None).await;
            assert_success(&second, true, "read write");
            assert_ne!(field(&second, "refresh_token"), rt);
            assert_ne!(
                field(&second, "access_token"),
                field(&first, "access_token")
            );
            t.store
                .validate_access_token(&field(&second, "access_token"))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn client_authentication_failures() {
        let t = TestServer::new();
        let b = confidential(&t, M::ClientSecretBasic).await;
        let p = confidential(&t, M::ClientSecretPost).await;
        let cc = "grant_type=client_credentials";
        let before = stats(&t).await;

        // A method the client is not registered for.
        let as_post = Registered {
            method: M::ClientSecretPost,
            ..b.clone()
        };
        let r = post_as(&t, TOKEN, &as_post, cc).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let as_basic = Registered {
            method: M::ClientSecretBasic,
            ..p.clone()
        };
        let r = post_as(&t, TOKEN, &as_basic, cc).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // A confidential client presenting only its id (as if public).
        let as_none = Registered {
            method: M::None,
            ..b.clone()
        };
        let r = post_as(&t, TOKEN, &as_none, cc).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");

        // Wrong secret over Basic: 401 with the Basic challenge.
        let wrong = basic(&b.id_str(), &p.secret.clone().unwrap());
        let r = t.post_form(TOKEN, cc, &[("authorization", &wrong)]).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // Wrong secret in the body.
        let r = t
            .post_form(
                TOKEN,
                &format!("{cc}&client_id={}&client_secret=cs_nope", p.id),
                &[],
            )
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        // Every 401 carries a challenge (RFC 9110 §15.5.2), body credentials included.
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // No credentials at all.
        let r = t.post_form(TOKEN, cc, &[]).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // Unknown client, each way.
        let ghost = uuid::Uuid::now_v7().to_string();
        let r = t
            .post_form(TOKEN, cc, &[("authorization", &basic(&ghost, b.secret()))])
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let r = t
            .post_form(
                TOKEN,
                &format!("{cc}&client_id={ghost}&client_secret={}", enc(b.secret())),
                &[],
            )
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let r = t
            .post_form(TOKEN, &format!("{cc}&client_id={ghost}"), &[])
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        // Not Basic at all.
        let r = t
            .post_form(TOKEN, cc, &[("authorization", "Bearer abc")])
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert_eq!(
            stats(&t).await,
            before,
            "failed authentication changed something"
        );

        // A disabled client, with the right secret, each method; then enabled again.
        t.store.disable_client(b.id).await.unwrap();
        t.store.disable_client(p.id).await.unwrap();
        let pub_client = public(&t).await;
        t.store.disable_client(pub_client.id).await.unwrap();
        let before = stats(&t).await;
        for c in [&b, &p] {
            let r = post_as(&t, TOKEN, c, cc).await;
            assert_eq!(oauth_error(&r, 401), "invalid_client");
        }
        let r = post_as(
            &t,
            TOKEN,
            &pub_client,
            "grant_type=refresh_token&refresh_token=x",
        )
        .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert_eq!(stats(&t).await, before);
        t.store.enable_client(b.id).await.unwrap();
        assert_success(&post_as(&t, TOKEN, &b, cc).await, false, "admin read write");
    }

    #[tokio::test]
    async fn grant_type_and_parameter_errors() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let before = stats(&t).await;
        for (params, status, error) in [
            ("", 400, "invalid_request"),
            ("scope=read", 400, "invalid_request"),
            (
                "grant_type=password&username=a&password=b",
                400,
                "unsupported_grant_type",
            ),
            ("grant_type=implicit", 400, "unsupported_grant_type"),
            (
                "grant_type=CLIENT_CREDENTIALS",
                400,
                "unsupported_grant_type",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:device_code",
                400,
                "unsupported_grant_type",
            ),
            ("grant_type=authorization_code", 400, "invalid_request"),
            ("grant_type=refresh_token", 400, "invalid_request"),
            (
                "grant_type=authorization_code&code=",
                400,
                "invalid_request",
            ),
            (
                "grant_type=authorization_code&code=ac_x",
                400,
                "invalid_grant",
            ),
            (
                "grant_type=refresh_token&refresh_token=rt_x",
                400,
                "invalid_grant",
            ),
            (
                "grant_type=refresh_token&refresh_token=foreign",
                400,
                "invalid_grant",
            ),
        ] {
            let r = post_as(&t, TOKEN, &c, params).await;
            assert_eq!(oauth_error(&r, status), error, "{params}");
        }
        // An unknown grant type is refused before any client authentication.
        let r = t.post_form(TOKEN, "grant_type=password", &[]).await;
        assert_eq!(oauth_error(&r, 400), "unsupported_grant_type");
        assert_eq!(stats(&t).await, before);
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused_and_change_nothing() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let auth = basic(&c.id_str(), c.secret());
        let before = stats(&t).await;

        // A repeated parameter (even with equal values).
        for body in [
            "grant_type=client_credentials&grant_type=client_credentials",
            "grant_type=client_credentials&scope=read&scope=write",
        ] {
            let r = t.post_form(TOKEN, body, &[("authorization", &auth)]).await;
            assert_eq!(oauth_error(&r, 400), "invalid_request");
            assert!(r.body.contains("repeated"), "{}", r.body);
        }
        // NUL and non-UTF-8, percent-encoded.
        for body in [
            "grant_type=client_credentials%00",
            "grant_type=client_credentials&scope=read%00",
            "grant_type=client_credentials&scope=%FF%FE",
        ] {
            let r = t.post_form(TOKEN, body, &[("authorization", &auth)]).await;
            assert_eq!(oauth_error(&r, 400), "invalid_request", "{body}");
        }
        // Raw non-UTF-8 and raw NUL bytes.
        for raw in [
            b"grant_type=client_credentials&scope=\xff\xfe".to_vec(),
            b"grant_type=client_credentials\0".to_vec(),
        ] {
            let req = Request::post(TOKEN)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", &auth)
                .body(Body::from(raw))
                .unwrap();
            let r = t.send(req).await;
            assert_eq!(oauth_error(&r, 400), "invalid_request");
        }
        // A JSON body, declared as JSON and undeclared.
        for ct in [Some("application/json"), None] {
            let mut req = Request::post(TOKEN).header("authorization", &auth);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let req = req
                .body(Body::from(r#"{"grant_type":"client_credentials"}"#))
                .unwrap();
            let r = t.send(req).await;
            assert_eq!(oauth_error(&r, 400), "invalid_request");
        }
        // 100 KiB, streamed (no Content-Length): refused while reading, as an OAuth error.
        let big = format!(
            "grant_type=client_credentials&pad={}",
            "a".repeat(100 * 1024)
        );
        let r = t.post_form(TOKEN, &big, &[("authorization", &auth)]).await;
        assert_eq!(oauth_error(&r, 413), "invalid_request");
        // ... and announced by Content-Length: refused before the handler.
        let len = big.len().to_string();
        let r = t
            .post_form(
                TOKEN,
                &big,
                &[("authorization", &auth), ("content-length", &len)],
            )
            .await;
        assert_eq!(r.status, 413);
        // Too many parameters.
        let many: String = (0..70).map(|i| format!("p{i}=1&")).collect();
        let r = t
            .post_form(
                TOKEN,
                &format!("{many}grant_type=client_credentials"),
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(oauth_error(&r, 400), "invalid_request");
        // GET is not the token endpoint.
        let r = t
            .get(&format!("{TOKEN}?grant_type=client_credentials"), &[])
            .await;
        assert_eq!(r.status, 405);

        assert_eq!(stats(&t).await, before);
    }

    #[tokio::test]
    async fn injection_strings_are_refused_and_change_nothing() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let p = public(&t).await;
        // Live targets, so a lookup that matched something would show in the stats.
        let live = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let at = field(&live, "access_token");
        let rt = field(&live, "refresh_token");
        let before = stats(&t).await;
        let auth = basic(&c.id_str(), c.secret());
        let injections = [
            "' OR '1'='1",
            "\"; DROP TABLE clients; --",
            "%00",
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "../../etc/passwd",
            "${jndi:ldap://127.0.0.1/a}",
        ];
        for s in injections {
            // Each value both as the literal string (percent-encoded) and raw in the body.
            for v in [enc(s), s.to_owned()] {
                let cases: Vec<(String, Vec<(&str, String)>)> = vec![
                    (
                        format!("grant_type={v}"),
                        vec![("authorization", auth.clone())],
                    ),
                    (
                        format!("grant_type=client_credentials&client_id={v}&client_secret=x"),
                        vec![],
                    ),
                    (
                        format!(
                            "grant_type=refresh_token&client_id={v}&refresh_token={}",
                            rt
                        ),
                        vec![],
                    ),
                    (
                        format!(
                            "grant_type=client_credentials&client_id={}&client_secret={v}",
                            c.id
                        ),
                        vec![],
                    ),
                    (
                        "grant_type=client_credentials".to_owned(),
                        vec![("authorization", basic(s, c.secret()))],
                    ),
                    (
                        "grant_type=client_credentials".to_owned(),
                        vec![("authorization", basic(&c.id_str(), s))],
                    ),
                    (
                        format!("grant_type=client_credentials&scope={v}"),
                        vec![("authorization", auth.clone())],
                    ),
                    (
                        format!("grant_type=refresh_token&refresh_token={rt}&scope={v}"),
                        vec![("authorization", auth.clone())],
                    ),
                    (
                        format!(
                            "grant_type=authorization_code&code={v}&redirect_uri={}",
                            enc(REDIRECT)
                        ),
                        vec![("authorization", auth.clone())],
                    ),
                    (
                        format!(
                            "grant_type=authorization_code&code={v}&client_id={}&code_verifier={VERIFIER}",
                            p.id
                        ),
                        vec![],
                    ),
                    (
                        format!("grant_type=refresh_token&refresh_token={v}"),
                        vec![("authorization", auth.clone())],
                    ),
                    (
                        format!(
                            "grant_type=refresh_token&refresh_token={v}&client_id={}",
                            p.id
                        ),
                        vec![],
                    ),
                ];
                for (body, headers) in cases {
                    let h: Vec<(&str, &str)> =
                        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let r = t.post_form(TOKEN, &body, &h).await;
                    assert!(
                        (400..500).contains(&r.status.as_u16()),
                        "{body}: {} {}",
                        r.status,
                        r.body
                    );
                    assert_eq!(r.header("cache-control"), Some("no-store"));
                    assert!(r.json()["error"].is_string(), "{}", r.body);
                }
                // Introspection and revocation answer 200 for junk tokens (RFC 7662, 7009),
                // 401 for junk client ids: never 5xx, nothing changed.
                for path in [crate::paths::INTROSPECT, crate::paths::REVOKE] {
                    let r = t
                        .post_form(path, &format!("token={v}"), &[("authorization", &auth)])
                        .await;
                    assert!(
                        r.status == 200 || r.status == 400,
                        "{path} {s}: {}",
                        r.status
                    );
                    if r.status == 200 && path == crate::paths::INTROSPECT {
                        assert_eq!(r.json(), serde_json::json!({"active": false}));
                    }
                    let r = t
                        .post_form(
                            path,
                            &format!("token={at}&client_id={v}&client_secret=x"),
                            &[],
                        )
                        .await;
                    assert!(
                        (400..500).contains(&r.status.as_u16()),
                        "{path}: {}",
                        r.status
                    );
                }
            }
        }
        assert_eq!(stats(&t).await, before, "an injection changed the store");
        assert!(t.store.validate_access_token(&at).await.is_ok());
        assert_success(&refresh(&t, &c, &rt, None).await, true, "read write");
    }

    #[tokio::test]
    async fn code_replay_revokes_the_first_tokens() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let code = code(&t, c.id, None).await;
        let first = redeem(&t, &c, &code, None).await;
        assert_success(&first, true, "read write");
        let at = field(&first, "access_token");
        let rt = field(&first, "refresh_token");
        assert!(active(&t, &c, &at).await);
        assert!(active(&t, &c, &rt).await);
        let audit_before = stats(&t).await.audit_events;

        let second = redeem(&t, &c, &code, None).await;
        assert_eq!(oauth_error(&second, 400), "invalid_grant");
        assert!(second.body.contains("already used"), "{}", second.body);
        assert!(!active(&t, &c, &at).await);
        assert!(!active(&t, &c, &rt).await);
        let r = refresh(&t, &c, &rt, None).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        // The replay was recorded.
        assert!(stats(&t).await.audit_events > audit_before);
    }

    #[tokio::test]
    async fn pkce_rules_at_the_token_endpoint() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretPost).await;
        let p = public(&t).await;

        // S256 accepted, for both kinds of client (covered with the right verifier).
        for client in [&c, &p] {
            let code = code(&t, client.id, Some(VERIFIER)).await;
            assert_success(
                &redeem(&t, client, &code, Some(VERIFIER)).await,
                true,
                "read write",
            );
        }

        // A wrong verifier is refused, and burns the code: the right one no longer works.
        for client in [&c, &p] {
            let code = code(&t, client.id, Some(VERIFIER)).await;
            let wrong = "x".repeat(43);
            let r = redeem(&t, client, &code, Some(&wrong)).await;
            assert_eq!(oauth_error(&r, 400), "invalid_grant");
            assert!(r.body.contains("PKCE"), "{}", r.body);
            let r = redeem(&t, client, &code, Some(VERIFIER)).await;
            assert_eq!(oauth_error(&r, 400), "invalid_grant");
        }
        // A verifier that is not even well-formed.
        let code1 = code(&t, p.id, Some(VERIFIER)).await;
        let r = redeem(&t, &p, &code1, Some("short")).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");

        // A challenge was sent, the verifier is missing.
        for client in [&c, &p] {
            let code = code(&t, client.id, Some(VERIFIER)).await;
            let r = redeem(&t, client, &code, None).await;
            assert_eq!(oauth_error(&r, 400), "invalid_grant");
            assert!(r.body.contains("code_verifier"), "{}", r.body);
        }

        // A verifier for a code issued without a challenge: a downgrade, refused.
        let code2 = code(&t, c.id, None).await;
        let r = redeem(&t, &c, &code2, Some(VERIFIER)).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        assert!(r.body.contains("downgrade"), "{}", r.body);

        // A public client cannot get a code without PKCE (core), so at the token endpoint
        // it can never redeem without a verifier.
        let no_pkce = t
            .store
            .issue_code(authstore_core::CodeRequest {
                client_id: p.id,
                subject: authstore_core::Subject::new(SUBJECT).unwrap(),
                redirect_uri: REDIRECT.into(),
                scope: authstore_core::Scopes::parse("read").unwrap(),
                code_challenge: None,
                nonce: None,
                auth: Default::default(),
            })
            .await;
        assert!(no_pkce.is_err());

        // Without PKCE, redirect_uri is required and must match.
        let code3 = code(&t, c.id, None).await;
        let r = post_as(
            &t,
            TOKEN,
            &c,
            &format!("grant_type=authorization_code&code={code3}"),
        )
        .await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        let code4 = code(&t, c.id, None).await;
        let r = post_as(
            &t,
            TOKEN,
            &c,
            &format!(
                "grant_type=authorization_code&code={code4}&redirect_uri={}",
                enc("https://app.example.com/other")
            ),
        )
        .await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");

        // A code issued to another client.
        let code5 = code(&t, c.id, Some(VERIFIER)).await;
        let r = redeem(&t, &p, &code5, Some(VERIFIER)).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        // ... is burnt for its own client too.
        let r = redeem(&t, &c, &code5, Some(VERIFIER)).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
    }

    #[tokio::test]
    async fn refresh_rotation_and_reuse() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let first = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let rt1 = field(&first, "refresh_token");
        let second = refresh(&t, &c, &rt1, None).await;
        assert_success(&second, true, "read write");
        let at2 = field(&second, "access_token");
        let rt2 = field(&second, "refresh_token");
        assert!(active(&t, &c, &at2).await);
        assert!(active(&t, &c, &rt2).await);
        // The rotated token is no longer active.
        assert!(!active(&t, &c, &rt1).await);
        // The new refresh token works.
        let third = refresh(&t, &c, &rt2, None).await;
        assert_success(&third, true, "read write");
        let at3 = field(&third, "access_token");
        let rt3 = field(&third, "refresh_token");

        // Reusing an old one: invalid_grant, and the whole family dies.
        let r = refresh(&t, &c, &rt1, None).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        assert!(r.body.contains("already used"), "{}", r.body);
        for tok in [&at2, &at3, &rt3, &field(&first, "access_token")] {
            assert!(!active(&t, &c, tok).await);
        }
        let r = refresh(&t, &c, &rt3, None).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");

        // Another client cannot use a client's refresh token, and its try changes nothing.
        let other = confidential(&t, M::ClientSecretBasic).await;
        let fresh = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let rt = field(&fresh, "refresh_token");
        let before = stats(&t).await;
        let r = refresh(&t, &other, &rt, None).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
        assert_eq!(stats(&t).await, before);
        assert_success(&refresh(&t, &c, &rt, None).await, true, "read write");
    }

    #[tokio::test]
    async fn refresh_scope_narrowing_and_widening() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let first = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let rt = field(&first, "refresh_token");

        // Widening (even to a scope the client may have) is refused and changes nothing.
        let before = stats(&t).await;
        for scope in ["read admin", "admin", "read write admin"] {
            let r = refresh(&t, &c, &rt, Some(scope)).await;
            assert_eq!(oauth_error(&r, 400), "invalid_scope", "{scope}");
        }
        assert_eq!(stats(&t).await, before);

        // Narrowing: the access token gets the narrower scope, the family keeps its own.
        let narrow = refresh(&t, &c, &rt, Some("read")).await;
        assert_success(&narrow, true, "read");
        let j = introspect(&t, &c, &field(&narrow, "access_token")).await;
        assert_eq!(j["scope"], "read");
        let j = introspect(&t, &c, &field(&narrow, "refresh_token")).await;
        assert_eq!(j["scope"], "read write");
        let again = refresh(&t, &c, &field(&narrow, "refresh_token"), None).await;
        assert_success(&again, true, "read write");
    }

    #[tokio::test]
    async fn per_client_rate_limit() {
        let t = TestServer::with_config(|c| c.client_rate_limit = RateLimit::per_second(1, 2));
        let c = confidential(&t, M::ClientSecretBasic).await;
        let other = confidential(&t, M::ClientSecretBasic).await;
        let cc = "grant_type=client_credentials";
        assert_eq!(post_as(&t, TOKEN, &c, cc).await.status, 200);
        assert_eq!(post_as(&t, TOKEN, &c, cc).await.status, 200);
        let r = post_as(&t, TOKEN, &c, cc).await;
        assert_eq!(oauth_error(&r, 429), "temporarily_unavailable");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
        // The limit is per client: another one is not affected.
        assert_eq!(post_as(&t, TOKEN, &other, cc).await.status, 200);
        // ... and it covers introspection too.
        let r = post_as(&t, crate::paths::INTROSPECT, &c, "token=at_x").await;
        assert_eq!(oauth_error(&r, 429), "temporarily_unavailable");
        // A public client is identified by its id alone, which anyone can send: it has no
        // per-client bucket for an attacker to drain (the per-address limit applies).
        let p = public(&t).await;
        for _ in 0..10 {
            let r = post_as(&t, TOKEN, &p, "grant_type=refresh_token&refresh_token=rt_x").await;
            assert_eq!(oauth_error(&r, 400), "invalid_grant");
        }
    }

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logs_never_show_secrets() {
        let buf = Capture(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_writer(move || writer.clone())
            .finish();
        // tracing-core caches each callsite's interest process-wide. While only one
        // dispatcher is registered, it asks the default of whichever thread first hits a
        // callsite, so a parallel test without a subscriber would cache "never" for the
        // request spans. A second registered dispatcher makes it ask every registered one.
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();

        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let p = confidential(&t, M::ClientSecretPost).await;
        let pubc = public(&t).await;
        let mut secrets = vec![
            c.secret().to_owned(),
            p.secret().to_owned(),
            VERIFIER.to_owned(),
        ];

        // Code flow, introspection, refresh, revocation.
        let code1 = code(&t, c.id, Some(VERIFIER)).await;
        secrets.push(code1.clone());
        let r = redeem(&t, &c, &code1, Some(VERIFIER)).await;
        let (at, rt) = (field(&r, "access_token"), field(&r, "refresh_token"));
        assert!(active(&t, &c, &at).await);
        let r2 = refresh(&t, &c, &rt, Some("read")).await;
        let (at2, rt2) = (field(&r2, "access_token"), field(&r2, "refresh_token"));
        assert!(active(&t, &c, &rt2).await);
        secrets.extend([at.clone(), rt.clone(), at2.clone(), rt2.clone()]);
        // Client credentials with client_secret_post.
        let r = post_as(&t, TOKEN, &p, "grant_type=client_credentials").await;
        secrets.push(field(&r, "access_token"));
        // Public client.
        let code2 = code(&t, pubc.id, Some(VERIFIER)).await;
        secrets.push(code2.clone());
        let r = redeem(&t, &pubc, &code2, Some(VERIFIER)).await;
        let pub_rt = field(&r, "refresh_token");
        secrets.extend([field(&r, "access_token"), pub_rt.clone()]);

        // Failures: replay, reuse, wrong secret, wrong verifier, other client's token.
        assert_eq!(redeem(&t, &pubc, &code2, Some(VERIFIER)).await.status, 400);
        assert_eq!(refresh(&t, &c, &rt, None).await.status, 400);
        let wrong_secret = "cs_0000000000000000000000000000000000000000000000000".to_owned();
        let r = t
            .post_form(
                TOKEN,
                "grant_type=client_credentials",
                &[("authorization", &basic(&c.id_str(), &wrong_secret))],
            )
            .await;
        assert_eq!(r.status, 401);
        let code3 = code(&t, c.id, Some(VERIFIER)).await;
        secrets.push(code3.clone());
        let wrong_verifier = "W".repeat(50);
        assert_eq!(
            redeem(&t, &c, &code3, Some(&wrong_verifier)).await.status,
            400
        );
        secrets.push(wrong_verifier);
        let r = post_as(
            &t,
            crate::paths::REVOKE,
            &p,
            &format!("token={}", enc(&at2)),
        )
        .await;
        // Another client's token: ignored, answered like an unknown one.
        assert_eq!(r.status, 200);
        let r = post_as(
            &t,
            crate::paths::REVOKE,
            &pubc,
            &format!("token={}&token_type_hint=refresh_token", enc(&pub_rt)),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(!active(&t, &c, &at2).await);

        let captured = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        // The capture did see the requests (so this test can fail).
        assert!(captured.contains("request{"), "{captured}");
        assert!(captured.contains(r#"route="/token""#), "{captured}");
        assert!(captured.contains(r#"route="/introspect""#), "{captured}");
        assert!(captured.contains(r#"route="/revoke""#), "{captured}");
        assert!(captured.contains("replay"), "{captured}");
        for s in &secrets {
            assert!(!s.is_empty());
            assert!(!captured.contains(s.as_str()), "a secret was logged");
        }
        // Not even the random part of one (a secret logged after some re-encoding).
        for s in &secrets {
            let tail = &s[s.len() - 20..];
            assert!(!captured.contains(tail), "part of a secret was logged");
        }
    }

    #[tokio::test]
    async fn deleted_client_mid_flow() {
        // A code whose client is deleted after issuance cannot be redeemed by anyone.
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let code = code(&t, c.id, None).await;
        t.store.delete_client(c.id).await.unwrap();
        let r = redeem(&t, &c, &code, None).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
    }

    #[tokio::test]
    async fn expired_code_is_invalid_grant() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let code = code(&t, c.id, None).await;
        t.clock.advance(Duration::from_secs(61));
        let r = redeem(&t, &c, &code, None).await;
        assert_eq!(oauth_error(&r, 400), "invalid_grant");
    }
}
