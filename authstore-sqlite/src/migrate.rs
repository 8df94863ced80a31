//! Embedded, immutable, checksummed migrations.

use std::collections::BTreeMap;

use authstore_core::{Clock, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::R;
use crate::write_tx;

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
];

/// The schema version this build needs and migrates to: the newest embedded migration.
pub const SCHEMA_VERSION: i64 = 4;

/// Every embedded migration, oldest first (for operators: `authstore migrate --list`).
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL
)";

/// The newest applied version, 0 if none (or no `schema_migrations` table). Reads only.
pub(crate) fn schema_version(conn: &Connection) -> R<i64> {
    if !has_table(conn)? {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .prepare_cached("SELECT max(version) FROM schema_migrations")?
        .query_row([], |r| r.get(0))?;
    Ok(v.unwrap_or(0))
}

fn has_table(conn: &Connection) -> R<bool> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        )?
        .query_row([], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

/// Applied migrations: version → (name, checksum).
fn applied(conn: &Connection) -> R<BTreeMap<i64, (String, String)>> {
    if !has_table(conn)? {
        return Ok(BTreeMap::new());
    }
    let mut stmt = conn.prepare_cached("SELECT version, name, checksum FROM schema_migrations")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Refuses a newer schema and edited migrations.
fn verify(applied: &BTreeMap<i64, (String, String)>) -> R<()> {
    authstore_core::migration::verify_applied(MIGRATIONS, applied).map_err(Into::into)
}

/// Applies every pending migration, each in its own `BEGIN IMMEDIATE` transaction that
/// first re-reads (under the write lock) what is applied, so concurrent migrators on one
/// file serialize and each migration runs once. Returns the versions this call applied.
pub(crate) fn migrate(conn: &mut Connection) -> R<Vec<i64>> {
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let applied_now = write_tx(conn, |tx| {
            let applied = applied(tx)?;
            verify(&applied)?;
            if applied.contains_key(&m.version) {
                return Ok(false);
            }
            tx.execute_batch(CREATE_TABLE)?;
            tx.execute_batch(m.sql)?;
            tx.prepare_cached(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                m.version,
                m.name,
                m.checksum(),
                SystemClock.now().as_unix_micros()
            ])?;
            Ok(true)
        })?;
        if applied_now {
            tracing::info!(
                version = m.version,
                name = m.name,
                "applied sqlite migration"
            );
            done.push(m.version);
        }
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
}
