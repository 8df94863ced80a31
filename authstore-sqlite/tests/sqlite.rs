//! SQLite-specific behaviour: migrations, schema checks, URLs, pragmas, persistence, errors.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use authstore_core::backend::{ClientStore, GrantStore, Maintenance};
use authstore_core::{
    AuditContext, AuditEvent, AuditKind, Backend, Client, ClientId, ClientType, Error, GrantType,
    Scopes, Timestamp, TokenEndpointAuthMethod, TokenHash, TokenLifetimes,
};
use authstore_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, Synchronous, migrations};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

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
        metadata: serde_json::json!({"team": "a b", "n": 1}),
        created_at: at,
        updated_at: at,
        disabled: false,
    }
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::new(kind, T0, &AuditContext::default())
}

async fn migrated(path: &Path) -> SqliteStore {
    let s = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    s.migrate().await.unwrap();
    s
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let b = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let mut applied = ra.unwrap();
    applied.extend(rb.unwrap());
    applied.sort_unstable();
    assert_eq!(
        applied,
        (1..=SCHEMA_VERSION).collect::<Vec<i64>>(),
        "each migration applied exactly once"
    );
    assert_eq!(a.migrate().await.unwrap(), Vec::<i64>::new());
    assert_eq!(b.migrate().await.unwrap(), Vec::<i64>::new());
    // Both stores work, whichever migrated.
    a.insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    assert_eq!(b.list_clients(None, 10).await.unwrap().len(), 1);

    let rows: Vec<(i64, String, String)> = raw(&path)
        .prepare("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<_> = migrations()
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.checksum()))
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(migrations().last().unwrap().version, SCHEMA_VERSION);
}

#[tokio::test]
async fn newer_schema_is_refused_and_the_file_is_unchanged() {
    for keep_wal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(migrated(&path).await);
        {
            let c = raw(&path);
            c.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at)
                 VALUES (9999, 'future', 'x', 0)",
                [],
            )
            .unwrap();
            if !keep_wal {
                // Back to a rollback journal: opening must not switch WAL on again.
                let _: String = c
                    .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
                    .unwrap();
            }
        }
        let before = std::fs::read(&path).unwrap();
        match SqliteStore::open(&path, SqliteOptions::default()) {
            Err(Error::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (9999, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the database file is unchanged"
        );
        let mode: String = raw(&path)
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, if keep_wal { "wal" } else { "delete" });
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        if !keep_wal {
            assert!(!Path::new(&wal).exists(), "WAL mode was not switched on");
        }
    }
}

#[tokio::test]
async fn newer_schema_appearing_after_open_is_refused_by_migrate_and_methods() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    // Unmigrated: methods refuse.
    match s.get_client(ClientId::new_at(T0)).await {
        Err(Error::NotMigrated { found: 0, needed }) => assert_eq!(needed, SCHEMA_VERSION),
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    match s
        .find_access_token(&TokenHash::from_bytes([1; 32]), T0)
        .await
    {
        Err(Error::NotMigrated { .. }) => {}
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    assert_eq!(
        s.migrate().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<i64>>()
    );
    assert!(s.get_client(ClientId::new_at(T0)).await.unwrap().is_none());

    // A newer authstore migrates the file under us (DDL plus its record): migrate refuses
    // it, and so does the next write, instead of writing into a schema it does not know.
    raw(&path)
        .execute_batch(
            "CREATE TABLE future_things (x INTEGER);
             INSERT INTO schema_migrations VALUES (9999, 'future', 'x', 0);",
        )
        .unwrap();
    assert!(matches!(
        s.migrate().await,
        Err(Error::SchemaTooNew { found: 9999, .. })
    ));
    let ev = authstore_core::AuditEvent::new(
        authstore_core::AuditKind::GrantRevoked,
        T0,
        &Default::default(),
    );
    match s
        .revoke_grant(authstore_core::GrantId::new_at(T0), ev)
        .await
    {
        Err(Error::SchemaTooNew { found: 9999, .. }) => {}
        other => panic!("a write into a newer schema must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn an_edited_migration_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = migrated(&path).await;
    raw(&path)
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            [],
        )
        .unwrap();
    match s.migrate().await {
        Err(Error::MigrationChecksum { version, name }) => {
            assert_eq!(version, 1);
            assert_eq!(name, "initial");
        }
        other => panic!("expected MigrationChecksum, got {other:?}"),
    }
}

#[tokio::test]
async fn unmigrated_stores_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("t.db"), SqliteOptions::default()).unwrap();
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
    assert!(matches!(s.stats(T0).await, Err(Error::NotMigrated { .. })));
    assert!(matches!(
        s.cleanup(&Default::default(), T0).await,
        Err(Error::NotMigrated { .. })
    ));
    // Another store migrating the same file is noticed.
    let other = migrated(&dir.path().join("t.db")).await;
    drop(other);
    s.insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
}

