//! Migrations, cleanup and statistics.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use authstore_core::backend::{
    CleanupOptions, CleanupReport, KindStats, Maintenance, Stats, same_key_checks,
};
use authstore_core::{Error, KeyCheck, Result, Timestamp};
use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use crate::db::{Db, Ts, no_nul, ts};
use crate::stores::{all, exec};
use crate::{PostgresStore, SCHEMA_VERSION, migrate};

/// The most rows one cleanup batch may delete.
const MAX_BATCH: u32 = 100_000;

/// The fewest grants the empty-grants pass examines in one batch, looking for a batch of
/// empty ones (at most `max(16 × batch, this)`): bounds one batch's work when live grants
/// far outnumber empty ones.
const MIN_GRANT_SCAN: i64 = 10_000;

/// Rows the empty-grants scan fetches at a time: the server evaluates the scan lazily, so
/// it stops soon after a batch of empty grants is found.
const GRANT_SCAN_CHUNK: i32 = 256;

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

// Token passes: each statement is a `DELETE` of at most `$2` rows dead by one condition at
// or before the cutoff `$1` (`timestamptz`, `bigint`), taking row locks with `SKIP LOCKED`
// so concurrent cleaners take disjoint rows and never wait for each other. One condition a
// statement, ordered by its column: each is an index scan of that column's index, never a
// scan of the table (a multi-column `OR`, or a generic plan's guess of how many rows match,
// can make a sequential scan look cheaper). The rows are then deleted by primary key from an
// array (an `InitPlan`), so the delete itself is index-driven whatever `$2` is.

/// One kind's rule for dead rows, written once (by `dead_rows!`) in the forms cleanup and
/// the preview use: a row is dead when any of the rule's columns is at or before the cutoff
/// `$1`.
struct DeadRows {
    /// Cleanup: one `DELETE` per column, as above, sharing one batch's budget.
    delete: &'static [&'static str],
    /// The preview: how many rows are dead by any column, as a sum of one `count(*)` per
    /// column of the rows dead by it and by no column before it (each driven by that
    /// column's index).
    count: &'static str,
    /// Whether a row is dead, as an expression on its unqualified columns, for a correlated
    /// subquery (where unqualified columns are the innermost table's).
    dead: &'static str,
}

/// `dead_rows!(table, key, [column, …])`: the [`DeadRows`] of `table` (rows named by `key`),
/// dead when any `column <= $1`.
macro_rules! dead_rows {
    ($table:literal, $key:literal, [$first:literal $(, $col:literal)* $(,)?]) => {
        DeadRows {
            delete: &[
                dead_rows!(@delete $table, $key, $first)
                $(, dead_rows!(@delete $table, $key, $col))*
            ],
            count: dead_rows!(@count $table, [], $first $(, $col)*),
            dead: concat!("(", $first, " <= $1" $(, " OR ", $col, " <= $1")*, ")"),
        }
    };
    // Rows dead by `$col` and by none of the `$prev` columns: each dead row counts once,
    // under its first dead column.
    (@count $table:literal, [$($prev:literal),*], $col:literal) => {
        concat!(
            "(SELECT count(*) FROM ", $table, " WHERE ", $col, " <= $1"
            $(, " AND (", $prev, " <= $1) IS NOT TRUE")*, ")"
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
            "DELETE FROM ", $table, " WHERE ", $key, " = ANY(ARRAY(SELECT ", $key, " FROM ",
            $table, " WHERE ", $col, " <= $1 ORDER BY ", $col,
            " LIMIT $2 FOR UPDATE SKIP LOCKED))"
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
const PATS: DeadRows = dead_rows!("personal_access_tokens", "id", ["expires_at", "revoked_at"]);
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
/// A consumed (or superseded) token is kept until the cutoff, like a consumed code.
const ONE_TIME_TOKENS: DeadRows =
    dead_rows!("one_time_tokens", "hash", ["expires_at", "consumed_at"]);
const CEREMONIES: DeadRows = dead_rows!("ceremonies", "hash", ["expires_at"]);

/// Cleanup's rule for revoked grants (`$1` the cutoff): they go with whatever is left of
/// them.
macro_rules! revoked_grant {
    () => {
        "revoked_at <= $1"
    };
}

/// Cleanup's rule for old unrevoked grants (`$1` the cutoff, columns unqualified): they go
/// once nothing refers to them.
macro_rules! old_grant {
    () => {
        "revoked_at IS NULL AND created_at <= $1"
    };
}

/// Revoked grants, step 1: lock up to `$2` grants revoked at or before `$1`, oldest
/// revocation first. Concurrent cleaners take disjoint grants.
const REVOKED_GRANTS_LOCK: &str = concat!(
    "SELECT id FROM grants WHERE ",
    revoked_grant!(),
    " ORDER BY revoked_at LIMIT $2 FOR UPDATE SKIP LOCKED"
);

/// Step 2: what is left of the locked grants `$1`, at most `$2` rows a statement.
const GRANT_CHILDREN: &[&str] = &[
    "DELETE FROM authorization_codes WHERE hash = ANY(ARRAY(
        SELECT hash FROM authorization_codes WHERE grant_id = ANY($1)
        LIMIT $2 FOR UPDATE SKIP LOCKED))",
    "DELETE FROM access_tokens WHERE hash = ANY(ARRAY(
        SELECT hash FROM access_tokens WHERE grant_id = ANY($1)
        LIMIT $2 FOR UPDATE SKIP LOCKED))",
    "DELETE FROM refresh_tokens WHERE hash = ANY(ARRAY(
        SELECT hash FROM refresh_tokens WHERE grant_id = ANY($1)
        LIMIT $2 FOR UPDATE SKIP LOCKED))",
];

