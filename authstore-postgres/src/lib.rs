//! The PostgreSQL backend of authstore: many stateless nodes on one database.
//!
//! [`PostgresStore`] implements every trait of [`authstore_core::backend`] on a PostgreSQL
//! server (13 or newer; tested on 15) through `tokio-postgres` and a `deadpool-postgres`
//! pool.
//!
//! # Design
//!
//! **Driver and pool.** tokio-postgres with a deadpool-postgres pool (measured about 3× the
//! throughput of sqlx's driver for our point lookups on the reference machine). Every
//! statement goes through `prepare_cached`, so it is prepared once per connection. Pool size,
//! connect, acquire and statement timeouts come from [`PostgresOptions`] or the URL. The
//! pool recycles with [`RecyclingMethod::Fast`](deadpool_postgres::RecyclingMethod): a
//! connection whose socket closed (server restart, network cut) is dropped when it comes
//! back and a new one is opened on the next call, so the pool recovers by itself after an
//! outage; calls during the outage fail with a temporary [`Error::Backend`] within the
//! connect timeout.
//!
//! **Schemas.** [`PostgresOptions::schema`] sets `search_path` on every connection (as a
//! startup parameter, no extra round trip), so several deployments, or tests running in
//! parallel, share one database in separate schemas. Tables are created unqualified.
//!
//! **Storage conventions.** Token hashes are 32-byte `bytea` keys (never the token, no hex,
//! no UUID detour); ids are `uuid`; times are `timestamptz`, which has exactly the
//! microsecond precision of [`Timestamp`](authstore_core::Timestamp) (sent and read in the
//! binary format, so the conversion is one subtraction, never a rounding); per-client
//! lifetimes are `bigint` microseconds; scopes are space-separated `text`; lists are
//! `text[]`; JSON objects are `jsonb`. Every lookup the traits make, and every cleanup
//! predicate, has an index; codes and tokens cascade from their grant, everything of a
//! client from the client; audit events never cascade.
//!
//! **Identity** (schema version 2). Users, groups, memberships, password hashes (PHC
//! `text`) and login failures (`inet` sources); the unique keys are the case-folded forms
//! computed by core, stored as given. A user's grants, tokens, PATs, consents and
//! authorization sessions refer to them by subject text, so disabling a user revokes, and
//! erasing one deletes, them explicitly in the same transaction. Every per-user write locks
//! the user's row before any grant. A successful login (or a new password) detaches the
//! user's failure rows, which keep counting for their source until cleanup deletes them.
//!
//! **Accounts** (schema version 3). Login sessions, one-time tokens, TOTP enrolments,
//! recovery codes, passkeys, WebAuthn ceremonies and linked accounts all cascade from their
//! user. Sealed values (TOTP secrets, provider tokens) are stored as `bytea` and never
//! opened here; reseal walks them in id order and replaces each with a compare-and-set on
//! the old bytes, through fixed statements per column.
//!
//! **Key checks** (schema version 4). One row per key ever used with the database (ring,
//! id, 16-byte check; see `Authstore::verify_keys`), only ever inserted. Recording is a
//! compare-and-set on the whole set: the transaction takes `LOCK TABLE key_checks IN SHARE
//! ROW EXCLUSIVE MODE` (recorders queue, readers do not), re-reads, and inserts only if
//! nothing changed since the caller's read.
//!
//! **Atomicity without serialization failures.** Everything runs at READ COMMITTED. The
//! compare-and-sets are single conditional `UPDATE … RETURNING` statements: consuming a code
//! is `UPDATE … WHERE consumed_at IS NULL AND expires_at > now AND <grant unrevoked> AND
//! <client enabled> RETURNING …` (concurrent redeemers queue on the row lock and re-check the
//! condition on the committed row, so exactly one wins and the others read
//! `AlreadyConsumed`); rotation is the same shape per
//! [`RotationMode`](authstore_core::backend::RotationMode) (including `reuse_count <
//! max_reuses` for grace reuse), followed in the same short transaction by the inserts of
//! the new pair and the audit event. Revocations by grant, client and subject are single
//! set-based statements. No statement can fail with "could not serialize access".
//!
//! **Hot path.** [`find_access_token`](authstore_core::backend::GrantStore::find_access_token)
//! is one statement: the token by primary key joined to its grant and client by primary key,
//! with expiry, revocation and `disabled` checked in the `WHERE` clause. It never writes.
//!
//! **Cleanup.** Batched `DELETE … WHERE key IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`,
//! one short transaction per batch, so two nodes cleaning at once delete disjoint rows and
//! neither waits for the other, and validation (which takes no row locks) never waits.
//! Empty grants are locked first (`FOR UPDATE SKIP LOCKED`) and deleted by a second
//! statement that re-checks, on a snapshot taken after the locks, that no code or token
//! refers to them; issuing into an existing grant takes a `FOR KEY SHARE` lock on it, so
//! a token is never issued into a grant that cleanup is deleting.
//!
//! **Migrations.** Immutable numbered files under `migrations/`, embedded ([`migrations`]),
//! each recorded in `schema_migrations` with its BLAKE3 checksum. [`Maintenance::migrate`]
//! takes a session-level advisory lock keyed by the schema (on a connection taken out of the
//! pool and closed afterwards, so the lock cannot leak), then applies everything pending in
//! **one transaction** started after the lock (PostgreSQL DDL is transactional, and the
//! transaction sees what the previous lock holder committed), so ten nodes starting at once
//! migrate exactly once and the others see the result. A database whose schema is newer
//! than this build is refused ([`Error::SchemaTooNew`]) by [`PostgresStore::connect`] and by
//! `migrate`, changing nothing; an edited migration is [`Error::MigrationChecksum`]; until
//! `migrate` runs, methods answer [`Error::NotMigrated`].
//!
//! [`Maintenance::migrate`]: authstore_core::backend::Maintenance::migrate
//!
//! **Faults.** Lost or refused connections, timeouts, pool timeouts, server shutdowns and
//! lock or serialization failures are [`Error::Backend`] with `temporary: true`
//! ([`Error::is_temporary`]); unique violations are [`Error::Conflict`]; foreign-key
//! violations [`Error::NotFound`]. Server errors are kept as the source without the
//! server's `DETAIL` (which can repeat stored values). Strings PostgreSQL cannot store (NUL
//! in `text` or `jsonb`) are refused with [`Error::InvalidInput`] before anything is sent.
//!
//! **TLS.** rustls with the `ring` provider. `sslmode` as libpq: `disable`; `prefer` (the
//! default: TLS if the server offers it); `require` (TLS, but, like libpq, the certificate
//! is **not** verified: protection against eavesdropping only); `verify-full` (chain and
//! host name verified against the Mozilla roots, or against `sslrootcert=PATH`).
//! `verify-ca` is refused: use `verify-full`.
//!
//! **Secrets.** `Debug` of a store or its options never shows the password, and errors
//! never repeat the URL.
//!
//! ```no_run
//! # async fn demo() -> authstore_core::Result<()> {
//! use authstore_core::backend::Maintenance;
//! use authstore_postgres::PostgresStore;
//!
//! let store =
//!     PostgresStore::connect_url("postgres://authstore@db.internal/auth?sslmode=verify-full")
//!         .await?;
//! store.migrate().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Group commit of token issuance
//!
//! With [`PostgresOptions::batch_issuance`] on (the default; URL `batch_issuance=false`
//! turns it off), concurrent
//! [`issue_tokens`](authstore_core::backend::GrantStore::issue_tokens) calls (every
//! issuance of access and refresh tokens) are written together. Each store runs one task
//! with a queue: it waits for one call, takes whatever else is queued at that moment (no
//! waiting window; at most 256), and writes them in **one transaction** with multi-row
//! statements (`INSERT … SELECT … FROM unnest($1::bytea[], …)`): the new grants (only for
//! enabled clients), one `FOR KEY SHARE` check of the existing grants, the access tokens,
//! the refresh tokens and the audit events. The statements are pipelined into **two round
//! trips** (`BEGIN` with the grant statements; the inserts with `COMMIT`), and up to two
//! batches are in flight: the next batch starts executing as soon as the previous one has
//! sent its `COMMIT`, so the database commits one while it runs the next. A batch of one is
//! the single-call transaction, so a lone call costs one commit plus one task hand-off.
//! The task holds no connection while idle and ends when the store is dropped.
//!
//! Each call still gets exactly the answer it would get alone: a call whose grant is
//! missing or revoked, or whose client is missing or disabled, gets
//! [`Error::Inactive`] and is left out of the writes; a record whose client disagrees with
//! its grant gets [`Error::InvalidInput`]; calls the single path would refuse before
//! reaching the database run alone. If a multi-row write fails for a reason of one call (a
//! duplicate hash: [`Error::Conflict`]), the batch is rolled back and each of its calls
//! runs alone. A temporary failure (lost connection, timeout, deadlock) reaches every call
//! of the batch as a temporary error. A caller that stops waiting (its future dropped)
//! after queueing may still have its tokens stored, as with a dropped single call that
//! had sent its commit.
//!
//! It helps when many calls issue at once (a busy token endpoint): on the reference
//! machine, 16 concurrent callers issued about 1.6× as many client_credentials tokens per
//! second with one batch at a time as without batching (fsync and synchronous commit on),
//! and pipelining with two batches in flight added 10–18 % at 16 callers and about 35 % at 4
//! (docs/BENCHMARKS.md). A single caller pays the hand-off to the task (0.8–1.0× in our
//! runs): turn it off where issuance is rare and latency matters more.
//! [`PostgresStore::issuance_stats`] shows how much grouping happens.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use authstore_core::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};

