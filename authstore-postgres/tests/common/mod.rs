//! Shared by the PostgreSQL integration tests: the server URL and a fresh schema per test.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use authstore_postgres::{PostgresOptions, PostgresStore};

/// The throwaway server's URL. Never skips: a missing server is a failure, with what to do.
pub(crate) fn url() -> String {
    match std::env::var("AUTHSTORE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => panic!(
            "AUTHSTORE_TEST_POSTGRES_URL is not set, and CI is: the PostgreSQL tests must run \
             in CI. scripts/test starts a throwaway server and sets it."
        ),
        _ => panic!(
            "AUTHSTORE_TEST_POSTGRES_URL is not set: run ./scripts/test (it starts a throwaway \
             PostgreSQL and sets it), or point it at a disposable server, e.g. \
             postgres://authstore@127.0.0.1:5432/postgres"
        ),
    }
}

/// An admin connection (plain, to the test server).
pub(crate) async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, unique, empty schema name (created on the server).
pub(crate) async fn fresh_schema() -> String {
    #[allow(clippy::disallowed_methods)]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t_{}_{}_{n}", std::process::id(), nanos % 1_000_000_000_000);
    admin()
        .await
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .expect("create schema");
    name
}

/// Options for a test store in `schema`.
pub(crate) fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        pool_size: 8,
        schema: Some(schema.to_owned()),
        ..PostgresOptions::default()
    }
}

/// A store in a fresh schema, not migrated.
pub(crate) async fn store() -> (PostgresStore, String) {
    let schema = fresh_schema().await;
    let s = PostgresStore::connect(&url(), options(&schema))
        .await
        .expect("connect");
    (s, schema)
}

/// Drops the schema when dropped, on a detached thread: Drop cannot await, and blocking
/// here would stall a current-thread test runtime whose connections must still run (an open
/// transaction's ROLLBACK is sent by its connection task). Best effort: the server is
/// throwaway.
#[derive(Debug)]
pub(crate) struct DropSchema(pub(crate) String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.0);
        let Ok(url) = std::env::var("AUTHSTORE_TEST_POSTGRES_URL") else {
            return;
        };
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                        ))
                        .await;
                }
            });
        });
    }
}
