//! Schema version 5 (migration 0005): `access_tokens` and `refresh_tokens` lose their
//! `client_id` foreign keys and the `*_client` indexes that served them.
//!
//! A version-4 schema is built here by applying the embedded migrations 1-4 exactly as the
//! runner does, then filled with rows a real store wrote (clients, grants, codes, access
//! and refresh tokens of two clients, audit events, key checks: the tables' columns are the
//! same in versions 4 and 5). The store then migrates it to 5.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::Maintenance;
use authstore_core::{
    Authstore, Client, ClientId, Error, IssuedTokens, ManualClock, RefreshRequest, TokenOptions,
};
use authstore_postgres::{PostgresStore, SCHEMA_VERSION, migrations};
use authstore_testsuite::{Harness, cases};

/// The runner's own `schema_migrations` (authstore-postgres/src/migrate.rs).
const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     bigint      NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// Every table of version 4, parents before children.
const TABLES: [&str; 22] = [
    "clients",
    "grants",
    "authorization_codes",
    "access_tokens",
    "refresh_tokens",
    "personal_access_tokens",
    "authorization_sessions",
    "consents",
    "audit_events",
    "users",
    "groups",
    "group_members",
    "passwords",
    "login_failures",
    "login_sessions",
    "one_time_tokens",
    "totp",
    "recovery_codes",
    "passkeys",
    "ceremonies",
    "linked_accounts",
    "key_checks",
];

/// The token tables 0005 changes.
const TOKEN_TABLES: [&str; 2] = ["access_tokens", "refresh_tokens"];

/// The indexes 0005 drops.
const DROPPED_INDEXES: [&str; 2] = ["access_tokens_client", "refresh_tokens_client"];

/// The foreign keys 0005 drops.
const DROPPED_KEYS: [&str; 2] = [
    "access_tokens_client_id_fkey",
    "refresh_tokens_client_id_fkey",
];

