//! `postgres://` store URLs: our parameters are taken out, the rest goes to tokio-postgres.

use std::str::FromStr;
use std::time::Duration;

use authstore_core::{Error, Result};

use crate::{MAX_POOL_SIZE, PostgresOptions, SslMode};

const ACCEPTED: &str = "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or postgresql://), \
     optionally with ?pool_size=N&connect_timeout=SECONDS&acquire_timeout=SECONDS\
     &statement_timeout=MS&schema=NAME&sslmode=disable|prefer|require|verify-full\
     &sslrootcert=PATH&batch_issuance=true|false and any other libpq parameter tokio-postgres understands \
     (application_name, options, …)";

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::UnsupportedUrl {
        reason: format!("{what}; {ACCEPTED}"),
    }
}

/// Parses a duration: a number with an optional unit (`ms`, `s`, `min`); a bare number is
/// in `unit`.
fn duration(key: &str, value: &str, unit: Duration) -> Result<Duration> {
    let (num, mul) = if let Some(n) = value.strip_suffix("ms") {
        (n, Duration::from_millis(1))
    } else if let Some(n) = value.strip_suffix("min") {
        (n, Duration::from_secs(60))
    } else if let Some(n) = value.strip_suffix('s') {
        (n, Duration::from_secs(1))
    } else {
        (value, unit)
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| mul.checked_mul(n))
        .ok_or_else(|| {
            unsupported(format!(
                "{key} must be a whole number, optionally followed by ms, s or min"
            ))
        })
}

/// Splits `url` into the tokio-postgres configuration and our options (starting from
/// `base`; parameters in the URL override it).
pub(crate) fn parse(
    url: &str,
    base: PostgresOptions,
) -> Result<(tokio_postgres::Config, PostgresOptions)> {
    if url.contains('\0') {
        return Err(unsupported("the URL contains NUL"));
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        // Only the scheme: the rest may hold credentials.
        let shown = url.split_once(':').map_or("", |(s, _)| s);
        return Err(if shown.is_empty() {
            unsupported("not a URL (no scheme)")
        } else {
            unsupported(format!(
                "scheme `{}` is not postgres",
                shown.chars().take(20).collect::<String>()
            ))
        });
    }
    if url.contains('#') {
        return Err(unsupported("fragments are not allowed"));
    }
    let (base_url, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut opts = base;
    let mut passthrough: Vec<&str> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A key that is not a plain name means the URL was split in the wrong place: most
        // likely an unescaped `?` in the password. Refuse (without echoing it: it may hold
        // part of the password) rather than let our own parameters, such as `sslmode`, be
        // silently ignored.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(unsupported(
                "malformed query parameter name: percent-encode `?`, `@`, `/`, `#` and `&` in \
                 the user name and password",
            ));
        }
        if seen.contains(&key) {
            let shown: String = key.chars().take(40).collect();
            return Err(unsupported(format!("parameter `{shown}` is given twice")));
        }
        seen.push(key);
        match key {
            "pool_size" => {
                opts.pool_size = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
                    .ok_or_else(|| {
                        unsupported(format!(
                            "pool_size must be a number from 1 to {MAX_POOL_SIZE}"
                        ))
                    })?;
            }
            "connect_timeout" => {
                opts.connect_timeout = duration(key, value, Duration::from_secs(1))?;
            }
            "acquire_timeout" => {
                opts.acquire_timeout = duration(key, value, Duration::from_secs(1))?;
            }
            "statement_timeout" => {
                let d = duration(key, value, Duration::from_millis(1))?;
                opts.statement_timeout = (!d.is_zero()).then_some(d);
            }
            "schema" => {
                opts.schema = Some(value.to_owned());
            }
            "sslmode" => {
                opts.ssl_mode = SslMode::from_str(value).map_err(|_| {
                    unsupported(
                        "sslmode must be disable, prefer, require or verify-full \
                         (verify-ca is not supported: use verify-full)",
                    )
                })?;
            }
            "sslrootcert" => {
                opts.ssl_root_cert = Some(percent_decode(value)?);
            }
            "batch_issuance" => {
                opts.batch_issuance = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(unsupported("batch_issuance must be true or false")),
                };
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(unsupported(format!(
                    "`{key}` (client certificates) is not supported"
                )));
            }
            _ => passthrough.push(pair),
        }
    }
    let rest = if passthrough.is_empty() {
        base_url.to_owned()
    } else {
        format!("{base_url}?{}", passthrough.join("&"))
    };
    let config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        // The driver's messages name options, never values.
        let detail = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        unsupported(format!("{e}{detail}"))
    })?;
    Ok((config, opts))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| unsupported("bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| unsupported("not UTF-8 after %-decoding"))?;
    if s.contains('\0') {
        return Err(unsupported("the URL contains NUL"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_out() {
        let (c, o) = parse(
            "postgres://u:secret@db.example:6543/auth?pool_size=4&connect_timeout=3\
             &statement_timeout=250&schema=tenant_a&sslmode=require&application_name=x\
             &acquire_timeout=2s&batch_issuance=false",
            PostgresOptions::default(),
        )
        .unwrap();
        assert_eq!(o.pool_size, 4);
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.acquire_timeout, Duration::from_secs(2));
        assert_eq!(o.statement_timeout, Some(Duration::from_millis(250)));
        assert_eq!(o.schema.as_deref(), Some("tenant_a"));
        assert_eq!(o.ssl_mode, SslMode::Require);
        assert!(!o.batch_issuance);
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(c.get_dbname(), Some("auth"));
        assert_eq!(c.get_ports(), &[6543]);
        let (_, o) = parse(
            "postgresql://h/db?statement_timeout=0&connect_timeout=500ms",
            PostgresOptions::default(),
        )
        .unwrap();
        assert_eq!(o.statement_timeout, None);
        assert_eq!(o.connect_timeout, Duration::from_millis(500));
        assert!(o.batch_issuance, "on by default");
    }

    #[test]
    fn rejects_without_repeating_secrets() {
        for bad in [
            "",
            "host=localhost",
            "mysql://u:secret@h/db",
            "sqlite:x.db",
            "postgres://u:secret@h/db?pool_size=0",
            "postgres://u:secret@h/db?pool_size=x",
            "postgres://u:secret@h/db?pool_size=1&pool_size=2",
            "postgres://u:secret@h/db?connect_timeout=-1",
            "postgres://u:secret@h/db?sslmode=verify-ca",
            "postgres://u:secret@h/db?sslmode=bogus",
            "postgres://u:secret@h/db?sslcert=/x",
            "postgres://u:secret@h/db?batch_issuance=yes",
            "postgres://u:secret@h/db?bogus=1",
            "postgres://u:secret@h:notaport/db",
            "postgres://u:secret@h/db#frag",
            "postgres://u:secret@h/d\0b",
            // An unescaped `?` in the password must not let `sslmode` slip past us.
            "postgres://u:sec?ret@h/db?sslmode=require",
        ] {
            match parse(bad, PostgresOptions::default()) {
                Err(Error::UnsupportedUrl { reason }) => {
                    assert!(reason.contains("postgres://USER"), "{bad}: {reason}");
                    assert!(!reason.contains("secret"), "{bad}: leaks {reason}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
