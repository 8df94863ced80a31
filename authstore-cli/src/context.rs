//! What every command shares: the resolved settings (flag > environment > config file >
//! default), the key rings, and opening the store with them.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use authstore_core::{Authstore, SealingKey, SealingKeyring, TokenKey, TokenKeyring};
use zeroize::Zeroizing;

use crate::config::FileConfig;
use crate::error::{CliError, CliResult};
use authstore::keys::{self, Ring};

/// The database used when none is named.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite://./authstore.db";

/// Settings every command resolves the same way. `Debug` shows the database URL without
/// its password.
pub(crate) struct Settings {
    /// The store URL.
    pub(crate) database_url: String,
    /// Where the URL came from.
    pub(crate) database_url_source: UrlSource,
    /// The config file, if one was named.
    pub(crate) config_path: Option<PathBuf>,
    /// Its contents (all defaults without one).
    pub(crate) file: FileConfig,
    /// A token key file named by flag or environment.
    pub(crate) token_key_file: Option<PathBuf>,
    /// A sealing key file named by flag or environment.
    pub(crate) sealing_key_file: Option<PathBuf>,
}

/// Where the database URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlSource {
    /// `--database-url`.
    Flag,
    /// An environment variable (`AUTHSTORE_DATABASE_URL`, `DATABASE_URL`).
    Env(&'static str),
    /// `database_url` in the config file.
    ConfigFile,
    /// Nothing named one: [`DEFAULT_DATABASE_URL`].
    Default,
}

/// What a command does with the store: whether it may create a database, and what it is
/// told about a `memory:` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `serve`: may create the database; migrates it itself.
    Serve,
    /// `migrate`: may create the database; migrates it itself.
    Migrate,
    /// `client create`, `user create`: may create the database (and migrate a new one).
    Create,
    /// Every other command: the database must exist (a SQLite file that does not is an
    /// error, and nothing is created).
    Existing,
}

/// The global options as parsed (flag or environment through clap). No `Debug`: the URL
/// may hold a password.
#[derive(Default)]
pub(crate) struct GlobalInput {
    /// `--database-url` / `AUTHSTORE_DATABASE_URL`.
    pub(crate) database_url: Option<String>,
    /// Whether `database_url` came from the flag (else from `AUTHSTORE_DATABASE_URL`).
    pub(crate) database_url_from_flag: bool,
    /// `--config` / `AUTHSTORE_CONFIG`.
    pub(crate) config: Option<PathBuf>,
    /// `--token-key-file` / `AUTHSTORE_TOKEN_KEY_FILE`.
    pub(crate) token_key_file: Option<PathBuf>,
    /// `--sealing-key-file` / `AUTHSTORE_SEALING_KEY_FILE`.
    pub(crate) sealing_key_file: Option<PathBuf>,
}

/// A non-empty environment variable.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &self.database_display())
            .field("config_path", &self.config_path)
            .field("token_key_file", &self.token_key_file)
            .field("sealing_key_file", &self.sealing_key_file)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Resolves the settings: reads the config file if one is named.
    pub(crate) fn resolve(input: GlobalInput) -> CliResult<Self> {
        let file = match &input.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let from_global = if input.database_url_from_flag {
            UrlSource::Flag
        } else {
            UrlSource::Env("AUTHSTORE_DATABASE_URL")
        };
        let (database_url, database_url_source) =
            match input.database_url.filter(|u| !u.trim().is_empty()) {
                Some(u) => (u, from_global),
                None => match env_var("DATABASE_URL") {
                    Some(u) => (u, UrlSource::Env("DATABASE_URL")),
                    None => match &file.database_url {
                        Some(u) => (u.clone(), UrlSource::ConfigFile),
                        None => (DEFAULT_DATABASE_URL.to_owned(), UrlSource::Default),
                    },
                },
            };
        Ok(Self {
            database_url,
            database_url_source,
            config_path: input.config,
            file,
            token_key_file: input.token_key_file,
            sealing_key_file: input.sealing_key_file,
        })
    }

    /// The database URL with any password removed, for display.
    pub(crate) fn database_display(&self) -> String {
        authstore::redact_url(&self.database_url)
    }

    /// Whether the URL names the `memory:` store.
    pub(crate) fn is_memory(&self) -> bool {
        matches!(kind(&self.database_url), Some(Kind::Memory))
    }

    /// Whether the URL shows whole in messages (it holds no credentials).
    pub(crate) fn url_shows_whole(&self) -> bool {
        self.database_display() == self.database_url
    }

    /// How another command reaches the same store with the same keys: the global options
    /// to give it (shell words, each with a leading space) and the environment variables it
    /// needs as this process had them. A URL with credentials is never printed: the
    /// command is told to use the same setting instead.
    pub(crate) fn same_store(&self) -> SameStore {
        let mut flags = String::new();
        let mut env: Vec<&'static str> = Vec::new();
        let mut flag_with_password = false;
        match self.database_url_source {
            UrlSource::Flag if self.url_shows_whole() => {
                flags.push_str(&format!(
                    " --database-url {}",
                    shell_quote(&self.database_url)
                ));
            }
            UrlSource::Flag => flag_with_password = true,
            UrlSource::Env(var) => env.push(var),
            UrlSource::ConfigFile | UrlSource::Default => {}
        }
        if let Some(p) = &self.config_path {
            flags.push_str(&format!(
                " --config {}",
                shell_quote(&p.display().to_string())
            ));
        }
        for (file, ring) in [
            (&self.token_key_file, Ring::Token),
            (&self.sealing_key_file, Ring::Sealing),
        ] {
            match file {
                Some(p) => flags.push_str(&format!(
                    " {} {}",
                    ring.flag(),
                    shell_quote(&p.display().to_string())
                )),
                None if env_var(ring.inline_env()).is_some() => env.push(ring.inline_env()),
                None => {}
            }
        }
        SameStore {
            flags,
            env,
            flag_with_password,
        }
    }
}

