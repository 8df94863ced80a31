//! Migrations, cleanup and statistics: long work, run on blocking threads.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use authstore_core::backend::{
    CleanupOptions, CleanupReport, KindStats, Maintenance, Stats, same_key_checks,
};
use authstore_core::{Error, KeyCheck, Result, Timestamp};
use rusqlite::{Connection, Transaction, params};

use crate::db::R;
use crate::{Inner, SqliteStore, migrate};

/// The most rows one cleanup batch may delete.
const MAX_BATCH: u32 = 100_000;

/// How long cleanup pauses between two batches of a pass, on its blocking thread.
const BACK_OFF: Duration = Duration::from_millis(2);

/// The fewest grants the empty-grants pass examines in one batch, looking for a batch of
/// empty ones (at most `max(16 × batch, this)`): bounds the write lock's hold time when
/// live grants far outnumber empty ones.
const MIN_GRANT_SCAN: i64 = 10_000;

/// One kind's rule for dead rows, written once (by `dead_rows!`) in the forms cleanup and
/// the preview use: a row is dead when any of the rule's columns is at or before the cutoff
/// `?1`.
struct DeadRows {
    /// Cleanup: one `DELETE` of at most `?2` dead rows per column, each a search of that
    /// column's index (SQLite may plan a multi-column `OR` as a full scan), sharing one batch's
    /// budget.
    delete: &'static [&'static str],
    /// The preview: how many rows are dead by any column, as a sum of one `count(*)` per
    /// column of the rows dead by it and by no column before it (each a search of that
    /// column's index: a `UNION` would merge whole-table scans).
    count: &'static str,
    /// Whether a row is dead, as an expression on its unqualified columns, for a correlated
    /// subquery (where unqualified columns are the innermost table's).
    dead: &'static str,
}

/// `dead_rows!(table, key, [column, …])`: the [`DeadRows`] of `table` (rows named by `key`),
/// dead when any `column <= ?1`.
macro_rules! dead_rows {
    ($table:literal, $key:literal, [$first:literal $(, $col:literal)* $(,)?]) => {
        DeadRows {
            delete: &[
                dead_rows!(@delete $table, $key, $first)
                $(, dead_rows!(@delete $table, $key, $col))*
            ],
            count: dead_rows!(@count $table, [], $first $(, $col)*),
            dead: concat!("(", $first, " <= ?1" $(, " OR ", $col, " <= ?1")*, ")"),
        }
    };
    // Rows dead by `$col` and by none of the `$prev` columns: each dead row counts once,
    // under its first dead column, and each term is a search of its column's index.
    (@count $table:literal, [$($prev:literal),*], $col:literal) => {
        concat!(
            "(SELECT count(*) FROM ", $table, " WHERE ", $col, " <= ?1"
            $(, " AND (", $prev, " <= ?1) IS NOT TRUE")*, ")"
        )
    };
    (@count $table:literal, [$($prev:literal),*], $col:literal, $($rest:literal),+) => {
        concat!(
            dead_rows!(@count $table, [$($prev),*], $col),
            " + ",
            dead_rows!(@count $table, [$($prev,)* $col], $($rest),+)
        )
    };
    (@delete $table:literal, $key:literal, $col:literal) => {
        concat!(
            "DELETE FROM ", $table, " WHERE ", $key, " IN (SELECT ", $key, " FROM ", $table,
            " WHERE ", $col, " <= ?1 LIMIT ?2)"
        )
    };
}

const CODES: DeadRows = dead_rows!("authorization_codes", "hash", ["expires_at"]);
const ACCESS: DeadRows = dead_rows!("access_tokens", "hash", ["expires_at", "revoked_at"]);
/// A rotated token stays until its own expiry: reuse detection needs it.
const REFRESH: DeadRows = dead_rows!(
    "refresh_tokens",
    "hash",
    ["expires_at", "idle_expires_at", "revoked_at"]
);
const PATS: DeadRows = dead_rows!(
    "personal_access_tokens",
    "rowid",
    ["expires_at", "revoked_at"]
);
const SESSIONS: DeadRows = dead_rows!(
    "authorization_sessions",
    "hash",
    ["expires_at", "completed_at"]
);
const LOGIN_FAILURES: DeadRows = dead_rows!("login_failures", "id", ["at"]);
const LOGIN_SESSIONS: DeadRows = dead_rows!(
    "login_sessions",
    "hash",
    ["expires_at", "idle_expires_at", "revoked_at"]
);
/// Expired, or consumed (used or superseded), at or before the cutoff.
const ONE_TIME_TOKENS: DeadRows =
    dead_rows!("one_time_tokens", "hash", ["expires_at", "consumed_at"]);
