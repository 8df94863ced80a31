//! Embedded, immutable, checksummed migrations, applied under an advisory lock.

use std::collections::BTreeMap;

use authstore_core::Result;
use deadpool_postgres::GenericClient;

use crate::db::Db;

pub use authstore_core::migration::Migration;

static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "identity",
        sql: include_str!("../migrations/0002_identity.sql"),
    },
    Migration {
        version: 3,
        name: "accounts",
        sql: include_str!("../migrations/0003_accounts.sql"),
    },
    Migration {
        version: 4,
        name: "key_checks",
        sql: include_str!("../migrations/0004_key_checks.sql"),
    },
    Migration {
        version: 5,
        name: "token_client_keys",
        sql: include_str!("../migrations/0005_token_client_keys.sql"),
    },
];

/// The schema version this build needs and migrates to: the newest embedded migration.
pub const SCHEMA_VERSION: i64 = 5;

/// Every embedded migration, oldest first (for operators: `authstore migrate --list`).
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     bigint      NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// Whether `schema_migrations` exists in the connection's schema.
async fn has_table<C: GenericClient>(c: &C) -> Result<bool> {
    // Not cached: planned afresh each time, as the schema may appear at any moment.
    c.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .db()?
        .try_get(0)
        .db()
}

/// The newest applied version, 0 if none (or no `schema_migrations` table). Reads only.
pub(crate) async fn schema_version<C: GenericClient>(c: &C) -> Result<i64> {
    if !has_table(c).await? {
        return Ok(0);
    }
    // Not cached: the table may not have existed when this connection last looked.
    let row = c
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .db()?;
    row.try_get(0).db()
}

/// Applied migrations: version → (name, checksum).
async fn applied<C: GenericClient>(c: &C) -> Result<BTreeMap<i64, (String, String)>> {
    if !has_table(c).await? {
        return Ok(BTreeMap::new());
    }
    let rows = c
        .query("SELECT version, name, checksum FROM schema_migrations", &[])
        .await
        .db()?;
    rows.iter()
        .map(|r| Ok((r.try_get(0).db()?, (r.try_get(1).db()?, r.try_get(2).db()?))))
        .collect()
}

/// Refuses a newer schema and edited migrations.
fn verify(applied: &BTreeMap<i64, (String, String)>) -> Result<()> {
    authstore_core::migration::verify_applied(MIGRATIONS, applied)
}

/// The advisory lock key of migrations in `schema`: two deployments in different schemas
/// migrate independently, and two naming the same schema differently (`schema=public`, no
/// schema, `options=-c search_path=public`) share one lock.
fn lock_key(schema: &str) -> i64 {
    let h = blake3::hash(format!("authstore-postgres migrate\0{schema}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    i64::from_be_bytes(b)
}

/// Applies every pending migration.
///
/// The connection is taken out of the pool for good: it holds a **session-level** advisory
/// lock keyed by the schema, and closing it on every path (success, error, cancellation)
/// releases the lock. Under the lock, one transaction (started after the lock, so its
/// snapshot and its view of the catalog include whatever a previous holder committed)
/// re-reads what is applied, refuses a newer schema or an edited migration, and applies the
/// rest. PostgreSQL DDL is transactional: a refused or failed migration changes nothing.
/// Concurrent migrators (ten nodes starting at once) therefore run each migration exactly
/// once. Returns the versions this call applied.
pub(crate) async fn migrate(
    conn: deadpool_postgres::Object,
    schema: Option<&str>,
) -> Result<Vec<i64>> {
    let mut client = deadpool_postgres::Object::take(conn);
    // Migrations may take long (index builds) and so may waiting for another node's:
    // no statement timeout on this connection, which is closed afterwards anyway.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .db()?;
    // The schema this connection really works in: the configured one (which may not exist
    // yet), else the server's resolution of `search_path`.
    let target = match schema {
        Some(s) => s.to_owned(),
        None => client
            .query_one("SELECT coalesce(current_schema(), '')", &[])
            .await
            .db()?
            .try_get::<_, String>(0)
            .db()?,
    };
    let key = lock_key(&target);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .db()?;
    let out = apply(&mut client, schema).await;
    // Closing the session would release it too; this just frees it sooner.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    out
}

async fn apply(
    client: &mut deadpool_postgres::ClientWrapper,
    schema: Option<&str>,
) -> Result<Vec<i64>> {
    let tx = client.transaction().await.db()?;
    let applied = applied(&tx).await?;
    verify(&applied)?;
    let pending: Vec<&Migration> = MIGRATIONS
        .iter()
        .filter(|m| !applied.contains_key(&m.version))
        .collect();
    if pending.is_empty() {
        tx.commit().await.db()?;
        return Ok(Vec::new());
    }
    if let Some(schema) = schema {
        // Checked in `check_options`: a plain lower-case identifier, safe unquoted.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .db()?;
    }
    tx.batch_execute(CREATE_TABLE).await.db()?;
    let mut done = Vec::new();
    for m in pending {
        tx.batch_execute(m.sql).await.db()?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .db()?;
        done.push(m.version);
    }
    tx.commit().await.db()?;
    for v in &done {
        tracing::info!(version = v, "applied postgres migration");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_end_at_schema_version() {
        authstore_core::migration::check_embedded(MIGRATIONS).unwrap();
        assert_eq!(
            authstore_core::migration::newest(MIGRATIONS),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("a"), lock_key("a"));
    }
}