/// What [`Settings::same_store`] returns.
#[derive(Debug)]
pub(crate) struct SameStore {
    /// Global options, as shell words with a leading space each.
    pub(crate) flags: String,
    /// Environment variables the other command needs as this one had them.
    pub(crate) env: Vec<&'static str>,
    /// The URL came from `--database-url` and holds credentials: not printed.
    pub(crate) flag_with_password: bool,
}

impl SameStore {
    /// Lines that say what the printed command needs besides its words.
    pub(crate) fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.flag_with_password {
            out.push(
                "  (add the same --database-url as this server: it is not shown because it \
                 holds a password; better put such a URL in AUTHSTORE_DATABASE_URL or the \
                 config file than in a flag, which `ps` shows)"
                    .to_owned(),
            );
        }
        if !self.env.is_empty() {
            out.push(format!(
                "  (run it with the same {} in its environment as this server)",
                self.env.join(" and ")
            ));
        }
        out
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub(crate) fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The nil UUID (never minted as an id).
fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

/// Which backend a URL names, as far as key handling cares.
#[derive(Debug)]
enum Kind {
    Memory,
    Sqlite(PathBuf),
    Postgres,
}

fn kind(url: &str) -> Option<Kind> {
    let scheme = url.split_once(':')?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "memory" => Some(Kind::Memory),
        "sqlite" => Some(Kind::Sqlite(sqlite_path(url))),
        "postgres" | "postgresql" => Some(Kind::Postgres),
        _ => None,
    }
}

/// The database file a `sqlite:` URL names (as `authstore-sqlite` reads it: the part before
/// `?`, without a leading `//`, `%XX` decoded). A URL the backend refuses fails when opened,
/// and then nothing this command created is kept.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.get("sqlite:".len()..).unwrap_or("");
    let path = rest.split('?').next().unwrap_or("");
    let path = path.strip_prefix("//").unwrap_or(path);
    PathBuf::from(percent_decode(path))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Where one key ring comes from. No `Debug`: it may hold key material.
enum Source {
    /// A file named by flag, environment or config file: it must exist.
    Named(PathBuf),
    /// Inline text from an environment variable.
    Inline(Zeroizing<String>),
    /// The default file beside a SQLite database: created on first run.
    Beside(PathBuf),
    /// Fresh keys in this process (`memory:`).
    Fresh,
}

/// Files this command created, removed again if it fails before the store is open (they
/// protect nothing yet).
#[derive(Debug, Default)]
struct Created(Vec<PathBuf>);

