//! `POST /introspect`: token introspection (RFC 7662) for confidential clients.
//!
//! Covers the OAuth tokens this server issues (access and refresh tokens). Anything else —
//! unknown, malformed, expired, revoked or rotated tokens, personal access tokens, codes —
//! is `{"active": false}`. A client sees the details of its own tokens, and of access tokens
//! whose audience names it (a resource server introspecting tokens meant for it); for every
//! other token it gets `{"active": false}`, so introspection cannot be used to probe other
//! clients' tokens.

use authstore_core::{AccessToken, ClientId, Error as CoreError, RefreshToken, SenderConstraint};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use crate::client_auth::{Public, authenticate};
use crate::error::{OAuthError, no_store};
use crate::state::AppState;
use crate::token::read_form;
use crate::{metrics, paths};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(paths::INTROSPECT, post(introspect))
}

/// What a lookup found.
enum Found {
    Access(AccessToken),
    Refresh(RefreshToken),
}

async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::error::answer(
        handle(&state, &headers, body).await,
        "introspection refused",
    )
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = read_form(headers, body)?;
    let client = authenticate(state, headers, &form, Public::Refused).await?;
    let token = form.require("token")?;
    // RFC 7662 §2.1: the hint orders the lookups; an unknown value is ignored.
    let refresh_first = form.get("token_type_hint") == Some("refresh_token");
    let found = if refresh_first {
        match find_refresh(state, token).await? {
            Some(f) => Some(f),
            None => find_access(state, token).await?,
        }
    } else {
        match find_access(state, token).await? {
            Some(f) => Some(f),
            None => find_refresh(state, token).await?,
        }
    };
    let body = match found {
        Some(f) if visible_to(&f, client.id) => details(state, &f),
        _ => json!({ "active": false }),
    };
    let active = body["active"] == true;
    metrics::token_validated(active);
    tracing::debug!(client_id = %client.id, active, "token introspected");
    let mut resp = axum::Json(body).into_response();
    no_store(&mut resp);
    Ok(resp)
}

/// An active access token, `None` for anything else; a store failure is an error.
async fn find_access(state: &AppState, token: &str) -> Result<Option<Found>, OAuthError> {
    match state.store.validate_access_token(token).await {
        Ok(t) => Ok(Some(Found::Access(t))),
        Err(CoreError::Inactive { .. } | CoreError::MalformedToken { .. }) => Ok(None),
        Err(e) => Err(OAuthError::from_core(&e)),
    }
}

/// An active (unrotated) refresh token, `None` for anything else.
async fn find_refresh(state: &AppState, token: &str) -> Result<Option<Found>, OAuthError> {
    match state.store.introspect_refresh_token(token).await {
        Ok(t) => Ok(Some(Found::Refresh(t))),
        Err(CoreError::Inactive { .. } | CoreError::MalformedToken { .. }) => Ok(None),
        Err(e) => Err(OAuthError::from_core(&e)),
    }
}

/// A client sees its own tokens, and access tokens whose audience names it.
fn visible_to(found: &Found, caller: ClientId) -> bool {
    match found {
        Found::Access(t) => t.client_id == caller || t.audience.contains(&caller.to_string()),
        Found::Refresh(t) => t.client_id == caller,
    }
}

fn details(state: &AppState, found: &Found) -> Value {
    let mut m = Map::new();
    m.insert("active".into(), Value::Bool(true));
    match found {
        Found::Access(t) => {
            m.insert("scope".into(), t.scope.to_string().into());
            m.insert("client_id".into(), t.client_id.to_string().into());
            if let Some(s) = &t.subject {
                m.insert("sub".into(), s.as_str().into());
            }
            m.insert("exp".into(), t.expires_at.as_unix_seconds().into());
            m.insert("iat".into(), t.issued_at.as_unix_seconds().into());
            let token_type = match t.cnf {
                Some(SenderConstraint::DpopJkt(_)) => "DPoP",
                _ => "Bearer",
            };
            m.insert("token_type".into(), token_type.into());
            if !t.audience.is_empty() {
                m.insert("aud".into(), t.audience.clone().into());
            }
            if let Some(c) = &t.cnf {
                m.insert("cnf".into(), cnf(c));
            }
            if let Some(acr) = &t.auth.acr {
                m.insert("acr".into(), acr.as_str().into());
            }
            if !t.auth.amr.is_empty() {
                m.insert("amr".into(), t.auth.amr.clone().into());
            }
        }
        Found::Refresh(t) => {
            m.insert("scope".into(), t.scope.to_string().into());
            m.insert("client_id".into(), t.client_id.to_string().into());
            if let Some(s) = &t.subject {
                m.insert("sub".into(), s.as_str().into());
            }
            // The token dies at whichever comes first: its family's end or its idle expiry.
            let exp = t.expires_at.min(t.idle_expires_at);
            m.insert("exp".into(), exp.as_unix_seconds().into());
            m.insert("iat".into(), t.issued_at.as_unix_seconds().into());
            m.insert("token_type".into(), "refresh_token".into());
            if let Some(c) = &t.cnf {
                m.insert("cnf".into(), cnf(c));
            }
        }
    }
    m.insert("iss".into(), state.config.issuer_str().into());
    Value::Object(m)
}

