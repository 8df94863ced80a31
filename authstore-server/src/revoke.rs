//! `POST /revoke`: token revocation (RFC 7009).
//!
//! Any authenticated client, public ones included (they identify with `client_id`), may
//! revoke its own access and refresh tokens. Revoking a refresh token revokes its whole
//! grant. Unknown and malformed tokens answer 200 as RFC 7009 §2.2 says. A token of another
//! client is left alone and the answer is the same 200: an error there would tell any
//! client (public ones need no secret) that a string is somebody's live token.

use authstore_core::backend::RevokeOutcome;
use authstore_core::{Error as CoreError, TokenTypeHint};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::client_auth::{Public, authenticate};
use crate::error::{OAuthError, no_store};
use crate::state::AppState;
use crate::token::read_form;
use crate::{metrics, paths};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(paths::REVOKE, post(revoke))
}

async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::error::answer(handle(&state, &headers, body).await, "revocation refused")
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let form = read_form(headers, body)?;
    let client = authenticate(state, headers, &form, Public::Allowed).await?;
    let token = form.require("token")?;
    // RFC 7009 §2.1: an unknown hint is ignored (the server searches every kind).
    let hint = match form.get("token_type_hint") {
        Some("access_token") => Some(TokenTypeHint::AccessToken),
        Some("refresh_token") => Some(TokenTypeHint::RefreshToken),
        _ => None,
    };
    match state.store.revoke_token(token, hint, Some(client.id)).await {
        Ok(RevokeOutcome::WrongClient) => {
            tracing::debug!(client_id = %client.id, "revocation of another client's token ignored");
        }
        Ok(RevokeOutcome::Revoked { grant_id }) => {
            metrics::tokens_revoked("token");
            tracing::debug!(client_id = %client.id, %grant_id, "token revoked");
        }
        // Unknown tokens, and strings that cannot be tokens: 200 (RFC 7009 §2.2).
        Ok(_) | Err(CoreError::MalformedToken { .. }) => {}
        Err(e) => return Err(OAuthError::from_core(&e)),
    }
    let mut resp = StatusCode::OK.into_response();
    no_store(&mut resp);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use authstore_core::TokenEndpointAuthMethod as M;

    use crate::paths::{REVOKE, TOKEN};
    use crate::testing::TestServer;
    use crate::token::test_support::*;

    #[tokio::test]
    async fn unknown_and_malformed_tokens_answer_200() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let p = public(&t).await;
        let unknown = {
            let other = TestServer::new();
            let o = confidential(&other, M::ClientSecretBasic).await;
            let r = post_as(&other, TOKEN, &o, "grant_type=client_credentials").await;
            field(&r, "access_token")
        };
        let code = code(&t, c.id, None).await;
        let before = stats(&t).await;
        for caller in [&c, &p] {
            for tok in [
                unknown.as_str(),
                "rt_x",
                "at_",
                "opaque",
                code.as_str(),
                "pat_abc",
            ] {
                for hint in ["", "&token_type_hint=refresh_token", "&token_type_hint=x"] {
                    let r = post_as(&t, REVOKE, caller, &format!("token={}{hint}", enc(tok))).await;
                    assert_eq!(r.status, 200, "{tok}: {}", r.body);
                    assert!(r.body.is_empty());
                }
            }
        }
        assert_eq!(stats(&t).await, before);
        // The code was not touched.
        assert_eq!(redeem(&t, &c, &code, None).await.status, 200);
    }

    #[tokio::test]
    async fn another_clients_token_is_ignored_and_stays_active() {
        let t = TestServer::new();
        let owner = confidential(&t, M::ClientSecretBasic).await;
        let other = confidential(&t, M::ClientSecretPost).await;
        let p = public(&t).await;
        let r = redeem(&t, &owner, &code(&t, owner.id, None).await, None).await;
        let at = field(&r, "access_token");
        let rt = field(&r, "refresh_token");
        let before = stats(&t).await;
        for caller in [&other, &p] {
            for tok in [&at, &rt] {
                let r = post_as(&t, REVOKE, caller, &format!("token={tok}")).await;
                // The same answer as for an unknown token: nothing tells the caller the
                // string is somebody's live token.
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.body, "");
            }
        }
        assert_eq!(stats(&t).await, before);
        assert!(active(&t, &owner, &at).await);
        assert!(active(&t, &owner, &rt).await);
    }

    #[tokio::test]
    async fn revoking_an_access_token() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretPost).await;
        let r = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let at = field(&r, "access_token");
        let rt = field(&r, "refresh_token");
        let r = post_as(
            &t,
            REVOKE,
            &c,
            &format!("token={at}&token_type_hint=access_token"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(!active(&t, &c, &at).await);
        // Only that token: the refresh token still works.
        assert!(active(&t, &c, &rt).await);
        assert_eq!(refresh(&t, &c, &rt, None).await.status, 200);
        // Revoking it again is still 200.
        assert_eq!(
            post_as(&t, REVOKE, &c, &format!("token={at}")).await.status,
            200
        );
    }

    #[tokio::test]
    async fn revoking_a_refresh_token_kills_the_grant() {
        let t = TestServer::new();
        for c in [
            confidential(&t, M::ClientSecretBasic).await,
            public(&t).await,
        ] {
            let r = redeem(
                &t,
                &c,
                &code(&t, c.id, Some(VERIFIER)).await,
                Some(VERIFIER),
            )
            .await;
            let at1 = field(&r, "access_token");
            let r = refresh(&t, &c, &field(&r, "refresh_token"), None).await;
            let at2 = field(&r, "access_token");
            let rt2 = field(&r, "refresh_token");
            // A misleading hint does not matter.
            let r = post_as(
                &t,
                REVOKE,
                &c,
                &format!("token={rt2}&token_type_hint=access_token"),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            for tok in [&at1, &at2] {
                assert!(t.store.validate_access_token(tok).await.is_err());
            }
            assert!(t.store.introspect_refresh_token(&rt2).await.is_err());
            assert_eq!(
                oauth_error(&refresh(&t, &c, &rt2, None).await, 400),
                "invalid_grant"
            );
        }
        // Seen through introspection by a confidential client.
        let c = confidential(&t, M::ClientSecretBasic).await;
        let r = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let at = field(&r, "access_token");
        assert!(active(&t, &c, &at).await);
        let r = post_as(
            &t,
            REVOKE,
            &c,
            &format!("token={}", field(&r, "refresh_token")),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(!active(&t, &c, &at).await);
    }

    #[tokio::test]
    async fn revocation_needs_a_client_and_a_token() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let r = post_as(&t, TOKEN, &c, "grant_type=client_credentials").await;
        let at = field(&r, "access_token");
        let r = t.post_form(REVOKE, &format!("token={at}"), &[]).await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        let r = t
            .post_form(
                REVOKE,
                &format!("token={at}&client_id={}", uuid::Uuid::now_v7()),
                &[],
            )
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        // A confidential client cannot pass as public.
        let r = t
            .post_form(REVOKE, &format!("token={at}&client_id={}", c.id), &[])
            .await;
        assert_eq!(oauth_error(&r, 401), "invalid_client");
        let r = post_as(&t, REVOKE, &c, "token_type_hint=access_token").await;
        assert_eq!(oauth_error(&r, 400), "invalid_request");
        assert!(active(&t, &c, &at).await);
    }
}
