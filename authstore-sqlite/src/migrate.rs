//! Embedded, immutable, checksummed migrations.

use std::collections::BTreeMap;

use authstore_core::{Clock, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{Fail, R};
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
///
/// A migration's SQL runs with the connection's `foreign_keys` setting as it is (the
/// store's writer has it ON): `PRAGMA foreign_keys` does nothing inside a transaction. A
/// migration that rebuilds a table (SQLite's documented procedure for dropping a
/// constraint: create, copy, drop, rename) is therefore only correct for a table no other
/// table, trigger or view refers to, as in 0005: the `DROP TABLE` then runs no implicit
/// `DELETE` (so nothing cascades) and every copied row is checked as it is inserted. A
/// migration whose SQL fails is rolled back whole, and the error names it.
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
            tx.execute_batch(m.sql).map_err(|e| failed(m, e))?;
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

/// A migration whose SQL failed: rolled back, so the database is as it was.
#[derive(Debug)]
struct MigrationFailed {
    version: i64,
    name: &'static str,
    /// What to do about it, when the cause is known.
    hint: &'static str,
    /// The driver's error.
    cause: rusqlite::Error,
}

impl std::fmt::Display for MigrationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The driver's message is part of this one (and not also a `source`): operators'
        // tools show one level of cause.
        write!(
            f,
            "sqlite migration {} ({}) failed and was rolled back, the database is unchanged: {}",
            self.version, self.name, self.cause
        )?;
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for MigrationFailed {}

/// The error of migration `m` whose SQL failed with `e` (the transaction rolls back): a
/// busy database stays temporary, anything else is permanent and names the migration.
fn failed(m: &Migration, e: rusqlite::Error) -> Fail {
    let code = e.sqlite_error().map(|f| (f.code, f.extended_code));
    let hint = match code {
        Some((rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked, _)) => {
            return Fail::Db(e);
        }
        Some((_, rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)) => {
            "a row refers to a row that does not exist (the file was written with foreign \
             keys off): list such rows with `PRAGMA foreign_key_check`, delete or repair \
             them, then migrate again"
        }
        _ => "",
    };
    Fail::Api(authstore_core::Error::backend(
        crate::BACKEND,
        false,
        MigrationFailed {
            version: m.version,
            name: m.name,
            hint,
            cause: e,
        },
    ))
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
