//! `GET /.well-known/oauth-authorization-server`: authorization server metadata (RFC 8414).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::paths;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(paths::METADATA, get(metadata))
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
}