mod accounts;
mod batch;
mod db;
mod identity;
mod maintenance;
mod migrate;
mod rows;
mod stores;
mod tls;
mod url;

pub use migrate::{Migration, SCHEMA_VERSION, migrations};

use db::pool_err;

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "postgres";

/// The largest pool a store opens.
pub const MAX_POOL_SIZE: usize = 1024;

/// How the connection is encrypted (libpq's `sslmode`, without `allow` and `verify-ca`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else plain (libpq's default). The certificate is not
    /// verified.
    #[default]
    Prefer,
    /// TLS or fail. Like libpq, the certificate is **not** verified: this protects against
    /// eavesdropping, not against an active attacker. Use [`SslMode::VerifyFull`] for that.
    Require,
    /// TLS with the certificate chain verified (Mozilla roots, or
    /// [`PostgresOptions::ssl_root_cert`]) and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(Error::Config {
                    reason: "sslmode must be disable, prefer, require or verify-full \
                             (verify-ca is not supported: use verify-full)"
                        .into(),
                });
            }
        })
    }
}

/// How [`PostgresStore::connect`] configures its pool and connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections in the pool (1 to [`MAX_POOL_SIZE`]; default 16). URL: `pool_size`.
    pub pool_size: usize,
    /// How long opening one connection (TCP, TLS, authentication) may take (default 5 s).
    /// Bounds how long a call fails after when the server is down. URL: `connect_timeout`
    /// (seconds, or with a unit: `500ms`).
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection when all are busy (default 30 s).
    /// URL: `acquire_timeout` (seconds, or with a unit).
    pub acquire_timeout: Duration,
    /// The server-side `statement_timeout` of every connection (default 30 s; `None` keeps
    /// the server's). URL: `statement_timeout` (milliseconds, or with a unit; `0` = none).
    pub statement_timeout: Option<Duration>,
    /// The schema to work in (`search_path`), created by `migrate` if missing; `None` uses
    /// the server's default (usually `public`). Lower-case letters, digits and `_`, at most
    /// 63 bytes, not starting with a digit or `pg_`. URL: `schema`.
    pub schema: Option<String>,
    /// TLS (default [`SslMode::Prefer`]). URL: `sslmode`.
    pub ssl_mode: SslMode,
    /// A PEM file of CA certificates to verify the server with under
    /// [`SslMode::VerifyFull`], instead of the Mozilla roots. URL: `sslrootcert`.
    pub ssl_root_cert: Option<String>,
    /// Group commit of token issuance (default `true`): concurrent
    /// [`issue_tokens`](authstore_core::backend::GrantStore::issue_tokens) calls are
    /// written together, in one transaction with multi-row statements, by one task per
    /// store (see the [crate documentation](crate#group-commit-of-token-issuance)).
    /// `false` writes every call in its own transaction. URL: `batch_issuance=true|false`.
    pub batch_issuance: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: Some(Duration::from_secs(30)),
            schema: None,
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            batch_issuance: true,
        }
    }
}

