//! The SQLite backend of authstore: the embedded default.
//!
//! [`SqliteStore`] implements every trait of [`authstore_core::backend`] on one SQLite file
//! in WAL mode, through `rusqlite` (bundled SQLite).
//!
//! # Design
//!
//! **Connections and threads.** A store holds one writer connection and a small pool of
//! reader connections (`SqliteOptions::readers`, default 4), each behind a
//! `std::sync::Mutex`. On this kind of machine a point read takes a few microseconds while a
//! hand-off to another thread costs tens, so **short statements run inline on the calling
//! async task**: point reads (token validation, lookups), single-row writes and the
//! compare-and-set transactions (consuming a code, rotating a refresh token) lock a
//! connection, run, and unlock; no lock is ever held across an `.await`. **Long work**
//! (migrations, cleanup batches, statistics, list and audit queries, set-based revocations
//! by client, deleting a client with its cascade, erasing a user, large usage flushes) runs on
//! `tokio::task::spawn_blocking`.
//!
//! An async worker must never block behind long work, so:
//! - every use of the writer first takes the **writer gate**, a one-permit
//!   `tokio::sync::Semaphore`. Inline writes `acquire().await` it (waiting parks the task,
//!   not the worker thread) and then lock the writer's mutex, which is uncontended by then.
//!   Long work takes the permit before it is spawned (or, for cleanup, per batch on its
//!   blocking thread) and holds it for as long as it holds the writer. Cleanup releases
//!   both between batches and backs off a couple of milliseconds on its blocking thread so
//!   other processes get SQLite's write lock too;
//! - reader 0 is **reserved for inline reads**: long reads pick among the others (if the
//!   store has more than one reader), so when every reader is busy, an inline read waits
//!   only behind other short inline reads. Readers are picked round-robin with `try_lock`.
//!
//! Every statement goes through `prepare_cached`, so each is prepared once per connection.
//! Every write runs in a `BEGIN IMMEDIATE` transaction on the writer, so several processes
//! on one file (two `cleanup`s, two `migrate`s) serialize on SQLite's write lock instead of
//! failing a lock upgrade; `busy_timeout` bounds the wait, and a busy database is reported
//! as a temporary [`Error::Backend`].
//!
//! **Durability.** `synchronous=FULL` is the default: with `NORMAL`, a power loss can lose
//! the last transactions, and a lost revocation is a security bug. [`Synchronous::Normal`]
//! is an explicit opt-in for deployments that accept that.
//!
//! **Hot path.** [`find_access_token`](authstore_core::backend::GrantStore::find_access_token)
//! is exactly one statement: the access token by hash, with expiry and revocation checked in
//! the `WHERE` clause and the grant's revocation and the client's `disabled` flag checked by
//! two correlated primary-key subqueries in the same clause (measured several times faster
//! than the equivalent inner joins on this SQLite, and within about 10% of a bare
//! primary-key lookup). It never writes. The token tables are `WITHOUT ROWID` tables keyed
//! by the 32-byte hash, so a lookup is one B-tree descent.
//!
//! **Atomic operations.** Consuming a code is one `UPDATE … WHERE consumed_at IS NULL AND
//! expires_at > now AND <grant unrevoked> AND <client enabled> RETURNING …`; refresh
//! rotation is one conditional `UPDATE` (per [`RotationMode`](authstore_core::backend::RotationMode))
//! followed, in the same transaction, by the inserts of the new tokens and the audit event.
//! Audit events are always written in the transaction of the change they describe, and only
//! when the change happened.
//!
//! **Schema and migrations.** The schema lives in immutable, numbered files under
//! `migrations/`, embedded in the binary ([`migrations`]); each applied migration is
//! recorded in `schema_migrations` with the BLAKE3 checksum of its text.
//! [`SqliteStore::open`] never migrates: it refuses a database whose schema is newer than
//! this build ([`Error::SchemaTooNew`], checked on a read-only connection before anything is
//! changed), and a store on an older schema answers [`Error::NotMigrated`] until
//! [`migrate`](authstore_core::backend::Maintenance::migrate) runs. Version 4 adds
//! `key_checks`: one row per key ever used with the database (see `Authstore::verify_keys`),
//! recorded by a compare-and-set in one `BEGIN IMMEDIATE` transaction.
//!
//! **Storage conventions.** Token hashes are 32-byte BLOBs (never the token), ids 16-byte
//! BLOBs (UUID bytes, whose byte order is the id order), times INTEGER Unix microseconds,
//! scopes space-separated TEXT, lists and objects JSON TEXT. Rows are decoded by small
//! functions, never by deserializing domain types, and a row that cannot be decoded is an
//! [`Error::Backend`], never a panic.
//!
//! ```no_run
//! # async fn demo() -> authstore_core::Result<()> {
//! use authstore_core::backend::Maintenance;
//! use authstore_sqlite::{SqliteOptions, SqliteStore};
//!
//! let store = SqliteStore::open("authstore.db", SqliteOptions::default())?;
//! store.migrate().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use authstore_core::{Error, Result};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

