//! End to end: the real `authstore` binary on a free loopback port, driven by a real OAuth
//! 2.0 client library (the `oauth2` crate over reqwest) and a browser-like cookie jar for
//! the login and consent pages. Runs on SQLite, and on PostgreSQL when
//! `AUTHSTORE_TEST_POSTGRES_URL` is set (./scripts/test sets it; in CI it must be).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    IntrospectionUrl, PkceCodeChallenge, RedirectUrl, RequestTokenError, RevocationUrl, Scope,
    TokenIntrospectionResponse, TokenResponse, TokenUrl,
};

const BIN: &str = env!("CARGO_BIN_EXE_authstore");
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const PASSWORD: &str = "correct horse battery staple 42";

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointSet, EndpointSet, EndpointSet>;

/// Where a deployment keeps its data, and how the binary reaches it.
struct Deployment {
    /// Where the data lands, and the time from which files there are this test's.
    scan: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    url: String,
    env: Vec<(String, String)>,
}

static N: AtomicU64 = AtomicU64::new(0);

impl Deployment {
    fn sqlite() -> Self {
        let data = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", data.path().join("authstore.db").display());
        Self {
            scan: vec![(data.path().to_path_buf(), None)],
            data,
            logs: tempfile::tempdir().unwrap(),
            url,
            env: Vec::new(),
        }
    }

    fn postgres() -> Self {
        let base = match std::env::var("AUTHSTORE_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => panic!(
                "AUTHSTORE_TEST_POSTGRES_URL is not set: run ./scripts/test (it starts a \
                 throwaway PostgreSQL and sets it)"
            ),
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let schema = format!(
            "e2e_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let data = tempfile::tempdir().unwrap();
        let keys = |sealing: bool| {
            let mut cmd = Command::new(BIN);
            cmd.args(["keys", "generate"]);
            if sealing {
                cmd.arg("--sealing");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        // The server's data directory: WAL and table files written during this test (every
        // row written reaches the WAL at commit).
        let ctl = std::env::var("AUTHSTORE_TEST_POSTGRES_CTL").expect(
            "AUTHSTORE_TEST_POSTGRES_CTL (set by ./scripts/test) names the server's pg_ctl wrapper",
        );
        let pgdata = Path::new(&ctl).parent().unwrap().join("data");
        #[allow(clippy::disallowed_methods)] // file times are wall-clock times
        let since = std::time::SystemTime::now() - Duration::from_secs(2);
        Self {
            scan: vec![
                (pgdata.join("pg_wal"), Some(since)),
                (pgdata.join("base"), Some(since)),
            ],
            url: format!("{base}{sep}schema={schema}"),
            env: vec![
                ("AUTHSTORE_TOKEN_KEYS".into(), keys(false)),
                ("AUTHSTORE_SEALING_KEYS".into(), keys(true)),
            ],
            data,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.data.path())
            .env_remove("AUTHSTORE_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("AUTHSTORE_DATABASE_URL", &self.url);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs an admin command; returns stdout.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "authstore {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.run(args, None)).unwrap()
    }

    /// Starts `authstore serve` on a free loopback port.
    fn serve(&self) -> Server {
        let log_path = self
            .logs
            .path()
            .join(format!("serve-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env(
                "AUTHSTORE_LOG",
                "trace,hyper=info,hyper_util=info,h2=info,tokio_postgres=debug,rustls=info",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // stderr (logs) goes to a file outside the data directory; it is scanned too.
        let mut stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "serve did not print its address; logs:\n{}",
                    String::from_utf8_lossy(&log.lock().unwrap())
                );
            }
        };
        Server {
            child,
            base,
            log,
            log_path,
        }
    }
}

struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<u8>>>,
    log_path: PathBuf,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait for a clean exit; the log is written to the log directory.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "serve exited with {status}");
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&self.log_path, &*self.log.lock().unwrap()).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

fn oauth_client(s: &Server, id: &str, secret: Option<&str>) -> Client {
    let c = BasicClient::new(ClientId::new(id.into()))
        .set_auth_uri(AuthUrl::new(s.url("/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(s.url("/token")).unwrap())
        .set_introspection_url(IntrospectionUrl::new(s.url("/introspect")).unwrap())
        .set_revocation_url(RevocationUrl::new(s.url("/revoke")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
    match secret {
        Some(sec) => c.set_client_secret(ClientSecret::new(sec.into())),
        None => c,
    }
}

/// The inputs of the first form on a page, and its action.
fn form(html: &str) -> (String, Vec<(String, String)>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        let end = tag[start..].find('"')? + start;
        Some(
            tag[start..end]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    let f = html.find("<form").expect("a form");
    let ftag = &html[f..f + html[f..].find('>').unwrap()];
    let action = attr(ftag, "action").expect("form action");
    let mut inputs = Vec::new();
    let mut rest = &html[f..];
    while let Some(i) = rest.find("<input") {
        let tag = &rest[i..i + rest[i..].find('>').unwrap()];
        if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
            inputs.push((n, v));
        }
        rest = &rest[i + 6..];
    }
    (action, inputs)
}

struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) {
        self.0.push(s.to_owned());
    }
}

/// Runs the browser part of the code flow; returns (code, returned state).
async fn authorize(
    s: &Server,
    b: &reqwest::Client,
    url: &str,
    login: bool,
    consent: bool,
) -> (String, String) {
    let resp = b.get(url).send().await.unwrap();
    let mut resp = resp;
    if login {
        assert_eq!(resp.status(), 200);
        let html = resp.text().await.unwrap();
        assert!(html.contains("name=\"password\""), "a login page: {html}");
        let (action, mut fields) = form(&html);
        fields.retain(|(k, _)| k != "username" && k != "password");
        fields.push(("username".into(), "alice".into()));
        fields.push(("password".into(), PASSWORD.into()));
        resp = b.post(s.url(&action)).form(&fields).send().await.unwrap();
    }
    if consent {
        assert_eq!(resp.status(), 200);
        let html = resp.text().await.unwrap();
        assert!(html.contains("approve"), "a consent page: {html}");
        let (action, mut fields) = form(&html);
        fields.retain(|(k, _)| k != "decision");
        fields.push(("decision".into(), "approve".into()));
        resp = b.post(s.url(&action)).form(&fields).send().await.unwrap();
    }
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let u = url::Url::parse(&loc).unwrap();
    let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(s.base.as_str()),
        "RFC 9207 iss"
    );
    (q["code"].clone(), q["state"].clone())
}

async fn introspect_active(c: &Client, token: &oauth2::AccessToken) -> bool {
    c.introspect(token)
        .request_async(&http())
        .await
        .unwrap()
        .active()
}

/// The full journey on one deployment.
async fn journey(d: Deployment) {
    let mut secrets = Secrets(vec![PASSWORD.to_owned()]);
    let svc = d.json(&[
        "client",
        "create",
        "--name",
        "e2e service",
        "--grant-type",
        "client_credentials",
        "--scope",
        "read write",
        "--json",
    ]);
    let svc_id = svc["client_id"].as_str().unwrap().to_owned();
    let svc_secret = svc["client_secret"].as_str().unwrap().to_owned();
    secrets.add(&svc_secret);
    let web = d.json(&[
        "client",
        "create",
        "--name",
        "e2e web",
        "--redirect-uri",
        REDIRECT,
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--scope",
        "openid profile read",
        "--json",
    ]);
    let web_id = web["client_id"].as_str().unwrap().to_owned();
    let web_secret = web["client_secret"].as_str().unwrap().to_owned();
    secrets.add(&web_secret);
    d.run(
        &["user", "create", "--username", "alice", "--password-stdin"],
        Some(PASSWORD),
    );

    let server = d.serve();
    let svc_c = oauth_client(&server, &svc_id, Some(&svc_secret));
    let web_c = oauth_client(&server, &web_id, Some(&web_secret));

    // Metadata.
    let meta: serde_json::Value = http()
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], server.base.as_str());
    assert_eq!(meta["token_endpoint"], server.url("/token").as_str());

    // client_credentials.
    let cc = svc_c
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http())
        .await
        .unwrap();
    secrets.add(cc.access_token().secret());
    assert_eq!(cc.scopes().unwrap()[0].as_str(), "read");
    assert!(cc.refresh_token().is_none());
    let intro = svc_c
        .introspect(cc.access_token())
        .request_async(&http())
        .await
        .unwrap();
    assert!(intro.active());
    assert_eq!(intro.client_id().unwrap().as_str(), svc_id);
    // Another client sees nothing of it.
    assert!(!introspect_active(&web_c, cc.access_token()).await);