const CEREMONIES: DeadRows = dead_rows!("ceremonies", "hash", ["expires_at"]);

/// Cleanup's rule for revoked grants (`?1` the cutoff): they go with whatever is left of
/// them.
macro_rules! revoked_grant {
    () => {
        "revoked_at <= ?1"
    };
}

/// Cleanup's rule for old unrevoked grants (alias `g`, `?1` the cutoff): they go once
/// nothing refers to them.
macro_rules! old_grant {
    () => {
        "g.revoked_at IS NULL AND g.created_at <= ?1"
    };
}

/// Grants revoked at or before the cutoff `?1`, oldest revocation first, at most `?2`.
const REVOKED_GRANTS: &str = concat!(
    "SELECT id FROM grants WHERE ",
    revoked_grant!(),
    " ORDER BY revoked_at, id LIMIT ?2"
);

/// What is left of one grant (`?1`), at most `?2` rows a statement.
const GRANT_CHILDREN: [&str; 3] = [
    "DELETE FROM authorization_codes WHERE hash IN (
         SELECT hash FROM authorization_codes WHERE grant_id = ?1 LIMIT ?2)",
    "DELETE FROM access_tokens WHERE hash IN (
         SELECT hash FROM access_tokens WHERE grant_id = ?1 LIMIT ?2)",
    "DELETE FROM refresh_tokens WHERE hash IN (
         SELECT hash FROM refresh_tokens WHERE grant_id = ?1 LIMIT ?2)",
];

/// Old unrevoked grants after the cursor `(?2, ?3)` in `(created_at, id)` order (the
/// `grants_created_at` index: a `WITHOUT ROWID` index carries the key), at most `?4`, each
/// with whether nothing refers to it any more.
const OLD_GRANTS: &str = concat!(
    "SELECT g.created_at, g.id,
        NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
        AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
        AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)
    FROM grants AS g
    WHERE ",
    old_grant!(),
    " AND (g.created_at, g.id) > (?2, ?3)
    ORDER BY g.created_at, g.id LIMIT ?4"
);

/// Deletes an old grant found empty, checking again in the deleting transaction: a token
/// issued concurrently into it either committed first (and keeps it) or finds it gone
/// (`Inactive`).
const DELETE_EMPTY_GRANT: &str = "DELETE FROM grants AS g
    WHERE g.id = ?1 AND g.revoked_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)";

/// One batch of a pass, in one write transaction: rows counted, and whether the pass is
/// done.
type Batch<'a> = dyn FnMut(&Transaction<'_>) -> R<(u64, bool)> + 'a;

/// Limits of one cleanup call.
struct Run {
    max_batches: u32,
    deadline: Option<Instant>,
}

impl Run {
    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Runs `batch` until it says done, `max_batches` ran or time is up; returns the rows
    /// counted and whether the pass finished. Each batch takes the writer gate and the
    /// writer for one short transaction and releases both before the next.
    fn pass(&self, inner: &Inner, batch: &mut Batch<'_>) -> Result<(u64, bool)> {
        let mut counted = 0u64;
        for i in 0..self.max_batches {
            if i > 0 {
                // Operational back-off, not a test wait: with the writer gate and the
                // writer released, give other processes on this file a real chance at
                // SQLite's write lock (our own tasks get the gate in FIFO order anyway).
                // This runs on the blocking thread, never on an async worker.
                std::thread::sleep(BACK_OFF);
            }
            if self.out_of_time() {
                break;
            }
            let (n, done) = {
                let gate = inner.gate_blocking()?;
                inner.write_gated(&gate, &mut *batch)?
            };
            counted += n;
            if done {
                return Ok((counted, true));
            }
        }
        Ok((counted, false))
    }
}

/// A pass of one or more statements (one per condition) sharing one batch's budget: done
/// when together they delete fewer than `batch` rows.
fn multi(
    statements: &'static [&'static str],
    cutoff: i64,
    batch: i64,
) -> impl FnMut(&Transaction<'_>) -> R<(u64, bool)> {
    move |tx| {
        let mut left = batch;
        for sql in statements {
            if left == 0 {
                break;
            }
            left -= tx.prepare_cached(sql)?.execute(params![cutoff, left])? as i64;
        }
        Ok(((batch - left) as u64, left > 0))
    }
}