mod accounts;
mod db;
mod identity;
mod maintenance;
mod migrate;
mod rows;
mod stores;
mod url;

pub use migrate::{Migration, SCHEMA_VERSION, migrations};

use db::{R, db_err};

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "sqlite";

/// How durably SQLite commits (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `FULL`: every commit is on disk before it returns. The default: a revocation lost on
    /// power loss would be a security bug.
    #[default]
    Full,
    /// `NORMAL`: in WAL mode a power loss may lose the most recent commits (never corrupts).
    /// Faster; opt in only if losing the last revocations on power loss is acceptable.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// How [`SqliteStore::open`] configures its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Reader connections (1 to 64; default 4). Reads run on these, writes on the one writer.
    pub readers: usize,
    /// How long a statement waits for a lock held by another connection before failing with
    /// a temporary error (`PRAGMA busy_timeout`; default 5 s).
    pub busy_timeout: Duration,
    /// Commit durability (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// Bytes of the database file memory-mapped per connection (`PRAGMA mmap_size`;
    /// default 0: off). A read-only database reads slightly faster mapped (5.2 against
    /// 5.6 µs per validation with 10,000 tokens; no difference at a million), but in WAL
    /// mode every read transaction after another connection's commit unmaps and maps the
    /// file again (a TLB shoot-down on every core): a token endpoint issuing on SQLite
    /// spent 15 % more CPU per token with 256 MiB mapped (docs/BENCHMARKS.md).
    pub mmap_size: u64,
    /// Page cache per connection in KiB (`PRAGMA cache_size = -N`; default 8 MiB).
    pub cache_size_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
            mmap_size: 0,
            cache_size_kib: 8 * 1024,
        }
    }
}

/// The most reader connections a store opens.
const MAX_READERS: usize = 64;

/// Statements cached per connection; more than the store uses, so none is ever re-prepared.
const STATEMENT_CACHE: usize = 128;

