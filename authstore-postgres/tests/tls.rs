//! TLS against a real server: scripts/lib/postgres.sh starts the test server with `ssl = on`
//! and a certificate for 127.0.0.1 and localhost signed by a throwaway CA, whose PEM it
//! exports as `AUTHSTORE_TEST_POSTGRES_CA`.
//!
//! Whether a session is encrypted is asked of the server (`pg_stat_ssl`), for the store's
//! own pooled connections (made by its own TLS connector): each store gets a unique
//! `application_name`, and a separate admin connection looks its backends up by it. The
//! pool keeps its connections open between calls, so they are there to be found; the
//! store's API needs no raw access for this.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use authstore_core::Error;
use authstore_core::backend::{ClientStore, Maintenance};
use authstore_postgres::{PostgresOptions, PostgresStore, SslMode};

/// The test CA's PEM file. Never skips: a server without it is a failure, with what to do.
fn ca() -> String {
    match std::env::var("AUTHSTORE_TEST_POSTGRES_CA") {
        Ok(p) if !p.is_empty() => {
            assert!(
                Path::new(&p).is_file(),
                "AUTHSTORE_TEST_POSTGRES_CA={p:?} is not a file: run ./scripts/test (it starts \
                 a throwaway PostgreSQL with TLS and sets it)"
            );
            p
        }
        _ => panic!(
            "AUTHSTORE_TEST_POSTGRES_CA is not set: run ./scripts/test (it starts a throwaway \
             PostgreSQL with TLS on and sets it to the PEM of the CA that signed the server's \
             certificate), or point it and AUTHSTORE_TEST_POSTGRES_URL at a disposable server \
             with TLS on"
        ),
    }
}