/// Revoked grants, with whatever is left of them. Their codes and tokens are deleted
/// first, grant by grant, at most `batch` rows a batch in all (so one batch never cascades
/// over an unbounded number of rows); then the emptied grant. Only grants are counted: a
/// code or token deleted here goes *with its grant*, as it would have by cascade (anything
/// dead by its own rule was already deleted, and counted, by its own pass).
fn revoked_grants(cutoff: i64, batch: i64) -> impl FnMut(&Transaction<'_>) -> R<(u64, bool)> {
    move |tx| {
        let ids = tx
            .prepare_cached(REVOKED_GRANTS)?
            .query_map(params![cutoff, batch], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut left = batch;
        let mut grants = 0u64;
        for id in &ids {
            for sql in GRANT_CHILDREN {
                if left == 0 {
                    return Ok((grants, false));
                }
                left -= tx.prepare_cached(sql)?.execute(params![id, left])? as i64;
            }
            if left == 0 {
                // Perhaps not empty yet: the next batch goes on with it.
                return Ok((grants, false));
            }
            let n = tx
                .prepare_cached("DELETE FROM grants WHERE id = ?1")?
                .execute([id])?;
            grants += n as u64;
            left -= n as i64;
        }
        Ok((grants, (ids.len() as i64) < batch))
    }
}

/// Old unrevoked grants nothing refers to any more, at most `batch` a batch. A cursor on
/// `(created_at, id)` carries over between batches of one call, so live grants are
/// examined once per call, not once per batch; one batch examines at most `scan` grants.
fn empty_grants(cutoff: i64, batch: i64) -> impl FnMut(&Transaction<'_>) -> R<(u64, bool)> {
    let scan = batch.saturating_mul(16).max(MIN_GRANT_SCAN);
    let mut cursor: (i64, Vec<u8>) = (i64::MIN, Vec::new());
    move |tx| {
        let mut empty = Vec::new();
        let mut examined = 0i64;
        let mut reached_end = true;
        {
            let mut stmt = tx.prepare_cached(OLD_GRANTS)?;
            let mut rows = stmt.query(params![cutoff, cursor.0, cursor.1, scan])?;
            while let Some(row) = rows.next()? {
                examined += 1;
                let at: i64 = row.get(0)?;
                let id: Vec<u8> = row.get(1)?;
                let is_empty: bool = row.get(2)?;
                if is_empty {
                    empty.push(id.clone());
                }
                cursor = (at, id);
                if empty.len() as i64 == batch {
                    reached_end = false;
                    break;
                }
            }
        }
        if examined == scan {
            reached_end = false;
        }
        let mut deleted = 0u64;
        let mut stmt = tx.prepare_cached(DELETE_EMPTY_GRANT)?;
        for id in &empty {
            deleted += stmt.execute([id])? as u64;
        }
        Ok((deleted, reached_end))
    }
}

fn cleanup(inner: &Inner, opts: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
    inner.ready()?;
    let cutoff = now.saturating_sub(opts.retention).as_unix_micros();
    let batch = i64::from(opts.batch_size);
    let run = Run {
        max_batches: opts.max_batches,
        deadline: opts.time_budget.map(|b| Instant::now() + b),
    };
    let mut report = CleanupReport::default();
    // Tokens first, so grants they leave behind can go in the same run.
    let passes: [(Kind, Box<Batch<'_>>); 11] = [
        (Kind::Codes, Box::new(multi(CODES.delete, cutoff, batch))),
        (Kind::Access, Box::new(multi(ACCESS.delete, cutoff, batch))),
        (
            Kind::Refresh,
            Box::new(multi(REFRESH.delete, cutoff, batch)),
        ),
        (Kind::Grants, Box::new(revoked_grants(cutoff, batch))),
        (Kind::Grants, Box::new(empty_grants(cutoff, batch))),
        (Kind::Pats, Box::new(multi(PATS.delete, cutoff, batch))),
        (
            Kind::Sessions,
            Box::new(multi(SESSIONS.delete, cutoff, batch)),
        ),
        // Last, after grants (as documented).
        (
            Kind::LoginFailures,
            Box::new(multi(LOGIN_FAILURES.delete, cutoff, batch)),
        ),
        (
            Kind::LoginSessions,
            Box::new(multi(LOGIN_SESSIONS.delete, cutoff, batch)),
        ),
        (
            Kind::OneTimeTokens,
            Box::new(multi(ONE_TIME_TOKENS.delete, cutoff, batch)),
        ),
        (
            Kind::Ceremonies,
            Box::new(multi(CEREMONIES.delete, cutoff, batch)),
        ),
    ];
    for (kind, mut batch) in passes {
        let (deleted, finished) = run.pass(inner, &mut *batch)?;
        if !finished {
            report.incomplete = true;
        }
        let slot = match kind {
            Kind::Codes => &mut report.authorization_codes,
            Kind::Access => &mut report.access_tokens,
            Kind::Refresh => &mut report.refresh_tokens,
            Kind::Grants => &mut report.grants,
            Kind::Pats => &mut report.personal_access_tokens,
            Kind::Sessions => &mut report.authorization_sessions,
            Kind::LoginFailures => &mut report.login_failures,
            Kind::LoginSessions => &mut report.login_sessions,
            Kind::OneTimeTokens => &mut report.one_time_tokens,
            Kind::Ceremonies => &mut report.ceremonies,
        };
        *slot += deleted;
    }
    if report.total() > 0 {
        tracing::debug!(?report, "sqlite cleanup");
    }
    Ok(report)
}

/// The preview: one statement (so one snapshot) counting what an unbounded cleanup at the
/// cutoff `?1` would delete, by cleanup's own rules, in [`CleanupReport`] field order.
/// Grants count as cleanup's grant passes see them, after the code and token passes: an
/// old unrevoked grant counts when every code and token it has left is dead by its own
/// rule.
static PREVIEW: LazyLock<String> = LazyLock::new(|| {
    let grants = format!(
        "(SELECT count(*) FROM grants WHERE {revoked})
         + (SELECT count(*) FROM grants AS g WHERE {old}
            AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c
                            WHERE c.grant_id = g.id AND {code_dead} IS NOT TRUE)
            AND NOT EXISTS (SELECT 1 FROM access_tokens AS a
                            WHERE a.grant_id = g.id AND {access_dead} IS NOT TRUE)
            AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r
                            WHERE r.grant_id = g.id AND {refresh_dead} IS NOT TRUE))",
        revoked = revoked_grant!(),
        old = old_grant!(),
        code_dead = CODES.dead,
        access_dead = ACCESS.dead,
        refresh_dead = REFRESH.dead,
    );
    let counts = [
        CODES.count,
        ACCESS.count,
        REFRESH.count,
        &grants,
        PATS.count,
        SESSIONS.count,
        LOGIN_FAILURES.count,
        LOGIN_SESSIONS.count,
        ONE_TIME_TOKENS.count,
        CEREMONIES.count,
    ];
    let columns: Vec<String> = counts.iter().map(|c| format!("({c})")).collect();
    format!("SELECT {}", columns.join(",\n       "))
});