#[tokio::test]
async fn pragmas_are_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let s = migrated(&dir.path().join("t.db")).await;
    for reader in [false, true] {
        assert_eq!(s.pragma("journal_mode", reader).unwrap(), "wal");
        assert_eq!(s.pragma("foreign_keys", reader).unwrap(), "1");
        assert_eq!(
            s.pragma("synchronous", reader).unwrap(),
            "2",
            "FULL by default"
        );
        assert_eq!(s.pragma("busy_timeout", reader).unwrap(), "5000");
        // 2 = MEMORY: savepoint journals of group commit never spill to temporary files.
        assert_eq!(s.pragma("temp_store", reader).unwrap(), "2");
        assert_eq!(
            s.pragma("mmap_size", reader).unwrap(),
            "0",
            "off by default"
        );
        assert_eq!(s.pragma("cache_size", reader).unwrap(), "-8192");
    }
    assert_eq!(s.pragma("query_only", false).unwrap(), "0");
    assert_eq!(
        s.pragma("query_only", true).unwrap(),
        "1",
        "readers cannot write"
    );
    assert!(matches!(
        s.pragma("writable_schema", false),
        Err(Error::InvalidInput { .. })
    ));

    let opts = SqliteOptions {
        readers: 1,
        busy_timeout: Duration::from_millis(250),
        synchronous: Synchronous::Normal,
        mmap_size: 64 * 1024 * 1024,
        cache_size_kib: 1024,
    };
    let s = SqliteStore::open(dir.path().join("u.db"), opts).unwrap();
    assert_eq!(s.pragma("synchronous", false).unwrap(), "1");
    assert_eq!(s.pragma("busy_timeout", false).unwrap(), "250");
    assert_eq!(
        s.pragma("mmap_size", true).unwrap(),
        (64 * 1024 * 1024).to_string()
    );
    assert_eq!(s.pragma("cache_size", true).unwrap(), "-1024");
}