/// Step 3, once their children are gone: the grants themselves (a child row another
/// transaction had locked, and step 2 skipped, goes by cascade).
const REVOKED_GRANTS_DELETE: &str = "DELETE FROM grants WHERE id = ANY($1)";

/// Old unrevoked grants nothing refers to any more, step 1: examine old unrevoked grants
/// after the cursor `($2, $3)` in `(created_at, id)` order (the partial index
/// `grants_created_at`, then an incremental sort on `id` within equal times), at most `$4`,
/// each with whether it is empty. Takes no locks: read through a portal a chunk at a time,
/// so the server stops soon after a batch is found. The emptiness checks are `LATERAL`
/// probes of the `*_grant` indexes, one grant at a time: as `NOT EXISTS` in the select list
/// the planner may instead hash a whole token table once per batch.
const OLD_GRANTS: &str = concat!(
    "SELECT g.created_at, g.id,
        c.x IS NULL AND a.x IS NULL AND r.x IS NULL
    FROM (SELECT created_at, id FROM grants
          WHERE ",
    old_grant!(),
    " AND (created_at, id) > ($2, $3)
          ORDER BY created_at, id LIMIT $4) AS g
    LEFT JOIN LATERAL (SELECT 1 AS x FROM authorization_codes
                       WHERE grant_id = g.id LIMIT 1) AS c ON true
    LEFT JOIN LATERAL (SELECT 1 AS x FROM access_tokens
                       WHERE grant_id = g.id LIMIT 1) AS a ON true
    LEFT JOIN LATERAL (SELECT 1 AS x FROM refresh_tokens
                       WHERE grant_id = g.id LIMIT 1) AS r ON true
    ORDER BY g.created_at, g.id"
);

/// Step 2: lock the empty ones found. A grant someone is issuing into holds a
/// `FOR KEY SHARE` lock and is skipped, as is one another cleaner took.
const EMPTY_GRANTS_LOCK: &str = "SELECT id FROM grants
    WHERE id = ANY($1) AND revoked_at IS NULL FOR UPDATE SKIP LOCKED";

/// Step 3, in the same transaction with the locks held: delete them, re-checking on a
/// fresh snapshot (READ COMMITTED: taken now, after the locks) that they are still empty
/// and unrevoked, so a token committed in between keeps its grant.
const EMPTY_GRANTS_DELETE: &str = "DELETE FROM grants AS g
    WHERE g.id = ANY($1) AND g.revoked_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM authorization_codes AS c WHERE c.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM access_tokens AS a WHERE a.grant_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS r WHERE r.grant_id = g.id)";

/// What one pass does in each of its batches.
#[derive(Clone, Copy)]
enum Step {
    /// Statements sharing one batch's budget, each its own short transaction.
    Statements(&'static [&'static str]),
    /// See `revoked_grants`.
    RevokedGrants,
    /// See `empty_grants`.
    EmptyGrants,
}

/// In order: tokens first, so grants they leave behind can go in the same run; then login
/// failures, login sessions, one-time tokens and ceremonies.
const PASSES: &[(Kind, Step)] = &[
    (Kind::Codes, Step::Statements(CODES.delete)),
    (Kind::Access, Step::Statements(ACCESS.delete)),
    (Kind::Refresh, Step::Statements(REFRESH.delete)),
    (Kind::Pats, Step::Statements(PATS.delete)),
    (Kind::Sessions, Step::Statements(SESSIONS.delete)),
    (Kind::Grants, Step::RevokedGrants),
    (Kind::Grants, Step::EmptyGrants),
    (Kind::LoginFailures, Step::Statements(LOGIN_FAILURES.delete)),
    (Kind::LoginSessions, Step::Statements(LOGIN_SESSIONS.delete)),
    (
        Kind::OneTimeTokens,
        Step::Statements(ONE_TIME_TOKENS.delete),
    ),
    (Kind::Ceremonies, Step::Statements(CEREMONIES.delete)),
];