/// Checks `opts`; the schema name goes into `search_path` and DDL unquoted, so it is
/// restricted to what needs no quoting.
fn check_options(opts: &PostgresOptions) -> Result<()> {
    if !(1..=MAX_POOL_SIZE).contains(&opts.pool_size) {
        return Err(Error::Config {
            reason: format!(
                "pool_size must be between 1 and {MAX_POOL_SIZE}, got {}",
                opts.pool_size
            ),
        });
    }
    if opts.connect_timeout.is_zero() || opts.acquire_timeout.is_zero() {
        return Err(Error::Config {
            reason: "connect_timeout and acquire_timeout must be positive".into(),
        });
    }
    if let Some(t) = opts.statement_timeout {
        if t.is_zero() || t.as_millis() > i32::MAX as u128 {
            return Err(Error::Config {
                reason: "statement_timeout must be between 1 ms and about 24 days".into(),
            });
        }
    }
    if let Some(s) = &opts.schema {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with("pg_")
            && s.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::Config {
                reason: "schema must be 1 to 63 lower-case letters, digits or `_`, not starting \
                         with a digit or `pg_`"
                    .into(),
            });
        }
    }
    if let Some(p) = &opts.ssl_root_cert {
        if p.is_empty() || p.contains('\0') {
            return Err(Error::Config {
                reason: "ssl_root_cert must be a file path".into(),
            });
        }
    }
    Ok(())
}