/// An authstore backend on one SQLite file. Cheap to share: wrap it in an `Arc`.
///
/// See the [crate documentation](crate) for how it uses connections and threads.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What the store shares with its blocking tasks.
pub(crate) struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// The writer gate: one permit, taken before `writer` is locked by anything but the
    /// diagnostics in [`SqliteStore::pragma`], so async tasks wait for the writer
    /// asynchronously instead of blocking a worker thread on the mutex.
    gate: Arc<Semaphore>,
    /// `readers[0]` is reserved for inline reads; long work uses the others.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The schema version last seen; methods refuse to run unless it is [`SCHEMA_VERSION`].
    schema_version: AtomicI64,
    /// SQLite's schema cookie (`PRAGMA schema_version`) when `schema_version` was read: any
    /// DDL changes it, so a write that sees another value re-reads the migration version.
    schema_cookie: AtomicI64,
    /// Token issues waiting for the writer: whoever holds the writer gate commits them
    /// together (group commit; see [`Inner::issue_queued`]).
    pending: Mutex<Vec<stores::PendingIssue>>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path`.
    ///
    /// Before anything is created or changed, the schema version is read on a read-only
    /// connection: a database migrated by a newer authstore is refused with
    /// [`Error::SchemaTooNew`] and left untouched. Then the connections are opened in WAL
    /// mode with `foreign_keys=ON` and the configured pragmas.
    ///
    /// `open` does not migrate: call
    /// [`Maintenance::migrate`](authstore_core::backend::Maintenance::migrate); until then
    /// store methods fail with [`Error::NotMigrated`].
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        let path = plain_file_path(path.as_ref())?;
        check_options(&path, &opts)?;
        if path.exists() {
            // A plain read-only look first: nothing may change if the schema is too new.
            let probe = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db_err)?;
            probe.busy_timeout(opts.busy_timeout).map_err(db_err)?;
            let found = migrate::schema_version(&probe).map_err(Error::from)?;
            check_not_too_new(found)?;
            drop(probe);
        }
        let writer = open_connection(&path, &opts, Role::Writer)?;
        // Read again on the writer: another process may have migrated in between.
        let found = migrate::schema_version(&writer).map_err(Error::from)?;
        check_not_too_new(found)?;
        let cookie = schema_cookie(&writer).map_err(Error::from)?;
        let readers = (0..opts.readers)
            .map(|_| open_connection(&path, &opts, Role::Reader).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        tracing::debug!(path = %path.display(), schema_version = found, "opened sqlite store");
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                gate: Arc::new(Semaphore::new(1)),
                readers,
                next_reader: AtomicUsize::new(0),
                schema_version: AtomicI64::new(found),
                schema_cookie: AtomicI64::new(cookie),
                pending: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Opens a store from a URL:
    ///
    /// - `sqlite://relative/path.db` (relative to the working directory),
    /// - `sqlite:///absolute/path.db`,
    /// - `sqlite:path.db`,
    ///
    /// with optional query parameters `readers=N`, `busy_timeout_ms=N` and
    /// `synchronous=full|normal` (e.g. `sqlite:///var/lib/authstore.db?synchronous=normal`).
    /// `%XX` escapes in the path are decoded. Anything else is [`Error::UnsupportedUrl`].
    pub fn open_url(url: &str) -> Result<Self> {
        let (path, opts) = url::parse(url)?;
        Self::open(path, opts)
    }

    /// The files the database occupies: the database itself and its `-wal` and `-shm`
    /// files (which exist while the database is open in WAL mode).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut wal = self.inner.path.clone().into_os_string();
        wal.push("-wal");
        let mut shm = self.inner.path.clone().into_os_string();
        shm.push("-shm");
        vec![
            self.inner.path.clone(),
            PathBuf::from(wal),
            PathBuf::from(shm),
        ]
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads a connection setting, for diagnostics: one of `journal_mode`, `foreign_keys`,
    /// `synchronous`, `busy_timeout`, `mmap_size`, `cache_size`, `page_size`, `page_count`,
    /// `query_only`, `temp_store`. `reader` selects a reader connection instead of the
    /// writer.
    pub fn pragma(&self, name: &str, reader: bool) -> Result<String> {
        const ALLOWED: &[&str] = &[
            "journal_mode",
            "foreign_keys",
            "synchronous",
            "busy_timeout",
            "mmap_size",
            "cache_size",
            "page_size",
            "page_count",
            "query_only",
            "temp_store",
        ];
        if !ALLOWED.contains(&name) {
            return Err(Error::invalid(
                "pragma",
                format!("expected one of {}", ALLOWED.join(", ")),
            ));
        }
        let conn = if reader {
            self.inner.reader()
        } else {
            self.inner.writer()
        };
        let v: rusqlite::types::Value = conn
            .pragma_query_value(None, name, |r| r.get(0))
            .map_err(db_err)?;
        Ok(match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            rusqlite::types::Value::Real(f) => f.to_string(),
            rusqlite::types::Value::Null | rusqlite::types::Value::Blob(_) => String::new(),
        })
    }

    /// Runs `f` on a blocking thread (long work); inline if there is no Tokio runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| Error::backend(BACKEND, false, e))?,
            Err(_) => f(&inner),
        }
    }

    /// Long work on the writer: takes the writer gate (waiting asynchronously), then runs
    /// `f` on a blocking thread holding it; `f` uses the writer through
    /// [`Inner::write_gated`]. The permit moves into the blocking task, so it is held until
    /// the work ends even if this future is dropped.
    async fn blocking_write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Gate<'_>) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.gate)
            .acquire_owned()
            .await
            .map_err(gate_closed)?;
        self.blocking(move |inner| f(inner, &Gate::Owned(permit)))
            .await
    }
}