impl Created {
    /// Keeps the files; returns their paths.
    fn keep(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn beside(db: &Path, ring: Ring) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(ring.default_suffix());
    PathBuf::from(s)
}

fn missing_key_message(db: &Path, file: &Path, ring: Ring) -> String {
    let what = match ring {
        Ring::Token => "the tokens and client secrets in that database cannot be verified",
        Ring::Sealing => {
            "the sealed secrets in that database (TOTP secrets, linked accounts' provider \
             tokens) cannot be opened"
        }
    };
    format!(
        "the database {db} exists but its {name} file {file} is missing: {what} without it. \
         Restore the file from your backup (or name it with {flag} or give it in {env}); \
         authstore does not make new keys over existing data",
        db = db.display(),
        name = ring.name(),
        file = file.display(),
        flag = ring.flag(),
        env = ring.inline_env(),
    )
}

fn postgres_message() -> String {
    "a PostgreSQL database needs its keys given (they are not kept in the database): create \
     them once with `(umask 077; authstore keys generate > token.keys)` and \
     `(umask 077; authstore keys generate --sealing > sealing.keys)`, then pass \
     --token-key-file token.keys --sealing-key-file sealing.keys (or set \
     AUTHSTORE_TOKEN_KEY_FILE and AUTHSTORE_SEALING_KEY_FILE, AUTHSTORE_TOKEN_KEYS and \
     AUTHSTORE_SEALING_KEYS, or token_key_file and sealing_key_file in the config file)"
        .to_owned()
}

impl Settings {
    fn source(&self, ring: Ring, kind: &Kind) -> CliResult<Source> {
        let (named, from_config) = match ring {
            Ring::Token => (&self.token_key_file, &self.file.token_key_file),
            Ring::Sealing => (&self.sealing_key_file, &self.file.sealing_key_file),
        };
        let inline = env_var(ring.inline_env()).map(Zeroizing::new);
        if let Some(p) = named {
            if inline.is_some() {
                tracing::warn!(
                    "{} is ignored: {} (or its environment variable) names a key file",
                    ring.inline_env(),
                    ring.flag()
                );
            }
            return Ok(Source::Named(p.clone()));
        }
        if let Some(text) = inline {
            return Ok(Source::Inline(text));
        }
        if let Some(p) = from_config {
            return Ok(Source::Named(p.clone()));
        }
        match kind {
            Kind::Sqlite(db) => Ok(Source::Beside(beside(db, ring))),
            Kind::Memory => Ok(Source::Fresh),
            Kind::Postgres => Err(CliError::Keys(postgres_message())),
        }
    }

    /// The key text of one ring, creating the default file on first run.
    fn key_text(
        &self,
        ring: Ring,
        kind: &Kind,
        db_exists: bool,
        created: &mut Created,
    ) -> CliResult<Option<(Zeroizing<String>, String)>> {
        Ok(match self.source(ring, kind)? {
            Source::Named(p) => Some((keys::read_key_file(&p, ring)?, p.display().to_string())),
            Source::Inline(t) => Some((t, ring.inline_env().to_owned())),
            Source::Beside(p) => {
                let shown = p.display().to_string();
                if p.exists() {
                    Some((keys::read_key_file(&p, ring)?, shown))
                } else if db_exists {
                    let db = match kind {
                        Kind::Sqlite(db) => db.clone(),
                        _ => PathBuf::new(),
                    };
                    return Err(CliError::Keys(missing_key_message(&db, &p, ring)));
                } else {
                    let text = keys::create_key_file(&p, ring)?;
                    created.0.push(p);
                    Some((text, shown))
                }
            }
            Source::Fresh => None,
        })
    }

    /// Where the URL came from, for messages.
    fn url_origin(&self) -> String {
        match self.database_url_source {
            UrlSource::Flag => "--database-url".to_owned(),
            UrlSource::Env(var) => var.to_owned(),
            UrlSource::ConfigFile => match &self.config_path {
                Some(p) => format!("database_url in {}", p.display()),
                None => "database_url in the config file".to_owned(),
            },
            UrlSource::Default => "the default; name another with --database-url".to_owned(),
        }
    }

