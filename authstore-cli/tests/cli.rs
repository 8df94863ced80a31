//! The `authstore` command, run as a real process in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use authstore::core::{
    Authstore, ClientId, Clock, Error, ManualClock, Password, SealingKey, SealingKeyring,
    SystemClock, TokenKey, TokenKeyring, TokenOptions,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_authstore");

/// Variables that would change what the binary does: removed so the host cannot leak in.
const ENV: [&str; 13] = [
    "AUTHSTORE_DATABASE_URL",
    "DATABASE_URL",
    "AUTHSTORE_CONFIG",
    "AUTHSTORE_TOKEN_KEY_FILE",
    "AUTHSTORE_SEALING_KEY_FILE",
    "AUTHSTORE_TOKEN_KEYS",
    "AUTHSTORE_SEALING_KEYS",
    "AUTHSTORE_LISTEN",
    "AUTHSTORE_ISSUER",
    "AUTHSTORE_LOG",
    "AUTHSTORE_LOG_FORMAT",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// A working directory for the command (the default database lives there).
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.file("authstore.db")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.path()).args(args);
        for v in ENV {
            c.env_remove(v);
        }
        // A panic would show a backtrace: the checks below look for one.
        c.env("RUST_BACKTRACE", "1").env("AUTHSTORE_LOG", "warn");
        c
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None, &[])
    }

    /// Runs, expects success, returns stdout.
    fn ok_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, stdin, env);
        assert!(
            out.status.success(),
            "authstore {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None, &[])
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Runs, expects exit status 1 with one `error: ` line and no panic; returns stderr.
    fn fails_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, stdin, env);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "authstore {args:?}: {err}");
        assert_failure_text(&err, args);
        err
    }

    fn fails(&self, args: &[&str]) -> String {
        self.fails_with(args, None, &[])
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    /// The store through the library, with the key files the command made.
    async fn library(&self, clock: Option<ManualClock>) -> Authstore {
        let backend = authstore::open(&self.url()).await.unwrap();
        let mut s = Authstore::new(backend, token_ring(&self.file("authstore.db.token-keys")))
            .with_sealing_keys(sealing_ring(&self.file("authstore.db.sealing-keys")));
        if let Some(c) = clock {
            s = s.with_clock(Arc::new(c));
        }
        s
    }
}

fn assert_failure_text(err: &str, args: &[&str]) {
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: ") && l.len() > 20),
        "{args:?}: no helpful error line: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{args:?}: panic: {err}"
    );
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Key lines of a key file, parsed here independently of the binary.
fn key_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, hex) = l.split_once(' ').unwrap();
            assert_eq!(hex.len(), 64, "{l}");
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{l}");
            (id.to_owned(), hex.to_owned())
        })
        .collect()
}

fn token_ring(path: &Path) -> TokenKeyring {
    let mut keys = key_lines(path)
        .into_iter()
        .map(|(id, hex)| TokenKey::from_hex(&id, &hex).unwrap());
    let active = keys.next().unwrap();
    TokenKeyring::with_older(active, keys.collect()).unwrap()
}

fn sealing_ring(path: &Path) -> SealingKeyring {
    let mut keys = key_lines(path)
        .into_iter()
        .map(|(id, hex)| SealingKey::from_hex(&id, &hex).unwrap());
    let active = keys.next().unwrap();
    SealingKeyring::with_older(active, keys.collect()).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every file of the directory with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    snapshot(dir).into_iter().map(|(n, _)| n).collect()
}

/// `stats --json` without the database size (not a count of anything).
fn stats(d: &Dir) -> Value {
    let mut s = d.json(&["stats", "--json"]);
    s.as_object_mut().unwrap().remove("database_bytes");
    s
}

fn create_service(d: &Dir) -> Value {
    d.json(&[
        "client",
        "create",
        "--name",
        "svc",
        "--scope",
        "read write",
        "--json",
    ])
}

// ----- first run and keys ------------------------------------------------------------

#[test]
fn first_run_creates_the_database_and_private_key_files() {
    let d = Dir::new();
    d.ok(&["migrate"]);
    let tk = d.file("authstore.db.token-keys");
    let sk = d.file("authstore.db.sealing-keys");
    assert!(d.db().is_file());
    assert_eq!(mode(&tk), 0o600);
    assert_eq!(mode(&sk), 0o600);
    assert_eq!(mode(&d.db()), 0o600, "the database holds password hashes");
    let (t, s) = (key_lines(&tk), key_lines(&sk));
    assert_eq!((t.len(), s.len()), (1, 1));
    assert_ne!(t[0].1, s[0].1, "two different keys");
    // The next run uses them and changes neither.
    let before = (std::fs::read(&tk).unwrap(), std::fs::read(&sk).unwrap());
    let c = create_service(&d);
    assert_eq!(
        (std::fs::read(&tk).unwrap(), std::fs::read(&sk).unwrap()),
        before
    );
    // The client secret was hashed with the key in the file.
    let id: ClientId = c["client_id"].as_str().unwrap().parse().unwrap();
    let secret = c["client_secret"].as_str().unwrap().to_owned();
    block_on(async {
        let store = d.library(None).await;
        store.verify_client_secret(id, &secret).await.unwrap();
    });
}

#[test]
fn a_missing_key_file_beside_an_existing_database_is_refused() {
    let d = Dir::new();
    create_service(&d);
    for (file, words) in [
        ("authstore.db.token-keys", "tokens and client secrets"),
        ("authstore.db.sealing-keys", "sealed secrets"),
    ] {
        let p = d.file(file);
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let before = snapshot(d.path());
        for args in [
            &["client", "list"][..],
            &["serve", "--listen", "127.0.0.1:0"][..],
        ] {
            let err = d.fails(args);
            assert!(
                err.contains(file) && err.contains(words) && err.contains("cannot be"),
                "{err}"
            );
            assert_eq!(snapshot(d.path()), before, "nothing changed, no key made");
        }
        std::fs::write(&p, saved).unwrap();
        set_mode(&p, 0o600);
        d.ok(&["client", "list"]);
    }
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let d = Dir::new();
    d.ok(&["migrate"]);
    for (file, m) in [
        ("authstore.db.token-keys", 0o640),
        ("authstore.db.sealing-keys", 0o604),
    ] {
        let p = d.file(file);
        set_mode(&p, m);
        let err = d.fails(&["client", "list"]);
        assert!(
            err.contains(&format!("chmod 600 ./{file}")) && err.contains("group or others"),
            "{err}"
        );
        set_mode(&p, 0o600);
    }
    d.ok(&["client", "list"]);
}

