//! Schema version 5 (migration 0005): `access_tokens` and `refresh_tokens` lose their
//! `client_id` foreign keys and the `*_client` indexes that served them.
//!
//! A version-4 database is built here by applying the embedded migrations 1-4 exactly as
//! the runner does, then filled with rows a real store wrote (clients, grants, codes,
//! access and refresh tokens of two clients, audit events, key checks: the tables' columns
//! are the same in versions 4 and 5). The store then migrates it to 5.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::Maintenance;
use authstore_core::{
    Authstore, Client, ClientId, Error, IssuedTokens, ManualClock, RefreshRequest, TokenOptions,
};
use authstore_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, migrations};
use authstore_testsuite::{Harness, cases};
use rusqlite::types::Value;
use rusqlite::{Connection, params};

/// The runner's own `schema_migrations` (authstore-sqlite/src/migrate.rs).
const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL
)";

/// The token tables 0005 rebuilds.
const TOKEN_TABLES: [&str; 2] = ["access_tokens", "refresh_tokens"];

/// The indexes 0005 drops.
const DROPPED: [&str; 2] = ["access_tokens_client", "refresh_tokens_client"];

/// Applies the embedded migrations up to `version`, each in its own transaction and
/// recorded with its checksum, as the runner does.
fn migrate_to(conn: &mut Connection, version: i64) {
    for m in migrations().iter().filter(|m| m.version <= version) {
        let tx = conn.transaction().unwrap();
        tx.execute_batch(SCHEMA_MIGRATIONS).unwrap();
        tx.execute_batch(m.sql).unwrap();
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES (?1, ?2, ?3, 0)",
            params![m.version, m.name, m.checksum()],
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

/// A new database file at schema version 4, empty.
fn version_4(path: &Path) -> Connection {
    let mut conn = Connection::open(path).unwrap();
    migrate_to(&mut conn, 4);
    assert_eq!(schema_version(&conn), 4);
    conn
}

fn schema_version(conn: &Connection) -> i64 {
    conn.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// An Authstore on `store` with the suite's key and a manual clock at the suite's start.
fn authstore(store: SqliteStore) -> (Authstore, ManualClock) {
    cases::store(&Harness::new(Arc::new(store)))
}

fn rt(t: &IssuedTokens) -> &str {
    t.refresh_token.as_ref().unwrap().secret()
}

/// What the version-4 database holds, issued by a real store.
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

/// A version-4 database at `dir/v4.db` holding tokens of two clients. They are issued by a
/// store on a scratch database (`dir/src.db`), whose rows are then copied table by table.
async fn populated_version_4(dir: &Path) -> (PathBuf, Issued) {
    let src_path = dir.join("src.db");
    let src = SqliteStore::open(&src_path, SqliteOptions::default()).unwrap();
    src.migrate().await.unwrap();
    let (s, clock) = authstore(src);
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

    let path = dir.join("v4.db");
    let v4 = version_4(&path);
    v4.execute("ATTACH DATABASE ?1 AS src", [src_path.to_str().unwrap()])
        .unwrap();
    let tables: Vec<String> = v4
        .prepare(
            "SELECT name FROM src.sqlite_master
             WHERE type = 'table' AND name <> 'schema_migrations' AND name NOT LIKE 'sqlite_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    // Without foreign keys enforced, the order of the copies does not matter (rusqlite's
    // bundled SQLite turns them on by default).
    v4.pragma_update(None, "foreign_keys", "OFF").unwrap();
    for t in &tables {
        v4.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM src.{t}"))
            .unwrap();
    }
    v4.execute_batch("DETACH DATABASE src").unwrap();
    assert_clean(&v4);
    for t in TOKEN_TABLES {
        assert!(count(&v4, &format!("SELECT count(*) FROM {t}")) >= 4, "{t}");
    }
    (
        path,
        Issued {
            a,
            b,
            a1,
            a2,
            a2_rotated,
            b1,
            b2,
        },
    )
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// One stored value, exactly: its storage class and its bytes.
type Cell = (u8, Vec<u8>);

fn cell(v: Value) -> Cell {
    match v {
        Value::Null => (0, Vec::new()),
        Value::Integer(i) => (1, i.to_be_bytes().to_vec()),
        Value::Real(f) => (2, f.to_bits().to_be_bytes().to_vec()),
        Value::Text(t) => (3, t.into_bytes()),
        Value::Blob(b) => (4, b),
    }
}

/// Every row of `sql`'s result, every column exactly, sorted.
fn rows(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Vec<Vec<Cell>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let mut out: Vec<Vec<Cell>> = stmt
        .query_map(args, |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i).map(cell))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    out.sort();
    out
}

/// Every row of every table but `schema_migrations`, exactly.
fn everything(conn: &Connection) -> BTreeMap<String, Vec<Vec<Cell>>> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'table' AND name <> 'schema_migrations' AND name NOT LIKE 'sqlite_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let r = rows(conn, &format!("SELECT * FROM {t}"), []);
            (t, r)
        })
        .collect()
}

/// What one client has in the tables a client delete reaches (grants, codes, tokens).
fn owned_by(conn: &Connection, client: ClientId) -> BTreeMap<&'static str, Vec<Vec<Cell>>> {
    let id = client.as_uuid().as_bytes().to_vec();
    [
        "grants",
        "authorization_codes",
        "access_tokens",
        "refresh_tokens",
    ]
    .into_iter()
    .map(|t| {
        let r = rows(
            conn,
            &format!("SELECT * FROM {t} WHERE client_id = ?1"),
            [&id],
        );
        (t, r)
    })
    .collect()
}