/// Answers every item of a batch that failed as a whole: the first caller gets `e`, the
/// others an error of the same kind (temporary or not) with the same text.
fn answer_all(batch: Vec<stores::PendingIssue>, e: Error) {
    let temporary = e.is_temporary();
    let text = e.to_string();
    let mut first = Some(e);
    for item in batch {
        let err = first
            .take()
            .unwrap_or_else(|| Error::backend(BACKEND, temporary, SharedFailure(text.clone())));
        item.answer(Err(err));
    }
}

/// The error of a batch shared by every caller in it.
#[derive(Debug)]
struct SharedFailure(String);

impl fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the token issuing batch failed: {}", self.0)
    }
}

impl std::error::Error for SharedFailure {}

/// Most token issues one group commit writes in one transaction.
const MAX_ISSUE_BATCH: usize = 256;

/// Proof that the caller holds the writer gate.
pub(crate) enum Gate<'a> {
    Owned(#[allow(dead_code)] OwnedSemaphorePermit),
    Borrowed(#[allow(dead_code)] SemaphorePermit<'a>),
}

fn gate_closed(e: tokio::sync::AcquireError) -> Error {
    // The gate is never closed; map it anyway rather than panic.
    Error::backend(BACKEND, false, e)
}

/// Polls `fut` to completion on this thread, parking between polls. For blocking threads
/// (and callers without a Tokio runtime) only: never call it on an async worker.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn check_options(path: &Path, opts: &SqliteOptions) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::Config {
            reason: "the SQLite database path is empty".into(),
        });
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(Error::Config {
            reason: "the SQLite database path contains NUL".into(),
        });
    }
    if !(1..=MAX_READERS).contains(&opts.readers) {
        return Err(Error::Config {
            reason: format!(
                "readers must be between 1 and {MAX_READERS}, got {}",
                opts.readers
            ),
        });
    }
    if opts.busy_timeout.as_millis() > i32::MAX as u128 {
        return Err(Error::Config {
            reason: "busy_timeout is too large".into(),
        });
    }
    if i64::try_from(opts.mmap_size).is_err() {
        return Err(Error::Config {
            reason: "mmap_size is too large".into(),
        });
    }
    Ok(())
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// The path as a plain file name. The bundled SQLite is built with `SQLITE_USE_URI`, so a
/// name starting with `file:` would be parsed as a URI whose options (`vfs=unix-none`,
/// `nolock=1`, `mode=memory`, …) turn off locking or durability: such names get a `./`
/// prefix, which makes them ordinary relative file names. In-memory databases are refused:
/// readers and writer are separate connections and would each see their own database.
fn plain_file_path(path: &Path) -> Result<PathBuf> {
    let text = path.to_string_lossy();
    if text.is_empty() {
        return Err(Error::Config {
            reason: "the database path is empty".into(),
        });
    }
    if text.starts_with(":memory:") {
        return Err(Error::Config {
            reason: "in-memory SQLite databases are not supported (readers and writer are \
                     separate connections); use a file in a temporary directory"
                .into(),
        });
    }
    if text.starts_with("file:") {
        return Ok(Path::new(".").join(path));
    }
    Ok(path.to_path_buf())
}

