//! An OAuth 2.0 client of `authstore serve`, built on the `oauth2` crate: it reads the
//! server's metadata, gets a token with client_credentials, introspects it, revokes it and
//! shows that it is then inactive.
//!
//! ```text
//! authstore serve &
//! authstore client create --name demo --grant-type client_credentials --scope "read" --json
//! AUTHSTORE_CLIENT_ID=… AUTHSTORE_CLIENT_SECRET=… cargo run -p authstore --example client
//! ```
//!
//! `AUTHSTORE_ISSUER` defaults to `http://127.0.0.1:8080`. The secret is read from the
//! environment, not from the command line, where `ps` would show it.

#![allow(clippy::print_stdout)]

use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, IntrospectionUrl, Scope, TokenIntrospectionResponse, TokenResponse,
    TokenUrl,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer =
        std::env::var("AUTHSTORE_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let id = std::env::var("AUTHSTORE_CLIENT_ID")
        .map_err(|_| "set AUTHSTORE_CLIENT_ID (from `authstore client create … --json`)")?;
    let secret = std::env::var("AUTHSTORE_CLIENT_SECRET")
        .map_err(|_| "set AUTHSTORE_CLIENT_SECRET (shown once by `authstore client create`)")?;
    // No redirects: a token endpoint never needs one, and following one could leak the
    // client's credentials to another host.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let meta: serde_json::Value = http
        .get(format!("{issuer}/.well-known/oauth-authorization-server"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let endpoint = |name: &str| -> Result<String, String> {
        meta[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the metadata has no {name}"))
    };
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_token_uri(TokenUrl::new(endpoint("token_endpoint")?)?)
        .set_introspection_url(IntrospectionUrl::new(endpoint("introspection_endpoint")?)?);

    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http)
        .await?;
    println!(
        "got an access token (at_…), expires in {:?}, scope {:?}",
        token.expires_in(),
        token
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    );

    let intro = client
        .introspect(token.access_token())
        .request_async(&http)
        .await?;
    println!(
        "introspection: active={} client_id={:?}",
        intro.active(),
        intro.client_id().map(|c| c.as_str().to_owned())
    );

    // RFC 7009 revocation. The oauth2 crate sends it only over https (RFC 7009 §5); a local
    // `authstore serve` is plain http on loopback, so post the request directly.
    let revoked = http
        .post(endpoint("revocation_endpoint")?)
        .basic_auth(&id, Some(&secret))
        .form(&[("token", token.access_token().secret().as_str())])
        .send()
        .await?;
    println!("revocation: HTTP {}", revoked.status());
    let after = client
        .introspect(token.access_token())
        .request_async(&http)
        .await?;
    println!("after revocation: active={}", after.active());
    Ok(())
}
