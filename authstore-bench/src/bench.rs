//! The operations benchmark: each operation through the façade beside the raw driver doing
//! the operation's statement, per backend and concurrency.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use authstore_core::{
    Authstore, Backend, Clock, CodeRedemption, CodeRequest, Config, ForeignTokens, GrantId,
    GrantType, NewClient, RedirectUri, RefreshRequest, Scopes, Subject, SystemClock, Timestamp,
    TokenKey, TokenKeyring, TokenKind, TokenLifetimes, TokenOptions,
};
use serde::Serialize;

use crate::measure::{Job, Measured, Runner};
use crate::memory::MemRaw;
use crate::postgres::PgRaw;
use crate::rows::{Load, Shape};
use crate::sqlite::SqliteRaw;

/// The redirect URI of the benchmark client.
pub(crate) const REDIRECT: &str = "https://bench.example/callback";

/// The access token lifetime of loaded tokens and raw inserts (the store's default).
pub(crate) const ACCESS_LIFE: Duration = Duration::from_secs(3600);

/// Authorization code lifetime of the benchmark client (long enough to outlast any
/// measurement; the default is 60 s).
const CODE_LIFE: Duration = Duration::from_secs(3600);

/// The backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackendKind {
    /// `authstore-memory`.
    Memory,
    /// `authstore-sqlite`.
    Sqlite,
    /// `authstore-postgres`.
    Postgres,
}

impl BackendKind {
    /// The name used in tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    /// `Authstore::validate_access_token` over N live tokens in random order.
    Validate,
    /// A token pair issued: `Authstore::store_foreign_tokens` with two freshly minted
    /// strings (one client read, then one `issue_tokens` transaction: new grant, access and
    /// refresh token, audit event; on PostgreSQL through group commit).
    IssuePair,
    /// `Authstore::redeem_code` of a pre-issued code (consume, then issue a pair).
    RedeemCode,
    /// `Authstore::refresh`: rotation of a live refresh token.
    Refresh,
    /// `Authstore::revoke_grant`.
    RevokeGrant,
}

impl Op {
    /// Every operation, in report order.
    pub(crate) const ALL: [Op; 5] = [
        Op::Validate,
        Op::IssuePair,
        Op::RedeemCode,
        Op::Refresh,
        Op::RevokeGrant,
    ];

    /// The name used in tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Validate => "validate",
            Op::IssuePair => "issue_pair",
            Op::RedeemCode => "redeem_code",
            Op::Refresh => "refresh",
            Op::RevokeGrant => "revoke_grant",
        }
    }

    /// What the façade side runs.
    pub(crate) fn ours(self) -> &'static str {
        match self {
            Op::Validate => "validate_access_token",
            Op::IssuePair => {
                "store_foreign_tokens(2 freshly minted tokens): client read + 1 tx (grant, access, refresh, audit)"
            }
            Op::RedeemCode => {
                "redeem_code: consume tx (update + audit), client and grant reads, issue tx (access, refresh, audit)"
            }
            Op::Refresh => {
                "refresh: refresh read, client read, rotation tx (update, refresh, access, audit)"
            }
            Op::RevokeGrant => "revoke_grant: 1 tx (update + audit)",
        }
    }

    /// What the raw side runs, per backend.
    pub(crate) fn raw(self, backend: BackendKind) -> &'static str {
        match (backend, self) {
            (BackendKind::Memory, Op::Validate) => {
                "keyed hash; read lock; token, grant and client lookups; clone"
            }
            (BackendKind::Memory, Op::IssuePair) => {
                "keyed hash; write lock; 1 insert (access token)"
            }
            (BackendKind::Memory, Op::RedeemCode) => {
                "keyed hash; write lock; compare-and-set consumed_at"
            }
            (BackendKind::Memory, Op::Refresh) => {
                "keyed hash; write lock; compare-and-set rotated_at"
            }
            (BackendKind::Memory, Op::RevokeGrant) => "write lock; set revoked_at",
            (_, Op::Validate) => {
                "keyed hash + the store's SELECT (same joins), columns read as owned values"
            }
            (_, Op::IssuePair) => "keyed hash + single-row INSERT access_tokens, autocommit",
            (_, Op::RedeemCode) => {
                "keyed hash + the store's UPDATE authorization_codes … RETURNING, autocommit"
            }
            (_, Op::Refresh) => {
                "keyed hash + the store's UPDATE refresh_tokens … RETURNING, autocommit"
            }
            (_, Op::RevokeGrant) => "the store's UPDATE grants, autocommit",
        }
    }
}

