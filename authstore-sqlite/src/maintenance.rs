//! Migrations, cleanup and statistics: long work, run on blocking threads.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use authstore_core::backend::{CleanupOptions, CleanupReport, KindStats, Maintenance, Stats};
use authstore_core::{Error, Result, Timestamp};
use rusqlite::{Connection, params};

use crate::db::R;
use crate::{Inner, SqliteStore, migrate, write_tx};

/// The most rows one cleanup batch may delete.
const MAX_BATCH: u32 = 100_000;

/// One cleanup pass: a `DELETE` of at most `?2` rows dead at or before the cutoff `?1`.
struct Pass {
    kind: Kind,
    sql: &'static str,
}

#[derive(Clone, Copy)]
enum Kind {
    Codes,
    Access,
    Refresh,
    Grants,
    Pats,
    Sessions,
}

/// In order: tokens first, so grants they leave behind can go in the same run.
const PASSES: &[Pass] = &[
    Pass {
        kind: Kind::Codes,
        sql: "DELETE FROM authorization_codes WHERE hash IN (
                  SELECT hash FROM authorization_codes WHERE expires_at <= ?1 LIMIT ?2)",
    },
    Pass {
        kind: Kind::Access,
        sql: "DELETE FROM access_tokens WHERE hash IN (
                  SELECT hash FROM access_tokens
                  WHERE expires_at <= ?1 OR revoked_at <= ?1 LIMIT ?2)",
    },
    Pass {
        kind: Kind::Refresh,
        // A rotated token stays until its own expiry: reuse detection needs it.
        sql: "DELETE FROM refresh_tokens WHERE hash IN (
                  SELECT hash FROM refresh_tokens
                  WHERE expires_at <= ?1 OR idle_expires_at <= ?1 OR revoked_at <= ?1
                  LIMIT ?2)",
    },
    Pass {
        kind: Kind::Grants,
        // Revoked grants, with whatever is left of them (by cascade): all of it is dead.
        sql: "DELETE FROM grants WHERE id IN (
                  SELECT id FROM grants WHERE revoked_at <= ?1 LIMIT ?2)",
    },
    Pass {
        kind: Kind::Grants,
        // Old unrevoked grants nothing refers to any more. Checked and deleted in one
        // statement of one write transaction, so a token issued concurrently into the
        // grant either commits first (and keeps it) or finds it gone (Inactive).
        sql: "DELETE FROM grants WHERE id IN (
                  SELECT g.id FROM grants AS g
                  WHERE g.revoked_at IS NULL AND g.created_at <= ?1
                    AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
                    AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
                    AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)
                  LIMIT ?2)",
    },
    Pass {
        kind: Kind::Pats,
        sql: "DELETE FROM personal_access_tokens WHERE rowid IN (
                  SELECT rowid FROM personal_access_tokens
                  WHERE expires_at <= ?1 OR revoked_at <= ?1 LIMIT ?2)",
    },
    Pass {
        kind: Kind::Sessions,
        sql: "DELETE FROM authorization_sessions WHERE hash IN (
                  SELECT hash FROM authorization_sessions
                  WHERE expires_at <= ?1 OR completed_at <= ?1 LIMIT ?2)",
    },
];

fn cleanup(inner: &Inner, opts: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
    inner.ready()?;
    let cutoff = now.saturating_sub(opts.retention).as_unix_micros();
    let batch = i64::from(opts.batch_size);
    let mut report = CleanupReport::default();
    let deadline = opts.time_budget.map(|b| std::time::Instant::now() + b);
    let out_of_time = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
    for pass in PASSES {
        let mut deleted = 0u64;
        let mut finished = false;
        for _ in 0..opts.max_batches {
            if out_of_time() {
                break;
            }
            // One short transaction per batch; the writer is free between batches.
            let n = {
                let mut conn = inner.writer();
                write_tx(&mut conn, |tx| {
                    Ok(tx
                        .prepare_cached(pass.sql)?
                        .execute(params![cutoff, batch])?)
                })
                .map_err(Error::from)?
            };
            deleted += n as u64;
            if (n as i64) < batch {
                finished = true;
                break;
            }
            std::thread::yield_now();
        }
        if !finished {
            report.incomplete = true;
        }
        let slot = match pass.kind {
            Kind::Codes => &mut report.authorization_codes,
            Kind::Access => &mut report.access_tokens,
            Kind::Refresh => &mut report.refresh_tokens,
            Kind::Grants => &mut report.grants,
            Kind::Pats => &mut report.personal_access_tokens,
            Kind::Sessions => &mut report.authorization_sessions,
        };
        *slot += deleted;
    }
    if report.total() > 0 {
        tracing::debug!(?report, "sqlite cleanup");
    }
    Ok(report)
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
    inner.read(move |conn| {
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
        self.blocking(|inner| {
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

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.blocking(move |inner| stats(inner, now)).await
    }
}
