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
        _ => {
            let shown = redact_url(url);
            let what = if shown == REDACTED {
                "the database URL (not shown: it does not start with a valid scheme such as \
                 sqlite: or postgres:)"
                    .to_owned()
            } else {
                format!("the database URL {shown:?}")
            };
            Err(Error::UnsupportedUrl {
                reason: format!(
                    "{what} names no backend; use memory:, sqlite://PATH (e.g. \
                     sqlite://./authstore.db) or postgres://USER@HOST/DB"
                ),
            })
        }
    }
}

/// What [`redact_url`] shows in place of credentials.
const REDACTED: &str = "[redacted]";

/// The longest text [`redact_url`] returns (a longer one is cut and ends with `…`).
const SHOWN_MAX: usize = 200;

/// A store URL with its credentials removed, for messages and logs:
///
/// - `scheme://…`: the userinfo (everything up to the last `@`: a password may hold `@`,
///   `/`, `?` or `#` unescaped) becomes `[redacted]`, and the value of a `password` or
///   `sslpassword` query parameter becomes `[redacted]`
///   (`postgres://u:pw@host/db?sslpassword=x` shows as
///   `postgres://[redacted]@host/db?sslpassword=[redacted]`); a fragment is not shown;
/// - `sqlite:` URLs name a file and hold no credentials: shown whole;
/// - any other URL without `://` shows only its scheme (`memory:`, `postgres:[redacted]`),
///   and text that does not start with a scheme shows as `[redacted]`.
///
/// At most 200 characters are shown (cut after redaction, so a long password cannot push
/// its `@` out of view).
pub fn redact_url(url: &str) -> String {
    let shown = redact_whole(url);
    if shown.chars().count() > SHOWN_MAX {
        let mut cut: String = shown.chars().take(SHOWN_MAX).collect();
        cut.push('…');
        cut
    } else {
        shown
    }
}

/// Whether `s` is a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn redact_whole(url: &str) -> String {
    if let Some((scheme, _)) = url.split_once(':') {
        if scheme.eq_ignore_ascii_case("sqlite") {
            return url.to_owned();
        }
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !is_scheme(scheme) {
            return REDACTED.to_owned();
        }
        let mut out = format!("{scheme}://");
        let rest = match rest.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push('@');
                &rest[at + 1..]
            }
            None => rest,
        };
        out.push_str(&redact_query(rest));
        return out;
    }
    match url.split_once(':') {
        Some((scheme, "")) if is_scheme(scheme) => format!("{scheme}:"),
        Some((scheme, _)) if is_scheme(scheme) => format!("{scheme}:{REDACTED}"),
        _ => REDACTED.to_owned(),
    }
}

/// `host/path?query#fragment` with the values of secret parameters and the fragment
/// replaced.
fn redact_query(s: &str) -> String {
    let (before, query, fragment) = match s.split_once('?') {
        Some((b, q)) => match q.split_once('#') {
            Some((q, _)) => (b, Some(q), true),
            None => (b, Some(q), false),
        },
        None => match s.split_once('#') {
            Some((b, _)) => (b, None, true),
            None => (s, None, false),
        },
    };
    let mut out = before.to_owned();
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret_parameter(k) => format!("{k}={REDACTED}"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    if fragment {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// Whether a query parameter holds a password (`password`, `sslpassword`; any case,
/// percent-encoded or not).
fn is_secret_parameter(key: &str) -> bool {
    let key = percent_decode(key).trim().to_ascii_lowercase();
    key == "password" || key == "sslpassword"
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
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
        for bad in [
            "",
            "mysql://u:hunter2@x/db",
            "memory:x",
            "nonsense",
            "postgres//u:hunter2@db/x",
            "hunter2",
        ] {
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
        // Other shapes the PostgreSQL backend refuses or cannot reach: no password either.
        for url in [
            "postgres:u:hunter2@127.0.0.1:1/db",
            "postgres://u@127.0.0.1:1/db?password=hunter2&connect_timeout=2",
        ] {
            let e = open(url).await.unwrap_err();
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{url}: {e:?}");
        }
    }

    #[test]
    fn redaction_hides_every_shape_of_credentials() {
        for (url, shown) in [
            ("memory:", "memory:"),
            ("memory://", "memory://"),
            ("sqlite://./authstore.db", "sqlite://./authstore.db"),
            ("sqlite:x.db?readers=2", "sqlite:x.db?readers=2"),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:hunter2@h/db", "postgres://[redacted]@h/db"),
            ("postgres://u@h/db", "postgres://[redacted]@h/db"),
            // A password with unescaped `@`, `/`, `?` and `#`.
            (
                "postgres://u:hun/t?er#2@x@h:5432/db",
                "postgres://[redacted]@h:5432/db",
            ),
            (
                "postgres://u@h/db?password=hunter2",
                "postgres://[redacted]@h/db?password=[redacted]",
            ),
            (
                "postgresql://h/db?sslmode=require&PassWord=hunter2&pool_size=4",
                "postgresql://h/db?sslmode=require&PassWord=[redacted]&pool_size=4",
            ),
            (
                "postgres://h/db?sslpassword=hunter2",
                "postgres://h/db?sslpassword=[redacted]",
            ),
            (
                "postgres://h/db?pass%77ord=hunter2",
                "postgres://h/db?pass%77ord=[redacted]",
            ),
            (
                "postgres://h/db?password=hun#ter2",
                "postgres://h/db?password=[redacted]#[redacted]",
            ),
            ("postgres://h/db#hunter2", "postgres://h/db#[redacted]"),
            // No `://`: only the scheme.
            ("postgres//u:hunter2@db/x", "[redacted]"),
            ("postgres:u:hunter2@db/x", "postgres:[redacted]"),
            ("mysql:hunter2", "mysql:[redacted]"),
            ("hunter2", "[redacted]"),
            ("", "[redacted]"),
            ("a b://u:hunter2@h", "[redacted]"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // Cut after redaction: a long password cannot push its `@` out of view.
        let long = format!("postgres://u:{}@h/db", "p".repeat(500));
        assert_eq!(redact_url(&long), "postgres://[redacted]@h/db");
        let long = format!("postgres://h/{}", "d".repeat(500));
        let shown = redact_url(&long);
        assert_eq!(shown.chars().count(), 201);
        assert!(shown.ends_with('…'));
    }
}