/// `PRAGMA foreign_key_check` finds nothing and `PRAGMA integrity_check` says ok.
fn assert_clean(conn: &Connection) {
    let violations = rows(conn, "PRAGMA foreign_key_check", []);
    assert!(violations.is_empty(), "{violations:?}");
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(integrity, ["ok"]);
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

#[tokio::test]
async fn a_version_4_database_keeps_its_tokens_through_version_5() {
    let dir = tempfile::tempdir().unwrap();
    let (path, t) = populated_version_4(dir.path()).await;
    let before = everything(&Connection::open(&path).unwrap());

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    // The store's writer, which migrates, enforces foreign keys.
    assert_eq!(store.pragma("foreign_keys", false).unwrap(), "1");
    assert_eq!(SCHEMA_VERSION, 5);
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new());

    let raw = Connection::open(&path).unwrap();
    assert_eq!(schema_version(&raw), 5);
    // Every row of every table, token tables included, byte for byte.
    assert_eq!(everything(&raw), before);
    assert_clean(&raw);

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
    // And writes to the rebuilt tables work: issuing, rotating.
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
    let a_before = owned_by(&raw, t.a.id);
    let b_before = owned_by(&raw, t.b.id);
    assert!(a_before.values().all(|r| !r.is_empty()), "{a_before:?}");
    let totals = |c: &Connection| {
        ["grants", "access_tokens", "refresh_tokens"]
            .map(|t| count(c, &format!("SELECT count(*) FROM {t}")))
    };
    let totals_before = totals(&raw);
    s.delete_client(t.a.id).await.unwrap();
    let a_after = owned_by(&raw, t.a.id);
    assert!(a_after.values().all(Vec::is_empty), "{a_after:?}");
    assert_eq!(
        owned_by(&raw, t.b.id),
        b_before,
        "client b's rows are untouched"
    );
    let removed = ["grants", "access_tokens", "refresh_tokens"].map(|t| a_before[t].len() as i64);
    let totals_after = totals(&raw);
    for i in 0..3 {
        assert_eq!(totals_after[i], totals_before[i] - removed[i]);
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
    assert_clean(&raw);
}

/// `sqlite_master` rows other than `schema_migrations`: name → (type, table, sql).
fn schema(conn: &Connection) -> BTreeMap<String, (String, String, Option<String>)> {
    conn.prepare(
        "SELECT name, type, tbl_name, sql FROM sqlite_master
         WHERE name <> 'schema_migrations' AND name NOT LIKE 'sqlite_%'",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// A `CREATE TABLE` statement without comments, whitespace or quotes.
fn normalized(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .collect()
}

/// A foreign key: (parent table, child column, parent column, on delete).
type ForeignKey = (String, String, String, String);

/// `column REFERENCES parent (id) ON DELETE CASCADE`.
fn cascade(parent: &str, column: &str) -> ForeignKey {
    (parent.into(), column.into(), "id".into(), "CASCADE".into())
}

/// Every foreign key of `table`, sorted.
fn foreign_keys(conn: &Connection, table: &str) -> Vec<ForeignKey> {
    let mut keys: Vec<ForeignKey> = conn
        .prepare("SELECT \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list(?1)")
        .unwrap()
        .query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    keys.sort();
    keys
}

/// Every column of `table`: (name, type, not null, default, primary key position, hidden).
type Column = (String, String, bool, Option<String>, i64, i64);

fn columns(conn: &Connection, table: &str) -> Vec<Column> {
    conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1)",
    )
    .unwrap()
    .query_map([table], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[tokio::test]
async fn version_5_drops_the_token_client_keys_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let v4_path = dir.path().join("v4.db");
    let v4 = version_4(&v4_path);
    let old = schema(&v4);
    let upgraded_path = dir.path().join("upgraded.db");
    drop(version_4(&upgraded_path));
    let store = SqliteStore::open(&upgraded_path, SqliteOptions::default()).unwrap();
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    let upgraded = Connection::open(&upgraded_path).unwrap();
    let new = schema(&upgraded);

    // The two indexes are gone; every other index, and every other table, is as it was.
    for name in DROPPED {
        assert!(old.contains_key(name), "{name} existed at version 4");
        assert!(!new.contains_key(name), "{name} is dropped");
    }
    let expected: BTreeSet<&String> = old
        .keys()
        .filter(|n| !DROPPED.contains(&n.as_str()))
        .collect();
    assert_eq!(new.keys().collect::<BTreeSet<_>>(), expected);
    for (name, entry) in &new {
        if TOKEN_TABLES.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(Some(entry), old.get(name), "{name} is unchanged");
    }
    let token_indexes =
        |s: &BTreeMap<String, (String, String, Option<String>)>| -> BTreeSet<String> {
            s.iter()
                .filter(|(_, (ty, table, _))| {
                    ty == "index" && TOKEN_TABLES.contains(&table.as_str())
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
    assert_eq!(
        token_indexes(&new),
        [
            "access_tokens_grant",
            "access_tokens_expires_at",
            "access_tokens_revoked_at",
            "refresh_tokens_grant",
            "refresh_tokens_expires_at",
            "refresh_tokens_idle_expires_at",
            "refresh_tokens_revoked_at",
        ]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>()
    );

    // The token tables: the same columns, constraints and CHECKs, minus the client key.
    for t in TOKEN_TABLES {
        assert_eq!(columns(&upgraded, t), columns(&v4, t), "{t}");
        assert_eq!(
            foreign_keys(&v4, t),
            [
                cascade("clients", "client_id"),
                cascade("grants", "grant_id")
            ]
        );
        assert_eq!(
            foreign_keys(&upgraded, t),
            [cascade("grants", "grant_id")],
            "{t}"
        );
        let old_sql = normalized(old[t].2.as_deref().unwrap())
            .replace("REFERENCESclients(id)ONDELETECASCADE", "");
        assert_eq!(normalized(new[t].2.as_deref().unwrap()), old_sql, "{t}");
        // WITHOUT ROWID, keyed by the hash, as before.
        assert!(
            new[t].2.as_deref().unwrap().ends_with("WITHOUT ROWID"),
            "{t}"
        );
    }

    // A database migrated from nothing has exactly the upgraded one's schema.
    let fresh_path = dir.path().join("fresh.db");
    let fresh = SqliteStore::open(&fresh_path, SqliteOptions::default()).unwrap();
    assert_eq!(
        fresh.migrate().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(schema(&Connection::open(&fresh_path).unwrap()), new);

    // Nothing refers to the token tables (no foreign key, trigger or view), so nothing
    // cascades from them and the rebuild's DROP and RENAME touched nothing else.
    let objects: Vec<(String, String)> = upgraded
        .prepare("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(objects.is_empty(), "{objects:?}");
    let tables: Vec<String> = new
        .iter()
        .filter(|(_, (ty, _, _))| ty == "table")
        .map(|(n, _)| n.clone())
        .collect();
    for t in &tables {
        for (parent, ..) in foreign_keys(&upgraded, t) {
            assert!(
                !TOKEN_TABLES.contains(&parent.as_str()),
                "{t} refers to {parent}"
            );
        }
    }
}

/// Every foreign key's child columns lead some index (or the primary key), so every
/// cascade, client deletion included, is a search.
#[tokio::test]
async fn every_foreign_key_is_indexed_and_client_statements_search() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.migrate().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for t in &tables {
        let leading: BTreeSet<String> = {
            let mut s: BTreeSet<String> = conn
                .prepare(
                    "SELECT ii.name FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii
                     WHERE ii.seqno = 0",
                )
                .unwrap()
                .query_map([t], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            s.extend(
                columns(&conn, t)
                    .into_iter()
                    .filter(|c| c.4 == 1)
                    .map(|c| c.0),
            );
            s
        };
        for (parent, from, ..) in foreign_keys(&conn, t) {
            assert!(
                leading.contains(&from),
                "{t}.{from} -> {parent} has no index"
            );
        }
    }

    // The statements that reach tokens by client, with their foreign-key actions (SQLite's
    // plan lists each cascade's lookup): every step a search, none by a token's client.
    let statements = [
        // delete_client
        "DELETE FROM clients WHERE id = ?1",
        // the grant cascade a client deletion runs
        "DELETE FROM grants WHERE client_id = ?1",
        // revoke_grants_by_client
        "UPDATE grants SET revoked_at = ?2 WHERE client_id = ?1 AND revoked_at IS NULL",
    ];
    for sql in statements {
        let p = plan(&conn, sql);
        assert!(p.iter().all(|l| l.starts_with("SEARCH")), "{sql}\n{p:#?}");
        assert!(
            !p.iter()
                .any(|l| l.contains("_client (") && TOKEN_TABLES.iter().any(|t| l.contains(t))),
            "{p:#?}"
        );
    }
    let delete_client = plan(&conn, statements[0]);
    assert!(
        !delete_client
            .iter()
            .any(|l| TOKEN_TABLES.iter().any(|t| l.contains(t))),
        "tokens go through their grants: {delete_client:#?}"
    );
    let cascade = plan(&conn, statements[1]);
    for t in TOKEN_TABLES {
        let by_grant = format!("{t}_grant (grant_id=?)");
        assert!(
            cascade
                .iter()
                .any(|l| l.starts_with(&format!("SEARCH {t} USING")) && l.ends_with(&by_grant)),
            "{cascade:#?}"
        );
    }

    // At version 4 the client deletion also searched each token table by client.
    let v4_path = dir.path().join("v4.db");
    let v4 = version_4(&v4_path);
    v4.pragma_update(None, "foreign_keys", "ON").unwrap();
    let old = plan(&v4, statements[0]);
    for t in TOKEN_TABLES {
        let by_client = format!("{t}_client (client_id=?)");
        assert!(
            old.iter()
                .any(|l| l.starts_with(&format!("SEARCH {t} USING")) && l.ends_with(&by_client)),
            "{old:#?}"
        );
    }
}

/// `EXPLAIN QUERY PLAN` of `sql`, one detail per line.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let n = sql.matches('?').count();
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(rusqlite::params_from_iter(vec![0i64; n]), |r| r.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test]
async fn the_migrated_file_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = populated_version_4(dir.path()).await;
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    assert_clean(&conn);
    // Per table too, naming the rebuilt ones.
    for t in TOKEN_TABLES {
        let v = rows(&conn, &format!("PRAGMA foreign_key_check({t})"), []);
        assert!(v.is_empty(), "{t}: {v:?}");
    }
    let quick: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(quick, "ok");
}

/// A token whose grant is missing (written with foreign keys off) fails the migration,
/// which says what to do and changes nothing; once it is gone, the migration runs.
#[tokio::test]
async fn an_orphan_token_fails_the_migration_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = populated_version_4(dir.path()).await;
    let raw = Connection::open(&path).unwrap();
    raw.pragma_update(None, "foreign_keys", "OFF").unwrap();
    raw.execute(
        "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
                                    issued_at, expires_at, auth, claims)
         SELECT zeroblob(32), randomblob(16), client_id, subject, scope, audience,
                issued_at, expires_at, auth, claims
         FROM access_tokens LIMIT 1",
        [],
    )
    .unwrap();
    let before = everything(&raw);
    let schema_before = schema(&raw);

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    match store.migrate().await {
        Err(
            e @ Error::Backend {
                temporary: false, ..
            },
        ) => {
            let text = std::error::Error::source(&e).unwrap().to_string();
            assert!(text.contains("migration 5 (token_client_keys)"), "{text}");
            assert!(text.contains("rolled back"), "{text}");
            assert!(text.contains("FOREIGN KEY constraint failed"), "{text}");
            assert!(text.contains("PRAGMA foreign_key_check"), "{text}");
        }
        other => panic!("expected a permanent backend error, got {other:?}"),
    }
    assert_eq!(schema_version(&raw), 4);
    assert_eq!(schema(&raw), schema_before);
    assert_eq!(everything(&raw), before);

    raw.execute("DELETE FROM access_tokens WHERE hash = zeroblob(32)", [])
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), vec![5]);
    assert_clean(&raw);
}