fn cleanup_preview(inner: &Inner, opts: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
    let cutoff = now.saturating_sub(opts.retention).as_unix_micros();
    // A long-work reader: no write lock, no writer gate, never the inline reader.
    inner.read_long(move |conn| {
        Ok(conn.prepare_cached(&PREVIEW)?.query_row([cutoff], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(count);
            Ok(CleanupReport {
                authorization_codes: n(0)?,
                access_tokens: n(1)?,
                refresh_tokens: n(2)?,
                grants: n(3)?,
                personal_access_tokens: n(4)?,
                authorization_sessions: n(5)?,
                login_failures: n(6)?,
                login_sessions: n(7)?,
                one_time_tokens: n(8)?,
                ceremonies: n(9)?,
                incomplete: false,
            })
        })?)
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Codes,
    Access,
    Refresh,
    Grants,
    Pats,
    Sessions,
    LoginFailures,
    LoginSessions,
    OneTimeTokens,
    Ceremonies,
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Runs a query returning four counts: active, expired, revoked, used.
fn kind_stats(conn: &Connection, sql: &str, now: i64) -> R<KindStats> {
    Ok(conn.prepare_cached(sql)?.query_row([now], |r| {
        Ok(KindStats {
            active: count(r.get(0)?),
            expired: count(r.get(1)?),
            revoked: count(r.get(2)?),
            used: count(r.get(3)?),
        })
    })?)
}

// Classification, first match wins (as in the memory backend): revoked (itself or its
// grant) → used (consumed, rotated, completed) → expired → active.

const CODE_STATS: &str = "SELECT
        coalesce(sum(g.revoked_at IS NULL AND c.consumed_at IS NULL AND c.expires_at > ?1), 0),
        coalesce(sum(g.revoked_at IS NULL AND c.consumed_at IS NULL AND c.expires_at <= ?1), 0),
        coalesce(sum(g.revoked_at IS NOT NULL), 0),
        coalesce(sum(g.revoked_at IS NULL AND c.consumed_at IS NOT NULL), 0)
    FROM authorization_codes AS c JOIN grants AS g ON g.id = c.grant_id";

const ACCESS_STATS: &str = "SELECT
        coalesce(sum(a.revoked_at IS NULL AND g.revoked_at IS NULL AND a.expires_at > ?1), 0),
        coalesce(sum(a.revoked_at IS NULL AND g.revoked_at IS NULL AND a.expires_at <= ?1), 0),
        coalesce(sum(a.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL), 0),
        0
    FROM access_tokens AS a JOIN grants AS g ON g.id = a.grant_id";

const REFRESH_STATS: &str = "SELECT
        coalesce(sum(r.revoked_at IS NULL AND g.revoked_at IS NULL AND r.rotated_at IS NULL
                     AND r.expires_at > ?1 AND r.idle_expires_at > ?1), 0),
        coalesce(sum(r.revoked_at IS NULL AND g.revoked_at IS NULL AND r.rotated_at IS NULL
                     AND (r.expires_at <= ?1 OR r.idle_expires_at <= ?1)), 0),
        coalesce(sum(r.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL), 0),
        coalesce(sum(r.revoked_at IS NULL AND g.revoked_at IS NULL
                     AND r.rotated_at IS NOT NULL), 0)
    FROM refresh_tokens AS r JOIN grants AS g ON g.id = r.grant_id";

const PAT_STATS: &str = "SELECT
        coalesce(sum(revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)), 0),
        coalesce(sum(revoked_at IS NULL AND expires_at <= ?1), 0),
        coalesce(sum(revoked_at IS NOT NULL), 0),
        0
    FROM personal_access_tokens";

const SESSION_STATS: &str = "SELECT
        coalesce(sum(completed_at IS NULL AND expires_at > ?1), 0),
        coalesce(sum(completed_at IS NULL AND expires_at <= ?1), 0),
        0,
        coalesce(sum(completed_at IS NOT NULL), 0)
    FROM authorization_sessions";

fn stats(inner: &Inner, now: Timestamp) -> Result<Stats> {
    inner.ready()?;
    let now = now.as_unix_micros();
    let path = inner.path.clone();
    inner.read_long(move |conn| {
        // One read transaction: every count is of the same snapshot.
        let tx = conn.unchecked_transaction()?;
        let (clients, disabled_clients): (i64, i64) = tx
            .prepare_cached("SELECT count(*), coalesce(sum(disabled), 0) FROM clients")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (grants_active, grants_revoked): (i64, i64) = tx
            .prepare_cached(
                "SELECT coalesce(sum(revoked_at IS NULL), 0), coalesce(sum(revoked_at IS NOT NULL), 0)
                 FROM grants",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let one = |sql: &str| -> R<u64> {
            Ok(count(tx.prepare_cached(sql)?.query_row([], |r| r.get(0))?))
        };
        let consents = one("SELECT count(*) FROM consents")?;
        let audit_events = one("SELECT count(*) FROM audit_events")?;
        let pages = one("PRAGMA page_count")?;
        let page_size = one("PRAGMA page_size")?;
        let mut wal = path.into_os_string();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        Ok(Stats {
            clients: count(clients),
            disabled_clients: count(disabled_clients),
            grants: KindStats {
                active: count(grants_active),
                revoked: count(grants_revoked),
                ..KindStats::default()
            },
            authorization_codes: kind_stats(&tx, CODE_STATS, now)?,
            access_tokens: kind_stats(&tx, ACCESS_STATS, now)?,
            refresh_tokens: kind_stats(&tx, REFRESH_STATS, now)?,
            personal_access_tokens: kind_stats(&tx, PAT_STATS, now)?,
            authorization_sessions: kind_stats(&tx, SESSION_STATS, now)?,
            consents,
            audit_events,
            database_bytes: Some(pages.saturating_mul(page_size).saturating_add(wal_bytes)),
        })
    })
}

fn check_cleanup_options(o: &CleanupOptions) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&o.batch_size) {
        return Err(Error::invalid(
            "batch_size",
            format!("between 1 and {MAX_BATCH}"),
        ));
    }
    if o.max_batches == 0 {
        return Err(Error::invalid("max_batches", "must be at least 1"));
    }
    Ok(())
}

