//! SQLite beside rusqlite: the raw side (same file, same tables, same PRAGMAs as
//! `authstore-sqlite`), the bulk loader, and size figures.
//!
//! Connections are configured as the store configures its own (`authstore-sqlite`'s
//! `configure`): WAL, `synchronous=FULL`, `foreign_keys=ON`, no `mmap_size` (the store's
//! default), `temp_store=MEMORY`, `cache_size` 8 MiB, `busy_timeout` 5 s, readers
//! `query_only`. Reads use one connection per task. Writes use one writer connection behind an async mutex, as the store does (SQLite
//! has one writer at a time; a writer per task would only add `SQLITE_BUSY` back-offs).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use authstore_core::{
    AccessToken, AuthContext, AuthorizationCode, Grant, GrantId, RefreshToken, Timestamp,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::rows::{Load, Shape};
use crate::tokens::hash;

/// The store's `find_access_token` statement (authstore-sqlite/src/stores.rs).
const VALIDATE: &str =
    "SELECT a.grant_id, a.client_id, a.subject, a.scope, a.audience, a.issued_at,
                            a.expires_at, a.revoked_at, a.cnf_kind, a.cnf_value, a.auth, a.claims
                     FROM access_tokens AS a
                     WHERE a.hash = ?1 AND a.expires_at > ?2 AND a.revoked_at IS NULL
                       AND (SELECT g.revoked_at IS NULL FROM grants AS g
                            WHERE g.id = a.grant_id)
                       AND (SELECT c.disabled = 0 FROM clients AS c WHERE c.id = a.client_id)";

/// The store's access token insert.
const INSERT_ACCESS: &str =
    "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
             issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The store's consume statement (`consume_code`).
const CONSUME: &str = "UPDATE authorization_codes SET consumed_at = ?2
                     WHERE hash = ?1 AND consumed_at IS NULL AND expires_at > ?2
                       AND (SELECT g.revoked_at IS NULL FROM grants AS g
                            WHERE g.id = authorization_codes.grant_id)
                       AND (SELECT c.disabled = 0 FROM clients AS c
                            WHERE c.id = authorization_codes.client_id)
                     RETURNING grant_id, client_id, subject, redirect_uri, scope, code_challenge,
                         code_challenge_method, nonce, issued_at, expires_at, consumed_at";

/// The store's first-rotation statement (`rotate_refresh_token`, `RotationMode::First`).
const ROTATE: &str = "UPDATE refresh_tokens SET rotated_at = ?2, successor = ?3
                         WHERE hash = ?1 AND rotated_at IS NULL AND revoked_at IS NULL
                           AND expires_at > ?2 AND idle_expires_at > ?2
                           AND (SELECT g.revoked_at IS NULL FROM grants AS g
                                WHERE g.id = refresh_tokens.grant_id)
                           AND (SELECT c.disabled = 0 FROM clients AS c
                                WHERE c.id = refresh_tokens.client_id)
                         RETURNING grant_id, client_id";

/// The store's grant revocation statement.
const REVOKE: &str = "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";

fn us(t: Timestamp) -> i64 {
    t.as_unix_micros()
}

fn err(e: impl std::fmt::Display) -> String {
    format!("sqlite: {e}")
}

/// The settings a run may change on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// `synchronous=NORMAL` instead of the store's default `FULL`.
    pub(crate) normal: bool,
    /// `mmap_size` in MiB (the store's default: 0, off).
    pub(crate) mmap_mib: u64,
    /// The store's reader connections (its default: 4).
    pub(crate) readers: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            normal: false,
            mmap_mib: 0,
            readers: 4,
        }
    }
}

impl Tuning {
    /// The store's options with these settings.
    pub(crate) fn options(self) -> authstore_sqlite::SqliteOptions {
        authstore_sqlite::SqliteOptions {
            synchronous: if self.normal {
                authstore_sqlite::Synchronous::Normal
            } else {
                authstore_sqlite::Synchronous::Full
            },
            mmap_size: self.mmap_mib * 1024 * 1024,
            readers: self.readers,
            ..authstore_sqlite::SqliteOptions::default()
        }
    }

    fn synchronous(self) -> &'static str {
        if self.normal { "NORMAL" } else { "FULL" }
    }
}