/// The test server's URL with `params` appended.
fn url_with(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `s` %-escaped for a URL query value.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A unique `application_name`, to find a store's connections on the server.
fn app_name(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "authstore_tls_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// For every server backend with `application_name = app`: whether it is encrypted, and
/// the TLS version.
async fn sessions(app: &str) -> Vec<(bool, Option<String>)> {
    common::admin()
        .await
        .query(
            "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Connects a store to `url` (which must carry `sslmode` and may carry `sslrootcert`) in a
/// fresh schema, migrates it and reads through it (so real statements run over its
/// connections), and returns what the server says about the store's sessions.
async fn connect_and_ask(url: &str, test: &str) -> (Vec<(bool, Option<String>)>, PostgresStore) {
    let schema = common::fresh_schema().await;
    let app = app_name(test);
    let store = PostgresStore::connect(
        &url_with(url, &format!("application_name={app}")),
        common::options(&schema),
    )
    .await
    .unwrap_or_else(|e| panic!("{test}: connect: {}", chain(&e)));
    store.migrate().await.unwrap();
    // A call through the pool: the connection it used goes back to the pool and stays open.
    assert!(store.list_clients(None, 1).await.unwrap().is_empty());
    let found = sessions(&app).await;
    drop(common::DropSchema(schema));
    assert!(
        !found.is_empty(),
        "{test}: no server session with application_name {app}"
    );
    (found, store)
}

/// An error with all its sources, as an operator would read it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn assert_encrypted(found: &[(bool, Option<String>)], what: &str) {
    for (ssl, version) in found {
        assert!(*ssl, "{what}: the server reports an unencrypted session");
        let v = version.as_deref().unwrap_or("");
        assert!(v.starts_with("TLSv1."), "{what}: TLS version {v:?}");
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "authstore-tls-{name}-{}-{}",
            std::process::id(),
            app_name("dir")
        ));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A freshly generated self-signed CA in `dir`, with the same subject as the test CA (so
/// only its key differs: the chain check must verify the signature, not just match names).
fn wrong_ca(dir: &Path) -> String {
    let cnf = dir.join("x509.cnf");
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n[ca_ext]\n\
         basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .unwrap();
    let pem = dir.join("wrong-ca.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-new", "-config"])
        .arg(&cnf)
        .args([
            "-extensions",
            "ca_ext",
            "-days",
            "1",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.join("wrong-ca.key"))
        .args(["-subj", "/CN=authstore throwaway test CA", "-out"])
        .arg(&pem)
        .output()
        .expect("run openssl (scripts/lib/postgres.sh installs it)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pem.to_str().unwrap().to_owned()
}

/// Connecting to `url` fails, permanently, with an error whose chain mentions
/// `expected` (case-insensitive) and never the URL's parameters.
async fn assert_refused(url: &str, expected: &str, what: &str) {
    let e = match PostgresStore::connect_url(url).await {
        Ok(_) => panic!("{what}: connected"),
        Err(e) => e,
    };
    let text = chain(&e);
    assert!(
        text.to_lowercase().contains(&expected.to_lowercase()),
        "{what}: {text}"
    );
    assert!(
        matches!(
            e,
            Error::Backend {
                temporary: false,
                ..
            }
        ),
        "{what}: not a permanent backend error: {e:?} ({text})"
    );
}

#[tokio::test]
async fn verify_full_with_the_test_ca_is_encrypted() {
    let url = url_with(
        &common::url(),
        &format!("sslmode=verify-full&sslrootcert={}", escape(&ca())),
    );
    assert!(
        url.contains("@127.0.0.1:"),
        "expected host 127.0.0.1: {url}"
    );
    let (found, store) = connect_and_ask(&url, "verify_full_ip").await;
    assert_encrypted(&found, "verify-full, 127.0.0.1");
    assert_eq!(store.options().ssl_mode, SslMode::VerifyFull);
}

#[tokio::test]
async fn verify_full_by_host_name_is_encrypted() {
    // The certificate also names DNS:localhost. Only 127.0.0.1 listens: if localhost
    // resolves to ::1 first, the driver moves on to the next address.
    let url = common::url().replacen("@127.0.0.1:", "@localhost:", 1);
    assert!(
        url.contains("@localhost:"),
        "expected host 127.0.0.1: {url}"
    );
    let url = url_with(
        &url,
        &format!("sslmode=verify-full&sslrootcert={}", escape(&ca())),
    );
    let (found, _store) = connect_and_ask(&url, "verify_full_dns").await;
    assert_encrypted(&found, "verify-full, localhost");
}

#[tokio::test]
async fn require_is_encrypted_without_a_ca() {
    let url = url_with(&common::url(), "sslmode=require");
    let (found, _store) = connect_and_ask(&url, "require").await;
    assert_encrypted(&found, "require");
}

#[tokio::test]
async fn prefer_the_default_is_encrypted_when_the_server_offers_tls() {
    // No sslmode in the URL: the default, `prefer`.
    assert_eq!(PostgresOptions::default().ssl_mode, SslMode::Prefer);
    let (found, _store) = connect_and_ask(&common::url(), "prefer").await;
    assert_encrypted(&found, "prefer");
}

#[tokio::test]
async fn disable_is_plain() {
    let url = url_with(&common::url(), "sslmode=disable");
    let (found, _store) = connect_and_ask(&url, "disable").await;
    for (ssl, version) in &found {
        assert!(!*ssl, "disable: encrypted ({version:?})");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let dir = TempDir::new("wrong-ca");
    let wrong = wrong_ca(&dir.0);
    let base = url_with(
        &common::url(),
        &format!("sslmode=verify-full&sslrootcert={}", escape(&wrong)),
    );
    assert_refused(&base, "certificate", "verify-full, wrong CA").await;
    // Without sslrootcert, the Mozilla roots: they do not know the test CA either.
    assert_refused(
        &url_with(&common::url(), "sslmode=verify-full"),
        "certificate",
        "verify-full, Mozilla roots",
    )
    .await;
}

#[tokio::test]
async fn verify_full_checks_the_host_name() {
    // The right CA, but TLS is checked against a name the certificate does not hold: the
    // TCP connection still goes to 127.0.0.1 (`hostaddr`), only the name differs.
    let url = common::url().replacen("@127.0.0.1:", "@not-in-the-certificate.invalid:", 1);
    assert!(url.contains(".invalid:"), "expected host 127.0.0.1: {url}");
    let url = url_with(
        &url,
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            escape(&ca())
        ),
    );
    assert_refused(&url, "certificate", "verify-full, wrong host name").await;
    // `require` does not check names (like libpq): the same URL connects, encrypted.
    let url = url.replacen("sslmode=verify-full", "sslmode=require", 1);
    let (found, _store) = connect_and_ask(&url, "require_any_name").await;
    assert_encrypted(&found, "require, wrong host name");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_configuration_error() {
    // Before any connection.
    match PostgresStore::connect_url(&url_with(
        &common::url(),
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    {
        Err(Error::Config { reason }) => assert!(reason.contains("sslrootcert"), "{reason}"),
        other => panic!("expected Config, got {other:?}"),
    }
    // A file that holds no certificate.
    let dir = TempDir::new("not-a-ca");
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    match PostgresStore::connect_url(&url_with(
        &common::url(),
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            escape(junk.to_str().unwrap())
        ),
    ))
    .await
    {
        Err(Error::Config { reason }) => assert!(reason.contains("sslrootcert"), "{reason}"),
        other => panic!("expected Config, got {other:?}"),
    }
}

/// A stand-in server on 127.0.0.1 that declines TLS: it answers every SSLRequest with `N`
/// and then waits for the client to hang up. The real test server offers TLS, so this is
/// how `require` meets a server without it.
fn server_without_tls() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                // SSLRequest: length 8, code 80877103.
                let mut req = [0u8; 8];
                if conn.read_exact(&mut req).is_ok() && req == [0, 0, 0, 8, 4, 210, 22, 47] {
                    let _ = conn.write_all(b"N");
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest);
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn require_and_verify_full_refuse_a_server_without_tls() {
    let port = server_without_tls();
    // A permanent error (retrying will not help), not a silent downgrade.
    for mode in ["require", "verify-full"] {
        assert_refused(
            &format!(
                "postgres://authstore@127.0.0.1:{port}/postgres?sslmode={mode}&connect_timeout=5"
            ),
            "tls",
            mode,
        )
        .await;
    }
}
