//! Storing an `oauth2::StandardTokenResponse` (feature `oauth2`).
#![cfg(feature = "oauth2")]

use std::sync::Arc;
use std::time::Duration;

use authstore::core::{
    Authstore, Config, Error, ManualClock, NewClient, Scopes, Timestamp, TokenKey, TokenKeyring,
};
use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, EmptyExtraTokenFields, RefreshToken, Scope, StandardTokenResponse};

#[tokio::test]
async fn stores_a_standard_token_response() {
    let backend = authstore::open("memory:").await.unwrap();
    let clock = ManualClock::new(Timestamp::from_unix_micros(1_767_225_600_000_000));
    let store = Authstore::new(backend, TokenKeyring::new(TokenKey::generate("k").unwrap()))
        .with_clock(Arc::new(clock.clone()))
        .with_config(Config {
            accept_foreign_tokens: true,
            ..Config::default()
        })
        .unwrap();
    let client = store
        .create_client(NewClient::confidential("gw").scopes(Scopes::parse("read write").unwrap()))
        .await
        .unwrap()
        .client;

    let mut resp = StandardTokenResponse::new(
        AccessToken::new("upstream-access-token".into()),
        BasicTokenType::Bearer,
        EmptyExtraTokenFields {},
    );
    resp.set_refresh_token(Some(RefreshToken::new("upstream-refresh-token".into())));
    resp.set_expires_in(Some(&Duration::from_secs(120)));
    resp.set_scopes(Some(vec![Scope::new("read".into())]));

    let grant = store
        .store_token_response(&resp, client.id, None)
        .await
        .unwrap();
    let t = store
        .validate_access_token("upstream-access-token")
        .await
        .unwrap();
    assert_eq!(t.grant_id, grant);
    assert_eq!(t.scope, Scopes::parse("read").unwrap());
    assert_eq!(
        store
            .introspect_refresh_token("upstream-refresh-token")
            .await
            .unwrap()
            .grant_id,
        grant
    );
    clock.advance(Duration::from_secs(120));
    assert!(matches!(
        store.validate_access_token("upstream-access-token").await,
        Err(Error::Inactive { .. })
    ));

    // A scope the client may not have is refused, and nothing is stored.
    resp.set_scopes(Some(vec![Scope::new("admin".into())]));
    resp.set_refresh_token(None);
    assert!(matches!(
        store.store_token_response(&resp, client.id, None).await,
        Err(Error::InvalidScope { .. })
    ));
}