    // Authorization code + PKCE through the login and consent pages.
    let b = browser();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = web_c
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (code, got_state) = authorize(&server, &b, url.as_str(), true, true).await;
    assert_eq!(&got_state, state.secret());
    secrets.add(&code);
    secrets.add(verifier.secret());
    let tokens = web_c
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap();
    let at1 = tokens.access_token().clone();
    let rt1 = tokens.refresh_token().unwrap().clone();
    secrets.add(at1.secret());
    secrets.add(rt1.secret());
    assert!(introspect_active(&web_c, &at1).await);

    // Code replay: refused, and everything issued from the code is revoked.
    let replay = web_c
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(oauth2::PkceCodeVerifier::new("x".repeat(43)))
        .request_async(&http())
        .await
        .unwrap_err();
    assert_grant_error(replay);
    assert!(
        !introspect_active(&web_c, &at1).await,
        "replay revoked the grant"
    );

    // A second authorization: the login session and the remembered consent skip both pages.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = web_c
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (code2, _) = authorize(&server, &b, url.as_str(), false, false).await;
    secrets.add(&code2);
    let t2 = web_c
        .exchange_code(AuthorizationCode::new(code2))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap();
    let rt2 = t2.refresh_token().unwrap().clone();
    secrets.add(t2.access_token().secret());
    secrets.add(rt2.secret());

