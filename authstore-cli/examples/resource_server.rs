//! A resource server (an API) that admits only requests carrying a valid access token issued
//! by `authstore serve`, validated against the same database with
//! `authstore_server::bearer::BearerLayer`: one keyed hash and one indexed read per request,
//! so a revocation is seen by the next request.
//!
//! ```text
//! authstore serve &        # creates ./authstore.db and ./authstore.db.token-keys
//! cargo run -p authstore --example resource_server     # listens on 127.0.0.1:8081
//! curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:8081/me
//! ```
//!
//! `AUTHSTORE_DATABASE_URL` (default `sqlite://./authstore.db`) and `AUTHSTORE_TOKEN_KEY_FILE`
//! (default: the file beside the SQLite database) name the same store and key the server
//! uses. `GET /me` needs the scope `read`; `POST /notes` needs `write`.

#![allow(clippy::print_stdout)]

use authstore::core::Authstore;
use authstore::keys::{self, Ring};
use authstore_server::bearer::{BearerAuth, BearerLayer};
use axum::routing::{get, post};
use axum::{Json, Router};

async fn me(auth: BearerAuth) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "subject": auth.subject().map(|s| s.as_str()),
        "client_id": auth.client_id().map(|c| c.to_string()),
        "scope": auth.scope().to_string(),
    }))
}

async fn add_note(auth: BearerAuth) -> String {
    format!(
        "note stored for {}\n",
        auth.subject().map(|s| s.as_str()).unwrap_or("a service")
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AUTHSTORE_DATABASE_URL")
        .unwrap_or_else(|_| "sqlite://./authstore.db".into());
    let key_file = match std::env::var("AUTHSTORE_TOKEN_KEY_FILE") {
        Ok(f) => f,
        Err(_) => {
            let path = url.strip_prefix("sqlite://").ok_or(
                "set AUTHSTORE_TOKEN_KEY_FILE: the key file is beside SQLite databases only",
            )?;
            format!("{path}{}", Ring::Token.default_suffix())
        }
    };
    // The same token key as the server: tokens are stored as keyed hashes.
    let text = keys::read_key_file(std::path::Path::new(&key_file), Ring::Token)?;
    let keyring = keys::parse_token_keys(&text, &key_file)?;
    let store = Authstore::new(authstore::open(&url).await?, keyring);
    // Refuses a key file other than the one the database was used with.
    store.verify_keys().await?;

    let app = Router::new()
        .route(
            "/me",
            get(me).layer(BearerLayer::new(store.clone()).require_scopes("read")?),
        )
        .route(
            "/notes",
            post(add_note).layer(BearerLayer::new(store).require_scopes("write")?),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
    println!(
        "resource server on http://127.0.0.1:8081 (GET /me needs read, POST /notes needs write)"
    );
    authstore_server::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