    /// Opens the store with its keys and configuration. `access` says whether the
    /// database may be created: on first run (a SQLite file that does not exist yet) the key
    /// files are created beside it; otherwise such a file is an error and nothing is made.
    /// A database without any schema (new) is migrated for [`Access::Create`] and
    /// [`Access::Existing`] (`serve` and `migrate` migrate themselves).
    pub(crate) async fn open(&self, access: Access) -> CliResult<Authstore> {
        let url = self.database_url.as_str();
        let Some(kind) = kind(url) else {
            // Let the library say which URLs it accepts (it changes nothing for these).
            authstore::open(url).await?;
            return Err(CliError::input(format!(
                "unsupported database URL {:?}",
                self.database_display()
            )));
        };
        // Everything that can be checked is checked before any file is made.
        let config = self.file.store_config()?;
        let db_exists = match &kind {
            Kind::Sqlite(p) => {
                if access == Access::Existing && !p.exists() {
                    return Err(CliError::input(format!(
                        "the database {} does not exist (from {}); this command does not \
                         create one: check the path, or create the database with `authstore \
                         migrate` (or `authstore serve`) with the same settings",
                        p.display(),
                        self.url_origin()
                    )));
                }
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(d) = dir.filter(|d| !d.is_dir()) {
                    return Err(CliError::input(format!(
                        "the directory {} of the database does not exist: create it first",
                        d.display()
                    )));
                }
                p.exists()
            }
            Kind::Memory => {
                match access {
                    Access::Serve => {}
                    Access::Existing => eprintln!(
                        "warning: a memory: store lives only in this process: it starts empty \
                         (nothing another command wrote is in it), and what this command \
                         writes is thrown away when it exits"
                    ),
                    Access::Create | Access::Migrate => eprintln!(
                        "warning: a memory: store lives only in this process: what this \
                         command writes is thrown away when it exits (use a sqlite:// or \
                         postgres:// database to keep it)"
                    ),
                }
                false
            }
            Kind::Postgres => true,
        };
        let mut created = Created::default();
        let token = match self.key_text(Ring::Token, &kind, db_exists, &mut created)? {
            Some((text, src)) => keys::parse_token_keys(&text, &src)?,
            None => TokenKeyring::new(TokenKey::generate("memory-1")?),
        };
        let sealing = match self.key_text(Ring::Sealing, &kind, db_exists, &mut created)? {
            Some((text, src)) => keys::parse_sealing_keys(&text, &src)?,
            None => SealingKeyring::new(SealingKey::generate("memory-1")?),
        };
        if let (Kind::Sqlite(db), false) = (&kind, db_exists) {
            // Create the file private from the start (it holds password hashes and the audit
            // log); SQLite gives its -wal and -shm files the same mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(db)
                .map_err(|e| {
                    CliError::io(format!("cannot create database file {}", db.display()), e)
                })?;
            created.0.push(db.clone());
        }
        let backend = authstore::open(url).await?;
        for p in created.keep() {
            if let Some(ring) = [Ring::Token, Ring::Sealing].into_iter().find(|r| {
                p.as_os_str()
                    .to_string_lossy()
                    .ends_with(r.default_suffix())
            }) {
                tracing::info!(
                    file = %p.display(),
                    "created a new {} file (mode 0600): back it up, apart from the database",
                    ring.name()
                );
            }
        }
        let store = Authstore::new(backend, token)
            .with_sealing_keys(sealing)
            .with_config(config)?;
        if !db_exists {
            tracing::info!(database = %self.database_display(), "created a new database");
        }
        if matches!(access, Access::Create | Access::Existing) {
            // One primary-key read of a client that cannot exist tells whether the schema is
            // there. A database with no schema at all is new: nothing can depend on its old
            // shape, so it is migrated here. One at an older version is left to
            // `authstore migrate` (or `serve`), an operator's decision during upgrades.
            let nil = authstore_core::ClientId::from_uuid(uuid_nil());
            match store.backend().get_client(nil).await {
                Ok(_) => {}
                Err(authstore_core::Error::NotMigrated { found: 0, .. }) => {
                    let applied = store.migrate().await?;
                    tracing::info!(?applied, "migrated the new database");
                }
                Err(e) => return Err(e.into()),
            }
            verify_keys(&store).await?;
        }
        Ok(store)
    }
}

/// Checks the key rings against the ones the database was used with (refusing a wrong key
/// file before anything is hashed with it), and records keys it has not seen yet. Needs a
/// migrated store: `serve` and `migrate` call it after migrating.
pub(crate) async fn verify_keys(store: &Authstore) -> CliResult<()> {
    let v = store.verify_keys().await?;
    for c in &v.recorded {
        tracing::info!(ring = ?c.ring, key_id = %c.key_id, "recorded a new key's check in the database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_quoting() {
        assert_eq!(
            sqlite_path("sqlite://./authstore.db"),
            PathBuf::from("./authstore.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/a%20b.db?readers=2"),
            PathBuf::from("/var/lib/a b.db")
        );
        assert_eq!(sqlite_path("sqlite:x.db"), PathBuf::from("x.db"));
        assert_eq!(shell_quote("sqlite://./a.db"), "sqlite://./a.db");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn settings_never_show_a_database_password() {
        for url in [
            "postgres://u:hunter2@db/x",
            "postgres://u@db/x?password=hunter2",
            "postgres://db/x?sslpassword=hunter2",
            "postgres//u:hunter2@db/x",
            "postgres:u:hunter2@db/x",
        ] {
            let s = Settings {
                database_url: url.to_owned(),
                database_url_source: UrlSource::Flag,
                config_path: None,
                file: FileConfig::default(),
                token_key_file: None,
                sealing_key_file: None,
            };
            let shown = format!("{s:?} {} {:?}", s.database_display(), s.same_store());
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
            assert!(!s.url_shows_whole());
            assert!(s.same_store().flag_with_password);
        }
    }
}