#[async_trait]
impl Maintenance for SqliteStore {
    async fn migrate(&self) -> Result<Vec<i64>> {
        self.blocking_write(|inner, _gate| {
            let mut conn = inner.writer();
            let applied = migrate::migrate(&mut conn).map_err(Error::from)?;
            let version = migrate::schema_version(&conn).map_err(Error::from)?;
            inner.schema_version.store(version, Ordering::Release);
            Ok(applied)
        })
        .await
    }

    async fn cleanup(&self, options: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
        check_cleanup_options(options)?;
        let options = *options;
        self.blocking(move |inner| cleanup(inner, &options, now))
            .await
    }

    async fn cleanup_preview(
        &self,
        options: &CleanupOptions,
        now: Timestamp,
    ) -> Result<CleanupReport> {
        let options = *options;
        self.blocking(move |inner| cleanup_preview(inner, &options, now))
            .await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.blocking(move |inner| stats(inner, now)).await
    }

    async fn key_checks(&self) -> Result<Vec<KeyCheck>> {
        // A handful of rows: a short inline read.
        self.inner.read(stored_key_checks)
    }

    async fn add_key_checks(&self, seen: &[KeyCheck], new: &[KeyCheck]) -> Result<bool> {
        self.inner
            .write(|tx| {
                // Under SQLite's write lock (BEGIN IMMEDIATE): nobody records in between.
                if !same_key_checks(&stored_key_checks(tx)?, seen) {
                    return Ok(false);
                }
                let mut insert = tx.prepare_cached(
                    "INSERT INTO key_checks (ring, key_id, key_check, recorded_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for c in new {
                    // A (ring, key id) stored already is a primary key conflict: the
                    // transaction rolls back and nothing is written.
                    insert.execute(params![
                        c.ring.as_str(),
                        c.key_id,
                        c.check.as_slice(),
                        c.recorded_at.as_unix_micros()
                    ])?;
                }
                Ok(true)
            })
            .await
    }
}