/// Which side of a pair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    /// The façade on the backend.
    Ours,
    /// The raw driver.
    Raw,
}

/// The raw driver of a backend.
pub(crate) enum Raw {
    /// Hash maps behind a lock.
    Memory(MemRaw),
    /// rusqlite.
    Sqlite(SqliteRaw),
    /// tokio-postgres.
    Postgres(PgRaw),
}

/// One backend, set up: the façade and the raw side on the same data.
pub(crate) struct Fixture {
    /// Which backend.
    pub(crate) kind: BackendKind,
    /// The façade.
    pub(crate) store: Authstore,
    /// The raw side.
    pub(crate) raw: Raw,
    /// What loaded records share.
    pub(crate) shape: Shape,
    /// Options of issued tokens (defaults).
    pub(crate) options: TokenOptions,
    /// Next free token number for loads and raw inserts.
    next: AtomicU64,
    /// The PostgreSQL store, for its group-commit counters.
    pg: Option<Arc<authstore_postgres::PostgresStore>>,
}

impl Fixture {
    /// Reserves `n` token numbers.
    pub(crate) fn reserve(&self, n: u64) -> std::ops::Range<u64> {
        let s = self.next.fetch_add(n, Ordering::Relaxed);
        s..s + n
    }

    /// Group-commit counters of the PostgreSQL store: (batches, requests).
    pub(crate) fn issuance(&self) -> Option<(u64, u64)> {
        self.pg.as_ref().map(|p| {
            let s = p.issuance_stats();
            (s.batches, s.requests)
        })
    }

    /// The current time (the store's clock is the system clock here).
    pub(crate) fn now(&self) -> Timestamp {
        self.store.now()
    }
}

/// Where a backend lives.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// In memory.
    Memory,
    /// A SQLite file (created).
    Sqlite {
        /// Its path.
        path: PathBuf,
        /// Settings changed on both sides.
        tuning: crate::sqlite::Tuning,
    },
    /// A PostgreSQL server and a schema to create.
    Postgres {
        /// The server.
        url: String,
        /// The schema.
        schema: String,
        /// The store's (and the raw side's) pool size.
        pool: usize,
        /// The store's group commit of issuance (`PostgresOptions::batch_issuance`).
        batch: bool,
    },
}