fn slot(report: &mut CleanupReport, kind: Kind) -> &mut u64 {
    match kind {
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
    }
}

/// Where the empty-grants scan of one cleanup call has got to, in `(created_at, id)` order.
struct Cursor {
    created_at: Ts,
    id: Uuid,
}

impl Cursor {
    /// Before every grant (`-infinity`, the nil id).
    fn start() -> Self {
        Self {
            created_at: Ts(Timestamp::from_unix_micros(i64::MIN)),
            id: Uuid::nil(),
        }
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One batch of statements sharing a budget of `batch` rows: rows deleted, and whether the
/// pass is done (the statements together found fewer than `batch`).
async fn statements(conn: &Object, sqls: &[&str], cutoff: &Ts, batch: i64) -> Result<(u64, bool)> {
    let mut left = batch;
    for sql in sqls {
        if left == 0 {
            break;
        }
        let st = conn.prepare_cached(sql).await.db()?;
        // One statement, one short transaction (autocommit).
        left -= count(conn.execute(&st, &[cutoff, &left]).await.db()?);
    }
    Ok((u64::try_from(batch - left).unwrap_or(0), left > 0))
}

/// One batch of revoked grants, with whatever is left of them. Their codes and tokens are
/// deleted first, at most `batch` rows a batch in all (so one batch never cascades over an
/// unbounded number of rows: rotated refresh tokens stay until their family expires); once
/// none are left, the grants. Only grants are counted: a code or token deleted here goes
/// *with its grant*, as it would have by cascade (anything dead by its own rule was already
/// deleted, and counted, by its own pass).
async fn revoked_grants(conn: &mut Object, cutoff: &Ts, batch: i64) -> Result<(u64, bool)> {
    let tx = conn.transaction().await.db()?;
    let lock = tx.prepare_cached(REVOKED_GRANTS_LOCK).await.db()?;
    let ids: Vec<Uuid> = tx
        .query(&lock, &[cutoff, &batch])
        .await
        .db()?
        .iter()
        .map(|r| r.try_get(0).db())
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        tx.commit().await.db()?;
        return Ok((0, true));
    }
    let mut left = batch;
    for sql in GRANT_CHILDREN {
        let st = tx.prepare_cached(sql).await.db()?;
        left -= count(tx.execute(&st, &[&ids, &left]).await.db()?);
        if left == 0 {
            // Perhaps not empty yet: the next batch goes on with them.
            tx.commit().await.db()?;
            return Ok((0, false));
        }
    }
    let st = tx.prepare_cached(REVOKED_GRANTS_DELETE).await.db()?;
    let n = tx.execute(&st, &[&ids]).await.db()?;
    tx.commit().await.db()?;
    Ok((n, count(ids.len() as u64) < batch))
}

/// One batch of old unrevoked grants nothing refers to any more, at most `batch`. The
/// cursor carries over between batches of one call, so a live grant is examined once per
/// call, not once per batch; one batch examines at most `max(16 × batch, MIN_GRANT_SCAN)`.
async fn empty_grants(
    conn: &mut Object,
    cutoff: &Ts,
    batch: i64,
    cursor: &mut Cursor,
) -> Result<(u64, bool)> {
    let scan = batch.saturating_mul(16).max(MIN_GRANT_SCAN);
    let tx = conn.transaction().await.db()?;
    // Planned for this call's parameters: a generic plan, not knowing how many grants are
    // old, may sort all of them for `(created_at, id)` order instead of following the
    // index (EXPLAIN on a populated schema shows it).
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await
        .db()?;
    let st = tx.prepare_cached(OLD_GRANTS).await.db()?;
    let portal = tx
        .bind(&st, &[cutoff, &cursor.created_at, &cursor.id, &scan])
        .await
        .db()?;
    let mut empty: Vec<Uuid> = Vec::new();
    let mut examined = 0i64;
    let done = 'scan: loop {
        let rows = tx.query_portal(&portal, GRANT_SCAN_CHUNK).await.db()?;
        let got = rows.len();
        for row in rows {
            examined += 1;
            let created_at: Ts = row.try_get(0).db()?;
            let id: Uuid = row.try_get(1).db()?;
            if row.try_get::<_, bool>(2).db()? {
                empty.push(id);
            }
            *cursor = Cursor { created_at, id };
            if count(empty.len() as u64) == batch {
                break 'scan false;
            }
        }
        if got < GRANT_SCAN_CHUNK as usize {
            // The portal is exhausted: the end, unless it stopped at `scan`.
            break examined < scan;
        }
    };
    drop(portal);
    let mut deleted = 0;
    if !empty.is_empty() {
        let lock = tx.prepare_cached(EMPTY_GRANTS_LOCK).await.db()?;
        let locked: Vec<Uuid> = tx
            .query(&lock, &[&empty])
            .await
            .db()?
            .iter()
            .map(|r| r.try_get(0).db())
            .collect::<Result<_>>()?;
        if !locked.is_empty() {
            let del = tx.prepare_cached(EMPTY_GRANTS_DELETE).await.db()?;
            deleted = tx.execute(&del, &[&locked]).await.db()?;
        }
    }
    tx.commit().await.db()?;
    Ok((deleted, done))
}

