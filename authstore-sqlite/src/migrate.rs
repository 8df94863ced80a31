//! Embedded, immutable, checksummed migrations.

use std::collections::BTreeMap;

use authstore_core::{Clock, Error, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::R;
use crate::write_tx;

/// One schema migration: an immutable SQL file under `authstore-sqlite/migrations/`,
/// embedded in the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version (the file's number); applied in increasing order.
    pub version: i64,
    /// Its name (the rest of the file name).
    pub name: &'static str,
    /// Its SQL text.
    pub sql: &'static str,
}

impl Migration {
    /// The BLAKE3 hex digest of [`sql`](Self::sql), recorded in `schema_migrations` when the
    /// migration is applied and compared on every later `migrate`.
    pub fn checksum(&self) -> String {
        blake3::hash(self.sql.as_bytes()).to_hex().to_string()
    }
}

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../migrations/0001_initial.sql"),
}];

/// The schema version this build needs and migrates to: the newest embedded migration.
pub const SCHEMA_VERSION: i64 = 1;

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
    if let Some((&found, _)) = applied.last_key_value() {
        if found > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            }
            .into());
        }
    }
    for m in MIGRATIONS {
        if let Some((_, checksum)) = applied.get(&m.version) {
            if *checksum != m.checksum() {
                return Err(Error::MigrationChecksum {
                    version: m.version,
                    name: m.name.into(),
                }
                .into());
            }
        }
    }
    Ok(())
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
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
        for m in MIGRATIONS {
            assert!(
                !m.sql.contains('\r'),
                "migration {} has CR line endings",
                m.version
            );
            assert_eq!(m.checksum().len(), 64);
        }
    }
}
