//! `POST /introspect`: token introspection (RFC 7662) for confidential clients.
//!
//! Covers the OAuth tokens this server issues (access and refresh tokens). Anything else —
//! unknown, malformed, expired, revoked or rotated tokens, personal access tokens, codes —
//! is `{"active": false}`. A client sees the details of its own tokens, and of access tokens
//! whose audience names it (a resource server introspecting tokens meant for it); for every
//! other token it gets `{"active": false}`, so introspection cannot be used to probe other
//! clients' tokens.

use authstore_core::{
    AccessToken, ClientId, Error as CoreError, RefreshToken, Scopes, SenderConstraint,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

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
    let active = match &found {
        Some(f) if visible_to(f, client.id) => Some(f),
        _ => None,
    };
    metrics::token_validated(active.is_some());
    tracing::debug!(client_id = %client.id, active = active.is_some(), "token introspected");
    let mut resp = match active {
        Some(f) => axum::Json(details(state, f)).into_response(),
        None => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            INACTIVE,
        )
            .into_response(),
    };
    no_store(&mut resp);
    Ok(resp)
}

/// The answer for every token that is not active (or not the caller's to see).
const INACTIVE: &str = r#"{"active":false}"#;

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

/// The RFC 7662 answer for an active token, serialised straight from the records (no
/// intermediate JSON tree). Fields in alphabetical order, absent ones skipped: the same
/// bytes a sorted `serde_json::Map` gives.
#[derive(Serialize)]
struct Active<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'a str>,
    active: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    amr: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    aud: &'a [String],
    #[serde(serialize_with = "display")]
    client_id: &'a ClientId,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
    exp: i64,
    iat: i64,
    iss: &'a str,
    #[serde(serialize_with = "display")]
    scope: &'a Scopes,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    token_type: &'static str,
}

/// A value written through its `Display` (no intermediate `String`).
fn display<T: std::fmt::Display, S: Serializer>(v: &&T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(*v)
}

/// RFC 7800 confirmation: `{"jkt": ..}` (RFC 9449) or `{"x5t#S256": ..}` (RFC 8705).
struct Cnf<'a>(&'a SenderConstraint);

impl Serialize for Cnf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.0.kind(), self.0.value())?;
        m.end()
    }
}

fn details<'a>(state: &'a AppState, found: &'a Found) -> Active<'a> {
    match found {
        Found::Access(t) => Active {
            acr: t.auth.acr.as_deref(),
            active: true,
            amr: &t.auth.amr,
            aud: &t.audience,
            client_id: &t.client_id,
            cnf: t.cnf.as_ref().map(Cnf),
            exp: t.expires_at.as_unix_seconds(),
            iat: t.issued_at.as_unix_seconds(),
            iss: state.config.issuer_str(),
            scope: &t.scope,
            sub: t.subject.as_ref().map(|s| s.as_str()),
            token_type: match t.cnf {
                Some(SenderConstraint::DpopJkt(_)) => "DPoP",
                _ => "Bearer",
            },
        },
        Found::Refresh(t) => Active {
            acr: None,
            active: true,
            amr: &[],
            aud: &[],
            client_id: &t.client_id,
            cnf: t.cnf.as_ref().map(Cnf),
            // The token dies at whichever comes first: its family's end or its idle expiry.
            exp: t.expires_at.min(t.idle_expires_at).as_unix_seconds(),
            iat: t.issued_at.as_unix_seconds(),
            iss: state.config.issuer_str(),
            scope: &t.scope,
            sub: t.subject.as_ref().map(|s| s.as_str()),
            token_type: "refresh_token",
        },
    }
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

    /// The answers are JSON with the fields in alphabetical order (the order a sorted map
    /// gave before they were serialised straight from the records), byte for byte.
    #[tokio::test]
    async fn answers_are_exact_json() {
        let t = TestServer::new();
        let c = confidential(&t, M::ClientSecretBasic).await;
        let r = redeem(&t, &c, &code(&t, c.id, None).await, None).await;
        let at = field(&r, "access_token");
        let now = START.as_unix_seconds();
        let r = post_as(&t, INTROSPECT, &c, &format!("token={at}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("pragma"), Some("no-cache"));
        assert_eq!(
            r.body,
            format!(
                r#"{{"acr":"urn:example:loa:2","active":true,"amr":["pwd","otp"],"client_id":"{id}","exp":{exp},"iat":{now},"iss":"http://127.0.0.1:8080","scope":"read write","sub":"{SUBJECT}","token_type":"Bearer"}}"#,
                id = c.id_str(),
                exp = now + 3600,
            )
        );
        for token in ["at_unknown", "", "not a token"] {
            let r = post_as(&t, INTROSPECT, &c, &format!("token={}", enc(token))).await;
            if token.is_empty() {
                assert_eq!(r.status, 400, "{}", r.body);
                continue;
            }
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("pragma"), Some("no-cache"));
            assert_eq!(r.body, r#"{"active":false}"#);
        }
    }

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