/// Every stored key check, by ring name then key id (byte order: SQLite's `BINARY`).
fn stored_key_checks(conn: &Connection) -> R<Vec<KeyCheck>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ring, key_id, key_check, recorded_at FROM key_checks ORDER BY ring, key_id",
    )?;
    let rows = stmt.query_map([], crate::rows::key_check)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::future::Future;
    use std::sync::Arc;
    use std::task::Poll;

    use authstore_core::backend::{ClientStore, GrantStore};
    use authstore_core::{AuditContext, AuditEvent, AuditKind, ClientId, TokenHash};

    use super::*;
    use crate::SqliteOptions;

    const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

    fn plan(conn: &Connection, sql: &str, n: usize) -> Vec<String> {
        let params: Vec<i64> = vec![0; n];
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn cleanup_statements_use_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate::migrate(&mut conn).unwrap();
        let mut statements: Vec<(&str, usize)> = ALL_DEAD_ROWS
            .iter()
            .flat_map(|k| k.delete.iter().map(|s| (*s, 2)))
            .collect();
        statements.extend(GRANT_CHILDREN.iter().map(|s| (*s, 2)));
        statements.extend([
            (REVOKED_GRANTS, 2),
            (OLD_GRANTS, 4),
            (DELETE_EMPTY_GRANT, 1),
        ]);
        for (sql, n) in statements {
            let p = plan(&conn, sql, n);
            assert!(!p.iter().any(|l| l.starts_with("SCAN")), "{sql}\n{p:#?}");
            assert!(
                !p.iter().any(|l| l.contains("TEMP B-TREE")),
                "{sql}\n{p:#?}"
            );
        }
        // The single three-way OR it replaces was a full scan.
        let old = "SELECT hash FROM refresh_tokens
                   WHERE expires_at <= ?1 OR idle_expires_at <= ?1 OR revoked_at <= ?1 LIMIT ?2";
        let p = plan(&conn, old, 2);
        assert!(
            p.iter().any(|l| l.starts_with("SCAN refresh_tokens")),
            "{p:#?}"
        );
    }

    const ALL_DEAD_ROWS: [DeadRows; 9] = [
        CODES,
        ACCESS,
        REFRESH,
        PATS,
        SESSIONS,
        LOGIN_FAILURES,
        LOGIN_SESSIONS,
        ONE_TIME_TOKENS,
        CEREMONIES,
    ];

    /// The preview reads tables only through index searches.
    #[test]
    fn cleanup_preview_uses_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate::migrate(&mut conn).unwrap();
        let p = plan(&conn, &PREVIEW, 1);
        let tables = [
            "grants",
            "authorization_codes",
            "access_tokens",
            "refresh_tokens",
            "personal_access_tokens",
            "authorization_sessions",
            "login_failures",
            "login_sessions",
            "one_time_tokens",
            "ceremonies",
        ];
        for l in &p {
            for t in tables {
                let scanned = l.starts_with(&format!("SCAN {t} ")) || *l == format!("SCAN {t}");
                assert!(!scanned, "{l}\n{p:#?}");
            }
        }
        assert!(p.iter().any(|l| l.starts_with("SEARCH")), "{p:#?}");
    }

    /// The preview takes no write lock: it answers at once while another connection holds
    /// the file's write lock (a write would wait `busy_timeout`, then fail as busy).
    #[test]
    fn cleanup_preview_takes_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let opts = SqliteOptions {
            busy_timeout: Duration::from_millis(1),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&path, opts).unwrap();
        // No runtime: long work runs inline.
        crate::block_on(store.migrate()).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let preview = crate::block_on(store.cleanup_preview(&CleanupOptions::default(), T0));
        assert_eq!(preview.unwrap(), CleanupReport::default());
        // Whereas cleanup, which writes, is refused as busy.
        let cleanup = crate::block_on(store.cleanup(&CleanupOptions::default(), T0));
        assert!(matches!(cleanup, Err(Error::Backend { .. })), "{cleanup:?}");
        other.execute_batch("ROLLBACK").unwrap();
    }

    /// Polls `fut` once.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
    }

    /// On a one-thread runtime, a write waiting for a writer held by long work parks its
    /// task instead of blocking the thread: validation goes on meanwhile.
    #[test]
    fn a_write_waiting_for_long_work_does_not_block_the_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(
                SqliteStore::open(dir.path().join("t.db"), SqliteOptions::default()).unwrap(),
            );
            store.migrate().await.unwrap();
            let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let long = {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .blocking_write(move |inner, _gate| {
                            let _writer = inner.writer();
                            held_tx.send(()).unwrap();
                            release_rx.recv().unwrap();
                            Ok(())
                        })
                        .await
                })
            };
            held_rx.await.unwrap();
            let event = AuditEvent::new(AuditKind::ClientUpdated, T0, &AuditContext::default());
            let mut write = Box::pin(store.set_client_disabled(ClientId::new_at(T0), true, event));
            assert!(
                poll_once(&mut write).await.is_pending(),
                "waits for the gate"
            );
            // The only thread is free: a validation runs.
            let found = store
                .find_access_token(&TokenHash::from_bytes([7; 32]), T0)
                .await
                .unwrap();
            assert!(found.is_none());
            release_tx.send(()).unwrap();
            long.await.unwrap().unwrap();
            // Then the write runs (the client does not exist).
            assert!(matches!(
                write.await,
                Err(authstore_core::Error::NotFound { .. })
            ));
        });
    }

    /// Long reads never take reader 0, so an inline read finds it free.
    #[test]
    fn long_reads_leave_the_inline_reader_free() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            readers: 3,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(dir.path().join("t.db"), opts).unwrap();
        // No runtime: long work runs inline.
        crate::block_on(store.migrate()).unwrap();
        let inner = &store.inner;
        let held = [inner.long_reader(), inner.long_reader()];
        assert!(inner.readers[0].try_lock().is_ok(), "reader 0 is free");
        let one: i64 = inner
            .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(one, 1);
        drop(held);
    }
}