/// Pool occupancy, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// Calls waiting for a connection.
    pub waiting: usize,
}

/// What group commit of token issuance has done since the store opened
/// ([`PostgresStore::issuance_stats`]), for monitoring. All zero when
/// [`PostgresOptions::batch_issuance`] is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuanceStats {
    /// Whether calls go through the batcher.
    pub enabled: bool,
    /// Transactions the batcher wrote (a batch of one included).
    pub batches: u64,
    /// Calls the batcher took; `requests / batches` is the mean batch size.
    pub requests: u64,
    /// Batches whose multi-row write failed for a reason of one request (a duplicate hash,
    /// …) and whose requests were therefore run again one by one.
    pub fallbacks: u64,
    /// Calls waiting in the queue now.
    pub queued: usize,
}

/// An authstore backend on PostgreSQL. Cheap to share: wrap it in an `Arc`; every clone of
/// the `Arc` shares one pool.
///
/// See the [crate documentation](crate) for the design.
pub struct PostgresStore {
    inner: Arc<Inner>,
    /// The queue of the issuance batcher, when [`PostgresOptions::batch_issuance`] is on.
    /// Dropping the store drops it, which stops the task.
    batcher: Option<batch::Batcher>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// What the store shares.
pub(crate) struct Inner {
    pool: Pool,
    /// Hosts, ports, database and user; never the password.
    target: String,
    options: PostgresOptions,
    /// The schema version last seen; methods refuse to run unless it is [`SCHEMA_VERSION`].
    schema_version: AtomicI64,
}

impl PostgresStore {
    /// Connects to the server at `url` (see [`connect_url`](Self::connect_url) for the form),
    /// with `options`; parameters given in the URL override `options`.
    ///
    /// Opens one connection before returning, so a wrong address, password or database
    /// fails here, and reads the schema version: a database migrated by a newer authstore
    /// is refused with [`Error::SchemaTooNew`]. Does not migrate: call
    /// [`Maintenance::migrate`](authstore_core::backend::Maintenance::migrate); until then
    /// methods fail with [`Error::NotMigrated`]. Must be called within a Tokio runtime.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let (config, options) = url::parse(url, options)?;
        Self::with_config(config, options).await
    }