#[tokio::test]
async fn reopening_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let c = client(T0);
    let secret = TokenHash::from_bytes([7; 32]);
    {
        let s = migrated(&path).await;
        s.insert_client(&c, Some(&secret), event(AuditKind::ClientCreated))
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    assert!(s.migrate().await.unwrap().is_empty());
    assert_eq!(s.get_client(c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(
        s.get_client_with_secret(c.id).await.unwrap(),
        Some((c, Some(secret)))
    );
    assert_eq!(s.backend_name(), "sqlite");
}

#[tokio::test]
async fn open_url_forms_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("u.db");
    let abs = abs.to_str().unwrap();
    let s = SqliteStore::open_url(&format!(
        "sqlite://{abs}?readers=2&synchronous=normal&busy_timeout_ms=100"
    ))
    .unwrap();
    assert_eq!(s.path(), Path::new(abs));
    assert_eq!(s.pragma("synchronous", false).unwrap(), "1");
    assert_eq!(s.pragma("busy_timeout", true).unwrap(), "100");
    drop(s);
    let s = SqliteStore::open_url(&format!("sqlite:{abs}")).unwrap();
    assert_eq!(s.path(), Path::new(abs));
    assert_eq!(s.pragma("synchronous", false).unwrap(), "2");

    for bad in [
        "postgres://user:pw@host/db",
        "sqlite:",
        "sqlite://",
        "sqlite:x.db?readers=0",
        "sqlite:x.db?synchronous=off",
        "sqlite:x.db?unknown=1",
        "sqlite:x\0.db",
        "sqlite::memory:",
    ] {
        match SqliteStore::open_url(bad) {
            Err(Error::UnsupportedUrl { reason }) => {
                assert!(reason.contains("sqlite:///absolute/path.db"), "{reason}");
                assert!(
                    !reason.contains("pw"),
                    "the reason never repeats credentials: {reason}"
                );
            }
            other => panic!("{bad:?}: expected UnsupportedUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn files_debug_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = migrated(&path).await;
    let files = s.files();
    assert_eq!(files.len(), 3);
    assert_eq!(files[0], path);
    assert!(files[1].to_str().unwrap().ends_with("t.db-wal"));
    assert!(files[2].to_str().unwrap().ends_with("t.db-shm"));
    assert!(files[0].exists());
    let dbg = format!("{s:?}");
    assert!(
        dbg.contains("t.db") && dbg.starts_with("SqliteStore"),
        "{dbg}"
    );
    let bad = SqliteOptions {
        readers: 0,
        ..SqliteOptions::default()
    };
    assert!(matches!(
        SqliteStore::open(dir.path().join("x.db"), bad),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        SqliteStore::open("", SqliteOptions::default()),
        Err(Error::Config { .. })
    ));
}

#[tokio::test]
async fn duplicates_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let s = migrated(&dir.path().join("t.db")).await;
    let c = client(T0);
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    match s
        .insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
    {
        Err(Error::Conflict { what }) => assert_eq!(what, "client"),
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn undecodable_rows_are_backend_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = migrated(&path).await;
    let c = client(T0);
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    raw(&path)
        .execute(
            "UPDATE clients SET scopes = 'a  b', metadata = 'not json'",
            [],
        )
        .unwrap();
    match s.get_client(c.id).await {
        Err(
            e @ Error::Backend {
                temporary: false, ..
            },
        ) => {
            assert_eq!(e.code(), "AS0016");
        }
        other => panic!("expected a permanent Backend error, got {other:?}"),
    }
    raw(&path)
        .execute(
            "UPDATE clients SET scopes = 'read', metadata = '{}', client_type = 'x'",
            [],
        )
        .unwrap();
    assert!(matches!(
        s.get_client(c.id).await,
        Err(Error::Backend {
            temporary: false,
            ..
        })
    ));
}

#[tokio::test]
async fn a_locked_database_is_a_temporary_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = migrated(&path).await;
    drop(s);
    let url = format!("sqlite:{}?busy_timeout_ms=50", path.to_str().unwrap());
    let s = SqliteStore::open_url(&url).unwrap();
    let mut other = raw(&path);
    let tx = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let e = s
        .insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "{e:?}");
    // Reads go on: WAL readers do not wait for the writer.
    assert!(s.list_clients(None, 10).await.unwrap().is_empty());
    drop(tx);
    s.insert_client(&client(T0), None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
}

#[test]
fn the_hot_path_is_one_primary_key_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    drop(rt.block_on(migrated(&path)));
    let plan: Vec<String> = raw(&path)
        .prepare(
            "EXPLAIN QUERY PLAN
             SELECT a.grant_id FROM access_tokens AS a
             WHERE a.hash = ?1 AND a.expires_at > ?2 AND a.revoked_at IS NULL
               AND (SELECT g.revoked_at IS NULL FROM grants AS g WHERE g.id = a.grant_id)
               AND (SELECT c.disabled = 0 FROM clients AS c WHERE c.id = a.client_id)",
        )
        .unwrap()
        .query_map([&[0u8; 32] as &dyn rusqlite::ToSql, &0i64], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let searches: Vec<_> = plan.iter().filter(|p| p.starts_with("SEARCH")).collect();
    assert_eq!(searches.len(), 3, "{plan:?}");
    assert!(
        !plan.iter().any(|p| p.starts_with("SCAN")),
        "no scan: {plan:?}"
    );
    assert!(plan[0].contains("PRIMARY KEY"), "{plan:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_from_two_stores_on_one_file_counts_each_row_once() {
    use authstore_core::backend::{CleanupOptions, TokenIssue};
    use authstore_core::{AccessToken, AuthContext, Grant, GrantId};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let a = migrated(&path).await;
    let b = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let c = client(T0);
    a.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let n = 250u32;
    for i in 0..n {
        let grant = Grant {
            id: GrantId::new_at(T0),
            client_id: c.id,
            subject: None,
            scope: Scopes::parse("read").unwrap(),
            auth: AuthContext::default(),
            created_at: T0,
            revoked_at: None,
        };
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_le_bytes());
        let token = AccessToken {
            grant_id: grant.id,
            client_id: c.id,
            subject: None,
            scope: grant.scope.clone(),
            audience: vec!["api".into()],
            issued_at: T0,
            expires_at: T0.saturating_add(Duration::from_secs(60)),
            revoked_at: None,
            cnf: None,
            auth: AuthContext::default(),
            claims: serde_json::json!({}),
        };
        let issue = TokenIssue {
            grant_id: grant.id,
            new_grant: Some(grant),
            access: Some((TokenHash::from_bytes(h), token)),
            refresh: None,
        };
        a.issue_tokens(&issue, event(AuditKind::TokensIssued))
            .await
            .unwrap();
    }
    let later = T0.saturating_add(Duration::from_secs(3 * 86_400));
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
    assert_eq!(st.access_tokens, Default::default());
    assert_eq!(st.grants, Default::default());
    assert_eq!(st.clients, 1, "the client stays");
    assert!(st.database_bytes.unwrap() > 0);
}

#[tokio::test]
async fn a_revoked_grant_goes_in_bounded_batches_counted_once() {
    use authstore_core::backend::{CleanupOptions, TokenIssue};
    use authstore_core::{AccessToken, AuthContext, Grant, GrantId};

    let dir = tempfile::tempdir().unwrap();
    let s = migrated(&dir.path().join("t.db")).await;
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
}

#[test]
fn a_percent_escape_is_exactly_two_hex_digits() {
    for bad in [
        "sqlite:x%+1.db",
        "sqlite:x%-1.db",
        "sqlite:x%1.db",
        "sqlite:x%",
    ] {
        assert!(
            matches!(
                SqliteStore::open_url(bad),
                Err(Error::UnsupportedUrl { .. })
            ),
            "{bad}"
        );
    }
}