/// Opens a connection configured as the store's (a reader is `query_only`), with the
/// run's [`Tuning`].
pub(crate) fn open(
    path: &Path,
    reader: bool,
    cache_kib: i64,
    tuning: Tuning,
) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("sqlite: journal_mode is {mode}, not WAL"));
    }
    conn.pragma_update(None, "synchronous", tuning.synchronous())
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    conn.pragma_update(
        None,
        "mmap_size",
        i64::try_from(tuning.mmap_mib * 1024 * 1024).unwrap_or(0),
    )
    .map_err(err)?;
    conn.pragma_update(None, "cache_size", -cache_kib)
        .map_err(err)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(err)?;
    if reader {
        conn.pragma_update(None, "query_only", "ON").map_err(err)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// rusqlite on the store's file.
pub(crate) struct SqliteRaw {
    path: PathBuf,
    tuning: Tuning,
    shape: Shape,
    readers: Vec<Mutex<Connection>>,
    writer: tokio::sync::Mutex<Connection>,
    /// The grant raw-issued access tokens belong to.
    issue_grant: GrantId,
}

impl SqliteRaw {
    /// Opens `readers` reader connections and one writer on the (migrated) store file, and
    /// creates the grant raw issuance uses.
    pub(crate) fn open(
        path: &Path,
        readers: usize,
        shape: Shape,
        now: Timestamp,
        tuning: Tuning,
    ) -> Result<Self, String> {
        let writer = open(path, false, 8 * 1024, tuning)?;
        let grant = shape.grant(now);
        insert_grants(&writer, std::slice::from_ref(&grant)).map_err(err)?;
        let readers = (0..readers.max(1))
            .map(|_| open(path, true, 8 * 1024, tuning).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            tuning,
            shape,
            readers,
            writer: tokio::sync::Mutex::new(writer),
            issue_grant: grant.id,
        })
    }

    /// The `synchronous` and `journal_mode` the raw writer runs with.
    pub(crate) async fn settings(&self) -> Result<Vec<(String, String)>, String> {
        let w = self.writer.lock().await;
        let sync: i64 = w
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .map_err(err)?;
        let mode: String = w
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(err)?;
        let version: String = w
            .query_row("SELECT sqlite_version()", [], |r| r.get(0))
            .map_err(err)?;
        Ok(vec![
            ("raw synchronous".into(), sync_name(sync).into()),
            ("raw journal_mode".into(), mode),
            ("sqlite version".into(), version),
        ])
    }

    /// Validation: the keyed hash, then the store's statement on this task's reader, every
    /// column read into an owned value (bytes, text, integers; no JSON or scope parsing).
    pub(crate) fn validate(&self, task: usize, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let Some(m) = self.readers.get(task % self.readers.len()) else {
            return Err("sqlite: no reader".into());
        };
        let conn = m.lock().unwrap_or_else(PoisonError::into_inner);
        let row = conn
            .prepare_cached(VALIDATE)
            .map_err(err)?
            .query_row(params![h.as_slice(), us(now)], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, String>(11)?,
                ))
            })
            .optional()
            .map_err(err)?;
        drop(conn);
        match black_box(row) {
            Some(_) => Ok(()),
            None => Err("sqlite raw: token not found".into()),
        }
    }

    /// Issuance: one access token row, autocommit (one transaction per row).
    pub(crate) async fn insert_access(
        &self,
        token: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let t = self.shape.access(self.issue_grant, now, expires);
        let conn = self.writer.lock().await;
        insert_access_row(&conn, &h, &t).map_err(err)
    }

    /// Consumption: the store's compare-and-set statement, autocommit.
    pub(crate) async fn consume(&self, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let conn = self.writer.lock().await;
        let row = conn
            .prepare_cached(CONSUME)
            .map_err(err)?
            .query_row(params![h.as_slice(), us(now)], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, Option<i64>>(10)?,
                ))
            })
            .optional()
            .map_err(err)?;
        drop(conn);
        match black_box(row) {
            Some(_) => Ok(()),
            None => Err("sqlite raw: code not consumable".into()),
        }
    }

    /// Rotation: the store's first-rotation statement, autocommit.
    pub(crate) async fn rotate(
        &self,
        token: &str,
        successor: &str,
        now: Timestamp,
    ) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let next = hash(&self.shape.key, successor);
        let conn = self.writer.lock().await;
        let row = conn
            .prepare_cached(ROTATE)
            .map_err(err)?
            .query_row(params![h.as_slice(), us(now), next.as_slice()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()
            .map_err(err)?;
        drop(conn);
        match black_box(row) {
            Some(_) => Ok(()),
            None => Err("sqlite raw: refresh token not rotatable".into()),
        }
    }

    /// Revocation: the store's grant update, autocommit.
    pub(crate) async fn revoke(&self, id: GrantId, now: Timestamp) -> Result<(), String> {
        let conn = self.writer.lock().await;
        let n = conn
            .prepare_cached(REVOKE)
            .map_err(err)?
            .execute(params![id.as_uuid().as_bytes().as_slice(), us(now)])
            .map_err(err)?;
        if n == 1 {
            Ok(())
        } else {
            Err("sqlite raw: grant not revocable".into())
        }
    }

    /// Bulk load of access tokens (with their grants), in transactions of one chunk each,
    /// on a blocking thread and a connection of its own.
    pub(crate) async fn load_access(&self, load: Load) -> Result<(), String> {
        let (path, shape, sync) = (self.path.clone(), self.shape.clone(), self.tuning);
        blocking(move || load_access(&path, &shape, &load, sync)).await
    }

    /// Bulk load of authorization codes, one grant each; their strings.
    pub(crate) async fn load_codes(&self, load: Load) -> Result<Vec<String>, String> {
        let (path, shape, sync) = (self.path.clone(), self.shape.clone(), self.tuning);
        blocking(move || {
            let mut conn = open(&path, false, 64 * 1024, sync)?;
            let mut out = Vec::new();
            for part in load.chunks() {
                let c = part.codes(&shape);
                let tx = conn.transaction().map_err(err)?;
                insert_grants(&tx, &c.grants).map_err(err)?;
                for (s, code) in &c.records {
                    insert_code_row(&tx, &hash(&shape.key, s), code).map_err(err)?;
                }
                tx.commit().map_err(err)?;
                out.extend(c.records.into_iter().map(|(s, _)| s));
            }
            Ok(out)
        })
        .await
    }

    /// Bulk load of refresh tokens, one grant each; their strings.
    pub(crate) async fn load_refresh(&self, load: Load) -> Result<Vec<String>, String> {
        let (path, shape, sync) = (self.path.clone(), self.shape.clone(), self.tuning);
        blocking(move || {
            let mut conn = open(&path, false, 64 * 1024, sync)?;
            let mut out = Vec::new();
            for part in load.chunks() {
                let c = part.refresh(&shape);
                let tx = conn.transaction().map_err(err)?;
                insert_grants(&tx, &c.grants).map_err(err)?;
                for (s, t) in &c.records {
                    insert_refresh_row(&tx, &hash(&shape.key, s), t).map_err(err)?;
                }
                tx.commit().map_err(err)?;
                out.extend(c.records.into_iter().map(|(s, _)| s));
            }
            Ok(out)
        })
        .await
    }

    /// Bulk load of `n` grants; their ids.
    pub(crate) async fn load_grants(
        &self,
        n: usize,
        created: Timestamp,
    ) -> Result<Vec<GrantId>, String> {
        let (path, shape, sync) = (self.path.clone(), self.shape.clone(), self.tuning);
        blocking(move || {
            let mut conn = open(&path, false, 64 * 1024, sync)?;
            let grants: Vec<Grant> = (0..n).map(|_| shape.grant(created)).collect();
            let tx = conn.transaction().map_err(err)?;
            insert_grants(&tx, &grants).map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(grants.into_iter().map(|g| g.id).collect())
        })
        .await
    }

    /// Moves the write-ahead log into the database file (`wal_checkpoint(TRUNCATE)`), so
    /// measurements after a large load read the steady state, not a long WAL.
    pub(crate) async fn settle(&self) -> Result<(), String> {
        let (path, tuning) = (self.path.clone(), self.tuning);
        blocking(move || {
            let conn = open(&path, false, 8 * 1024, tuning)?;
            let (busy, _, _): (i64, i64, i64) = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(err)?;
            if busy != 0 {
                return Err("sqlite: the checkpoint was blocked by another connection".into());
            }
            Ok(())
        })
        .await
    }

    /// Bytes of the access token table and its indexes, of the grants table and its
    /// indexes (the `dbstat` virtual table of the bundled SQLite), and of the whole file.
    pub(crate) async fn sizes(&self) -> Result<Sizes, String> {
        let (path, sync) = (self.path.clone(), self.tuning);
        blocking(move || {
            let conn = open(&path, true, 8 * 1024, sync)?;
            let mut sizes = Sizes::default();
            let mut stmt = conn
                .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(err)?;
            for r in rows {
                let (name, bytes) = r.map_err(err)?;
                let bytes = u64::try_from(bytes).unwrap_or(0);
                if name == "access_tokens" || name.starts_with("access_tokens_") {
                    sizes.access_tokens += bytes;
                } else if name == "grants" || name.starts_with("grants_") {
                    sizes.grants += bytes;
                }
            }
            let pages: i64 = conn
                .pragma_query_value(None, "page_count", |r| r.get(0))
                .map_err(err)?;
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(err)?;
            sizes.database = u64::try_from(pages * page).unwrap_or(0);
            Ok(sizes)
        })
        .await
    }
}