    /// Connects from a URL alone:
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?PARAMS` (or `postgresql://`), where
    /// PARAMS may hold `pool_size`, `connect_timeout`, `acquire_timeout`,
    /// `statement_timeout`, `schema`, `sslmode` and `sslrootcert` (see
    /// [`PostgresOptions`]) and any other parameter tokio-postgres understands
    /// (`application_name`, `options`, `target_session_attrs`, several `host`s, …).
    /// Anything else is [`Error::UnsupportedUrl`], whose message never repeats the URL.
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(url, PostgresOptions::default()).await
    }

    /// Connects with a tokio-postgres configuration built by the caller; `options` adds
    /// the pool, timeouts, schema and TLS.
    pub async fn with_config(
        mut config: tokio_postgres::Config,
        options: PostgresOptions,
    ) -> Result<Self> {
        check_options(&options)?;
        let tls = tls::connector(options.ssl_mode, options.ssl_root_cert.as_deref())?;
        config.ssl_mode(match options.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("authstore");
        }
        let mut startup = config.get_options().unwrap_or_default().to_owned();
        if let Some(schema) = &options.schema {
            startup.push_str(&format!(" -c search_path={schema}"));
        }
        if let Some(t) = options.statement_timeout {
            startup.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
        }
        let startup = startup.trim().to_owned();
        if !startup.is_empty() {
            config.options(startup);
        }
        let target = describe_target(&config);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Config {
                reason: format!("cannot build the connection pool: {e}"),
            })?;
        let inner = Inner {
            pool,
            target,
            options,
            schema_version: AtomicI64::new(0),
        };
        // One connection now: a wrong address or password fails here, and a newer schema
        // is refused before anything else happens.
        let conn = inner.pool.get().await.map_err(pool_err)?;
        let found = migrate::schema_version(&conn).await?;
        drop(conn);
        check_not_too_new(found)?;
        inner.schema_version.store(found, Ordering::Release);
        tracing::debug!(target = %inner.target, schema_version = found, "opened postgres store");
        let inner = Arc::new(inner);
        let batcher = if inner.options.batch_issuance {
            batch::Batcher::start(Arc::clone(&inner))
        } else {
            None
        };
        Ok(Self { inner, batcher })
    }

    /// The options in force (after URL parameters).
    pub fn options(&self) -> &PostgresOptions {
        &self.inner.options
    }

    /// Pool occupancy, for monitoring.
    pub fn pool_status(&self) -> PoolStatus {
        let s = self.inner.pool.status();
        PoolStatus {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }

    /// What group commit of token issuance has done so far, for monitoring: a
    /// `batches / requests` ratio well below 1 means calls are being grouped; a queue that
    /// stays long means the database cannot keep up.
    pub fn issuance_stats(&self) -> IssuanceStats {
        self.batcher
            .as_ref()
            .map_or_else(IssuanceStats::default, batch::Batcher::stats)
    }
}

fn describe_target(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = c.get_ports().get(i).or(c.get_ports().first()).copied();
            let host = match h {
                Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            };
            match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        c.get_user().unwrap_or(""),
        hosts.join(","),
        c.get_dbname().unwrap_or("")
    )
}

fn check_not_too_new(found: i64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

impl Inner {
    /// A pooled connection, after checking that the schema is the one this build needs
    /// (one atomic load when it is).
    async fn conn(&self) -> Result<Object> {
        let conn = self.pool.get().await.map_err(pool_err)?;
        if self.schema_version.load(Ordering::Acquire) != SCHEMA_VERSION {
            // Another node may have migrated since: look once more.
            let found = migrate::schema_version(&conn).await?;
            self.schema_version.store(found, Ordering::Release);
            match found.cmp(&SCHEMA_VERSION) {
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => {
                    return Err(Error::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                std::cmp::Ordering::Less => {
                    return Err(Error::NotMigrated {
                        found,
                        needed: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(conn)
    }

    /// A pooled connection without the schema check (migrations).
    async fn raw_conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }
}