/// The preview: one statement (so one snapshot) counting what an unbounded cleanup at the
/// cutoff `$1` would delete, by cleanup's own rules, in [`CleanupReport`] field order.
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
    let columns: Vec<String> = counts.iter().map(|c| format!("({c})::bigint")).collect();
    format!("SELECT {}", columns.join(",\n       "))
});

impl PostgresStore {
    async fn cleanup_impl(&self, opts: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
        let mut conn = self.inner.conn().await?;
        let cutoff = ts(now.saturating_sub(opts.retention));
        let batch = i64::from(opts.batch_size);
        let mut report = CleanupReport::default();
        let deadline = opts.time_budget.map(|b| Instant::now() + b);
        let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
        for &(kind, step) in PASSES {
            let mut cursor = Cursor::start();
            let mut finished = false;
            for _ in 0..opts.max_batches {
                if out_of_time() {
                    break;
                }
                let (n, done) = match step {
                    Step::Statements(sqls) => statements(&conn, sqls, &cutoff, batch).await?,
                    Step::RevokedGrants => revoked_grants(&mut conn, &cutoff, batch).await?,
                    Step::EmptyGrants => {
                        empty_grants(&mut conn, &cutoff, batch, &mut cursor).await?
                    }
                };
                *slot(&mut report, kind) += n;
                if done {
                    finished = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !finished {
                report.incomplete = true;
            }
        }
        if report.total() > 0 {
            tracing::debug!(?report, "postgres cleanup");
        }
        Ok(report)
    }

    async fn cleanup_preview_impl(
        &self,
        opts: &CleanupOptions,
        now: Timestamp,
    ) -> Result<CleanupReport> {
        let mut conn = self.inner.conn().await?;
        // Plain counts in a read-only transaction: the server refuses any write in it.
        let tx = conn
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .db()?;
        let cutoff = ts(now.saturating_sub(opts.retention));
        let st = tx.prepare_cached(&PREVIEW).await.db()?;
        let row = tx.query_one(&st, &[&cutoff]).await.db()?;
        let n = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i).db()?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let report = CleanupReport {
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
        };
        tx.commit().await.db()?;
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

    async fn cleanup_preview(
        &self,
        options: &CleanupOptions,
        now: Timestamp,
    ) -> Result<CleanupReport> {
        self.cleanup_preview_impl(options, now).await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.stats_impl(now).await
    }

    async fn key_checks(&self) -> Result<Vec<KeyCheck>> {
        let conn = self.inner.conn().await?;
        stored_key_checks(&conn).await
    }

    async fn add_key_checks(&self, seen: &[KeyCheck], new: &[KeyCheck]) -> Result<bool> {
        for c in new {
            no_nul("key id", &c.key_id)?;
        }
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // Writers queue here (the mode conflicts with itself and with every insert), readers
        // do not; at READ COMMITTED the next statement then sees every check committed
        // before the lock was granted.
        tx.batch_execute("LOCK TABLE key_checks IN SHARE ROW EXCLUSIVE MODE")
            .await
            .db()?;
        if !same_key_checks(&stored_key_checks(&tx).await?, seen) {
            // Dropping the transaction rolls it back and releases the lock.
            return Ok(false);
        }
        for c in new {
            // A (ring, key id) stored already is a unique violation (`Conflict`): the
            // transaction is dropped uncommitted and nothing is written.
            exec(
                &tx,
                "INSERT INTO key_checks (ring, key_id, key_check, recorded_at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &c.ring.as_str(),
                    &c.key_id,
                    &c.check.as_slice(),
                    &ts(c.recorded_at),
                ],
            )
            .await?;
        }
        tx.commit().await.db()?;
        Ok(true)
    }
}

/// Every stored key check, by ring name then key id (the columns collate as `"C"`: byte
/// order, whatever the database's locale).
async fn stored_key_checks<C: GenericClient>(c: &C) -> Result<Vec<KeyCheck>> {
    all(
        c,
        "SELECT ring, key_id, key_check, recorded_at FROM key_checks ORDER BY ring, key_id",
        &[],
    )
    .await?
    .iter()
    .map(crate::rows::key_check)
    .collect()
}