fn open_connection(path: &Path, opts: &SqliteOptions, role: Role) -> Result<Connection> {
    // The path has been through `plain_file_path`: never a `file:` URI.
    let flags = match role {
        Role::Writer => {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
        Role::Reader => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    configure(&conn, opts, role).map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn configure(conn: &Connection, opts: &SqliteOptions, role: Role) -> rusqlite::Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    if role == Role::Writer {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Without WAL, readers block the writer and the concurrency this store is built
            // for is gone (e.g. a file system without shared memory): refuse, loudly.
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "SQLite refused WAL mode (journal_mode stays {mode}); put the database on a local file system"
                )),
            ));
        }
    }
    conn.pragma_update(None, "synchronous", opts.synchronous.pragma_value())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checked in `check_options` to fit an i64.
    conn.pragma_update(
        None,
        "mmap_size",
        i64::try_from(opts.mmap_size).unwrap_or(0),
    )?;
    conn.pragma_update(None, "cache_size", -i64::from(opts.cache_size_kib))?;
    // Statement and savepoint journals in memory: group commit runs each issue under a
    // savepoint, and with the default the savepoint journal of a batch spilled to a new
    // temporary file (created, written, deleted) about once per batch.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if role == Role::Reader {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    Ok(())
}

/// Locks a connection. A panic while it was held leaves it consistent (rusqlite rolls an
/// open transaction back on drop), so poisoning is cleared; any transaction still open is
/// rolled back.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    heal(m.lock().unwrap_or_else(PoisonError::into_inner))
}

