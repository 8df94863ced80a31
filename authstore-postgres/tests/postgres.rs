//! PostgreSQL-specific behaviour: migrations under concurrency, schema checks, URLs,
//! strings PostgreSQL cannot store, secrets in Debug and errors, exact timestamps, cleanup
//! from two nodes.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::{
    CleanupOptions, ClientStore, GrantStore, Maintenance, PatStore, TokenIssue,
};
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuthContext, Backend, Client, ClientId,
    ClientType, Error, Grant, GrantId, GrantType, PatId, PersonalAccessToken, Scopes, Subject,
    Timestamp, TokenEndpointAuthMethod, TokenHash, TokenLifetimes,
};
use authstore_postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION, SslMode, migrations};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_123_457);

fn client(at: Timestamp) -> Client {
    Client {
        id: ClientId::new_at(at),
        name: "svc".into(),
        client_type: ClientType::Confidential,
        redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: Scopes::parse("read write").unwrap(),
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        lifetimes: TokenLifetimes {
            access_token: Some(Duration::from_secs(60)),
            ..TokenLifetimes::default()
        },
        metadata: serde_json::json!({"team": "a b", "n": 1, "f": 1.5, "nested": {"k": [1, "x", null]}}),
        created_at: at,
        updated_at: at,
        disabled: false,
    }
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::new(kind, T0, &AuditContext::default())
}

async fn migrated() -> (PostgresStore, String) {
    let (s, schema) = common::store().await;
    s.migrate().await.unwrap();
    (s, schema)
}

/// Runs `sql` in `schema` on an admin connection.
async fn admin_exec(schema: &str, sql: &str) {
    common::admin()
        .await
        .batch_execute(&format!("SET search_path = {schema}; {sql}"))
        .await
        .unwrap();
}