/// Table sizes in bytes (table plus its indexes).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sizes {
    /// `access_tokens` and its indexes.
    pub(crate) access_tokens: u64,
    /// `grants` and its indexes.
    pub(crate) grants: u64,
    /// The whole database.
    pub(crate) database: u64,
}

fn sync_name(v: i64) -> &'static str {
    match v {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "?",
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("loader thread failed: {e}"))?
}

fn load_access(path: &Path, shape: &Shape, load: &Load, sync: Tuning) -> Result<(), String> {
    // A large page cache: the load touches random pages of the primary key.
    let mut conn = open(path, false, 512 * 1024, sync)?;
    for part in load.chunks() {
        let c = part.access(shape);
        let tx = conn.transaction().map_err(err)?;
        insert_grants(&tx, &c.grants).map_err(err)?;
        for (s, t) in &c.records {
            insert_access_row(&tx, &hash(&shape.key, s), t).map_err(err)?;
        }
        tx.commit().map_err(err)?;
    }
    Ok(())
}

// ---- the store's row format (authstore-sqlite/src/stores.rs and rows.rs) ----

fn enc_auth(a: &AuthContext) -> rusqlite::Result<String> {
    if *a == AuthContext::default() {
        return Ok("{}".to_owned());
    }
    serde_json::to_string(a).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn enc_audience(a: &[String]) -> rusqlite::Result<String> {
    if a.is_empty() {
        return Ok("[]".to_owned());
    }
    serde_json::to_string(a).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn insert_grants(conn: &Connection, grants: &[Grant]) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT INTO grants (id, client_id, subject, scope, auth, created_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for g in grants {
        st.execute(params![
            g.id.as_uuid().as_bytes().as_slice(),
            g.client_id.as_uuid().as_bytes().as_slice(),
            g.subject.as_ref().map(|s| s.as_str()),
            g.scope.to_string(),
            enc_auth(&g.auth)?,
            us(g.created_at),
            g.revoked_at.map(us),
        ])?;
    }
    Ok(())
}

fn insert_access_row(conn: &Connection, h: &[u8; 32], t: &AccessToken) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT_ACCESS)?.execute(params![
        h.as_slice(),
        t.grant_id.as_uuid().as_bytes().as_slice(),
        t.client_id.as_uuid().as_bytes().as_slice(),
        t.subject.as_ref().map(|s| s.as_str()),
        t.scope.to_string(),
        enc_audience(&t.audience)?,
        us(t.issued_at),
        us(t.expires_at),
        t.revoked_at.map(us),
        Option::<&str>::None,
        Option::<&str>::None,
        enc_auth(&t.auth)?,
        t.claims.to_string(),
    ])?;
    Ok(())
}