fn heal(guard: MutexGuard<'_, Connection>) -> MutexGuard<'_, Connection> {
    if !guard.is_autocommit() {
        let _ = guard.execute_batch("ROLLBACK");
    }
    guard
}

impl Inner {
    /// Fails unless the schema is the one this build needs. One atomic load when it is.
    fn ready(&self) -> Result<()> {
        let seen = self.schema_version.load(Ordering::Acquire);
        if seen == SCHEMA_VERSION {
            return Ok(());
        }
        // Another store or process may have migrated since: look once more.
        let found = {
            let conn = self.reader();
            migrate::schema_version(&conn).map_err(Error::from)?
        };
        self.schema_version.store(found, Ordering::Release);
        match found.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(Error::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            }),
            std::cmp::Ordering::Less => Err(Error::NotMigrated {
                found,
                needed: SCHEMA_VERSION,
            }),
        }
    }

    /// A reader connection for a short inline read: the first free one round-robin, else
    /// wait for reader 0, which long work never takes (so the wait is behind short reads
    /// only).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.pick_reader(0)
    }

    /// A reader connection for long work (on a blocking thread): the first free one among
    /// readers 1.. round-robin, else wait for one of them. Never reader 0, unless the store
    /// has only one reader.
    fn long_reader(&self) -> MutexGuard<'_, Connection> {
        self.pick_reader(usize::from(self.readers.len() > 1))
    }

    /// The first free reader from `first` on (for long work round-robin), else wait: for
    /// inline reads (`first == 0`) on reader 0, for long work on one of readers `first..`.
    fn pick_reader(&self, first: usize) -> MutexGuard<'_, Connection> {
        let pool = self.readers.get(first..).unwrap_or_default();
        let n = pool.len();
        // Inline reads take the first free reader from 0 on, not round-robin: at low
        // concurrency they all land on reader 0, whose page cache stays warm (each
        // connection has its own cache; rotating over four readers made each one miss
        // four times as often). Long work still rotates over its readers.
        let start = if first == 0 {
            0
        } else {
            self.next_reader.fetch_add(1, Ordering::Relaxed)
        };
        for i in 0..n {
            let Some(m) = pool.get((start + i) % n) else {
                continue;
            };
            match m.try_lock() {
                Ok(g) => return heal(g),
                Err(TryLockError::Poisoned(p)) => return heal(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let wait_on = if first == 0 {
            pool.first()
        } else {
            pool.get(start % n.max(1))
        };
        match wait_on {
            Some(m) => lock(m),
            // `open` guarantees at least one reader; fall back to the writer regardless.
            None => lock(&self.writer),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// Runs `f` inline on a reader connection (after the schema check): short reads only.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> R<T>) -> Result<T> {
        self.ready()?;
        let conn = self.reader();
        f(&conn).map_err(Error::from)
    }

    /// Runs `f` on a reader connection for long work (on a blocking thread), never on the
    /// reader reserved for inline reads (after the schema check).
    fn read_long<T>(&self, f: impl FnOnce(&Connection) -> R<T>) -> Result<T> {
        self.ready()?;
        let conn = self.long_reader();
        f(&conn).map_err(Error::from)
    }

    /// Runs `f` inline in a `BEGIN IMMEDIATE` transaction on the writer; commits if it
    /// returns `Ok`, rolls back otherwise. Waits for the writer gate asynchronously, so a
    /// writer held by long work parks this task, not the worker thread.
    async fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> Result<T> {
        self.ready()?;
        let permit = self.gate.acquire().await.map_err(gate_closed)?;
        self.write_gated(&Gate::Borrowed(permit), f)
    }

    /// Group commit of token issuance: queues `item`, then either finds it answered by a
    /// batch another caller committed, or takes the writer gate and commits what is queued
    /// (its own item included, at most [`MAX_ISSUE_BATCH`] per transaction) — as often as
    /// it takes for its own item to be done. Each item runs under its own savepoint, so it
    /// gets exactly the answer it would get alone; one commit (one fsync) serves them all.
    ///
    /// A caller cancelled while its item is queued leaves the item to the next batch: the
    /// tokens are stored and never handed out, like an answer lost after a commit.
    pub(crate) async fn issue_queued(&self, mut item: stores::PendingIssue) -> Result<()> {
        self.ready()?;
        let mut done = item.take_receiver();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
        loop {
            tokio::select! {
                biased;
                r = &mut done => {
                    return r.unwrap_or_else(|_| {
                        Err(Error::backend(
                            BACKEND,
                            true,
                            SharedFailure(
                                "the issuing batch ended without an answer: the tokens may or \
                                 may not be stored"
                                    .into(),
                            ),
                        ))
                    });
                }
                permit = self.gate.acquire() => {
                    let permit = permit.map_err(gate_closed)?;
                    let batch: Vec<stores::PendingIssue> = {
                        let mut q = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                        let n = q.len().min(MAX_ISSUE_BATCH);
                        q.drain(..n).collect()
                    };
                    if !batch.is_empty() {
                        self.commit_issues(&Gate::Borrowed(permit), batch);
                    }
                }
            }
        }
    }

    /// Writes `batch` in one transaction, each item under a savepoint, and answers each.
    fn commit_issues(&self, _gate: &Gate<'_>, batch: Vec<stores::PendingIssue>) {
        if let Err(e) = self.ready() {
            answer_all(batch, e);
            return;
        }
        let mut conn = self.writer();
        if let [item] = batch.as_slice() {
            // Alone: the plain transaction, no savepoint.
            let r = write_tx(&mut conn, |tx| {
                self.recheck_schema(tx)?;
                stores::issue_one(tx, &item.issue, &item.audit)
            })
            .map_err(Error::from);
            drop(conn);
            if let Some(item) = batch.into_iter().next() {
                item.answer(r);
            }
            return;
        }
        let mut outcomes: Vec<Option<Error>> = Vec::with_capacity(batch.len());
        let committed = (|| -> R<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            self.recheck_schema(&tx)?;
            // The savepoint statements are prepared once and cached: `Transaction::savepoint`
            // parses `SAVEPOINT`/`RELEASE` again for every item (9 % of the writer's
            // instructions per issued token in a callgrind profile of the token endpoint).
            let step = |sql: &str| -> R<()> {
                tx.prepare_cached(sql)?.execute([])?;
                Ok(())
            };
            for item in &batch {
                step("SAVEPOINT issue")?;
                match stores::issue_one(&tx, &item.issue, &item.audit) {
                    Ok(()) => {
                        step("RELEASE issue")?;
                        outcomes.push(None);
                    }
                    // SQLite rolled the whole transaction back (disk full, I/O error, …):
                    // nothing of the batch is stored, and every caller gets this error
                    // rather than the "no such savepoint" of the next statement.
                    Err(e) if tx.is_autocommit() => return Err(e),
                    // Only this item's writes are undone; the others stay.
                    Err(e) => {
                        step("ROLLBACK TO issue")?;
                        step("RELEASE issue")?;
                        outcomes.push(Some(Error::from(e)));
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                for (item, outcome) in batch.into_iter().zip(outcomes) {
                    item.answer(outcome.map_or(Ok(()), Err));
                }
            }
            // Nothing of the batch is stored; every caller gets the transaction's error.
            Err(e) => answer_all(batch, Error::from(e)),
        }
    }

    /// Takes the writer gate from a blocking thread (or a caller without a runtime).
    fn gate_blocking(&self) -> Result<Gate<'_>> {
        let permit = match self.gate.try_acquire() {
            Ok(p) => p,
            Err(_) => block_on(self.gate.acquire()).map_err(gate_closed)?,
        };
        Ok(Gate::Borrowed(permit))
    }

    /// Like [`Inner::write`], for a caller that already holds the writer gate.
    fn write_gated<T>(
        &self,
        _gate: &Gate<'_>,
        f: impl FnOnce(&Transaction<'_>) -> R<T>,
    ) -> Result<T> {
        self.ready()?;
        let mut conn = self.writer();
        write_tx(&mut conn, |tx| {
            self.recheck_schema(tx)?;
            f(tx)
        })
        .map_err(Error::from)
    }

    /// Inside a write transaction (which holds SQLite's write lock, so the schema cannot
    /// change under it): if the schema cookie moved since we last looked, someone ran DDL —
    /// possibly a newer authstore migrating this file while we run. Re-read the migration
    /// version and refuse to write into a newer schema. One cheap pragma per write.
    fn recheck_schema(&self, tx: &Transaction<'_>) -> R<()> {
        let cookie = schema_cookie(tx)?;
        if cookie == self.schema_cookie.load(Ordering::Acquire) {
            return Ok(());
        }
        let found = migrate::schema_version(tx)?;
        self.schema_version.store(found, Ordering::Release);
        self.schema_cookie.store(cookie, Ordering::Release);
        check_not_too_new(found)?;
        Ok(())
    }
}

/// SQLite's schema cookie, bumped by every schema change.
fn schema_cookie(conn: &Connection) -> R<i64> {
    Ok(conn
        .prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))?)
}

/// One `BEGIN IMMEDIATE` transaction on `conn`.
fn write_tx<T>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> R<T>) -> R<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn file_uris_become_plain_file_names() {
        for uri in [
            "file:a.db?nolock=1",
            "file:b.db?vfs=unix-none",
            "file:c.db?mode=memory",
        ] {
            let p = plain_file_path(Path::new(uri)).unwrap();
            assert!(p.starts_with("."), "{uri} -> {}", p.display());
        }
        assert!(plain_file_path(Path::new(":memory:")).is_err());
        assert!(plain_file_path(Path::new("")).is_err());
        assert_eq!(
            plain_file_path(Path::new("/x/a.db")).unwrap(),
            Path::new("/x/a.db")
        );
    }

    #[test]
    fn a_file_uri_is_never_opened_as_a_uri() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("y.db");
        // As a URI this would open `target` with locking off; as a plain (relative) name it
        // points into a directory `./file:` that does not exist.
        let r = SqliteStore::open(
            format!("file:{}?nolock=1", target.display()),
            SqliteOptions::default(),
        );
        assert!(r.is_err());
        assert!(!target.exists(), "the URI's target was not opened");
    }
}
