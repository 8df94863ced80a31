//! `GET /.well-known/oauth-authorization-server`: authorization server metadata (RFC 8414).
//!
//! Served at [`paths::METADATA`] and, for an issuer with a path (`https://host/tenant`),
//! also at the location RFC 8414 §3 defines for it: the well-known path with the issuer's
//! path appended (`/.well-known/oauth-authorization-server/tenant`), compared with the
//! request's path exactly as sent (the issuer path's percent-encoding included). A proxy in
//! front of several tenants routes that path, unchanged, to the tenant's server.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::paths;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    // The issuer path is matched by the handler, not put into a route: a path segment such
    // as `{x}` or `:x` would be read as route syntax.
    Router::new().route(paths::METADATA, get(metadata)).route(
        &format!("{}/{{*issuer_path}}", paths::METADATA),
        get(metadata_for_path),
    )
}

/// The RFC 8414 §3 location for an issuer with a path.
async fn metadata_for_path(State(state): State<AppState>, uri: Uri) -> Response {
    let issuer_path = state.config.issuer.path().trim_end_matches('/');
    let wanted = uri.path().strip_prefix(paths::METADATA);
    if issuer_path.is_empty() || wanted != Some(issuer_path) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    metadata(State(state)).await
}

async fn metadata(State(state): State<AppState>) -> Response {
    let c = &state.config;
    let body = json!({
        "issuer": c.issuer_str(),
        "authorization_endpoint": c.endpoint(paths::AUTHORIZE),
        "token_endpoint": c.endpoint(paths::TOKEN),
        "introspection_endpoint": c.endpoint(paths::INTROSPECT),
        "revocation_endpoint": c.endpoint(paths::REVOKE),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    });
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use crate::paths::METADATA;
    use crate::testing::TestServer;

    #[tokio::test]
    async fn metadata_document() {
        let t = TestServer::new();
        let r = t.get(METADATA, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(
            r.json(),
            serde_json::json!({
                "issuer": "http://127.0.0.1:8080",
                "authorization_endpoint": "http://127.0.0.1:8080/authorize",
                "token_endpoint": "http://127.0.0.1:8080/token",
                "introspection_endpoint": "http://127.0.0.1:8080/introspect",
                "revocation_endpoint": "http://127.0.0.1:8080/revoke",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported":
                    ["authorization_code", "client_credentials", "refresh_token"],
                "token_endpoint_auth_methods_supported":
                    ["client_secret_basic", "client_secret_post", "none"],
                "introspection_endpoint_auth_methods_supported":
                    ["client_secret_basic", "client_secret_post"],
                "revocation_endpoint_auth_methods_supported":
                    ["client_secret_basic", "client_secret_post", "none"],
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": true,
            })
        );
        // Only GET (and HEAD).
        let r = t.post_form(METADATA, "", &[]).await;
        assert_eq!(r.status, 405);
    }

    #[tokio::test]
    async fn endpoints_follow_an_issuer_with_a_path() {
        let t = TestServer::with_config(|c| {
            c.issuer = url::Url::parse("https://auth.example.com/tenant-a").unwrap();
        });
        let j = t.get(METADATA, &[]).await.json();
        assert_eq!(j["issuer"], "https://auth.example.com/tenant-a");
        assert_eq!(
            j["token_endpoint"],
            "https://auth.example.com/tenant-a/token"
        );
        assert_eq!(
            j["revocation_endpoint"],
            "https://auth.example.com/tenant-a/revoke"
        );
    }

    #[tokio::test]
    async fn rfc8414_location_for_an_issuer_with_a_path() {
        let t = TestServer::with_config(|c| {
            c.issuer = url::Url::parse("https://auth.example.com/tenant-a/x%7B1%7D").unwrap();
        });
        let at_root = t.get(METADATA, &[]).await;
        assert_eq!(at_root.status, 200);
        let r = t
            .get(
                "/.well-known/oauth-authorization-server/tenant-a/x%7B1%7D",
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), at_root.json());
        assert_eq!(
            r.json()["issuer"],
            "https://auth.example.com/tenant-a/x%7B1%7D"
        );
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        // Another tenant's path, a prefix of ours, or more than ours: not ours.
        for other in [
            "/.well-known/oauth-authorization-server/tenant-b",
            "/.well-known/oauth-authorization-server/tenant-a",
            "/.well-known/oauth-authorization-server/tenant-a/x%7B1%7D/y",
            "/.well-known/oauth-authorization-server/tenant-a/x{1}",
        ] {
            let r = t.get(other, &[]).await;
            assert_eq!(r.status, 404, "{other}");
        }
        // An issuer without a path has only the one location.
        let plain = TestServer::new();
        assert_eq!(plain.get(METADATA, &[]).await.status, 200);
        let r = plain
            .get("/.well-known/oauth-authorization-server/tenant-a", &[])
            .await;
        assert_eq!(r.status, 404);
    }
}
