//! Group commit of token issuance, measured: client_credentials tokens issued per second
//! through `Authstore::issue_client_credentials` at 1 and 16 concurrent callers, with
//! `batch_issuance` on and off, in one run. Run it against a throwaway server on 127.0.0.1:
//!
//!   . scripts/lib/postgres.sh && pg_start && \
//!     cargo run --release -p authstore-postgres --example issue_load; pg_stop
//!
//! The throwaway server runs with fsync and synchronous_commit off. For the durable figure,
//! turn them on before running (between pg_start and cargo run):
//!
//!   printf 'fsync = on\nsynchronous_commit = on\n' >> "$PG_DIR/data/postgresql.conf" && \
//!     "$AUTHSTORE_TEST_POSTGRES_CTL" restart
//!
//! Two paths are measured: `authstore` is the whole `issue_client_credentials` call (a
//! client read, minting, hashing, then `issue_tokens`); `backend` calls only
//! `GrantStore::issue_tokens` with the same records, which is the part batching changes.
//!
//! Each cell runs for ISSUE_LOAD_SECS seconds (default 3, at most 30) or 200,000 issues,
//! whichever comes first, in its own schema (dropped at the end).

#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authstore_core::backend::{GrantStore, Maintenance, TokenIssue};
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuthContext, Authstore, Backend, Client,
    Grant, GrantId, NewClient, Scopes, TokenHash, TokenKey, TokenKeyring, TokenOptions,
};
use authstore_postgres::{PostgresOptions, PostgresStore};

const MAX_ISSUES: u64 = 200_000;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let url = std::env::var("AUTHSTORE_TEST_POSTGRES_URL")
        .map_err(|_| "set AUTHSTORE_TEST_POSTGRES_URL (pg_start does)")?;
    let host_ok = url
        .split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with("127.0.0.1:") || rest.starts_with("127.0.0.1/"));
    if !host_ok {
        return Err("this load test only runs against a server on 127.0.0.1".into());
    }
    let secs: u64 = std::env::var("ISSUE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .clamp(1, 30);
    let run_for = Duration::from_secs(secs);

    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let settings = admin
        .query_one(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )
        .await?;
    let (fsync, sync_commit): (String, String) = (settings.get(0), settings.get(1));
    println!(
        "client_credentials issuance, {secs} s per cell, fsync={fsync} \
         synchronous_commit={sync_commit}, pool_size 16"
    );
    println!(
        "{:>10} {:>9} {:>8} {:>10} {:>9} {:>11}",
        "path", "batching", "callers", "issues/s", "batches", "mean batch"
    );

    let mut rates = Vec::new();
    let mut schemas = Vec::new();
    for path in [Path::Authstore, Path::Backend] {
        for callers in [1usize, 16] {
            for batch in [false, true] {
                let schema = format!(
                    "issue_load_{}_{}_{callers}_{batch}",
                    std::process::id(),
                    path.name()
                );
                admin
                    .batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .await?;
                schemas.push(schema.clone());
                let store = Arc::new(
                    PostgresStore::connect(
                        &url,
                        PostgresOptions {
                            schema: Some(schema),
                            batch_issuance: batch,
                            ..PostgresOptions::default()
                        },
                    )
                    .await?,
                );
                store.migrate().await?;
                let rate = cell(&store, path, callers, run_for).await?;
                let st = store.issuance_stats();
                let mean = if st.batches > 0 {
                    format!("{:.1}", st.requests as f64 / st.batches as f64)
                } else {
                    "-".into()
                };
                println!(
                    "{:>10} {:>9} {callers:>8} {rate:>10.0} {:>9} {mean:>11}",
                    path.name(),
                    if batch { "on" } else { "off" },
                    st.batches
                );
                rates.push(((path, callers, batch), rate));
            }
        }
    }
    for path in [Path::Authstore, Path::Backend] {
        for callers in [1usize, 16] {
            let get = |b| {
                rates
                    .iter()
                    .find(|(k, _)| *k == (path, callers, b))
                    .map_or(0.0, |(_, r)| *r)
            };
            let (off, on) = (get(false), get(true));
            if off > 0.0 {
                println!(
                    "{:>9}, {callers:>2} callers: batching on / off = {:.2}x",
                    path.name(),
                    on / off
                );
            }
        }
    }
    for s in schemas {
        admin
            .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
            .await?;
    }
    Ok(())
}

/// What one issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `Authstore::issue_client_credentials`.
    Authstore,
    /// `GrantStore::issue_tokens` alone.
    Backend,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Authstore => "authstore",
            Path::Backend => "backend",
        }
    }
}

/// One client_credentials issue: through `Authstore`, or the same records straight to
/// the backend (hash from a counter: unique within the cell's schema).
async fn issue_one(
    s: &Authstore,
    store: &PostgresStore,
    path: Path,
    client: &Client,
    n: u64,
) -> authstore_core::Result<()> {
    if path == Path::Authstore {
        return s
            .issue_client_credentials(client.id, None, &TokenOptions::default())
            .await
            .map(drop);
    }
    let now = s.now();
    let grant = Grant {
        id: GrantId::new_at(now),
        client_id: client.id,
        subject: None,
        scope: client.scopes.clone(),
        auth: AuthContext::default(),
        created_at: now,
        revoked_at: None,
    };
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&n.to_le_bytes());
    let access = AccessToken {
        grant_id: grant.id,
        client_id: client.id,
        subject: None,
        scope: client.scopes.clone(),
        audience: Vec::new(),
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        revoked_at: None,
        cnf: None,
        auth: AuthContext::default(),
        claims: serde_json::Value::Null,
    };
    let issue = TokenIssue {
        grant_id: grant.id,
        new_grant: Some(grant),
        access: Some((TokenHash::from_bytes(h), access)),
        refresh: None,
    };
    let audit = AuditEvent::new(AuditKind::TokensIssued, now, &AuditContext::default())
        .client(client.id)
        .grant(issue.grant_id);
    store.issue_tokens(&issue, audit).await
}

/// Issues with `callers` concurrent tasks for `run_for` (or MAX_ISSUES); issues per second.
async fn cell(
    store: &Arc<PostgresStore>,
    path: Path,
    callers: usize,
    run_for: Duration,
) -> Res<f64> {
    let s = Authstore::new(
        Arc::clone(store) as Arc<dyn Backend>,
        TokenKeyring::new(TokenKey::from_bytes("k1", [7; 32])?),
    );
    let client = s
        .create_client(NewClient::confidential("load").scopes(Scopes::parse("read")?))
        .await?
        .client;
    // Warm-up: connections opened and statements prepared.
    let seq = Arc::new(AtomicU64::new(0));
    for _ in 0..50 {
        issue_one(
            &s,
            store,
            path,
            &client,
            seq.fetch_add(1, Ordering::Relaxed),
        )
        .await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (s, done, stop) = (s.clone(), Arc::clone(&done), Arc::clone(&stop));
            let (store, seq, client) = (Arc::clone(store), Arc::clone(&seq), client.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    issue_one(&s, &store, path, &client, n).await?;
                    if done.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_ISSUES {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if start.elapsed() >= run_for {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Ok::<(), authstore_core::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}
