//! Scale curves: validation latency with 10 k, 1 M (and, opt-in, 10 M) live tokens, bytes
//! per stored token, and cleanup of 1 M expired tokens with validation running beside it.
//!
//! Tokens are bulk-loaded with the raw driver in large transactions (SQLite) or binary
//! `COPY` (PostgreSQL), with the store's hashing and row format (four tokens per grant),
//! then validated through the façade. Expired tokens for the cleanup run are loaded already
//! expired (two days ago, past the one-day retention), so no clock has to move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use authstore_core::backend::CleanupOptions;
use authstore_core::{Authstore, TokenKind};
use serde::Serialize;

use crate::bench::{Fixture, Raw, Target, fixture};
use crate::measure::{Background, Job, Measured, measure};
use crate::rows::Load;
use crate::tokens::Rng;

/// Tokens per grant in scale loads.
const PER_GRANT: u64 = 4;

/// Tokens validated at each point (a random sample of the loaded ones).
const SAMPLE: u64 = 100_000;

/// How the scale run goes.
#[derive(Debug, Clone)]
pub(crate) struct ScalePlan {
    /// Live token counts to measure at, increasing.
    pub(crate) points: Vec<u64>,
    /// Expired tokens for the cleanup run (loaded after the largest point not above it).
    pub(crate) expired: u64,
    /// Warm-up per measurement.
    pub(crate) warm: Duration,
    /// Measured time per point.
    pub(crate) run: Duration,
}

/// One point of the curve.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScalePoint {
    /// Backend.
    pub(crate) backend: &'static str,
    /// Live access tokens stored.
    pub(crate) tokens: u64,
    /// Seconds the load up to this point took (since the previous point).
    pub(crate) load_seconds: f64,
    /// Validations per second (one task).
    pub(crate) validate_ops_per_sec: f64,
    /// Validation latency p50, µs.
    pub(crate) validate_p50_us: f64,
    /// Validation latency p99, µs.
    pub(crate) validate_p99_us: f64,
    /// Validation latency p99.9, µs.
    pub(crate) validate_p999_us: f64,
    /// Failed validations (should be 0).
    pub(crate) errors: u64,
    /// Bytes of `access_tokens` with its indexes.
    pub(crate) access_bytes: u64,
    /// `access_bytes / tokens`.
    pub(crate) access_bytes_per_token: f64,
    /// Bytes of `grants` with its indexes (one grant per four tokens here).
    pub(crate) grant_bytes: u64,
    /// `(access_bytes + grant_bytes) / tokens`.
    pub(crate) bytes_per_token_with_grants: f64,
    /// The whole database (file or `pg_database_size`).
    pub(crate) database_bytes: u64,
}

/// The cleanup run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CleanupRun {
    /// Backend.
    pub(crate) backend: &'static str,
    /// Expired access tokens loaded.
    pub(crate) expired_tokens: u64,
    /// Live tokens stored beside them.
    pub(crate) live_tokens: u64,
    /// Seconds the expired load took.
    pub(crate) load_seconds: f64,
    /// Seconds `Authstore::cleanup` took, over all calls, until nothing was left.
    pub(crate) cleanup_seconds: f64,
    /// Calls made.
    pub(crate) calls: u32,
    /// Access tokens deleted.
    pub(crate) deleted_access_tokens: u64,
    /// Grants deleted.
    pub(crate) deleted_grants: u64,
    /// Validation p50 (µs) while cleanup ran (one task validating live tokens).
    pub(crate) validate_during_p50_us: f64,
    /// Validation p99 (µs) while cleanup ran.
    pub(crate) validate_during_p99_us: f64,
    /// Validation max (µs) while cleanup ran.
    pub(crate) validate_during_max_us: f64,
    /// Validations done while cleanup ran.
    pub(crate) validations_during: u64,
    /// Validation p99 (µs) at the same live-token count without cleanup.
    pub(crate) validate_before_p99_us: f64,
    /// Failed validations or cleanup calls (should be 0).
    pub(crate) errors: u64,
    /// The first error, if any.
    pub(crate) first_error: Option<String>,
}

