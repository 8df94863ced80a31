//! Migrations, cleanup and statistics.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use authstore_core::backend::{CleanupOptions, CleanupReport, KindStats, Maintenance, Stats};
use authstore_core::{Error, Result, Timestamp};
use deadpool_postgres::GenericClient;
use tokio_postgres::IsolationLevel;

use crate::db::{Db, ts};
use crate::{PostgresStore, SCHEMA_VERSION, migrate};

/// The most rows one cleanup batch may delete.
const MAX_BATCH: u32 = 100_000;

#[derive(Clone, Copy)]
enum Kind {
    Codes,
    Access,
    Refresh,
    Grants,
    Pats,
    Sessions,
}

/// One cleanup pass: a `DELETE` of at most `$2` rows dead at or before the cutoff `$1`,
/// taking row locks with `SKIP LOCKED` so concurrent cleaners take disjoint rows and never
/// wait for each other. `$1` is a `timestamptz`, `$2` a `bigint`.
struct Pass {
    kind: Kind,
    sql: &'static str,
}

/// In order: tokens first, so grants they leave behind can go in the same run.
const PASSES: &[Pass] = &[
    Pass {
        kind: Kind::Codes,
        sql: "DELETE FROM authorization_codes WHERE hash IN (
                  SELECT hash FROM authorization_codes WHERE expires_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
    Pass {
        kind: Kind::Access,
        sql: "DELETE FROM access_tokens WHERE hash IN (
                  SELECT hash FROM access_tokens
                  WHERE expires_at <= $1 OR revoked_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
    Pass {
        kind: Kind::Refresh,
        // A rotated token stays until its own expiry: reuse detection needs it.
        sql: "DELETE FROM refresh_tokens WHERE hash IN (
                  SELECT hash FROM refresh_tokens
                  WHERE expires_at <= $1 OR idle_expires_at <= $1 OR revoked_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
    Pass {
        kind: Kind::Pats,
        sql: "DELETE FROM personal_access_tokens WHERE id IN (
                  SELECT id FROM personal_access_tokens
                  WHERE expires_at <= $1 OR revoked_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
    Pass {
        kind: Kind::Sessions,
        sql: "DELETE FROM authorization_sessions WHERE hash IN (
                  SELECT hash FROM authorization_sessions
                  WHERE expires_at <= $1 OR completed_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
    Pass {
        kind: Kind::Grants,
        // Revoked grants, with whatever is left of them (by cascade): all of it is dead.
        sql: "DELETE FROM grants WHERE id IN (
                  SELECT id FROM grants WHERE revoked_at <= $1
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
    },
];

/// Old unrevoked grants nothing refers to any more, step 1: lock candidates. A grant
/// someone is issuing into holds a `FOR KEY SHARE` lock and is skipped.
const EMPTY_GRANTS_LOCK: &str = "SELECT g.id FROM grants AS g
    WHERE g.revoked_at IS NULL AND g.created_at <= $1
      AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)
    LIMIT $2 FOR UPDATE OF g SKIP LOCKED";

/// Step 2, in the same transaction with the locks held: delete them, re-checking on a
/// fresh snapshot (READ COMMITTED: taken now, after the locks) that they are still empty
/// and unrevoked, so a token committed in between keeps its grant.
const EMPTY_GRANTS_DELETE: &str = "DELETE FROM grants AS g
    WHERE g.id = ANY($1) AND g.revoked_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)";

fn slot(report: &mut CleanupReport, kind: Kind) -> &mut u64 {
    match kind {
        Kind::Codes => &mut report.authorization_codes,
        Kind::Access => &mut report.access_tokens,
        Kind::Refresh => &mut report.refresh_tokens,
        Kind::Grants => &mut report.grants,
        Kind::Pats => &mut report.personal_access_tokens,
        Kind::Sessions => &mut report.authorization_sessions,
    }
}

impl PostgresStore {
    async fn cleanup_impl(&self, opts: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
        let mut conn = self.inner.conn().await?;
        let cutoff = ts(now.saturating_sub(opts.retention));
        let batch = i64::from(opts.batch_size);
        let mut report = CleanupReport::default();
        let deadline = opts.time_budget.map(|b| std::time::Instant::now() + b);
        let out_of_time = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
        for pass in PASSES {
            let st = conn.prepare_cached(pass.sql).await.db()?;
            let mut finished = false;
            for _ in 0..opts.max_batches {
                if out_of_time() {
                    break;
                }
                // One statement, one short transaction per batch (autocommit).
                let n = conn.execute(&st, &[&cutoff, &batch]).await.db()?;
                *slot(&mut report, pass.kind) += n;
                if n < opts.batch_size.into() {
                    finished = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !finished {
                report.incomplete = true;
            }
        }
        // Grants left empty, in two steps per batch (see EMPTY_GRANTS_*).
        let mut finished = false;
        for _ in 0..opts.max_batches {
            if out_of_time() {
                break;
            }
            let tx = conn.transaction().await.db()?;
            let lock = tx.prepare_cached(EMPTY_GRANTS_LOCK).await.db()?;
            let ids: Vec<uuid::Uuid> = tx
                .query(&lock, &[&cutoff, &batch])
                .await
                .db()?
                .iter()
                .map(|r| r.try_get(0).db())
                .collect::<Result<_>>()?;
            let n = if ids.is_empty() {
                0
            } else {
                let del = tx.prepare_cached(EMPTY_GRANTS_DELETE).await.db()?;
                tx.execute(&del, &[&ids]).await.db()?
            };
            tx.commit().await.db()?;
            report.grants += n;
            if (ids.len() as u64) < u64::from(opts.batch_size) {
                finished = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        if !finished {
            report.incomplete = true;
        }
        if report.total() > 0 {
            tracing::debug!(?report, "postgres cleanup");
        }
        Ok(report)
    }

    async fn stats_impl(&self, now: Timestamp) -> Result<Stats> {
        let mut conn = self.inner.conn().await?;
        // One snapshot for every count.
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .db()?;
        let now = ts(now);
        let st = tx.prepare_cached(STATS).await.db()?;
        let row = tx.query_one(&st, &[&now]).await.db()?;
        let n = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i).db()?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let kind = |o: usize| -> Result<KindStats> {
            Ok(KindStats {
                active: n(o)?,
                expired: n(o + 1)?,
                revoked: n(o + 2)?,
                used: n(o + 3)?,
            })
        };
        let stats = Stats {
            clients: n(0)?,
            disabled_clients: n(1)?,
            grants: KindStats {
                active: n(2)?,
                revoked: n(3)?,
                ..KindStats::default()
            },
            authorization_codes: kind(4)?,
            access_tokens: kind(8)?,
            refresh_tokens: kind(12)?,
            personal_access_tokens: kind(16)?,
            authorization_sessions: kind(20)?,
            consents: n(24)?,
            audit_events: n(25)?,
            database_bytes: Some(n(26)?),
        };
        tx.commit().await.db()?;
        Ok(stats)
    }
}

// Classification, first match wins (as in the memory backend): revoked (itself or its
// grant) → used (consumed, rotated, completed) → expired → active. `$1` is now.
const STATS: &str = "SELECT
    (SELECT count(*) FROM clients),
    (SELECT count(*) FILTER (WHERE disabled) FROM clients),
    (SELECT count(*) FILTER (WHERE revoked_at IS NULL) FROM grants),
    (SELECT count(*) FILTER (WHERE revoked_at IS NOT NULL) FROM grants),
    c.*, a.*, r.*, p.*, s.*,
    (SELECT count(*) FROM consents),
    (SELECT count(*) FROM audit_events),
    (SELECT coalesce(sum(pg_total_relation_size(k.oid)), 0)::bigint
       FROM pg_class AS k
       WHERE k.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
         AND k.relkind IN ('r', 'p', 'm'))
  FROM
    (SELECT
        count(*) FILTER (WHERE g.revoked_at IS NULL AND c.consumed_at IS NULL AND c.expires_at > $1),
        count(*) FILTER (WHERE g.revoked_at IS NULL AND c.consumed_at IS NULL AND c.expires_at <= $1),
        count(*) FILTER (WHERE g.revoked_at IS NOT NULL),
        count(*) FILTER (WHERE g.revoked_at IS NULL AND c.consumed_at IS NOT NULL)
     FROM authorization_codes AS c JOIN grants AS g ON g.id = c.grant_id) AS c,
    (SELECT
        count(*) FILTER (WHERE a.revoked_at IS NULL AND g.revoked_at IS NULL AND a.expires_at > $1),
        count(*) FILTER (WHERE a.revoked_at IS NULL AND g.revoked_at IS NULL AND a.expires_at <= $1),
        count(*) FILTER (WHERE a.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL),
        0::bigint
     FROM access_tokens AS a JOIN grants AS g ON g.id = a.grant_id) AS a,
    (SELECT
        count(*) FILTER (WHERE r.revoked_at IS NULL AND g.revoked_at IS NULL AND r.rotated_at IS NULL
                           AND r.expires_at > $1 AND r.idle_expires_at > $1),
        count(*) FILTER (WHERE r.revoked_at IS NULL AND g.revoked_at IS NULL AND r.rotated_at IS NULL
                           AND (r.expires_at <= $1 OR r.idle_expires_at <= $1)),
        count(*) FILTER (WHERE r.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL),
        count(*) FILTER (WHERE r.revoked_at IS NULL AND g.revoked_at IS NULL
                           AND r.rotated_at IS NOT NULL)
     FROM refresh_tokens AS r JOIN grants AS g ON g.id = r.grant_id) AS r,
    (SELECT
        count(*) FILTER (WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)),
        count(*) FILTER (WHERE revoked_at IS NULL AND expires_at <= $1),
        count(*) FILTER (WHERE revoked_at IS NOT NULL),
        0::bigint
     FROM personal_access_tokens) AS p,
    (SELECT
        count(*) FILTER (WHERE completed_at IS NULL AND expires_at > $1),
        count(*) FILTER (WHERE completed_at IS NULL AND expires_at <= $1),
        0::bigint,
        count(*) FILTER (WHERE completed_at IS NOT NULL)
     FROM authorization_sessions) AS s";

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
impl Maintenance for PostgresStore {
    async fn migrate(&self) -> Result<Vec<i64>> {
        let conn = self.inner.raw_conn().await?;
        let applied = migrate::migrate(conn, self.inner.options.schema.as_deref()).await?;
        let conn = self.inner.raw_conn().await?;
        let version = migrate::schema_version(&conn).await?;
        self.inner.schema_version.store(version, Ordering::Release);
        if version != SCHEMA_VERSION {
            tracing::warn!(version, "schema version after migrate is unexpected");
        }
        Ok(applied)
    }

    async fn cleanup(&self, options: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
        check_cleanup_options(options)?;
        self.cleanup_impl(options, now).await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.stats_impl(now).await
    }
}