fn insert_code_row(conn: &Connection, h: &[u8; 32], c: &AuthorizationCode) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO authorization_codes (hash, grant_id, client_id, subject, redirect_uri,
             scope, code_challenge, code_challenge_method, nonce, issued_at, expires_at,
             consumed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        h.as_slice(),
        c.grant_id.as_uuid().as_bytes().as_slice(),
        c.client_id.as_uuid().as_bytes().as_slice(),
        c.subject.as_str(),
        c.redirect_uri.as_str(),
        c.scope.to_string(),
        Option::<&str>::None,
        Option::<&str>::None,
        c.nonce.as_deref(),
        us(c.issued_at),
        us(c.expires_at),
        c.consumed_at.map(us),
    ])?;
    Ok(())
}

fn insert_refresh_row(conn: &Connection, h: &[u8; 32], t: &RefreshToken) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
             expires_at, idle_expires_at, rotated_at, successor, reuse_count, revoked_at,
             cnf_kind, cnf_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        h.as_slice(),
        t.grant_id.as_uuid().as_bytes().as_slice(),
        t.client_id.as_uuid().as_bytes().as_slice(),
        t.subject.as_ref().map(|s| s.as_str()),
        t.scope.to_string(),
        us(t.issued_at),
        us(t.expires_at),
        us(t.idle_expires_at),
        t.rotated_at.map(us),
        t.successor.as_ref().map(|s| s.as_bytes().as_slice()),
        i64::from(t.reuse_count),
        t.revoked_at.map(us),
        Option::<&str>::None,
        Option::<&str>::None,
    ])?;
    Ok(())
}