#[test]
fn keys_generate_makes_working_key_files_and_inline_keys() {
    let d = Dir::new();
    let line = d.ok(&["keys", "generate"]);
    let line2 = d.ok(&["keys", "generate", "--id", "k-old"]);
    let sealing = d.ok(&["keys", "generate", "--sealing", "--id", "s-1"]);
    assert!(line.starts_with('k') && line.ends_with('\n') && line.lines().count() == 1);
    assert!(sealing.starts_with("s-1 "));
    let tk = d.file("token.keys");
    let sk = d.file("sealing.keys");
    // The active key first, an older one after it.
    std::fs::write(&tk, format!("# keys\n{line}\n{line2}")).unwrap();
    std::fs::write(&sk, &sealing).unwrap();
    set_mode(&tk, 0o600);
    set_mode(&sk, 0o600);
    let ring = token_ring(&tk);
    assert!(ring.has_older());
    let files = [
        "--database-url",
        "sqlite://other.db",
        "--token-key-file",
        "token.keys",
        "--sealing-key-file",
        "sealing.keys",
    ];
    let c = d.json(&[&files[..], &["client", "create", "--name", "x", "--json"]].concat());
    assert!(
        !d.file("other.db.token-keys").exists(),
        "named keys were used"
    );
    assert!(!d.file("other.db.sealing-keys").exists());
    let id: ClientId = c["client_id"].as_str().unwrap().parse().unwrap();
    block_on(async {
        let b = authstore::open(&format!("sqlite://{}", d.file("other.db").display()))
            .await
            .unwrap();
        let store = Authstore::new(b, ring);
        store
            .verify_client_secret(id, c["client_secret"].as_str().unwrap())
            .await
            .unwrap();
    });
    // The same keys inline in the environment reach the same data.
    let inline = [
        (
            "AUTHSTORE_TOKEN_KEYS",
            std::fs::read_to_string(&tk).unwrap(),
        ),
        ("AUTHSTORE_SEALING_KEYS", sealing.clone()),
    ];
    let env: Vec<(&str, &str)> = inline.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let list = d.ok_with(
        &[
            "--database-url",
            "sqlite://other.db",
            "client",
            "show",
            &id.to_string(),
        ],
        None,
        &env,
    );
    assert!(list.contains(&id.to_string()));
    // Wrong keys on existing data are refused before anything is hashed with them: another
    // key under a known id (AS0022), or keys the database never saw (AS0023).
    let forged = d.ok(&["keys", "generate", "--id", line.split(' ').next().unwrap()]);
    let stranger = d.ok(&["keys", "generate", "--id", "k-stranger"]);
    for (text, code) in [(&forged, "AS0022"), (&stranger, "AS0023")] {
        let wrong = d.file("wrong.keys");
        std::fs::write(&wrong, text).unwrap();
        set_mode(&wrong, 0o600);
        for cmd in [
            &["client", "list"][..],
            &["client", "create", "--name", "y"][..],
        ] {
            let err = d.fails(
                &[
                    &[
                        "--database-url",
                        "sqlite://other.db",
                        "--token-key-file",
                        "wrong.keys",
                        "--sealing-key-file",
                        "sealing.keys",
                    ][..],
                    cmd,
                ]
                .concat(),
            );
            assert!(
                err.contains(code) && err.contains("key file"),
                "{cmd:?}: {err}"
            );
        }
    }
    // The refused `client create` created nothing: the first client is still alone.
    let listed = d.ok_with(
        &[
            "--database-url",
            "sqlite://other.db",
            "client",
            "list",
            "--json",
        ],
        None,
        &env,
    );
    assert_eq!(listed.matches("\"client_name\"").count(), 1, "{listed}");
    // A named key file that does not exist says how to make one (private from the start).
    let err = d.fails(&[
        "--database-url",
        "sqlite://other.db",
        "--token-key-file",
        "nope.keys",
        "--sealing-key-file",
        "sealing.keys",
        "stats",
    ]);
    assert!(
        err.contains("nope.keys")
            && err.contains("(umask 077; authstore keys generate > nope.keys)"),
        "{err}"
    );
    // A PostgreSQL URL without keys says how to give them (before connecting).
    let err = d.fails(&[
        "--database-url",
        "postgres://u:hunter2@127.0.0.1:1/db",
        "stats",
    ]);
    assert!(
        err.contains("(umask 077; authstore keys generate > token.keys)")
            && err.contains("(umask 077; authstore keys generate --sealing > sealing.keys)")
            && !err.contains("chmod"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
}

// ----- clients -------------------------------------------------------------------------

#[test]
fn client_create_json_shows_the_secret_once() {
    let d = Dir::new();
    let c = d.json(&[
        "client",
        "create",
        "--name",
        "web",
        "--redirect-uri",
        "https://app.example.com/cb",
        "--redirect-uri",
        "http://127.0.0.1:9/cb",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--scope",
        "openid read",
        "--auth-method",
        "client_secret_post",
        "--json",
    ]);
    let id = c["client_id"].as_str().unwrap();
    assert!(id.parse::<ClientId>().is_ok());
    assert!(c["client_secret"].as_str().unwrap().starts_with("cs_"));
    assert_eq!(c["client_secret_expires_at"], 0);
    assert!(c["client_id_issued_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(c["client_name"], "web");
    assert_eq!(
        c["redirect_uris"],
        serde_json::json!(["https://app.example.com/cb", "http://127.0.0.1:9/cb"])
    );
    assert_eq!(
        c["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(c["scope"], "openid read");
    assert_eq!(c["token_endpoint_auth_method"], "client_secret_post");
    assert_eq!(c["disabled"], false);

    let shown = d.json(&["client", "show", id, "--json"]);
    assert!(shown.get("client_secret").is_none(), "{shown}");
    assert!(shown.get("client_secret_expires_at").is_none());
    let mut expected = c.clone();
    expected.as_object_mut().unwrap().remove("client_secret");
    expected
        .as_object_mut()
        .unwrap()
        .remove("client_secret_expires_at");
    assert_eq!(shown, expected);
    let list = d.json(&["client", "list", "--json"]);
    assert_eq!(list, serde_json::json!([expected]));
    // Text output: the secret once, with its warning; `show` never prints it.
    let p = d.ok(&[
        "client",
        "create",
        "--name",
        "p",
        "--public",
        "--redirect-uri",
        "myapp.example:/cb",
    ]);
    assert!(
        p.contains("type:          public") && !p.contains("client_secret"),
        "{p}"
    );
    let secret = c["client_secret"].as_str().unwrap();
    assert!(!d.ok(&["client", "show", id]).contains(secret));
    assert!(!d.ok(&["client", "list"]).contains(secret));
}

#[test]
fn client_update_disable_delete_and_rotate_secret() {
    let d = Dir::new();
    let c = create_service(&d);
    let id = c["client_id"].as_str().unwrap().to_owned();
    let old = c["client_secret"].as_str().unwrap().to_owned();
    let u = d.json(&[
        "client", "update", &id, "--name", "svc2", "--scope", "read", "--json",
    ]);
    assert_eq!(
        (u["client_name"].as_str(), u["scope"].as_str()),
        (Some("svc2"), Some("read"))
    );
    assert!(u.get("client_secret").is_none());
    let u = d.json(&["client", "update", &id, "--disable", "--json"]);
    assert_eq!(u["disabled"], true);
    assert_eq!(u["client_name"], "svc2", "disabling changes nothing else");
    let u = d.json(&["client", "update", &id, "--enable", "--json"]);
    assert_eq!(u["disabled"], false);
    // An update that breaks a rule changes nothing.
    let before = d.json(&["client", "show", &id, "--json"]);
    let err = d.fails(&[
        "client",
        "update",
        &id,
        "--grant-type",
        "authorization_code",
    ]);
    assert!(err.contains("redirect"), "{err}");
    d.fails(&["client", "update", &id]);
    assert_eq!(d.json(&["client", "show", &id, "--json"]), before);

    let r = d.json(&["client", "rotate-secret", &id, "--json"]);
    let new = r["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(r["client_id"], id.as_str());
    let cid: ClientId = id.parse().unwrap();
    block_on(async {
        let store = d.library(None).await;
        assert!(matches!(
            store.verify_client_secret(cid, &old).await,
            Err(Error::InvalidClient)
        ));
        store.verify_client_secret(cid, &new).await.unwrap();
    });
    assert!(d.ok(&["client", "delete", &id]).contains(&id));
    let err = d.fails(&["client", "show", &id]);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(d.json(&["client", "list", "--json"]), serde_json::json!([]));
    let err = d.fails(&["client", "delete", &id]);
    assert!(err.contains("not found"), "{err}");
}

// ----- users ---------------------------------------------------------------------------

#[test]
fn user_passwords_come_from_stdin_and_never_reach_the_database() {
    let d = Dir::new();
    let pw = "tr0ub4dor&3-unique-passphrase";
    let u = create_alice(&d, pw);
    let id = u["id"].as_str().unwrap().to_owned();
    assert_eq!(u["username"], "alice");
    assert_eq!(u["email"], "alice@example.com");
    assert_eq!(u["active"], true);
    assert!(u.get("password").is_none() && u.get("password_hash").is_none());
    for who in [id.as_str(), "alice", "ALICE", "alice@example.com"] {
        assert_eq!(d.json(&["user", "show", who, "--json"])["id"], id.as_str());
    }
    assert!(
        d.ok(&["user", "show", "alice"])
            .contains("alice@example.com")
    );
    let listed = d.json(&["user", "list", "--search", "ALI", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        d.json(&["user", "list", "--search", "zed", "--json"]),
        serde_json::json!([])
    );
    // The password is nowhere in the data directory.
    for (name, bytes) in snapshot(d.path()) {
        assert!(
            !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
            "{name} holds the password"
        );
    }
    // It is the password: a login with it works.
    block_on(async {
        let store = d.library(None).await;
        let user = store
            .login("alice", &Password::new(pw.to_owned()), None)
            .await
            .unwrap();
        assert_eq!(user.id.to_string(), id);
    });
    // --password works, with a warning; a too-short password changes nothing.
    let out = d.run_with(
        &[
            "user",
            "set-password",
            "alice",
            "--password",
            "another long one",
        ],
        None,
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --password"));
    let before = stats(&d);
    let err = d.fails_with(
        &["user", "create", "--username", "bob", "--password-stdin"],
        Some("short\n"),
        &[],
    );
    assert!(err.contains("at least 8"), "{err}");
    let err = d.fails_with(
        &["user", "create", "--username", "bob", "--password-stdin"],
        Some(""),
        &[],
    );
    assert!(err.contains("standard input"), "{err}");
    assert_eq!(stats(&d), before);
    assert_eq!(
        d.json(&["user", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Disable, then delete.
    d.ok(&["user", "disable", "alice"]);
    assert_eq!(
        d.json(&["user", "show", "alice", "--json"])["active"],
        false
    );
    d.ok(&["user", "delete", &id]);
    let err = d.fails(&["user", "show", "alice"]);
    assert!(err.contains("alice"), "{err}");
}

/// Creates alice through `user create --password-stdin` (with a trailing newline, as `echo`
/// writes it).
fn create_alice(d: &Dir, pw: &str) -> Value {
    let out = d.ok_with(
        &[
            "user",
            "create",
            "--username",
            "alice",
            "--email",
            "alice@example.com",
            "--password-stdin",
            "--json",
        ],
        Some(&format!("{pw}\n")),
        &[],
    );
    serde_json::from_str(&out).unwrap()
}

// ----- bad input -----------------------------------------------------------------------

#[test]
fn bad_input_exits_1_with_a_helpful_error_and_changes_nothing() {
    let d = Dir::new();
    let c = create_service(&d);
    let id = c["client_id"].as_str().unwrap();
    std::fs::write(d.file("typo.toml"), "[tokens]\naccess_token_sec = 60\n").unwrap();
    std::fs::write(
        d.file("bad-rate.toml"),
        "[limits]\nclient_rate = \"fast\"\n",
    )
    .unwrap();
    let before = (stats(&d), d.json(&["client", "list", "--json"]));
    let unknown = "0192f0c1-7d3e-7c4a-9f57-5a2c1e9b8d10";
    let cases: &[(&[&str], &[&str])] = &[
        (&["client", "show", unknown], &["not found", unknown]),
        (
            &["client", "update", unknown, "--name", "x"],
            &["not found"],
        ),
        (&["client", "rotate-secret", unknown], &["not found"]),
        (&["client", "show", "not-a-uuid"], &["client id", "UUID"]),
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--redirect-uri",
                "not a url",
            ],
            &["redirect_uri"],
        ),
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--redirect-uri",
                "javascript:alert(1)",
            ],
            &["redirect_uri", "javascript"],
        ),
        (
            &["client", "create", "--name", "x", "--scope", "a  b"],
            &["scope"],
        ),
        (
            &["client", "create", "--name", "x", "--scope", "bad\"scope"],
            &["scope"],
        ),
        (
            &["client", "update", id, "--scope", "read  write"],
            &["scope"],
        ),
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--grant-type",
                "password",
            ],
            &["grant", "client_credentials"],
        ),
        (&["client", "create", "--name", ""], &["name"]),
        (
            &["cleanup", "--retention", "5 parsecs"],
            &["--retention", "90s"],
        ),
        (&["cleanup", "--retention", "10"], &["--retention", "unit"]),
        (
            &["audit", "list", "--since", "yesterday"],
            &["--since", "RFC 3339"],
        ),
        (
            &["audit", "list", "--kind", "client.exploded"],
            &["client.created"],
        ),
        (&["audit", "list", "--limit", "5000"], &["limit"]),
        (
            &["--config", "typo.toml", "stats"],
            &["typo.toml", "access_token_sec", "line 2"],
        ),
        (&["--config", "missing.toml", "stats"], &["missing.toml"]),
        (
            &[
                "--config",
                "bad-rate.toml",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ],
            &["client_rate", "N/BURST"],
        ),
        (
            &["serve", "--issuer", "ftp://x", "--listen", "127.0.0.1:0"],
            &["issuer"],
        ),
        (
            &["serve", "--listen", "127.0.0.1:notaport"],
            &["listen", "port"],
        ),
        (
            &["token", "introspect", "at_garbage"],
            &["malformed access token"],
        ),
        (
            &["token", "revoke", "rt_garbage"],
            &["malformed refresh token"],
        ),
        (&["user", "show", "nobody"], &["nobody"]),
    ];
    for (args, words) in cases {
        let err = d.fails(args);
        for w in *words {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
    }
    assert_eq!((stats(&d), d.json(&["client", "list", "--json"])), before);
    // A URL no backend takes: nothing is created, no password shown.
    let e = Dir::new();
    for url in [
        "mysql://u:hunter2@localhost/db",
        "nonsense",
        "sqlite://./x.db?readers=0",
    ] {
        // `migrate` may create a database: the URL is refused before anything is made.
        for cmd in ["migrate", "stats"] {
            let err = e.fails(&["--database-url", url, cmd]);
            // (`stats` may refuse first because the file does not exist.)
            assert!(
                err.contains("unsupported")
                    || err.contains("URL")
                    || (cmd == "stats" && err.contains("does not exist")),
                "{url} {cmd}: {err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
            assert!(names(e.path()).is_empty(), "{url}: {:?}", names(e.path()));
        }
    }
    let err = e.fails_with(&["stats"], None, &[("DATABASE_URL", "mysql://x/db")]);
    assert!(err.contains("mysql"), "DATABASE_URL is read: {err}");
    assert!(names(e.path()).is_empty());
    // Usage errors are clap's: exit status 2.
    let out = d.run(&["client", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.run(&["user", "create", "--username", "x"]);
    assert_eq!(out.status.code(), Some(2), "a password source is required");
}

// ----- maintenance ---------------------------------------------------------------------

#[test]
fn migrate_twice_and_stats() {
    let d = Dir::new();
    let first = d.json(&["migrate", "--json"]);
    assert!(!first["applied"].as_array().unwrap().is_empty(), "{first}");
    let second = d.json(&["migrate", "--json"]);
    assert_eq!(second, serde_json::json!({ "applied": [] }));
    assert!(d.ok(&["migrate"]).contains("up to date"));
    let s = stats(&d);
    assert_eq!(s["clients"], 0);
    create_service(&d);
    let c = d.json(&["client", "create", "--name", "off", "--json"]);
    d.ok(&[
        "client",
        "update",
        c["client_id"].as_str().unwrap(),
        "--disable",
    ]);
    let s = stats(&d);
    assert_eq!(s["clients"], 2);
    assert_eq!(s["disabled_clients"], 1);
    assert_eq!(s["access_tokens"]["active"], 0);
    assert!(s["audit_events"].as_u64().unwrap() >= 3);
    assert!(d.ok(&["stats"]).contains("clients: 2"));
}

#[test]
fn cleanup_dry_run_changes_nothing_and_predicts_cleanup() {
    let d = Dir::new();
    let c = create_service(&d);
    let id: ClientId = c["client_id"].as_str().unwrap().parse().unwrap();
    // Tokens issued three days ago (a clock set back): expired and past the 1-day retention.
    block_on(async {
        let then = SystemClock
            .now()
            .saturating_sub(Duration::from_secs(3 * 86_400));
        let store = d.library(Some(ManualClock::new(then))).await;
        for i in 0..4 {
            let t = store
                .issue_client_credentials(id, None, &TokenOptions::default())
                .await
                .unwrap();
            if i == 0 {
                store
                    .revoke_token(t.access_token.secret(), None, None)
                    .await
                    .unwrap();
            }
        }
        // And one live token now.
        d.library(None)
            .await
            .issue_client_credentials(id, None, &TokenOptions::default())
            .await
            .unwrap();
    });
    let before = stats(&d);
    assert_eq!(before["access_tokens"]["active"], 1);
    let dry = d.json(&["cleanup", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["access_tokens"], 4, "{dry}");
    assert!(dry["total"].as_u64().unwrap() >= 4);
    assert_eq!(stats(&d), before, "a dry run deletes nothing");
    assert!(d.ok(&["cleanup", "--dry-run"]).contains("would delete"));
    // A longer retention keeps them.
    let kept = d.json(&["cleanup", "--dry-run", "--retention", "4d", "--json"]);
    assert_eq!(kept["total"], 0, "{kept}");
    let real = d.json(&["cleanup", "--json"]);
    assert_eq!(real["dry_run"], false);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("dry_run");
        v
    };
    assert_eq!(strip(real), strip(dry), "the dry run predicted the cleanup");
    let after = stats(&d);
    assert_eq!(after["access_tokens"]["active"], 1);
    assert_eq!(after["access_tokens"]["expired"], 0);
    assert_eq!(after["access_tokens"]["revoked"], 0);
    assert_eq!(d.json(&["cleanup", "--json"])["total"], 0);
}

#[test]
fn audit_list_json() {
    let d = Dir::new();
    let c = create_service(&d);
    let id = c["client_id"].as_str().unwrap();
    d.ok(&["client", "rotate-secret", id]);
    let all = d.json(&["audit", "list", "--json"]);
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["client.created", "client.secret_rotated"]);
    let one = d.json(&[
        "audit",
        "list",
        "--kind",
        "client.created",
        "--since",
        "1h",
        "--json",
    ]);
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["client_id"], id);
    assert!(one[0]["at"].as_str().unwrap().ends_with('Z'));
    let future = d.json(&["audit", "list", "--since", "2999-01-01T00:00:00Z", "--json"]);
    assert_eq!(future, serde_json::json!([]));
    assert_eq!(
        d.json(&["audit", "list", "--limit", "1", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.json(&["audit", "list", "--client", id, "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let text = d.ok(&["audit", "list"]);
    assert!(
        text.contains("client.secret_rotated") && text.contains(id),
        "{text}"
    );
    assert!(!text.contains("cs_"), "no secret in the audit log");
}

// ----- tokens --------------------------------------------------------------------------

#[test]
fn token_introspect_and_revoke_as_the_operator() {
    let d = Dir::new();
    let c = create_service(&d);
    let id: ClientId = c["client_id"].as_str().unwrap().parse().unwrap();
    let token = block_on(async {
        d.library(None)
            .await
            .issue_client_credentials(id, None, &TokenOptions::default())
            .await
            .unwrap()
            .access_token
            .secret()
            .to_owned()
    });
    let i = d.json(&["token", "introspect", &token, "--json"]);
    assert_eq!(i["active"], true);
    assert_eq!(i["token_type"], "access_token");
    assert_eq!(i["client_id"], id.to_string());
    assert_eq!(i["scope"], "read write");
    assert!(i["exp"].as_i64().unwrap() > i["iat"].as_i64().unwrap());
    let i2: Value = serde_json::from_str(&d.ok_with(
        &["token", "introspect", "--token-stdin", "--json"],
        Some(&format!("{token}\n")),
        &[],
    ))
    .unwrap();
    assert_eq!(i2, i);
    let r: Value = serde_json::from_str(&d.ok_with(
        &["token", "revoke", "--token-stdin", "--json"],
        Some(&token),
        &[],
    ))
    .unwrap();
    assert_eq!(r["revoked"], true);
    assert_eq!(r["grant_id"], i["grant_id"]);
    assert_eq!(
        d.json(&["token", "introspect", &token, "--json"]),
        serde_json::json!({ "active": false })
    );
    assert!(
        d.ok(&["token", "introspect", &token])
            .contains("active: false")
    );
    // A well-formed token this store never issued: nothing to revoke.
    let stranger = authstore::core::TokenFormat::new()
        .mint(authstore::core::TokenKind::AccessToken)
        .unwrap();
    let err = d.fails(&["token", "revoke", stranger.as_str()]);
    assert!(err.contains("nothing was revoked"), "{err}");
    let out = d.run(&["token", "introspect"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a token or --token-stdin is required"
    );
}

// ----- serve ---------------------------------------------------------------------------

/// A running `authstore serve`: its stdout and stderr lines arrive on channels.
struct Server {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen_out: Vec<String>,
    seen_err: Vec<String>,
    addr: String,
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Server {
    fn start(d: &Dir) -> Self {
        Self::spawn(d.cmd(&["serve", "--listen", "127.0.0.1:0"]))
    }

    /// Starts `serve` (as `cmd` says) and reads its first line, the address.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("AUTHSTORE_LOG", "info,tower_http=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let mut s = Self {
            child,
            stdout,
            stderr,
            seen_out: Vec::new(),
            seen_err: Vec::new(),
            addr: String::new(),
        };
        let first = s.next_out();
        s.addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line: {first:?}; stderr: {:?}", s.seen_err))
            .to_owned();
        assert!(
            s.addr.starts_with("127.0.0.1:") && !s.addr.ends_with(":0"),
            "{first}"
        );
        s
    }

    fn next_out(&mut self) -> String {
        let l = self
            .stdout
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                while let Ok(e) = self.stderr.try_recv() {
                    self.seen_err.push(e);
                }
                panic!("serve printed nothing more; stderr: {:#?}", self.seen_err)
            });
        self.seen_out.push(l.clone());
        l
    }

    /// Reads stdout until a line contains `text`.
    fn out_until(&mut self, text: &str) -> String {
        loop {
            let l = self.next_out();
            if l.contains(text) {
                return l;
            }
        }
    }

    /// Reads stderr until a line contains every one of `texts`.
    fn err_until(&mut self, texts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                let hit = texts.iter().all(|t| l.contains(t));
                self.seen_err.push(l);
                if hit {
                    return;
                }
            }
        }
        panic!("no {texts:?} on stderr: {:#?}", self.seen_err);
    }

    fn term(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the exit; returns the status and the rest of stdout.
    fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = std::mem::take(&mut self.seen_out);
        while let Ok(l) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            out.push(l);
        }
        (status, out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a new connection; returns the whole answer.
fn http(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_answers_prints_a_hint_and_stops_gracefully_on_sigterm() {
    let d = Dir::new();
    let mut server = Server::start(&d);
    let addr = server.addr.clone();
    assert_eq!(server.next_out(), format!("issuer: http://{addr}"));
    assert!(server.next_out().starts_with("database: sqlite://"));
    let create = server.out_until("authstore client create");
    assert!(
        create.contains("--grant-type client_credentials"),
        "{create}"
    );
    let curl = server.out_until("curl");
    assert!(curl.contains(&format!("http://{addr}/token")), "{curl}");
    let health = http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    // The hinted command works against the data the server uses.
    let c = d.json(&[
        "client",
        "create",
        "--name",
        "my-service",
        "--grant-type",
        "client_credentials",
        "--scope",
        "read write",
        "--json",
    ]);

    // A request in flight: its head is in, its body is not.
    let body = "token=at_unknown";
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = basic(
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    write!(
        held,
        "POST /revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    server.err_until(&["started processing request", "/revoke"]);
    server.term();
    server.err_until(&["shutting down"]);
    // It waits for the request: still running a while later (a server that dropped its
    // connections would be gone by now).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(300) {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "serve exited with a request in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server no longer accepts, but it finishes the request in flight.
    held.write_all(&body.as_bytes()[5..]).unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, out) = server.wait();
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        out.iter()
            .filter(|l| l.starts_with("listening on "))
            .count(),
        1,
        "{out:#?}"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the port is closed"
    );

    // A second serve on the same data keeps the client, and gives no hint.
    let mut second = Server::start(&d);
    second.out_until("database: ");
    let health = http(
        &second.addr,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let id = c["client_id"].as_str().unwrap();
    assert_eq!(
        d.json(&["client", "show", id, "--json"])["client_name"],
        "my-service"
    );
    second.term();
    let (status, out) = second.wait();
    assert!(status.success());
    assert!(
        !out.iter().any(|l| l.contains("No clients")),
        "no hint with clients: {out:#?}"
    );
}

/// HTTP Basic credentials (RFC 6749 §2.3.1: each part form-urlencoded; ours need none).
fn basic(id: &str, secret: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{id}:{secret}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn serve_on_memory_uses_fresh_keys_and_a_configured_issuer() {
    let d = Dir::new();
    std::fs::write(
        d.file("authstore.toml"),
        "database_url = \"memory:\"\nissuer = \"https://auth.example.com/t1\"\n\
         [cleanup]\ninterval_secs = 0\n[limits]\nclient_rate = \"5/10\"\n",
    )
    .unwrap();
    let mut c = d.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    c.env("AUTHSTORE_CONFIG", "authstore.toml");
    let mut server = Server::spawn(c);
    let addr = server.addr.clone();
    assert_eq!(server.next_out(), "issuer: https://auth.example.com/t1");
    assert_eq!(server.next_out(), "database: memory:");
    let meta = http(
        &addr,
        "GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        meta.contains("\"issuer\":\"https://auth.example.com/t1\""),
        "{meta}"
    );
    assert!(
        names(d.path()) == ["authstore.toml"],
        "memory: writes no file"
    );
    server.term();
    let (status, _) = server.wait();
    assert!(status.success());
}

// ----- review fixes: passwords in URLs, hints, what may create a database ---------------

/// Every shape of URL that holds a password (or might), as a command may be given it.
const PASSWORD_URLS: [&str; 9] = [
    "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2",
    "postgres://u@127.0.0.1:1/db?password=hunter2&connect_timeout=2",
    "postgres://u@127.0.0.1:1/db?connect_timeout=2&sslpassword=hunter2",
    "postgresql://u:hunter2@x@127.0.0.1:1/db?connect_timeout=2",
    "postgres//u:hunter2@db/x",
    "postgres:u:hunter2@db/x",
    "mysql://u:hunter2@h/db",
    "mysql:hunter2",
    "hunter2",
];

/// Where a URL comes from: global options, or an environment variable.
type Source<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);

#[test]
fn a_database_password_never_shows_wherever_the_url_comes_from() {
    let d = Dir::new();
    let token = d.ok(&["keys", "generate"]);
    let sealing = d.ok(&["keys", "generate", "--sealing"]);
    let commands: [&[&str]; 5] = [
        &["stats"],
        &["migrate"],
        &["serve", "--listen", "127.0.0.1:0"],
        &["client", "create", "--name", "x"],
        &[
            "user",
            "create",
            "--username",
            "bob",
            "--password",
            "long enough password",
        ],
    ];
    for url in PASSWORD_URLS {
        std::fs::write(d.file("c.toml"), format!("database_url = \"{url}\"\n")).unwrap();
        let flag = ["--database-url", url];
        let config = ["--config", "c.toml"];
        let sources: [Source<'_>; 4] = [
            (&flag[..], None),
            (&[], Some(("AUTHSTORE_DATABASE_URL", url))),
            (&[], Some(("DATABASE_URL", url))),
            (&config[..], None),
        ];
        for (global, var) in sources {
            for cmd in commands {
                let args = [global, cmd].concat();
                let mut env = vec![
                    ("AUTHSTORE_TOKEN_KEYS", token.as_str()),
                    ("AUTHSTORE_SEALING_KEYS", sealing.as_str()),
                    // Every log line too.
                    ("AUTHSTORE_LOG", "debug"),
                ];
                env.extend(var);
                let out = d.run_with(&args, None, &env);
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(out.status.code(), Some(1), "{args:?} {var:?}: {text}");
                assert_failure_text(&String::from_utf8_lossy(&out.stderr), &args);
                assert!(!text.contains("hunter2"), "{args:?} {var:?}: {text}");
                assert_eq!(names(d.path()), ["c.toml"], "{args:?}: nothing created");
            }
        }
    }
}

#[test]
fn serve_hints_reach_the_same_store_without_turning_a_url_into_a_flag() {
    let d = Dir::new();
    // From the environment: no --database-url, the same variable instead.
    let mut c = d.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    c.env("AUTHSTORE_DATABASE_URL", "sqlite://env.db");
    let mut s = Server::spawn(c);
    let hint = s.out_until("client create");
    assert!(
        hint.starts_with("  authstore client create") && !hint.contains("--database-url"),
        "{hint}"
    );
    let note = s.next_out();
    assert!(note.contains("same AUTHSTORE_DATABASE_URL"), "{note}");
    s.term();
    assert!(s.wait().0.success());
    // Run that way, the hinted command reaches the server's database.
    let env = [("AUTHSTORE_DATABASE_URL", "sqlite://env.db")];
    d.ok_with(&["client", "create", "--name", "svc"], None, &env);
    assert_eq!(
        d.ok_with(&["client", "list", "--json"], None, &env)
            .matches("\"client_id\":")
            .count(),
        1
    );
    // From the flag, before or after the command: repeated as given (no password in it).
    for args in [
        &[
            "--database-url",
            "sqlite://flag.db",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ][..],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite://flag2.db",
        ][..],
    ] {
        let url = args[args.iter().position(|a| *a == "--database-url").unwrap() + 1];
        let mut s = Server::spawn(d.cmd(args));
        let hint = s.out_until("client create");
        assert!(
            hint.contains(&format!("authstore --database-url {url} client create")),
            "{hint}"
        );
        assert!(s.next_out().starts_with("then get"), "no note needed");
        s.term();
        assert!(s.wait().0.success());
    }
    // From the config file: the same --config.
    std::fs::write(d.file("cfg.toml"), "database_url = \"sqlite://cfg.db\"\n").unwrap();
    let mut s = Server::spawn(d.cmd(&["--config", "cfg.toml", "serve", "--listen", "127.0.0.1:0"]));
    let hint = s.out_until("client create");
    assert!(
        hint.contains("authstore --config cfg.toml client create") && !hint.contains("sqlite"),
        "{hint}"
    );
    s.term();
    assert!(s.wait().0.success());
    // memory: no other command can reach it, so no command is hinted.
    let mut s = Server::spawn(d.cmd(&[
        "--database-url",
        "memory:",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    s.out_until("database: memory:");
    assert_eq!(s.next_out(), "");
    let note = s.next_out();
    assert!(
        note.contains("memory: store lives only in this process") && !note.contains("--name"),
        "{note}"
    );
    s.term();
    let (status, rest) = s.wait();
    assert!(status.success());
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("client create --name") || l.contains("curl")),
        "{rest:#?}"
    );
}

#[test]
fn commands_on_memory_warn_that_nothing_is_kept() {
    let d = Dir::new();
    let out = d.run(&[
        "--database-url",
        "memory:",
        "client",
        "create",
        "--name",
        "x",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: a memory: store") && err.contains("thrown away when it exits"),
        "{err}"
    );
    let out = d.run(&["--database-url", "memory:", "client", "list"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starts empty"), "{err}");
    assert!(names(d.path()).is_empty());
}

#[test]
fn refused_arguments_create_no_database() {
    let d = Dir::new();
    let configs = [
        ("rate.toml", "[limits]\nclient_rate = \"fast\"\n"),
        ("body.toml", "[limits]\nmax_body_bytes = 10\n"),
        ("timeout.toml", "[limits]\nrequest_timeout_secs = 0\n"),
        ("tokens.toml", "[tokens]\nrefresh_grace_secs = 3600\n"),
    ];
    for (name, text) in configs {
        std::fs::write(d.file(name), text).unwrap();
    }
    let cases: &[(&[&str], Option<&str>, &[&str])] = &[
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--public",
                "--grant-type",
                "client_credentials",
            ],
            None,
            &["public", "client_credentials"],
        ),
        (
            &["client", "create", "--name", "x", "--auth-method", "none"],
            None,
            &["confidential", "client_secret_basic"],
        ),
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--public",
                "--redirect-uri",
                "https://a.example/cb",
                "--auth-method",
                "client_secret_post",
            ],
            None,
            &["public", "none"],
        ),
        (
            &[
                "client",
                "create",
                "--name",
                "x",
                "--grant-type",
                "authorization_code",
            ],
            None,
            &["redirect URI"],
        ),
        (&["client", "create", "--name", ""], None, &["name"]),
        (
            &["client", "create", "--name", "x", "--scope", "a  b"],
            None,
            &["scope"],
        ),
        (
            &[
                "user",
                "create",
                "--username",
                "bad name",
                "--password-stdin",
            ],
            Some("long enough password\n"),
            &["username"],
        ),
        (
            &[
                "user",
                "create",
                "--username",
                "bob",
                "--email",
                "not-an-address",
                "--password-stdin",
            ],
            Some("long enough password\n"),
            &["email"],
        ),
        (
            &["user", "create", "--username", "bob", "--password-stdin"],
            Some("short\n"),
            &["at least 8"],
        ),
        (
            &["--config", "rate.toml", "serve", "--listen", "127.0.0.1:0"],
            None,
            &["client_rate"],
        ),
        (
            &["--config", "body.toml", "serve", "--listen", "127.0.0.1:0"],
            None,
            &["max_body_bytes", "1024"],
        ),
        (
            &[
                "--config",
                "timeout.toml",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ],
            None,
            &["request_timeout_secs"],
        ),
        (
            &["--config", "tokens.toml", "client", "create", "--name", "x"],
            None,
            &["refresh_grace"],
        ),
        (&["serve", "--listen", "::1"], None, &["port", "[::1]:8080"]),
        (
            &["serve", "--listen", "127.0.0.1"],
            None,
            &["a port is needed", "brackets"],
        ),
        (
            &["serve", "--listen", "::1:8080"],
            None,
            &["brackets", "[::1]:8080"],
        ),
    ];
    let before = names(d.path());
    for (args, stdin, words) in cases {
        let err = d.fails_with(args, *stdin, &[]);
        for w in *words {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
        assert_eq!(names(d.path()), before, "{args:?} created a file");
    }
}

#[test]
fn read_only_commands_refuse_a_database_that_does_not_exist() {
    let d = Dir::new();
    let unknown = "0192f0c1-7d3e-7c4a-9f57-5a2c1e9b8d10";
    let commands: &[&[&str]] = &[
        &["stats"],
        &["audit", "list"],
        &["client", "list"],
        &["client", "show", unknown],
        &["user", "list"],
        &["user", "show", "alice"],
        &["token", "introspect", "at_x"],
        &["cleanup", "--dry-run"],
        // Writes to something that must exist: refused the same way.
        &["cleanup"],
        &["client", "update", unknown, "--name", "x"],
        &["client", "rotate-secret", unknown],
        &["client", "delete", unknown],
        &["user", "disable", "alice"],
        &["user", "enable", "alice"],
        &["user", "delete", "alice"],
        &[
            "user",
            "set-password",
            "alice",
            "--password",
            "long enough password",
        ],
        &["token", "revoke", "rt_x"],
    ];
    for args in commands {
        let err = d.fails(args);
        assert!(
            err.contains("./authstore.db does not exist")
                && err.contains("authstore migrate")
                && err.contains("authstore serve"),
            "{args:?}: {err}"
        );
        assert!(
            names(d.path()).is_empty(),
            "{args:?} created {:?}",
            names(d.path())
        );
    }
    // A mistyped path beside a real database: refused, naming the path and where it came
    // from; the real one is untouched.
    create_service(&d);
    let before = snapshot(d.path());
    let err = d.fails(&["--database-url", "sqlite://authstor.db", "client", "list"]);
    assert!(
        err.contains("authstor.db does not exist") && err.contains("--database-url"),
        "{err}"
    );
    let err = d.fails_with(&["stats"], None, &[("DATABASE_URL", "sqlite:sub/x.db")]);
    assert!(
        err.contains("sub/x.db does not exist") && err.contains("DATABASE_URL"),
        "{err}"
    );
    assert_eq!(snapshot(d.path()), before);
    // The commands that may create one do: `user create` here (`migrate`, `serve` and
    // `client create` elsewhere in these tests).
    let e = Dir::new();
    e.ok_with(
        &["user", "create", "--username", "alice", "--password-stdin"],
        Some("long enough password"),
        &[],
    );
    assert!(e.db().is_file());
    assert_eq!(
        e.json(&["user", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn keys_generate_refuses_ids_a_key_file_cannot_hold() {
    let d = Dir::new();
    for (id, word) in [
        ("#new", "comment"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
    ] {
        let err = d.fails(&["keys", "generate", "--id", id]);
        assert!(
            err.contains("key id") && err.contains(word),
            "{id:?}: {err}"
        );
    }
    assert!(names(d.path()).is_empty());
    assert!(
        d.ok(&["keys", "generate", "--id", "k#2"])
            .starts_with("k#2 ")
    );
}

#[test]
fn audit_list_shows_the_newest_and_reads_on_with_after() {
    let d = Dir::new();
    let c = create_service(&d);
    let id = c["client_id"].as_str().unwrap();
    for _ in 0..4 {
        d.ok(&["client", "rotate-secret", id]);
    }
    let all = d.json(&["audit", "list", "--json"]);
    let all = all.as_array().unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "JSON is in id order");
    assert_eq!(all[0]["kind"], "client.created");
    // The newest two, oldest of them first.
    let two = d.json(&["audit", "list", "--limit", "2", "--json"]);
    assert_eq!(two.as_array().unwrap()[..], all[3..5]);
    let out = d.run(&["audit", "list", "--limit", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(ids[3]) && lines[1].contains(ids[4]),
        "{text}"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("older events match too"), "{err}");
    // The note says how to see the older ones.
    let until = err
        .split("--until ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{err}"));
    let older = d.json(&["audit", "list", "--limit", "2", "--until", until, "--json"]);
    assert_eq!(older.as_array().unwrap()[..], all[2..4]);
    // All of them fit: no note.
    let out = d.run(&["audit", "list", "--limit", "5"]);
    assert!(String::from_utf8(out.stderr).unwrap().is_empty());
    // --after: the oldest after the cursor, and how to read on.
    let next = d.json(&["audit", "list", "--after", ids[0], "--limit", "2", "--json"]);
    assert_eq!(next.as_array().unwrap()[..], all[1..3]);
    let out = d.run(&["audit", "list", "--after", ids[0], "--limit", "2"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("more events follow") && err.contains(&format!("--after {}", ids[2])),
        "{err}"
    );
    let out = d.run(&["audit", "list", "--after", ids[2], "--limit", "2"]);
    assert!(String::from_utf8(out.stderr).unwrap().is_empty(), "the end");
    assert_eq!(
        d.json(&["audit", "list", "--after", ids[4], "--json"]),
        serde_json::json!([])
    );
    // --json never adds to stderr, and stays an array.
    let out = d.run(&["audit", "list", "--limit", "1", "--json"]);
    assert!(String::from_utf8(out.stderr).unwrap().is_empty());
    // Bad values.
    let err = d.fails(&["audit", "list", "--after", "nope"]);
    assert!(err.contains("audit event id"), "{err}");
    let err = d.fails(&["audit", "list", "--until", "soon"]);
    assert!(err.contains("--until") && err.contains("RFC 3339"), "{err}");
    let err = d.fails(&["audit", "list", "--since", "1h", "--until", "2h"]);
    assert!(err.contains("after --until"), "{err}");
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let d = Dir::new();
    for _ in 0..3 {
        create_service(&d);
    }
    for args in [
        &["client", "list"][..],
        &["client", "list", "--json"][..],
        &["audit", "list"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // Nobody reads: the first write fails with a broken pipe (as after `| head -1`).
        drop(reader);
        let mut c = d.cmd(args);
        c.stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped());
        let out = c.spawn().unwrap().wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