async fn table_count(schema: &str) -> i64 {
    common::admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_migrating_at_once_migrate_exactly_once() {
    // A schema that does not exist yet: migrate creates it.
    let schema = format!("{}_new", common::fresh_schema().await);
    let url = common::url();
    let mut stores = Vec::new();
    for _ in 0..10 {
        stores.push(Arc::new(
            PostgresStore::connect(&url, common::options(&schema))
                .await
                .unwrap(),
        ));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = Arc::clone(s);
            let b = Arc::clone(&barrier);
            tokio::spawn(async move {
                b.wait().await;
                s.migrate().await
            })
        })
        .collect();
    let mut applied = Vec::new();
    for t in tasks {
        applied.extend(t.await.unwrap().unwrap());
    }
    assert_eq!(
        applied,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each migration applied exactly once in all"
    );
    for s in &stores {
        assert!(s.migrate().await.unwrap().is_empty());
    }
    // Every node works, whichever migrated.
    stores[0]
        .insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    for s in &stores {
        assert_eq!(s.list_clients(None, 10).await.unwrap().len(), 1);
    }
    let rows = common::admin()
        .await
        .query(
            &format!(
                "SELECT version, name, checksum FROM {schema}.schema_migrations ORDER BY version"
            ),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected: Vec<_> = migrations()
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.checksum()))
        .collect();
    assert_eq!(got, expected);
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_nothing_changes() {
    let (s, schema) = migrated().await;
    admin_exec(
        &schema,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')",
    )
    .await;
    let tables = table_count(&schema).await;
    match PostgresStore::connect(&common::url(), common::options(&schema)).await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (9999, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // The store that was open before: migrate refuses too.
    assert!(matches!(
        s.migrate().await,
        Err(Error::SchemaTooNew { found: 9999, .. })
    ));
    assert_eq!(table_count(&schema).await, tables);

    // A schema holding only a newer schema_migrations: migrate creates nothing.
    let (fresh, schema2) = common::store().await;
    admin_exec(
        &schema2,
        "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
             checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')",
    )
    .await;
    assert!(matches!(
        fresh.migrate().await,
        Err(Error::SchemaTooNew { found: 9999, .. })
    ));
    assert_eq!(table_count(&schema2).await, 1, "nothing was created");
    assert!(matches!(
        fresh.get_client(ClientId::new_at(T0)).await,
        Err(Error::SchemaTooNew { .. })
    ));
    drop(common::DropSchema(schema));
    drop(common::DropSchema(schema2));
}

#[tokio::test]
async fn an_edited_migration_is_detected() {
    let (s, schema) = migrated().await;
    admin_exec(
        &schema,
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
    )
    .await;
    match s.migrate().await {
        Err(Error::MigrationChecksum { version, name }) => {
            assert_eq!(version, 1);
            assert_eq!(name, "initial");
        }
        other => panic!("expected MigrationChecksum, got {other:?}"),
    }
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn unmigrated_stores_say_so_until_someone_migrates() {
    let (s, schema) = common::store().await;
    let e = s
        .insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotMigrated {
                found: 0,
                needed: SCHEMA_VERSION
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        s.find_access_token(&TokenHash::from_bytes([1; 32]), T0)
            .await,
        Err(Error::NotMigrated { .. })
    ));
    assert!(matches!(s.stats(T0).await, Err(Error::NotMigrated { .. })));
    assert!(matches!(
        s.cleanup(&CleanupOptions::default(), T0).await,
        Err(Error::NotMigrated { .. })
    ));
    // Another node migrates the same schema: this one notices.
    let other = PostgresStore::connect(&common::url(), common::options(&schema))
        .await
        .unwrap();
    assert_eq!(
        other.migrate().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<i64>>()
    );
    s.insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    assert_eq!(s.backend_name(), "postgres");
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn url_parameters_configure_the_store() {
    let schema = common::fresh_schema().await;
    let url = common::url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let s = PostgresStore::connect_url(&format!(
        "{url}{sep}pool_size=3&schema={schema}&statement_timeout=1500&connect_timeout=2\
         &acquire_timeout=4&sslmode=disable&application_name=authstore-test"
    ))
    .await
    .unwrap();
    let o = s.options();
    assert_eq!(o.pool_size, 3);
    assert_eq!(o.schema.as_deref(), Some(schema.as_str()));
    assert_eq!(o.statement_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(o.connect_timeout, Duration::from_secs(2));
    assert_eq!(o.acquire_timeout, Duration::from_secs(4));
    assert_eq!(o.ssl_mode, SslMode::Disable);
    assert_eq!(s.pool_status().max_size, 3);
    s.migrate().await.unwrap();
    // The tables went to the schema named in the URL.
    assert!(table_count(&schema).await > 5);
    // The server sees the settings on our connections.
    let rows = common::admin()
        .await
        .query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'authstore-test'",
            &[],
        )
        .await
        .unwrap();
    let n: i64 = rows[0].get(0);
    assert!(n >= 1, "our connections carry application_name");

    // Bad parameters: typed errors that never repeat the password.
    let with_pw = url.replacen("://authstore@", "://authstore:hunter2@", 1);
    for bad in [
        format!("{with_pw}{sep}pool_size=0"),
        format!("{with_pw}{sep}pool_size=many"),
        format!("{with_pw}{sep}statement_timeout=soon"),
        format!("{with_pw}{sep}sslmode=verify-ca"),
        format!("{with_pw}{sep}bogus=1"),
        format!("{with_pw}{sep}schema=a&schema=b"),
        "mysql://authstore:hunter2@127.0.0.1/db".to_owned(),
        "postgres://authstore:hunter2@127.0.0.1:notaport/db".to_owned(),
    ] {
        match PostgresStore::connect_url(&bad).await {
            Err(e @ Error::UnsupportedUrl { .. }) => {
                assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
            }
            other => panic!("{bad}: expected UnsupportedUrl, got {other:?}"),
        }
    }
    for bad in [
        format!("{with_pw}{sep}schema=Bad-Name"),
        format!("{with_pw}{sep}schema=pg_catalog"),
    ] {
        match PostgresStore::connect_url(&bad).await {
            Err(e @ Error::Config { .. }) => {
                assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
            }
            other => panic!("{bad}: expected Config, got {other:?}"),
        }
    }
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn the_password_never_shows() {
    let url = common::url();
    let with_pw = url.replacen("://authstore@", "://authstore:hunter2@", 1);
    // Trust authentication ignores the password: the connection works.
    let s = PostgresStore::connect_url(&with_pw).await.unwrap();
    let dbg = format!("{s:?}");
    assert!(dbg.starts_with("PostgresStore"), "{dbg}");
    assert!(dbg.contains("127.0.0.1"), "{dbg}");
    assert!(!dbg.contains("hunter2"), "{dbg}");

    // Nothing listens on port 1: a temporary error, without the password.
    let e = PostgresStore::connect(
        "postgres://authstore:hunter2@127.0.0.1:1/postgres",
        PostgresOptions {
            connect_timeout: Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.is_temporary(), "{e:?}");
    let mut shown = format!("{e} {e:?}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        shown.push_str(&format!(" {s} {s:?}"));
        src = s.source();
    }
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn nul_is_refused_before_the_server() {
    let (s, schema) = migrated().await;
    let mut c = client(T0);
    c.name = "a\0b".into();
    assert!(matches!(
        s.insert_client(&c, None, event(AuditKind::ClientCreated))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    let mut c = client(T0);
    c.metadata = serde_json::json!({"k": ["ok", "n\0ul"]});
    assert!(matches!(
        s.insert_client(&c, None, event(AuditKind::ClientCreated))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    let c = client(T0);
    let mut ev = event(AuditKind::ClientCreated);
    ev.details = serde_json::json!({"why": "\0"});
    assert!(matches!(
        s.insert_client(&c, None, ev).await,
        Err(Error::InvalidInput { .. })
    ));
    let mut ev = event(AuditKind::ClientCreated);
    ev.actor = Some("ad\0min".into());
    assert!(matches!(
        s.insert_client(&c, None, ev).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(
        s.get_client(c.id).await.unwrap().is_none(),
        "nothing was written"
    );
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let pat = PersonalAccessToken {
        id: PatId::new_at(T0),
        user: Subject::new("alice").unwrap(),
        name: "laptop\0".into(),
        scope: Scopes::parse("read").unwrap(),
        created_at: T0,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    assert!(matches!(
        s.insert_pat(
            &TokenHash::from_bytes([3; 32]),
            &pat,
            event(AuditKind::PatIssued)
        )
        .await,
        Err(Error::InvalidInput { .. })
    ));
    let (grant, issue) = token_issue(&c, 1, T0);
    let mut bad = issue.clone();
    if let Some((_, t)) = bad.access.as_mut() {
        t.claims = serde_json::json!({"x": "\0"});
    }
    assert!(matches!(
        s.issue_tokens(&bad, event(AuditKind::TokensIssued)).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(s.get_grant(grant).await.unwrap().is_none());
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn timestamps_and_values_round_trip_exactly() {
    let (s, schema) = migrated().await;
    for at in [
        T0,
        Timestamp::from_unix_micros(1),
        Timestamp::from_unix_micros(-1),
        Timestamp::from_unix_micros(-62_135_596_800_000_000), // year 1
        Timestamp::from_unix_micros(i64::MAX),
    ] {
        let mut c = client(T0);
        c.id = ClientId::new_at(T0);
        c.created_at = at;
        c.updated_at = at;
        s.insert_client(
            &c,
            Some(&TokenHash::from_bytes([9; 32])),
            event(AuditKind::ClientCreated),
        )
        .await
        .unwrap();
        assert_eq!(s.get_client(c.id).await.unwrap().as_ref(), Some(&c));
        assert_eq!(
            s.get_client_with_secret(c.id).await.unwrap(),
            Some((c.clone(), Some(TokenHash::from_bytes([9; 32]))))
        );
    }
    // Expiry is exclusive, to the microsecond.
    let c = client(T0);
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let (_, issue) = token_issue(&c, 7, T0);
    s.issue_tokens(&issue, event(AuditKind::TokensIssued))
        .await
        .unwrap();
    let (hash, token) = issue.access.clone().unwrap();
    let exp = token.expires_at;
    let before = Timestamp::from_unix_micros(exp.as_unix_micros() - 1);
    assert_eq!(
        s.find_access_token(&hash, before).await.unwrap(),
        Some(token)
    );
    assert_eq!(s.find_access_token(&hash, exp).await.unwrap(), None);
    // Duplicates conflict, naming the record only.
    match s
        .insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
    {
        Err(Error::Conflict { what }) => assert_eq!(what, "client"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn undecodable_rows_are_backend_errors_not_panics() {
    let (s, schema) = migrated().await;
    let c = client(T0);
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    admin_exec(&schema, "UPDATE clients SET scopes = 'a  b'").await;
    match s.get_client(c.id).await {
        Err(
            e @ Error::Backend {
                temporary: false, ..
            },
        ) => assert_eq!(e.code(), "AS0016"),
        other => panic!("expected a permanent Backend error, got {other:?}"),
    }
    admin_exec(
        &schema,
        "UPDATE clients SET scopes = 'read', client_type = 'x'",
    )
    .await;
    assert!(matches!(
        s.get_client(c.id).await,
        Err(Error::Backend {
            temporary: false,
            ..
        })
    ));
    drop(common::DropSchema(schema));
}

/// A new grant with one access token whose hash starts with `i`.
fn token_issue(c: &Client, i: u32, at: Timestamp) -> (GrantId, TokenIssue) {
    let grant = Grant {
        id: GrantId::new_at(at),
        client_id: c.id,
        subject: None,
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext::default(),
        created_at: at,
        revoked_at: None,
    };
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&i.to_le_bytes());
    let token = AccessToken {
        grant_id: grant.id,
        client_id: c.id,
        subject: None,
        scope: grant.scope.clone(),
        audience: vec!["api".into(), "other".into()],
        issued_at: at,
        expires_at: at.saturating_add(Duration::from_secs(60)),
        revoked_at: None,
        cnf: None,
        auth: AuthContext {
            acr: Some("urn:x".into()),
            amr: vec!["pwd".into()],
            mfa_verified: true,
        },
        claims: serde_json::json!({"tenant": "t1"}),
    };
    let id = grant.id;
    (
        id,
        TokenIssue {
            grant_id: grant.id,
            new_grant: Some(grant),
            access: Some((TokenHash::from_bytes(h), token)),
            refresh: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_from_two_nodes_counts_each_row_once() {
    let (a, schema) = migrated().await;
    let b = PostgresStore::connect(&common::url(), common::options(&schema))
        .await
        .unwrap();
    let c = client(T0);
    a.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let n = 250u32;
    for i in 0..n {
        let (_, issue) = token_issue(&c, i, T0);
        a.issue_tokens(&issue, event(AuditKind::TokensIssued))
            .await
            .unwrap();
    }
    // One live token in a live grant: cleanup must keep both.
    let later = T0.saturating_add(Duration::from_secs(3 * 86_400));
    let (live_grant, live) = token_issue(&c, 100_000, later);
    a.issue_tokens(&live, event(AuditKind::TokensIssued))
        .await
        .unwrap();
    let opts = CleanupOptions {
        batch_size: 16,
        ..CleanupOptions::default()
    };
    let (ra, rb) = tokio::join!(a.cleanup(&opts, later), b.cleanup(&opts, later));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.access_tokens + rb.access_tokens, u64::from(n));
    assert_eq!(
        ra.grants + rb.grants,
        u64::from(n),
        "emptied grants go in the same run"
    );
    assert!(!ra.incomplete && !rb.incomplete);
    let st = a.stats(later).await.unwrap();
    assert_eq!(st.access_tokens.active, 1);
    assert_eq!(st.grants.active, 1);
    assert_eq!(st.clients, 1, "the client stays");
    assert!(st.database_bytes.unwrap() > 0);
    let (hash, token) = live.access.unwrap();
    assert_eq!(
        a.find_access_token(&hash, later).await.unwrap(),
        Some(token)
    );
    assert!(a.get_grant(live_grant).await.unwrap().is_some());
    // A bounded run says when more remain.
    for i in 0..40u32 {
        let (_, issue) = token_issue(&c, 200_000 + i, T0);
        a.issue_tokens(&issue, event(AuditKind::TokensIssued))
            .await
            .unwrap();
    }
    let small = CleanupOptions {
        batch_size: 10,
        max_batches: 2,
        ..CleanupOptions::default()
    };
    let r = a.cleanup(&small, later).await.unwrap();
    assert_eq!(r.access_tokens, 20);
    assert!(r.incomplete);
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn pat_usage_is_one_batch_and_later_times_win() {
    let (s, schema) = migrated().await;
    let user = Subject::new("alice").unwrap();
    let mut ids = Vec::new();
    for i in 0..3u8 {
        let pat = PersonalAccessToken {
            id: PatId::new_at(T0),
            user: user.clone(),
            name: format!("p{i}"),
            scope: Scopes::parse("read").unwrap(),
            created_at: T0,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        s.insert_pat(
            &TokenHash::from_bytes([i; 32]),
            &pat,
            event(AuditKind::PatIssued),
        )
        .await
        .unwrap();
        ids.push(pat.id);
    }
    let t = |s: i64| Timestamp::from_unix_micros(T0.as_unix_micros() + s);
    s.record_pat_usage(&[
        (ids[0], t(5)),
        (ids[0], t(9)),
        (ids[0], t(7)),
        (ids[1], t(3)),
        (PatId::new_at(T0), t(1)),
    ])
    .await
    .unwrap();
    s.record_pat_usage(&[(ids[1], t(2))]).await.unwrap();
    let pats = s.list_pats(&user).await.unwrap();
    let used: Vec<_> = pats.iter().map(|p| p.last_used_at).collect();
    assert_eq!(used, vec![Some(t(9)), Some(t(3)), None]);
    drop(common::DropSchema(schema));
}

#[tokio::test]
async fn a_revoked_grant_goes_in_bounded_batches_counted_once() {
    let (s, schema) = migrated().await;
    let c = client(T0);
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let grant = Grant {
        id: GrantId::new_at(T0),
        client_id: c.id,
        subject: None,
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext::default(),
        created_at: T0,
        revoked_at: None,
    };
    // 25 access tokens alive for 30 days: only the grant's revocation makes them go.
    for i in 0..25u8 {
        let token = AccessToken {
            grant_id: grant.id,
            client_id: c.id,
            subject: None,
            scope: grant.scope.clone(),
            audience: vec![],
            issued_at: T0,
            expires_at: T0.saturating_add(Duration::from_secs(30 * 86_400)),
            revoked_at: None,
            cnf: None,
            auth: AuthContext::default(),
            claims: serde_json::json!({}),
        };
        let issue = TokenIssue {
            grant_id: grant.id,
            new_grant: (i == 0).then(|| grant.clone()),
            access: Some((TokenHash::from_bytes([i; 32]), token)),
            refresh: None,
        };
        s.issue_tokens(&issue, event(AuditKind::TokensIssued))
            .await
            .unwrap();
    }
    s.revoke_grant(grant.id, event(AuditKind::GrantRevoked))
        .await
        .unwrap();
    let later = T0.saturating_add(Duration::from_secs(2 * 86_400));
    let small = CleanupOptions {
        batch_size: 10,
        max_batches: 2,
        ..CleanupOptions::default()
    };
    // Two batches of at most 10 rows: 20 tokens go, the grant stays.
    let r = s.cleanup(&small, later).await.unwrap();
    assert_eq!(
        r.total(),
        0,
        "tokens of a revoked grant go with it, uncounted: {r:?}"
    );
    assert!(r.incomplete);
    assert!(s.get_grant(grant.id).await.unwrap().is_some());
    let st = s.stats(later).await.unwrap();
    assert_eq!(st.access_tokens.revoked, 5, "bounded: 2 batches of 10");
    let r = s
        .cleanup(
            &CleanupOptions {
                max_batches: 1000,
                ..small
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(r.grants, 1, "{r:?}");
    assert_eq!(r.total(), 1, "{r:?}");
    assert!(!r.incomplete);
    assert!(s.get_grant(grant.id).await.unwrap().is_none());
    let st = s.stats(later).await.unwrap();
    assert_eq!(st.access_tokens, Default::default(), "{st:?}");
    drop(common::DropSchema(schema));
}
