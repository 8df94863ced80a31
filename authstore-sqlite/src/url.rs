//! `sqlite:` store URLs.

use std::path::PathBuf;
use std::time::Duration;

use authstore_core::{Error, Result};

use crate::{MAX_READERS, SqliteOptions, Synchronous};

const ACCEPTED: &str = "expected sqlite://relative/path.db, sqlite:///absolute/path.db or \
     sqlite:path.db, optionally followed by ?readers=N&busy_timeout_ms=N&synchronous=full|normal";

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::UnsupportedUrl {
        reason: format!("{what}; {ACCEPTED}"),
    }
}

/// Parses a store URL into a path and options.
pub(crate) fn parse(url: &str) -> Result<(PathBuf, SqliteOptions)> {
    if url.contains('\0') {
        return Err(unsupported("the URL contains NUL"));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        return Err(if scheme.is_empty() {
            unsupported("not a URL (no scheme)")
        } else {
            // Only the scheme: the rest may hold credentials.
            unsupported(format!("scheme `{scheme}` is not sqlite"))
        });
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.contains('#') {
        return Err(unsupported("fragments are not allowed"));
    }
    // `sqlite://rel/x.db` → `rel/x.db`; `sqlite:///abs/x.db` → `/abs/x.db`; `sqlite:x.db`.
    let path = path.strip_prefix("//").unwrap_or(path);
    let path = percent_decode(path)?;
    // After decoding, so `%3Amemory%3A` is caught too; `file:` names are made plain files
    // by `SqliteStore::open`.
    if path.starts_with(":memory:") {
        return Err(unsupported(
            "in-memory databases are not supported (readers and writer are separate connections); \
             use a file in a temporary directory",
        ));
    }
    if path.is_empty() {
        return Err(unsupported("the database path is empty"));
    }
    if path.contains('\0') {
        return Err(unsupported("the database path contains NUL"));
    }
    if path.ends_with('/') {
        return Err(unsupported(
            "the database path names a directory, not a file",
        ));
    }
    let mut opts = SqliteOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&key) {
            return Err(unsupported(format!("parameter `{key}` is given twice")));
        }
        seen.push(key);
        match key {
            "readers" => {
                opts.readers = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_READERS).contains(n))
                    .ok_or_else(|| {
                        unsupported(format!("readers must be a number from 1 to {MAX_READERS}"))
                    })?;
            }
            "busy_timeout_ms" => {
                let ms = value
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| i32::try_from(n).is_ok())
                    .ok_or_else(|| {
                        unsupported("busy_timeout_ms must be a number of milliseconds")
                    })?;
                opts.busy_timeout = Duration::from_millis(u64::from(ms));
            }
            "synchronous" => {
                opts.synchronous = match value.to_ascii_lowercase().as_str() {
                    "full" => Synchronous::Full,
                    "normal" => Synchronous::Normal,
                    _ => return Err(unsupported("synchronous must be full or normal")),
                };
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(unsupported(format!("unknown parameter `{shown}`")));
            }
        }
    }
    Ok((PathBuf::from(path), opts))
}

fn percent_decode(s: &str) -> Result<String> {
    // The value of one ASCII hex digit.
    let hex_digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would also take a sign
                // (`%+1`).
                let hex = match bytes.get(i + 1..i + 3) {
                    Some(&[hi, lo]) => hex_digit(hi).zip(hex_digit(lo)),
                    _ => None,
                }
                .ok_or_else(|| unsupported("bad %-escape in the path"))?;
                out.push(hex.0 << 4 | hex.1);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| unsupported("the path is not UTF-8 after %-decoding"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse("sqlite://rel/x.db").unwrap().0,
            PathBuf::from("rel/x.db")
        );
        assert_eq!(
            parse("sqlite:///abs/x.db").unwrap().0,
            PathBuf::from("/abs/x.db")
        );
        assert_eq!(parse("sqlite:x.db").unwrap().0, PathBuf::from("x.db"));
        assert_eq!(parse("sqlite:a%20b.db").unwrap().0, PathBuf::from("a b.db"));
        assert!(
            parse("sqlite:%3Amemory%3A").is_err(),
            "encoded :memory: is refused too"
        );
        let (_, o) = parse("sqlite:x.db?readers=2&busy_timeout_ms=250&synchronous=normal").unwrap();
        assert_eq!(o.readers, 2);
        assert_eq!(o.busy_timeout, Duration::from_millis(250));
        assert_eq!(o.synchronous, Synchronous::Normal);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "x.db",
            "postgres://u:p@h/db",
            "sqlite:",
            "sqlite://",
            "sqlite:///",
            "sqlite:x\0.db",
            "sqlite:x%00.db",
            "sqlite::memory:",
            "sqlite:x.db?readers=0",
            "sqlite:x.db?readers=abc",
            "sqlite:x.db?synchronous=off",
            "sqlite:x.db?mode=ro",
            "sqlite:x.db?readers=1&readers=2",
            "sqlite:x.db?busy_timeout_ms=-1",
            "sqlite:x%zz.db",
            "sqlite:x.db#frag",
        ] {
            match parse(bad) {
                Err(Error::UnsupportedUrl { reason }) => {
                    assert!(reason.contains("sqlite://relative"), "{bad}: {reason}");
                    assert!(!reason.contains("u:p"), "{bad}: leaks {reason}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