    // Refresh rotation, then reuse detection.
    let t3 = web_c
        .exchange_refresh_token(&rt2)
        .request_async(&http())
        .await
        .unwrap();
    let at3 = t3.access_token().clone();
    let rt3 = t3.refresh_token().unwrap().clone();
    secrets.add(at3.secret());
    secrets.add(rt3.secret());
    assert!(introspect_active(&web_c, &at3).await);
    let reuse = web_c
        .exchange_refresh_token(&rt2)
        .request_async(&http())
        .await
        .unwrap_err();
    assert_grant_error(reuse);
    assert!(
        !introspect_active(&web_c, &at3).await,
        "reuse revoked the family"
    );
    assert!(
        web_c
            .exchange_refresh_token(&rt3)
            .request_async(&http())
            .await
            .is_err()
    );

    // Revocation: a fresh client_credentials token, revoked, is inactive at once.
    let keep = svc_c
        .exchange_client_credentials()
        .request_async(&http())
        .await
        .unwrap();
    let gone = svc_c
        .exchange_client_credentials()
        .request_async(&http())
        .await
        .unwrap();
    secrets.add(keep.access_token().secret());
    secrets.add(gone.access_token().secret());
    // The oauth2 crate sends revocation only over https (RFC 7009 §5), and this server is on
    // plain loopback: post the RFC 7009 request directly.
    revoke(&server, &svc_id, &svc_secret, gone.access_token().secret()).await;
    assert!(!introspect_active(&svc_c, gone.access_token()).await);
    assert!(introspect_active(&svc_c, keep.access_token()).await);
    // Unknown tokens revoke fine (RFC 7009).
    revoke(&server, &svc_id, &svc_secret, "at_unknown").await;

    // Restart: every token, revocation, client and user survives.
    server.stop();
    let server = d.serve();
    let svc_c = oauth_client(&server, &svc_id, Some(&svc_secret));
    let web_c = oauth_client(&server, &web_id, Some(&web_secret));
    assert!(introspect_active(&svc_c, keep.access_token()).await, "kept");
    assert!(introspect_active(&svc_c, cc.access_token()).await, "kept");
    assert!(
        !introspect_active(&svc_c, gone.access_token()).await,
        "still revoked"
    );
    assert!(!introspect_active(&web_c, &at3).await, "still revoked");
    let b = browser();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = web_c
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .set_pkce_challenge(challenge)
        .url();
    // A new browser logs in again (consent is remembered).
    let (code3, _) = authorize(&server, &b, url.as_str(), true, false).await;
    secrets.add(&code3);
    let t4 = web_c
        .exchange_code(AuthorizationCode::new(code3))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap();
    secrets.add(t4.access_token().secret());
    secrets.add(t4.refresh_token().unwrap().secret());
    assert!(introspect_active(&web_c, t4.access_token()).await);
    server.stop();

    // Nothing secret in clear: not in the data directory (database, WAL, key files), not in
    // the logs.
    for (dir, since) in &d.scan {
        let n = scan(dir, &secrets, *since);
        assert!(n > 0, "nothing scanned under {}", dir.display());
    }
    assert!(scan(d.logs.path(), &secrets, None) > 0);
    let logs: usize = std::fs::read_dir(d.logs.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len() as usize)
        .sum();
    assert!(
        logs > 10_000,
        "the logs were captured at trace level ({logs} bytes)"
    );
}

/// `POST /revoke` with HTTP Basic; asserts 200.
async fn revoke(s: &Server, id: &str, secret: &str, token: &str) {
    let r = http()
        .post(s.url("/revoke"))
        .basic_auth(id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

fn assert_grant_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) {
    match e {
        RequestTokenError::ServerResponse(r) => {
            assert_eq!(*r.error(), BasicErrorResponseType::InvalidGrant, "{r:?}")
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

/// Every file under `dir` (modified at or after `since`, when given): none contains any
/// secret, nor a 16-byte window of one. Returns how many files were scanned.
fn scan(dir: &Path, secrets: &Secrets, since: Option<std::time::SystemTime>) -> usize {
    const W: usize = 16;
    // Every window of every secret, keyed by its first 8 bytes: one pass over each file.
    let mut windows: std::collections::HashMap<u64, Vec<&[u8]>> = Default::default();
    for s in &secrets.0 {
        let s = s.as_bytes();
        for win in s.windows(W.min(s.len())) {
            let mut k = [0u8; 8];
            k[..win.len().min(8)].copy_from_slice(&win[..win.len().min(8)]);
            windows.entry(u64::from_le_bytes(k)).or_default().push(win);
        }
    }
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            if since.is_some_and(|t| meta.modified().unwrap() < t) {
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            files += 1;
            for i in 0..bytes.len().saturating_sub(8) {
                let k = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
                if let Some(cands) = windows.get(&k) {
                    for win in cands {
                        assert!(
                            !bytes[i..].starts_with(win),
                            "{} holds part of a secret in clear",
                            e.path().display()
                        );
                    }
                }
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_on_sqlite() {
    journey(Deployment::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_on_postgres() {
    journey(Deployment::postgres()).await;
}