/// RFC 7800 confirmation: `{"jkt": ..}` (RFC 9449) or `{"x5t#S256": ..}` (RFC 8705).
fn cnf(c: &SenderConstraint) -> Value {
    let mut m = Map::new();
    m.insert(c.kind().into(), c.value().into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use authstore_core::{
        NewPat, Scopes, SenderConstraint, Subject, TokenEndpointAuthMethod as M, TokenOptions,
    };

    use crate::paths::INTROSPECT;
    use crate::testing::{START, TestServer, basic};
    use crate::token::test_support::*;

    #[tokio::test]
    async fn own_token_details() {
        let t = TestServer::new();
        for c in [
            confidential(&t, M::ClientSecretBasic).await,
            confidential(&t, M::ClientSecretPost).await,
        ] {
            let r = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
            let at = field(&r, "access_token");
            let rt = field(&r, "refresh_token");
            let j = introspect(&t, &c, &at).await;
            let now = START.as_unix_seconds();
            assert_eq!(
                j,
                serde_json::json!({
                    "active": true,
                    "scope": "read write",
                    "client_id": c.id_str(),
                    "sub": SUBJECT,
                    "exp": now + 3600,
                    "iat": now,
                    "token_type": "Bearer",
                    "iss": "http://127.0.0.1:8080",
                    "acr": "urn:example:loa:2",
                    "amr": ["pwd", "otp"],
                })
            );
            let j = introspect(&t, &c, &rt).await;
            assert_eq!(
                j,
                serde_json::json!({
                    "active": true,
                    "scope": "read write",
                    "client_id": c.id_str(),
                    "sub": SUBJECT,
                    // The idle expiry (14 days) comes before the absolute one (30 days).
                    "exp": now + 14 * 86_400,
                    "iat": now,
                    "token_type": "refresh_token",
                    "iss": "http://127.0.0.1:8080",
                })
            );
            // The hint orders lookups; a wrong or unknown hint still finds the token.
            for hint in ["refresh_token", "access_token", "bogus"] {
                for tok in [&at, &rt] {
                    let r = post_as(
                        &t,
                        INTROSPECT,
                        &c,
                        &format!("token={tok}&token_type_hint={hint}"),
                    )
                    .await;
                    assert_eq!(r.json()["active"], true, "{hint}");
                }
            }
        }
        // A client_credentials token has no subject.
        let c = confidential(&t, M::ClientSecretBasic).await;
        let r = post_as(&t, crate::paths::TOKEN, &c, "grant_type=client_credentials").await;
        let j = introspect(&t, &c, &field(&r, "access_token")).await;
        assert_eq!(j["active"], true);
        assert!(j.get("sub").is_none());
        assert!(j.get("acr").is_none() && j.get("amr").is_none() && j.get("aud").is_none());
    }

    #[tokio::test]
    async fn other_clients_tokens_are_inactive_unless_in_audience() {
        let t = TestServer::new();
        let owner = confidential(&t, M::ClientSecretBasic).await;
        let rs = confidential(&t, M::ClientSecretPost).await;
        let stranger = confidential(&t, M::ClientSecretBasic).await;

        let r = redeem(&t, &owner, &code(&t, owner.id, None).await, None).await;
        let at = field(&r, "access_token");
        let rt = field(&r, "refresh_token");
        for tok in [&at, &rt] {
            assert_eq!(
                introspect(&t, &rs, tok).await,
                serde_json::json!({"active": false})
            );
            assert!(active(&t, &owner, tok).await);
        }

        // An access token meant for the resource server (its client id in `aud`).
        let issued = t
            .store
            .issue_client_credentials(
                owner.id,
                None,
                &TokenOptions {
                    audience: vec![rs.id_str(), "https://api.example.com".into()],
                    ..TokenOptions::default()
                },
            )
            .await
            .unwrap();
        let aud_at = issued.access_token.secret().to_owned();
        let j = introspect(&t, &rs, &aud_at).await;
        assert_eq!(j["active"], true);
        assert_eq!(j["client_id"], owner.id_str());
        assert_eq!(
            j["aud"],
            serde_json::json!([rs.id_str(), "https://api.example.com"])
        );
        // Its owner sees it too; a client not in the audience does not.
        assert!(active(&t, &owner, &aud_at).await);
        assert_eq!(
            introspect(&t, &stranger, &aud_at).await,
            serde_json::json!({"active": false})
        );
    }

    #[tokio::test]
    async fn only_confidential_clients_may_introspect() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let p = public(&t).await;
        let r = redeem(
            &t,
            &p,
            &code(&t, p.id, Some(VERIFIER)).await,
            Some(VERIFIER),
        )
        .await;
        let at = field(&r, "access_token");

        // A public client, even about its own token.
        let r = post_as(&t, INTROSPECT, &p, &format!("token={at}")).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        // No credentials; wrong secret; wrong method.
        let r = t.post_form(INTROSPECT, &format!("token={at}"), &[]).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let r = t
            .post_form(
                INTROSPECT,
                &format!("token={at}"),
                &[("authorization", &basic(&c.id_str(), "cs_wrong"))],
            )
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let as_post = Registered {
            method: M::ClientSecretPost,
            ..c.clone()
        };
        let r = post_as(&t, INTROSPECT, &as_post, &format!("token={at}")).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        // A missing token.
        let r = post_as(&t, INTROSPECT, &c, "token_type_hint=access_token").await;
        assert_eq!(oauth_error(&r, 400), "invalid_request");
        let r = post_as(&t, INTROSPECT, &c, "token=").await;
        assert_eq!(oauth_error(&r, 400), "invalid_request");
        let r = post_as(&t, INTROSPECT, &c, "token=a&token=b").await;
        assert_eq!(oauth_error(&r, 400), "invalid_request");
    }

    #[tokio::test]
    async fn inactive_tokens() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let inactive = serde_json::json!({"active": false});

        // Malformed, unknown well-formed, foreign, oversized.
        let unknown = {
            let other = TestServer::new();
            let o = confidential(&other, M::ClientSecretBasic).await;
            let r = post_as(
                &other,
                crate::paths::TOKEN,
                &o,
                "grant_type=client_credentials",
            )
            .await;
            field(&r, "access_token")
        };
        for tok in [
            "at_x".to_owned(),
            "rt_".to_owned(),
            unknown,
            "some-opaque-token".to_owned(),
            "x".repeat(5000),
        ] {
            assert_eq!(introspect(&t, &c, &tok).await, inactive);
        }
        // A personal access token and a code are not OAuth tokens here.
        let pat = t
            .store
            .issue_pat(NewPat {
                user: Subject::new(SUBJECT).unwrap(),
                name: "ci".into(),
                scope: Scopes::parse("read").unwrap(),
                expires_in: None,
            })
            .await
            .unwrap();
        assert_eq!(introspect(&t, &c, pat.secret.secret()).await, inactive);
        let code = code(&t, c.id, None).await;
        assert_eq!(introspect(&t, &c, &code).await, inactive);
        // ... and introspecting the code did not consume it.
        assert_eq!(redeem(&t, &c, &code, None).await.status, 200);

        // Revoked.
        let r = post_as(&t, crate::paths::TOKEN, &c, "grant_type=client_credentials").await;
        let at = field(&r, "access_token");
        t.store.revoke_token(&at, None, None).await.unwrap();
        assert_eq!(introspect(&t, &c, &at).await, inactive);
        // A disabled client's tokens (introspected by another client in their audience).
        let rs = confidential(&t, M::ClientSecretBasic).await;
        let issued = t
            .store
            .issue_client_credentials(
                c.id,
                None,
                &TokenOptions {
                    audience: vec![rs.id_str()],
                    ..TokenOptions::default()
                },
            )
            .await
            .unwrap();
        let aud_at = issued.access_token.secret().to_owned();
        assert!(active(&t, &rs, &aud_at).await);
        t.store.disable_client(c.id).await.unwrap();
        assert_eq!(introspect(&t, &rs, &aud_at).await, inactive);
    }

    #[tokio::test]
    async fn expiry_follows_the_store_clock() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let r = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let at = field(&r, "access_token");
        let rt = field(&r, "refresh_token");
        t.clock.advance(Duration::from_secs(3599));
        assert!(active(&t, &c, &at).await);
        t.clock.advance(Duration::from_secs(1));
        assert!(!active(&t, &c, &at).await, "dead at expires_at exactly");
        assert!(active(&t, &c, &rt).await);
        // The refresh token dies at its idle expiry.
        t.clock.advance(Duration::from_secs(14 * 86_400));
        assert!(!active(&t, &c, &rt).await);
    }

    #[tokio::test]
    async fn sender_constrained_tokens() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let thumb = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        for (constraint, token_type, key) in [
            (SenderConstraint::DpopJkt(thumb.into()), "DPoP", "jkt"),
            (
                SenderConstraint::MtlsX5tS256(thumb.into()),
                "Bearer",
                "x5t#S256",
            ),
        ] {
            let issued = t
                .store
                .issue_client_credentials(
                    c.id,
                    None,
                    &TokenOptions {
                        cnf: Some(constraint),
                        ..TokenOptions::default()
                    },
                )
                .await
                .unwrap();
            let j = introspect(&t, &c, issued.access_token.secret()).await;
            assert_eq!(j["active"], true);
            assert_eq!(j["token_type"], token_type);
            assert_eq!(j["cnf"], serde_json::json!({ key: thumb }));
        }
    }
}
