#![doc = include_str!("../../README.md")]
//!
//! ## Backends by URL
//!
//! | URL | backend |
//! |---|---|
//! | `memory:` | [`authstore_memory::MemoryStore`]: nothing survives a restart |
//! | `sqlite://path/to/file.db`, `sqlite:///abs/path.db`, `sqlite:file.db` (query: `readers`, `busy_timeout_ms`, `synchronous`) | [`authstore_sqlite::SqliteStore`] |
//! | `postgres://user:password@host:5432/db`, `postgresql://…` (query: `pool_size`, `connect_timeout`, `statement_timeout`, `schema`, `sslmode`; see docs/POSTGRES.md) | [`authstore_postgres::PostgresStore`] |

pub mod keys;

use std::sync::Arc;

pub use authstore_core as core;
pub use authstore_memory as memory;
pub use authstore_postgres as postgres;
pub use authstore_sqlite as sqlite;

use authstore_core::{Backend, Error, Result};

/// Opens the backend a URL names, as `Arc<dyn Backend>`. It does not migrate: call
/// `migrate()` (the server does at start). Unknown schemes give
/// [`Error::UnsupportedUrl`] listing what is accepted.
pub async fn open(url: &str) -> Result<Arc<dyn Backend>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("memory") if url == "memory:" || url == "memory://" => {
            Ok(Arc::new(authstore_memory::MemoryStore::new()))
        }
        Some("sqlite") => Ok(Arc::new(authstore_sqlite::SqliteStore::open_url(url)?)),
        Some("postgres" | "postgresql") => Ok(Arc::new(
            authstore_postgres::PostgresStore::connect_url(url).await?,
        )),
        _ => Err(Error::UnsupportedUrl {
            reason: format!(
                "{:?} names no backend; use memory:, sqlite://PATH (e.g. sqlite://./authstore.db) \
                 or postgres://USER@HOST/DB",
                redact_url(url)
            ),
        }),
    }
}

/// A store URL with its credentials removed (`postgres://u:pw@host/db` becomes
/// `postgres://[redacted]@host/db`), for messages and logs; at most 200 characters of a URL
/// without credentials.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://[redacted]@{}", &url[..s], &url[at + 1..]),
        _ => url.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn selects_by_scheme() {
        assert_eq!(open("memory:").await.unwrap().backend_name(), "memory");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("x.db").display());
        let b = open(&url).await.unwrap();
        assert_eq!(b.backend_name(), "sqlite");
        b.migrate().await.unwrap();
        for bad in ["", "mysql://u:hunter2@x/db", "memory:x", "nonsense"] {
            let e = open(bad).await.unwrap_err();
            assert!(matches!(e, Error::UnsupportedUrl { .. }), "{bad}: {e:?}");
            assert!(!e.to_string().contains("hunter2"), "no password in errors");
        }
        // A PostgreSQL URL selects PostgreSQL: nothing listens on 127.0.0.1:1, so the
        // connection fails fast, and no error shows the password.
        let e = open("postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2")
            .await
            .unwrap_err();
        assert!(e.is_temporary(), "{e:?}");
        assert!(
            !format!("{e} {e:?}").contains("hunter2"),
            "no password in errors"
        );
    }
}