/// Validation through the façade over a sample of token strings.
struct Validate {
    store: Authstore,
    tokens: Arc<Vec<String>>,
}

impl Job for Validate {
    async fn run(&self, _task: usize, i: usize) -> Result<(), String> {
        let t = self
            .tokens
            .get(i % self.tokens.len().max(1))
            .ok_or("no tokens")?;
        self.store
            .validate_access_token(t)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn sample(fx: &Fixture, base: u64, loaded: u64, seed: u64) -> Arc<Vec<String>> {
    let mut rng = Rng::new(seed);
    let n = loaded.min(SAMPLE);
    let picks: Vec<String> = (0..n)
        .map(|i| {
            // Every token once when they fit in the sample, else random ones.
            let k = if loaded <= SAMPLE {
                i
            } else {
                rng.below(loaded)
            };
            fx.shape.token(TokenKind::AccessToken, base + k)
        })
        .collect();
    let mut picks = picks;
    rng.shuffle(&mut picks);
    Arc::new(picks)
}

/// Loads, then settles (checkpoint; PostgreSQL: vacuum and analyze), so what is measured
/// next is the steady state of a store holding these rows, not the load's aftermath.
async fn load(fx: &Fixture, load: Load) -> Result<(), String> {
    match &fx.raw {
        Raw::Sqlite(r) => {
            r.load_access(load).await?;
            r.settle().await
        }
        Raw::Postgres(p) => {
            p.load_access(load).await?;
            p.settle().await
        }
        Raw::Memory(_) => Err("scale curves are for SQLite and PostgreSQL".into()),
    }
}

async fn sizes(fx: &Fixture) -> Result<crate::sqlite::Sizes, String> {
    match &fx.raw {
        Raw::Sqlite(r) => r.sizes().await,
        Raw::Postgres(p) => p.sizes().await,
        Raw::Memory(_) => Err("no sizes for memory".into()),
    }
}

/// Runs the scale plan on a fresh backend at `target`.
pub(crate) async fn run(
    target: &Target,
    plan: &ScalePlan,
    progress: &dyn Fn(&str),
) -> Result<(Vec<ScalePoint>, Option<CleanupRun>), String> {
    let fx = fixture(target, 1).await?;
    let name = fx.kind.name();
    let max = plan.points.iter().copied().max().unwrap_or(0);
    let base = fx.reserve(max).start;
    let mut loaded = 0u64;
    let mut points = Vec::new();
    let mut cleanup = None;
    let cleanup_at = plan
        .points
        .iter()
        .copied()
        .filter(|&p| p <= plan.expired.max(plan.points.first().copied().unwrap_or(0)))
        .max();
    for &p in &plan.points {
        let now = fx.now();
        progress(&format!("{name}: loading live tokens {loaded} -> {p}"));
        let t0 = Instant::now();
        load(
            &fx,
            Load {
                range: base + loaded..base + p,
                per_grant: PER_GRANT,
                issued: now,
                expires: now.saturating_add(Duration::from_secs(7 * 86_400)),
            },
        )
        .await?;
        let load_seconds = t0.elapsed().as_secs_f64();
        loaded = p;
        let tokens = sample(&fx, base, loaded, p);
        let job = Arc::new(Validate {
            store: fx.store.clone(),
            tokens: Arc::clone(&tokens),
        });
        let m = measure(job, 1, plan.warm, plan.run, usize::MAX).await;
        let s = sizes(&fx).await?;
        let point = ScalePoint {
            backend: name,
            tokens: p,
            load_seconds,
            validate_ops_per_sec: m.rate(),
            validate_p50_us: m.quantile_us(0.5),
            validate_p99_us: m.quantile_us(0.99),
            validate_p999_us: m.quantile_us(0.999),
            errors: m.errors,
            access_bytes: s.access_tokens,
            access_bytes_per_token: s.access_tokens as f64 / p.max(1) as f64,
            grant_bytes: s.grants,
            bytes_per_token_with_grants: (s.access_tokens + s.grants) as f64 / p.max(1) as f64,
            database_bytes: s.database,
        };
        progress(&format!(
            "{name}: {p} tokens (loaded in {load_seconds:.1} s): validate p50 {:.1} µs p99 {:.1} µs, {:.0} B/token{}",
            point.validate_p50_us,
            point.validate_p99_us,
            point.access_bytes_per_token,
            first_error(&m)
        ));
        points.push(point);
        if Some(p) == cleanup_at && plan.expired > 0 {
            cleanup = Some(cleanup_run(&fx, plan, loaded, tokens, &points, progress).await?);
        }
    }
    if let Target::Postgres { url, schema, .. } = target {
        drop(fx);
        crate::postgres::drop_schema(url, schema).await;
    }
    Ok((points, cleanup))
}

fn first_error(m: &Measured) -> String {
    match &m.first_error {
        Some(e) => format!(" ({} errors, first: {e})", m.errors),
        None => String::new(),
    }
}

async fn cleanup_run(
    fx: &Fixture,
    plan: &ScalePlan,
    live: u64,
    tokens: Arc<Vec<String>>,
    points: &[ScalePoint],
    progress: &dyn Fn(&str),
) -> Result<CleanupRun, String> {
    let name = fx.kind.name();
    let now = fx.now();
    let dead = now.saturating_sub(Duration::from_secs(2 * 86_400));
    progress(&format!(
        "{name}: loading {} tokens expired two days ago",
        plan.expired
    ));
    let t0 = Instant::now();
    load(
        fx,
        Load {
            range: fx.reserve(plan.expired),
            per_grant: PER_GRANT,
            issued: dead.saturating_sub(Duration::from_secs(3600)),
            expires: dead,
        },
    )
    .await?;
    let load_seconds = t0.elapsed().as_secs_f64();
    progress(&format!(
        "{name}: cleanup of {} expired tokens, validating beside it",
        plan.expired
    ));
    let bg = Background::start(
        Arc::new(Validate {
            store: fx.store.clone(),
            tokens: Arc::clone(&tokens),
        }),
        tokens.len(),
    );
    let options = CleanupOptions {
        time_budget: None,
        ..CleanupOptions::default()
    };
    let t0 = Instant::now();
    let mut calls = 0u32;
    let mut deleted_access = 0u64;
    let mut deleted_grants = 0u64;
    let mut failure = None;
    loop {
        calls += 1;
        match fx.store.cleanup(&options).await {
            Ok(r) => {
                deleted_access += r.access_tokens;
                deleted_grants += r.grants;
                if r.total() == 0 || !r.incomplete {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        if calls > 1000 {
            failure = Some("cleanup did not finish in 1000 calls".into());
            break;
        }
    }
    let cleanup_seconds = t0.elapsed().as_secs_f64();
    let during = bg.finish().await;
    let before = points
        .iter()
        .find(|p| p.tokens == live)
        .map_or(0.0, |p| p.validate_p99_us);
    let run = CleanupRun {
        backend: name,
        expired_tokens: plan.expired,
        live_tokens: live,
        load_seconds,
        cleanup_seconds,
        calls,
        deleted_access_tokens: deleted_access,
        deleted_grants,
        validate_during_p50_us: during.quantile_us(0.5),
        validate_during_p99_us: during.quantile_us(0.99),
        validate_during_max_us: during.quantile_us(1.0),
        validations_during: during.ops,
        validate_before_p99_us: before,
        errors: during.errors + u64::from(failure.is_some()),
        first_error: failure.or(during.first_error),
    };
    progress(&format!(
        "{name}: cleanup deleted {} tokens and {} grants in {:.1} s ({} calls); validation during it: p50 {:.1} µs p99 {:.1} µs (before: p99 {:.1} µs)",
        run.deleted_access_tokens,
        run.deleted_grants,
        run.cleanup_seconds,
        run.calls,
        run.validate_during_p50_us,
        run.validate_during_p99_us,
        run.validate_before_p99_us
    ));
    Ok(run)
}