/// Opens the backend at `target`, migrates, creates the benchmark client and the raw side
/// (`raw_readers` connections for SQLite).
pub(crate) async fn fixture(target: &Target, raw_readers: usize) -> Result<Fixture, String> {
    let key = TokenKey::generate("bench").map_err(|e| e.to_string())?;
    let key_bytes = key_bytes(&key)?;
    let mut pg = None;
    let (kind, backend): (BackendKind, Arc<dyn Backend>) = match target {
        Target::Memory => (
            BackendKind::Memory,
            Arc::new(authstore_memory::MemoryStore::new()),
        ),
        Target::Sqlite { path, tuning } => (
            BackendKind::Sqlite,
            Arc::new(
                authstore_sqlite::SqliteStore::open(path, tuning.options())
                    .map_err(|e| e.to_string())?,
            ),
        ),
        Target::Postgres {
            url,
            schema,
            pool,
            batch,
        } => {
            let store = Arc::new(
                authstore_postgres::PostgresStore::connect(
                    url,
                    authstore_postgres::PostgresOptions {
                        pool_size: *pool,
                        batch_issuance: *batch,
                        schema: Some(schema.clone()),
                        ssl_mode: authstore_postgres::SslMode::Disable,
                        ..authstore_postgres::PostgresOptions::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?,
            );
            pg = Some(Arc::clone(&store));
            (BackendKind::Postgres, store)
        }
    };
    let store = Authstore::new(backend, TokenKeyring::new(key))
        .with_config(Config {
            // Only for `store_foreign_tokens` (the issue_pair path); every string the
            // benchmark presents is in the minted format, so validation is unchanged.
            accept_foreign_tokens: true,
            ..Config::default()
        })
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let scope = Scopes::parse("read write").map_err(|e| e.to_string())?;
    let redirect = RedirectUri::new(REDIRECT).map_err(|e| e.to_string())?;
    let mut new = NewClient::confidential("authstore-bench");
    new.redirect_uris = vec![redirect.clone()];
    new.grant_types = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
    ]
    .into();
    new.scopes = scope.clone();
    new.lifetimes = TokenLifetimes {
        authorization_code: Some(CODE_LIFE),
        ..TokenLifetimes::default()
    };
    let client = store.create_client(new).await.map_err(|e| e.to_string())?;
    let now = SystemClock.now();
    let subject = Subject::new(uuid::Uuid::now_v7().to_string()).map_err(|e| e.to_string())?;
    let shape = Shape {
        key: key_bytes,
        seed: blake3::derive_key("authstore-bench 2026 token seed", &key_bytes),
        client_id: client.client.id,
        subject,
        scope,
        redirect,
    };
    let raw = match target {
        Target::Memory => Raw::Memory(MemRaw::new(key_bytes, client.client.id, shape.grant(now))),
        Target::Sqlite { path, tuning } => Raw::Sqlite(SqliteRaw::open(
            path,
            raw_readers,
            shape.clone(),
            now,
            *tuning,
        )?),
        Target::Postgres {
            url, schema, pool, ..
        } => Raw::Postgres(PgRaw::connect(url, schema, *pool, shape.clone(), now).await?),
    };
    Ok(Fixture {
        kind,
        store,
        raw,
        shape,
        options: TokenOptions::default(),
        next: AtomicU64::new(0),
        pg,
    })
}

fn key_bytes(key: &TokenKey) -> Result<[u8; 32], String> {
    let hex = key.to_hex();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or("bad key hex")?;
        *b = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// What an operation works on.
#[derive(Clone)]
pub(crate) enum Items {
    /// Nothing (issuance makes its own tokens).
    None,
    /// Token strings (codes, refresh or access tokens).
    Strings(Arc<Vec<String>>),
    /// Grants.
    Grants(Arc<Vec<GrantId>>),
}

impl Items {
    /// How many there are (`usize::MAX` for none: no limit).
    pub(crate) fn len(&self) -> usize {
        match self {
            Items::None => usize::MAX,
            Items::Strings(v) => v.len(),
            Items::Grants(v) => v.len(),
        }
    }
}

/// Loads `n` live access tokens for validation (both sides see the same ones); their
/// strings.
pub(crate) async fn load_validation_tokens(fx: &Fixture, n: usize) -> Result<Vec<String>, String> {
    let now = fx.now();
    let load = Load {
        range: fx.reserve(n as u64),
        per_grant: 4,
        issued: now,
        expires: now.saturating_add(Duration::from_secs(86_400)),
    };
    let strings: Vec<String> = load
        .range
        .clone()
        .map(|i| fx.shape.token(TokenKind::AccessToken, i))
        .collect();
    match &fx.raw {
        Raw::Memory(m) => {
            // Ours through the façade (one grant each); the raw maps get the same tokens.
            for s in &strings {
                let g = fx
                    .store
                    .store_foreign_tokens(ForeignTokens {
                        access_token: s,
                        refresh_token: None,
                        expires_in: Some(Duration::from_secs(86_400)),
                        client_id: fx.shape.client_id,
                        subject: Some(&fx.shape.subject),
                        scope: None,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let grant = fx.store.grant(g).await.map_err(|e| e.to_string())?;
                m.add_grant(grant);
                m.add_access(s, fx.shape.access(g, load.issued, load.expires));
            }
        }
        Raw::Sqlite(r) => {
            r.load_access(load).await?;
            r.settle().await?;
        }
        Raw::Postgres(p) => {
            p.load_access(load).await?;
            p.settle().await?;
        }
    }
    Ok(strings)
}

/// Makes `n` items for `op` on `side`.
pub(crate) async fn prepare(fx: &Fixture, op: Op, side: Side, n: usize) -> Result<Items, String> {
    let now = fx.now();
    let load = Load {
        range: fx.reserve(n as u64),
        per_grant: 1,
        issued: now,
        expires: now.saturating_add(CODE_LIFE),
    };
    let items = match (op, &fx.raw, side) {
        (Op::Validate | Op::IssuePair, _, _) => Items::None,
        (Op::RedeemCode, Raw::Memory(_), Side::Ours) => {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let c = fx
                    .store
                    .issue_code(CodeRequest {
                        client_id: fx.shape.client_id,
                        subject: fx.shape.subject.clone(),
                        redirect_uri: REDIRECT.to_owned(),
                        scope: fx.shape.scope.clone(),
                        code_challenge: None,
                        nonce: None,
                        auth: Default::default(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                out.push(c.code.secret().to_owned());
            }
            Items::Strings(Arc::new(out))
        }
        (Op::RedeemCode, Raw::Memory(m), Side::Raw) => {
            let c = load.codes(&fx.shape);
            c.grants.into_iter().for_each(|g| m.add_grant(g));
            let mut out = Vec::with_capacity(n);
            for (s, code) in c.records {
                m.add_code(&s, code);
                out.push(s);
            }
            Items::Strings(Arc::new(out))
        }
        (Op::Refresh, Raw::Memory(_), Side::Ours) => {
            let mut out = Vec::with_capacity(n);
            for i in load.range.clone() {
                let at = fx.shape.token(TokenKind::AccessToken, i);
                let rt = fx.shape.token(TokenKind::RefreshToken, i);
                fx.store
                    .store_foreign_tokens(ForeignTokens {
                        access_token: &at,
                        refresh_token: Some(&rt),
                        expires_in: None,
                        client_id: fx.shape.client_id,
                        subject: Some(&fx.shape.subject),
                        scope: None,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                out.push(rt);
            }
            Items::Strings(Arc::new(out))
        }
        (Op::Refresh, Raw::Memory(m), Side::Raw) => {
            let c = load.refresh(&fx.shape);
            c.grants.into_iter().for_each(|g| m.add_grant(g));
            let mut out = Vec::with_capacity(n);
            for (s, t) in c.records {
                m.add_refresh(&s, t);
                out.push(s);
            }
            Items::Strings(Arc::new(out))
        }
        (Op::RevokeGrant, Raw::Memory(_), Side::Ours) => {
            let mut out = Vec::with_capacity(n);
            for i in load.range.clone() {
                let at = fx.shape.token(TokenKind::AccessToken, i);
                let g = fx
                    .store
                    .store_foreign_tokens(ForeignTokens {
                        access_token: &at,
                        refresh_token: None,
                        expires_in: None,
                        client_id: fx.shape.client_id,
                        subject: Some(&fx.shape.subject),
                        scope: None,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                out.push(g);
            }
            Items::Grants(Arc::new(out))
        }
        (Op::RevokeGrant, Raw::Memory(m), Side::Raw) => {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let g = fx.shape.grant(now);
                out.push(g.id);
                m.add_grant(g);
            }
            Items::Grants(Arc::new(out))
        }
        (Op::RedeemCode, Raw::Sqlite(r), _) => Items::Strings(Arc::new(r.load_codes(load).await?)),
        (Op::Refresh, Raw::Sqlite(r), _) => Items::Strings(Arc::new(r.load_refresh(load).await?)),
        (Op::RevokeGrant, Raw::Sqlite(r), _) => {
            Items::Grants(Arc::new(r.load_grants(n, now).await?))
        }
        (Op::RedeemCode, Raw::Postgres(p), _) => {
            let v = p.load_codes(load).await?;
            p.analyze().await?;
            Items::Strings(Arc::new(v))
        }
        (Op::Refresh, Raw::Postgres(p), _) => {
            let v = p.load_refresh(load).await?;
            p.analyze().await?;
            Items::Strings(Arc::new(v))
        }
        (Op::RevokeGrant, Raw::Postgres(p), _) => {
            let v = p.load_grants(n, now).await?;
            p.analyze().await?;
            Items::Grants(Arc::new(v))
        }
    };
    Ok(items)
}

/// One operation on one side, over its items.
pub(crate) struct OpJob {
    /// The backend.
    pub(crate) fx: Arc<Fixture>,
    /// The operation.
    pub(crate) op: Op,
    /// The side.
    pub(crate) side: Side,
    /// What it works on.
    pub(crate) items: Items,
    /// Token numbers for strings the operation makes (raw issuance, raw successors).
    pub(crate) base: u64,
}

fn string(items: &Items, i: usize, wrap: bool) -> Result<&str, String> {
    match items {
        Items::Strings(v) if !v.is_empty() => {
            let i = if wrap { i % v.len() } else { i };
            v.get(i)
                .map(String::as_str)
                .ok_or_else(|| "no such item".into())
        }
        _ => Err("the operation has no token items".into()),
    }
}

fn grant(items: &Items, i: usize) -> Result<GrantId, String> {
    match items {
        Items::Grants(v) => v.get(i).copied().ok_or_else(|| "no such item".into()),
        _ => Err("the operation has no grant items".into()),
    }
}

impl Job for OpJob {
    async fn run(&self, task: usize, i: usize) -> Result<(), String> {
        let fx = &*self.fx;
        let e = |e: authstore_core::Error| e.to_string();
        match self.side {
            Side::Ours => match self.op {
                Op::Validate => {
                    let t = string(&self.items, i, true)?;
                    fx.store.validate_access_token(t).await.map(drop).map_err(e)
                }
                Op::IssuePair => {
                    let format = &fx.store.config().token_format;
                    let at = format.mint(TokenKind::AccessToken).map_err(e)?;
                    let rt = format.mint(TokenKind::RefreshToken).map_err(e)?;
                    fx.store
                        .store_foreign_tokens(ForeignTokens {
                            access_token: &at,
                            refresh_token: Some(&rt),
                            expires_in: None,
                            client_id: fx.shape.client_id,
                            subject: Some(&fx.shape.subject),
                            scope: None,
                        })
                        .await
                        .map(drop)
                        .map_err(e)
                }
                Op::RedeemCode => {
                    let code = string(&self.items, i, false)?;
                    fx.store
                        .redeem_code(CodeRedemption {
                            code,
                            client_id: fx.shape.client_id,
                            redirect_uri: Some(REDIRECT),
                            code_verifier: None,
                            options: &fx.options,
                        })
                        .await
                        .map(drop)
                        .map_err(e)
                }
                Op::Refresh => {
                    let rt = string(&self.items, i, false)?;
                    fx.store
                        .refresh(RefreshRequest {
                            refresh_token: rt,
                            client_id: fx.shape.client_id,
                            scope: None,
                            options: &fx.options,
                        })
                        .await
                        .map(drop)
                        .map_err(e)
                }
                Op::RevokeGrant => fx
                    .store
                    .revoke_grant(grant(&self.items, i)?)
                    .await
                    .map_err(e),
            },
            Side::Raw => {
                let now = SystemClock.now();
                match (self.op, &fx.raw) {
                    (Op::Validate, Raw::Memory(m)) => {
                        m.validate(string(&self.items, i, true)?, now)
                    }
                    (Op::Validate, Raw::Sqlite(r)) => {
                        r.validate(task, string(&self.items, i, true)?, now)
                    }
                    (Op::Validate, Raw::Postgres(p)) => {
                        p.validate(string(&self.items, i, true)?, now).await
                    }
                    (Op::IssuePair, raw) => {
                        let s = fx.shape.token(TokenKind::AccessToken, self.base + i as u64);
                        let expires = now.saturating_add(ACCESS_LIFE);
                        match raw {
                            Raw::Memory(m) => {
                                m.insert_access(&s, &fx.shape.access(m.issue_grant(), now, expires))
                            }
                            Raw::Sqlite(r) => r.insert_access(&s, now, expires).await,
                            Raw::Postgres(p) => p.insert_access(&s, now, expires).await,
                        }
                    }
                    (Op::RedeemCode, raw) => {
                        let code = string(&self.items, i, false)?;
                        match raw {
                            Raw::Memory(m) => m.consume(code, now),
                            Raw::Sqlite(r) => r.consume(code, now).await,
                            Raw::Postgres(p) => p.consume(code, now).await,
                        }
                    }
                    (Op::Refresh, raw) => {
                        let rt = string(&self.items, i, false)?;
                        let next = fx
                            .shape
                            .token(TokenKind::RefreshToken, self.base + i as u64);
                        match raw {
                            Raw::Memory(m) => m.rotate(rt, &next, now),
                            Raw::Sqlite(r) => r.rotate(rt, &next, now).await,
                            Raw::Postgres(p) => p.rotate(rt, &next, now).await,
                        }
                    }
                    (Op::RevokeGrant, raw) => {
                        let g = grant(&self.items, i)?;
                        match raw {
                            Raw::Memory(m) => m.revoke(g, now),
                            Raw::Sqlite(r) => r.revoke(g, now).await,
                            Raw::Postgres(p) => p.revoke(g, now).await,
                        }
                    }
                }
            }
        }
    }
}

/// How the operations benchmark runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Operations to run.
    pub(crate) ops: Vec<Op>,
    /// Concurrency levels.
    pub(crate) concurrency: Vec<usize>,
    /// Warm-up per measurement (not recorded).
    pub(crate) warm: Duration,
    /// Measured time per measurement.
    pub(crate) run: Duration,
    /// Turns each side takes (the measured time is split between them).
    pub(crate) rounds: usize,
    /// Live access tokens validation picks from.
    pub(crate) tokens: usize,
    /// Most items made for one measurement of an operation that uses them up.
    pub(crate) max_items: usize,
    /// Fewest items made for one such measurement.
    pub(crate) min_items: usize,
}

/// One measurement pair: the façade and the raw driver on one operation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Backend.
    pub(crate) backend: &'static str,
    /// Operation.
    pub(crate) op: &'static str,
    /// Concurrent tasks.
    pub(crate) concurrency: usize,
    /// Live access tokens in the table validation reads (loaded before the operations).
    pub(crate) tokens: usize,
    /// Façade operations per second.
    pub(crate) ours_ops_per_sec: f64,
    /// Raw operations per second.
    pub(crate) raw_ops_per_sec: f64,
    /// ours / raw.
    pub(crate) ratio: f64,
    /// Façade latency p50, µs.
    pub(crate) ours_p50_us: f64,
    /// Façade latency p99, µs.
    pub(crate) ours_p99_us: f64,
    /// Raw latency p50, µs.
    pub(crate) raw_p50_us: f64,
    /// Raw latency p99, µs.
    pub(crate) raw_p99_us: f64,
    /// Machine-wide CPU µs per façade operation (this process, the database server and
    /// anything else running: read it as an upper bound).
    pub(crate) ours_cpu_us_per_op: f64,
    /// Machine-wide CPU µs per raw operation.
    pub(crate) raw_cpu_us_per_op: f64,
    /// Façade operations measured.
    pub(crate) ours_ops: u64,
    /// Raw operations measured.
    pub(crate) raw_ops: u64,
    /// Façade wall time, s.
    pub(crate) ours_seconds: f64,
    /// Raw wall time, s.
    pub(crate) raw_seconds: f64,
    /// Failed façade operations (should be 0).
    pub(crate) ours_errors: u64,
    /// Failed raw operations (should be 0).
    pub(crate) raw_errors: u64,
    /// The first error, if any.
    pub(crate) first_error: Option<String>,
    /// Whether a side ran out of items before its time was up (shorter measurement).
    pub(crate) exhausted: bool,
    /// What the façade side does.
    pub(crate) ours_does: &'static str,
    /// What the raw side does.
    pub(crate) raw_does: &'static str,
    /// PostgreSQL: issuance calls per group-commit transaction during the façade side
    /// (`PostgresStore::issuance_stats`), when any went through the batcher.
    pub(crate) pg_issuance_batch_mean: Option<f64>,
}

impl Row {
    fn new(
        fx: &Fixture,
        op: Op,
        concurrency: usize,
        tokens: usize,
        ours: &Measured,
        raw: &Measured,
    ) -> Self {
        let (o, r) = (ours.rate(), raw.rate());
        Self {
            backend: fx.kind.name(),
            op: op.name(),
            concurrency,
            tokens,
            ours_ops_per_sec: o,
            raw_ops_per_sec: r,
            ratio: if r > 0.0 { o / r } else { 0.0 },
            ours_p50_us: ours.quantile_us(0.5),
            ours_p99_us: ours.quantile_us(0.99),
            raw_p50_us: raw.quantile_us(0.5),
            raw_p99_us: raw.quantile_us(0.99),
            ours_cpu_us_per_op: ours.cpu_us_per_op(),
            raw_cpu_us_per_op: raw.cpu_us_per_op(),
            ours_ops: ours.ops,
            raw_ops: raw.ops,
            ours_seconds: ours.seconds,
            raw_seconds: raw.seconds,
            ours_errors: ours.errors,
            raw_errors: raw.errors,
            first_error: ours.first_error.clone().or_else(|| raw.first_error.clone()),
            exhausted: ours.exhausted || raw.exhausted,
            ours_does: op.ours(),
            raw_does: op.raw(fx.kind),
            pg_issuance_batch_mean: None,
        }
    }
}

/// A first guess of operations per second, to size the items of the first measurement.
fn first_guess(kind: BackendKind) -> f64 {
    match kind {
        BackendKind::Memory => 300_000.0,
        BackendKind::Sqlite => 10_000.0,
        BackendKind::Postgres => 5_000.0,
    }
}

/// Runs every operation of `plan` on `fx` at every concurrency, façade then raw.
pub(crate) async fn run(
    fx: Arc<Fixture>,
    plan: &Plan,
    progress: &dyn Fn(&str),
) -> Result<Vec<Row>, String> {
    progress(&format!(
        "{}: loading {} live access tokens",
        fx.kind.name(),
        plan.tokens
    ));
    let mut tokens = load_validation_tokens(&fx, plan.tokens).await?;
    crate::tokens::Rng::new(0x5eed).shuffle(&mut tokens);
    let tokens = Items::Strings(Arc::new(tokens));
    let mut best: HashMap<(Op, Side), f64> = HashMap::new();
    let mut rows = Vec::new();
    for &c in &plan.concurrency {
        for &op in &plan.ops {
            let mut runners = Vec::with_capacity(2);
            for side in [Side::Ours, Side::Raw] {
                let (items, budget) = match op {
                    Op::Validate => (tokens.clone(), usize::MAX),
                    Op::IssuePair => (Items::None, usize::MAX),
                    _ => {
                        let rate = best
                            .get(&(op, side))
                            .copied()
                            .unwrap_or(first_guess(fx.kind));
                        let secs = (plan.run + plan.warm).as_secs_f64();
                        let want = (rate * secs * 2.0) as usize;
                        let n = want.clamp(plan.min_items, plan.max_items.max(plan.min_items));
                        let items = prepare(&fx, op, side, n).await?;
                        let len = items.len();
                        (items, len)
                    }
                };
                let job = Arc::new(OpJob {
                    fx: Arc::clone(&fx),
                    op,
                    side,
                    items,
                    base: fx.reserve(1 << 32).start,
                });
                runners.push(Runner::new(job, c, budget));
            }
            let batches_before = fx.issuance();
            for r in &mut runners {
                r.warm(plan.warm).await;
            }
            // The sides take turns (ours, raw, raw, ours, …) so that what disturbs the
            // machine for a while disturbs both.
            let rounds = plan.rounds.max(1);
            let slice = plan.run / rounds as u32;
            for round in 0..rounds {
                if round % 2 == 0 {
                    for r in runners.iter_mut() {
                        r.slice(slice).await;
                    }
                } else {
                    for r in runners.iter_mut().rev() {
                        r.slice(slice).await;
                    }
                }
            }
            let batches = fx
                .issuance()
                .zip(batches_before)
                .and_then(|((b1, r1), (b0, r0))| {
                    (b1 > b0).then(|| (r1 - r0) as f64 / (b1 - b0) as f64)
                });
            let pair: Vec<Measured> = runners.into_iter().map(Runner::finish).collect();
            for (side, m) in [Side::Ours, Side::Raw].into_iter().zip(&pair) {
                let e = best.entry((op, side)).or_insert(0.0);
                *e = e.max(m.rate());
            }
            if let [ours, raw] = pair.as_slice() {
                let mut row = Row::new(&fx, op, c, plan.tokens, ours, raw);
                row.pg_issuance_batch_mean = batches;
                progress(&format!(
                    "{:<8} {:<12} c={:<3} ours {:>10.0}/s  raw {:>10.0}/s  ratio {:.2}{}",
                    row.backend,
                    row.op,
                    c,
                    row.ours_ops_per_sec,
                    row.raw_ops_per_sec,
                    row.ratio,
                    if row.ours_errors + row.raw_errors > 0 {
                        " ERRORS"
                    } else {
                        ""
                    }
                ));
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
