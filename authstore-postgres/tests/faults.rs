//! The server stops and starts under a live store: calls fail with a temporary error,
//! bounded in time, and the same store works again once the server is back.
//!
//! ONE test only in this file: it restarts the shared throwaway server, and cargo runs test
//! binaries one after another, so no other test sees the outage.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authstore_core::backend::{Backend, ClientStore, GrantStore, Maintenance};
use authstore_core::{
    AuditContext, AuditEvent, AuditKind, Authstore, Client, ClientId, ClientType, Error, GrantType,
    Scopes, Timestamp, TokenEndpointAuthMethod, TokenFormat, TokenHash, TokenKey, TokenKeyring,
    TokenKind, TokenLifetimes,
};
use authstore_postgres::{PostgresOptions, PostgresStore};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

fn ctl(action: &str) {
    let script = match std::env::var("AUTHSTORE_TEST_POSTGRES_CTL") {
        Ok(s) if !s.is_empty() => s,
        _ => panic!(
            "AUTHSTORE_TEST_POSTGRES_CTL is not set: run ./scripts/test, which starts a \
             throwaway PostgreSQL and says how to stop and start it"
        ),
    };
    let status = Command::new(&script).arg(action).status().unwrap();
    assert!(status.success(), "`{script} {action}` failed: {status}");
}

/// Starts the server again even if the test fails half-way, so later test binaries run.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(s) = std::env::var("AUTHSTORE_TEST_POSTGRES_CTL") {
                let _ = Command::new(s).arg("start").status();
            }
        }
    }
}

fn client() -> Client {
    Client {
        id: ClientId::new_at(T0),
        name: "svc".into(),
        client_type: ClientType::Confidential,
        redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: Scopes::parse("read").unwrap(),
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        lifetimes: TokenLifetimes::default(),
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
        disabled: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_after_the_server_restarts() {
    let schema = common::fresh_schema().await;
    let store = Arc::new(
        PostgresStore::connect(
            &common::url(),
            PostgresOptions {
                connect_timeout: Duration::from_secs(2),
                acquire_timeout: Duration::from_secs(2),
                ..common::options(&schema)
            },
        )
        .await
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let c = client();
    store
        .insert_client(
            &c,
            None,
            AuditEvent::new(AuditKind::ClientCreated, T0, &AuditContext::default()),
        )
        .await
        .unwrap();
    let probe = TokenHash::from_bytes([5; 32]);
    // Warm the pool: several connections open and idle.
    for r in concurrent_lookups(&store, probe, 4).await {
        assert_eq!(r.unwrap(), None);
    }

    let _restart = Restart;
    ctl("stop");
    // Every call fails, typed as temporary, within the connect timeout; none hangs.
    for _ in 0..3 {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(15), store.find_access_token(&probe, T0))
            .await
            .expect("a call during the outage must not hang");
        let e = r.expect_err("the server is down");
        assert!(e.is_temporary(), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bounded by the connect timeout: {:?}",
            started.elapsed()
        );
        let r = store.get_client(c.id).await;
        assert!(r.as_ref().is_err_and(|e| e.is_temporary()), "{r:?}");
    }
    // Junk never reaches the database: a mistyped token is malformed (a client error),
    // not a temporary failure, even while the server is down.
    let s = Authstore::new(
        Arc::clone(&store) as Arc<dyn Backend>,
        TokenKeyring::new(TokenKey::from_bytes("k1", [7; 32]).unwrap()),
    );
    let mut typo = TokenFormat::new()
        .mint(TokenKind::AccessToken)
        .unwrap()
        .to_string();
    let last = typo.pop().unwrap();
    typo.push(if last == '0' { '1' } else { '0' });
    let e = s.validate_access_token(&typo).await.unwrap_err();
    assert!(matches!(e, Error::MalformedToken { .. }), "{e:?}");

    ctl("start");
    // The same store, no new process: works again within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get_client(c.id).await {
            Ok(found) => {
                assert_eq!(found, Some(c.clone()));
                break;
            }
            Err(e) => {
                assert!(e.is_temporary(), "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "the store did not recover: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Every pooled connection is usable again (the broken ones were replaced).
    for r in concurrent_lookups(&store, probe, 8).await {
        assert_eq!(r.unwrap(), None);
    }
    drop(common::DropSchema(schema));
}

/// `n` lookups at once, so the pool hands out several connections.
async fn concurrent_lookups(
    store: &Arc<PostgresStore>,
    probe: TokenHash,
    n: usize,
) -> Vec<authstore_core::Result<Option<authstore_core::AccessToken>>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let s = Arc::clone(store);
            tokio::spawn(async move { s.find_access_token(&probe, T0).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