/// Applies the embedded migrations up to `version` in `schema` (which exists), in one
/// transaction and recorded with their checksums, as the runner does.
async fn migrate_to(schema: &str, version: i64) {
    let mut admin = common::admin().await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute(&format!("SET LOCAL search_path = {schema}"))
        .await
        .unwrap();
    tx.batch_execute(SCHEMA_MIGRATIONS).await.unwrap();
    for m in migrations().iter().filter(|m| m.version <= version) {
        tx.batch_execute(m.sql).await.unwrap();
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// A fresh schema at version 4, empty.
async fn version_4() -> String {
    let schema = common::fresh_schema().await;
    migrate_to(&schema, 4).await;
    assert_eq!(schema_version(&schema).await, 4);
    schema
}

async fn schema_version(schema: &str) -> i64 {
    common::admin()
        .await
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn connect(schema: &str) -> PostgresStore {
    PostgresStore::connect(&common::url(), common::options(schema))
        .await
        .unwrap()
}

/// An Authstore on `store` with the suite's key and a manual clock at the suite's start.
fn authstore(store: PostgresStore) -> (Authstore, ManualClock) {
    cases::store(&Harness::new(Arc::new(store)))
}

fn rt(t: &IssuedTokens) -> &str {
    t.refresh_token.as_ref().unwrap().secret()
}

/// What the version-4 schema holds, issued by a real store.
struct Issued {
    a: Client,
    b: Client,
    /// Client a: two code flows, the second's refresh token rotated once.
    a1: IssuedTokens,
    a2: IssuedTokens,
    a2_rotated: IssuedTokens,
    /// Client b: two code flows, the second's access token revoked.
    b1: IssuedTokens,
    b2: IssuedTokens,
}

/// A version-4 schema holding tokens of two clients. They are issued by a store in a
/// scratch schema, whose rows are then copied table by table.
async fn populated_version_4() -> (String, Issued, Vec<common::DropSchema>) {
    let src = common::fresh_schema().await;
    let store = connect(&src).await;
    store.migrate().await.unwrap();
    let (s, clock) = authstore(store);
    let (a, _) = cases::web_client(&s, "read write").await;
    let (b, _) = cases::web_client(&s, "read").await;
    let a1 = cases::code_flow(&s, &a, "alice", "read").await;
    let a2 = cases::code_flow(&s, &a, "bob", "read write").await;
    clock.advance(Duration::from_secs(1));
    let opts = TokenOptions::default();
    let a2_rotated = s
        .refresh(RefreshRequest {
            refresh_token: rt(&a2),
            client_id: a.id,
            scope: None,
            options: &opts,
        })
        .await
        .unwrap();
    let b1 = cases::code_flow(&s, &b, "alice", "read").await;
    let b2 = cases::code_flow(&s, &b, "carol", "read").await;
    s.revoke_token(b2.access_token.secret(), None, Some(b.id))
        .await
        .unwrap();
    drop(s);

    let schema = version_4().await;
    let admin = common::admin().await;
    let src_tables: BTreeSet<String> = admin
        .query(
            "SELECT tablename::text FROM pg_tables
             WHERE schemaname = $1 AND tablename <> 'schema_migrations'",
            &[&src],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        src_tables,
        TABLES.iter().map(|t| (*t).to_owned()).collect(),
        "every table is copied"
    );
    for t in TABLES {
        admin
            .batch_execute(&format!("INSERT INTO {schema}.{t} SELECT * FROM {src}.{t}"))
            .await
            .unwrap();
    }
    for t in TOKEN_TABLES {
        let n: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {schema}.{t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(n >= 4, "{t}");
    }
    let guards = vec![common::DropSchema(src), common::DropSchema(schema.clone())];
    (
        schema,
        Issued {
            a,
            b,
            a1,
            a2,
            a2_rotated,
            b1,
            b2,
        },
        guards,
    )
}

/// Every row of `sql`'s result as PostgreSQL's text of the whole row, sorted.
async fn rows(
    c: &tokio_postgres::Client,
    sql: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    let mut out: Vec<String> = c
        .query(&format!("SELECT t::text FROM ({sql}) AS t"), args)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.sort();
    out
}

/// Every row of every table of `schema`, exactly (as text, in one session's settings).
async fn everything(
    c: &tokio_postgres::Client,
    schema: &str,
) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        out.insert(
            t,
            rows(c, &format!("SELECT * FROM {schema}.{t}"), &[]).await,
        );
    }
    out
}

/// What one client has in the tables a client delete reaches (grants, codes, tokens).
async fn owned_by(
    c: &tokio_postgres::Client,
    schema: &str,
    client: ClientId,
) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in [
        "grants",
        "authorization_codes",
        "access_tokens",
        "refresh_tokens",
    ] {
        let sql = format!("SELECT * FROM {schema}.{t} WHERE client_id = $1");
        out.insert(t, rows(c, &sql, &[client.as_uuid()]).await);
    }
    out
}

async fn assert_inactive_access(s: &Authstore, token: &str) {
    match s.validate_access_token(token).await {
        Err(Error::Inactive { .. }) => {}
        other => panic!("expected an inactive access token, got {other:?}"),
    }
}

async fn assert_inactive_refresh(s: &Authstore, token: &str) {
    match s.introspect_refresh_token(token).await {
        Err(Error::Inactive { .. }) => {}
        other => panic!("expected an inactive refresh token, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_database_keeps_its_tokens_through_version_5() {
    let (schema, t, _guards) = populated_version_4().await;
    let admin = common::admin().await;
    let before = everything(&admin, &schema).await;

    let store = connect(&schema).await;
    assert_eq!(SCHEMA_VERSION, 5);
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    assert!(store.migrate().await.unwrap().is_empty());
    assert_eq!(schema_version(&schema).await, 5);
    // Every row of every table, token tables included, exactly.
    assert_eq!(everything(&admin, &schema).await, before);

    // The store still validates them: active ones active, revoked or rotated ones not.
    let (s, _clock) = authstore(store);
    for (tokens, client) in [(&t.a1, &t.a), (&t.a2_rotated, &t.a), (&t.b1, &t.b)] {
        let at = s
            .validate_access_token(tokens.access_token.secret())
            .await
            .unwrap();
        assert_eq!(at.client_id, client.id);
        assert_eq!(at.grant_id, tokens.grant_id);
        let r = s.introspect_refresh_token(rt(tokens)).await.unwrap();
        assert_eq!(r.client_id, client.id);
    }
    assert_inactive_refresh(&s, rt(&t.a2)).await;
    assert_inactive_access(&s, t.b2.access_token.secret()).await;
    s.introspect_refresh_token(rt(&t.b2)).await.unwrap();
    // And writes to the changed tables work: issuing, rotating.
    let b3 = cases::code_flow(&s, &t.b, "dave", "read").await;
    let opts = TokenOptions::default();
    let a1_rotated = s
        .refresh(RefreshRequest {
            refresh_token: rt(&t.a1),
            client_id: t.a.id,
            scope: None,
            options: &opts,
        })
        .await
        .unwrap();
    s.validate_access_token(a1_rotated.access_token.secret())
        .await
        .unwrap();

    // Deleting client a removes exactly its grants, codes and tokens.
    let a_before = owned_by(&admin, &schema, t.a.id).await;
    let b_before = owned_by(&admin, &schema, t.b.id).await;
    assert!(a_before.values().all(|r| !r.is_empty()), "{a_before:?}");
    let everything_before = everything(&admin, &schema).await;
    s.delete_client(t.a.id).await.unwrap();
    let a_after = owned_by(&admin, &schema, t.a.id).await;
    assert!(a_after.values().all(Vec::is_empty), "{a_after:?}");
    assert_eq!(
        owned_by(&admin, &schema, t.b.id).await,
        b_before,
        "client b's rows are untouched"
    );
    let everything_after = everything(&admin, &schema).await;
    for table in ["grants", "access_tokens", "refresh_tokens"] {
        assert_eq!(
            everything_after[table].len(),
            everything_before[table].len() - a_before[table].len(),
            "{table}: only client a's rows went"
        );
    }
    assert_inactive_access(&s, t.a1.access_token.secret()).await;
    assert_inactive_access(&s, a1_rotated.access_token.secret()).await;
    assert_inactive_refresh(&s, rt(&a1_rotated)).await;
    for tokens in [&t.b1, &b3] {
        s.validate_access_token(tokens.access_token.secret())
            .await
            .unwrap();
        s.introspect_refresh_token(rt(tokens)).await.unwrap();
    }
}

/// Index name → definition (with the schema name taken out) in `schema`.
async fn indexes(c: &tokio_postgres::Client, schema: &str) -> BTreeMap<String, String> {
    c.query(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = $1",
        &[&schema],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let def: String = r.get(1);
        (r.get(0), def.replace(&format!(" {schema}."), " "))
    })
    .collect()
}

/// Constraint name → (table, definition) in `schema`, the schema name taken out.
async fn constraints(
    c: &tokio_postgres::Client,
    schema: &str,
) -> BTreeMap<String, (String, String)> {
    c.query(
        "SELECT c.conname::text, c.conrelid::regclass::text, pg_get_constraintdef(c.oid)
         FROM pg_constraint AS c
         WHERE c.connamespace = $1::text::regnamespace",
        &[&schema],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let table: String = r.get(1);
        let def: String = r.get(2);
        let unqualified = |s: &str| s.replace(&format!("{schema}."), "");
        (r.get(0), (unqualified(&table), unqualified(&def)))
    })
    .collect()
}

/// The foreign keys of `table` in `schema`: (name, referenced table).
async fn foreign_keys(
    c: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> BTreeSet<(String, String)> {
    c.query(
        "SELECT c.conname::text, c.confrelid::regclass::text FROM pg_constraint AS c
         WHERE c.contype = 'f' AND c.conrelid = ($1 || '.' || $2)::regclass",
        &[&schema, &table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let parent: String = r.get(1);
        (
            r.get(0),
            parent.trim_start_matches(&format!("{schema}.")).to_owned(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_drops_the_token_client_keys_and_nothing_else() {
    let admin = common::admin().await;
    let v4 = version_4().await;
    let upgraded = version_4().await;
    let _guards = [
        common::DropSchema(v4.clone()),
        common::DropSchema(upgraded.clone()),
    ];
    assert_eq!(connect(&upgraded).await.migrate().await.unwrap(), vec![5]);

    // The two indexes are gone, every other index is as it was.
    let old = indexes(&admin, &v4).await;
    let new = indexes(&admin, &upgraded).await;
    for name in DROPPED_INDEXES {
        assert!(old.contains_key(name), "{name} existed at version 4");
    }
    let mut expected = old.clone();
    expected.retain(|name, _| !DROPPED_INDEXES.contains(&name.as_str()));
    assert_eq!(new, expected);
    let token_indexes: BTreeSet<&str> = new
        .iter()
        .filter(|(_, def)| {
            TOKEN_TABLES
                .iter()
                .any(|t| def.contains(&format!(" ON {t} ")))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        token_indexes,
        BTreeSet::from([
            "access_tokens_pkey",
            "access_tokens_grant",
            "access_tokens_expires_at",
            "access_tokens_revoked_at",
            "refresh_tokens_pkey",
            "refresh_tokens_grant",
            "refresh_tokens_expires_at",
            "refresh_tokens_idle_expires_at",
            "refresh_tokens_revoked_at",
        ])
    );

    // The two foreign keys are gone, every other constraint is as it was.
    let old = constraints(&admin, &v4).await;
    let new = constraints(&admin, &upgraded).await;
    for (name, table) in DROPPED_KEYS.iter().zip(TOKEN_TABLES) {
        assert_eq!(
            old.get(*name),
            Some(&(
                table.to_owned(),
                "FOREIGN KEY (client_id) REFERENCES clients(id) ON DELETE CASCADE".to_owned()
            )),
            "{name} existed at version 4"
        );
    }
    let mut expected = old.clone();
    expected.retain(|name, _| !DROPPED_KEYS.contains(&name.as_str()));
    assert_eq!(new, expected);
    for t in TOKEN_TABLES {
        assert_eq!(
            foreign_keys(&admin, &upgraded, t).await,
            BTreeSet::from([(format!("{t}_grant_id_fkey"), "grants".to_owned())]),
            "{t}"
        );
    }
    // client_id stays, NOT NULL.
    for t in TOKEN_TABLES {
        let not_null: bool = admin
            .query_one(
                "SELECT is_nullable = 'NO' FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2 AND column_name = 'client_id'",
                &[&upgraded, &t],
            )
            .await
            .unwrap()
            .get(0);
        assert!(not_null, "{t}.client_id");
    }
    // Nothing refers to the token tables.
    let referring: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_constraint
             WHERE confrelid IN (($1 || '.access_tokens')::regclass,
                                 ($1 || '.refresh_tokens')::regclass)",
            &[&upgraded],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(referring, 0);

    // A schema migrated from nothing has exactly the upgraded one's indexes and constraints.
    let (fresh_store, fresh) = common::store().await;
    let _fresh_guard = common::DropSchema(fresh.clone());
    assert_eq!(
        fresh_store.migrate().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(
        indexes(&admin, &fresh).await,
        indexes(&admin, &upgraded).await
    );
    assert_eq!(constraints(&admin, &fresh).await, new);
}

/// `EXPLAIN` of `sql` in `schema`, one line per row.
async fn explain(
    c: &tokio_postgres::Client,
    sql: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    c.query(&format!("EXPLAIN {sql}"), args)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// On a populated version-5 schema, the statements that reach tokens by client (client
/// deletion and its cascades, revocation by client) are index scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_statements_use_indexes() {
    let (store, schema) = common::store().await;
    let _guard = common::DropSchema(schema.clone());
    store.migrate().await.unwrap();
    let admin = common::admin().await;
    admin
        .batch_execute(&format!(
            "SET search_path = {schema};
             INSERT INTO clients (id, name, client_type, redirect_uris, grant_types, scopes,
                                  token_endpoint_auth_method, metadata, created_at, updated_at)
             SELECT gen_random_uuid(), 'c' || i, 'confidential', '{{}}', '{{}}', 'read',
                    'client_secret_basic', '{{}}', now(), now()
             FROM generate_series(1, 2000) AS i;
             INSERT INTO grants (id, client_id, subject, scope, auth, created_at)
             SELECT gen_random_uuid(), c.id, 'u' || i, 'read', '{{}}', now()
             FROM clients AS c, generate_series(1, 5) AS i;
             INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
                                        issued_at, expires_at, auth, claims)
             SELECT sha256(g.id::text::bytea), g.id, g.client_id, g.subject, g.scope, '{{}}',
                    now(), now() + interval '1 hour', '{{}}', '{{}}'
             FROM grants AS g;
             INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
                                         expires_at, idle_expires_at)
             SELECT sha256(g.id::text::bytea), g.id, g.client_id, g.subject, g.scope, now(),
                    now() + interval '1 day', now() + interval '1 day'
             FROM grants AS g;
             ANALYZE;"
        ))
        .await
        .unwrap();
    let client: uuid::Uuid = admin
        .query_one("SELECT id FROM clients LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let grant: uuid::Uuid = admin
        .query_one("SELECT id FROM grants LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let now = std::time::SystemTime::UNIX_EPOCH;
    let statements: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)], &str); 5] = [
        // delete_client, first its grants, then the client.
        (
            "DELETE FROM grants WHERE client_id = $1",
            &[&client],
            "grants_client",
        ),
        (
            "DELETE FROM clients WHERE id = $1",
            &[&client],
            "clients_pkey",
        ),
        // The cascades of a grant deletion (PostgreSQL's own referential actions).
        (
            "DELETE FROM ONLY access_tokens WHERE $1 = grant_id",
            &[&grant],
            "access_tokens_grant",
        ),
        (
            "DELETE FROM ONLY refresh_tokens WHERE $1 = grant_id",
            &[&grant],
            "refresh_tokens_grant",
        ),
        // revoke_grants_by_client
        (
            "UPDATE grants SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
            &[&client, &now],
            "grants_client",
        ),
    ];
    for (sql, args, index) in statements {
        let p = explain(&admin, sql, args).await;
        assert!(!p.iter().any(|l| l.contains("Seq Scan")), "{sql}\n{p:#?}");
        assert!(
            p.iter()
                .any(|l| l.contains(&format!(" on {index}"))
                    || l.contains(&format!("using {index} "))),
            "{sql}: expected {index}\n{p:#?}"
        );
    }
    // Deleting a client no longer fires referential actions on the token tables.
    let triggers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger AS t JOIN pg_constraint AS c ON c.oid = t.tgconstraint
             WHERE t.tgrelid = 'clients'::regclass
               AND c.conrelid IN ('access_tokens'::regclass, 'refresh_tokens'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
}
