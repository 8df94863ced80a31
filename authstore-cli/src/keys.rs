//! Key files and inline keys: the format `authstore` uses, for programs that open the same
//! store (a resource server validating tokens against the server's database, say).
//!
//! Format: one key per line, `<id> <64 hex digits>`; the first line is the active key, the
//! lines after it older keys still accepted (newest first). Blank lines and lines starting
//! with `#` are ignored. The same text may come from an environment variable
//! (`AUTHSTORE_TOKEN_KEYS`, `AUTHSTORE_SEALING_KEYS`), never from a flag (`ps` shows flags).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use authstore_core::{Clock, SealingKey, SealingKeyring, SystemClock, TokenKey, TokenKeyring};
use zeroize::Zeroizing;

/// Why a key ring cannot be had. The message says what to do; it never shows key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text or file is wrong (format, permissions, missing file).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a key file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A key was refused by the store's key types (length, id).
    #[error(transparent)]
    Store(#[from] authstore_core::Error),
}

type CliResult<T> = Result<T, KeyError>;

impl KeyError {
    fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }
}

/// Which key ring a file holds; names it in messages and picks the generated id's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Hashes every token and client secret.
    Token,
    /// Seals reversible secrets (AES-256-GCM).
    Sealing,
}

impl Ring {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Ring::Token => "token key",
            Ring::Sealing => "sealing key",
        }
    }

    /// The environment variable that may hold the keys inline.
    pub fn inline_env(self) -> &'static str {
        match self {
            Ring::Token => "AUTHSTORE_TOKEN_KEYS",
            Ring::Sealing => "AUTHSTORE_SEALING_KEYS",
        }
    }

    /// The flag that names a key file.
    pub fn flag(self) -> &'static str {
        match self {
            Ring::Token => "--token-key-file",
            Ring::Sealing => "--sealing-key-file",
        }
    }

    /// The suffix of the default file beside a SQLite database.
    pub fn default_suffix(self) -> &'static str {
        match self {
            Ring::Token => ".token-keys",
            Ring::Sealing => ".sealing-keys",
        }
    }

    /// The `keys generate` flags that make a key for this ring.
    pub fn generate_command(self) -> &'static str {
        match self {
            Ring::Token => "authstore keys generate",
            Ring::Sealing => "authstore keys generate --sealing",
        }
    }
}

/// One parsed line: (id, hex). The hex is key material and zeroized on drop.
type KeyLine = (String, Zeroizing<String>);

/// Splits key-file text into lines of keys. `source` names the file or variable in errors;
/// an error never shows key material.
fn parse_lines(text: &str, source: &str) -> CliResult<Vec<KeyLine>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(hex), None) => {
                out.push((id.to_owned(), Zeroizing::new(hex.to_owned())));
            }
            _ => {
                return Err(KeyError::Invalid(format!(
                    "{source} line {}: expected `<id> <64 hex digits>` (e.g. `k20261122-1 \
                     0123…ef`); generate one with `authstore keys generate`",
                    n + 1
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(KeyError::Invalid(format!(
            "{source} holds no key; add one made by `authstore keys generate`"
        )));
    }
    Ok(out)
}

fn key_error(source: &str, e: authstore_core::Error) -> KeyError {
    KeyError::Invalid(format!("{source}: {e}"))
}

/// Parses a token key ring.
pub fn parse_token_keys(text: &str, source: &str) -> CliResult<TokenKeyring> {
    let mut keys = parse_lines(text, source)?
        .into_iter()
        .map(|(id, hex)| TokenKey::from_hex(&id, &hex).map_err(|e| key_error(source, e)));
    let active = keys
        .next()
        .ok_or_else(|| KeyError::Invalid(format!("{source} holds no key")))??;
    let older = keys.collect::<CliResult<Vec<_>>>()?;
    TokenKeyring::with_older(active, older).map_err(|e| key_error(source, e))
}

/// Parses a sealing key ring.
pub fn parse_sealing_keys(text: &str, source: &str) -> CliResult<SealingKeyring> {
    let mut keys = parse_lines(text, source)?
        .into_iter()
        .map(|(id, hex)| SealingKey::from_hex(&id, &hex).map_err(|e| key_error(source, e)));
    let active = keys
        .next()
        .ok_or_else(|| KeyError::Invalid(format!("{source} holds no key")))??;
    let older = keys.collect::<CliResult<Vec<_>>>()?;
    SealingKeyring::with_older(active, older).map_err(|e| key_error(source, e))
}

/// Reads a key file, refusing one that group or others may access (as ssh does).
pub fn read_key_file(path: &Path, ring: Ring) -> CliResult<Zeroizing<String>> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KeyError::Invalid(format!(
                "{} file {shown} does not exist; create it (private from the start) with \
                 `(umask 077; {} > {shown})`",
                ring.name(),
                ring.generate_command()
            ))
        } else {
            KeyError::io(format!("cannot read {} file {shown}", ring.name()), e)
        }
    })?;
    let meta = f
        .metadata()
        .map_err(|e| KeyError::io(format!("cannot read {} file {shown}", ring.name()), e))?;
    if !meta.is_file() {
        return Err(KeyError::Invalid(format!(
            "{} file {shown} is not a regular file",
            ring.name()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Invalid(format!(
            "{} file {shown} is accessible by group or others (mode {mode:04o}); keys must be \
             private: run `chmod 600 {shown}`",
            ring.name()
        )));
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)
        .map_err(|e| KeyError::io(format!("cannot read {} file {shown}", ring.name()), e))?;
    Ok(text)
}

/// Today's date as `YYYYMMDD`, for key ids.
fn today() -> String {
    SystemClock
        .now()
        .to_rfc3339()
        .chars()
        .take(10)
        .filter(|c| c.is_ascii_digit())
        .collect()
}

/// The id a generated key gets: `k<date>-1` for token keys, `s<date>-1` for sealing keys.
pub fn default_key_id(ring: Ring) -> String {
    let p = match ring {
        Ring::Token => 'k',
        Ring::Sealing => 's',
    };
    format!("{p}{}-1", today())
}

/// Checks a key id for the file format: a line starting with `#` is a comment, and
/// whitespace separates the id from the key, so neither may be in an id. (The store's key
/// types check the rest: 1 to 64 printable ASCII characters.)
pub fn check_key_id(id: &str) -> CliResult<()> {
    if id.starts_with('#') {
        return Err(KeyError::Invalid(format!(
            "key id {id:?} starts with `#`: its line in a key file would be a comment (the \
             key ignored); choose an id such as k20261122-1"
        )));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(KeyError::Invalid(format!(
            "key id {id:?} contains whitespace, which separates the id from the key in a key \
             file; choose an id such as k20261122-1"
        )));
    }
    Ok(())
}

/// A fresh key as one line of the file format (`<id> <hex>`), without newline. The id is
/// checked with [`check_key_id`].
pub fn generate_line(ring: Ring, id: &str) -> CliResult<Zeroizing<String>> {
    check_key_id(id)?;
    let hex = match ring {
        Ring::Token => TokenKey::generate(id)?.to_hex(),
        Ring::Sealing => SealingKey::generate(id)?.to_hex(),
    };
    Ok(Zeroizing::new(format!("{id} {}", hex.as_str())))
}

/// Creates a new key file holding one fresh key, with mode 0600 from the start. Fails if
/// the file exists (never overwrites a key). Returns the file's text.
pub fn create_key_file(path: &Path, ring: Ring) -> CliResult<Zeroizing<String>> {
    let line = generate_line(ring, &default_key_id(ring))?;
    let text = Zeroizing::new(format!(
        "# authstore {name}s: one `<id> <64 hex digits>` per line; the first is active, older \
         keys follow (newest first).\n# Keep this file private (mode 0600) and back it up \
         apart from the database: without it the data it protects cannot be used.\n{line}\n",
        name = ring.name(),
        line = line.as_str()
    ));
    let shown = path.display();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyError::io(format!("cannot create {} file {shown}", ring.name()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| KeyError::io(format!("cannot write {} file {shown}", ring.name()), e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const HEX_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parses_the_format() {
        let ring = parse_token_keys(
            &format!("# comment\n\nk2 {HEX_B}\n  k1 {HEX_A}  \n"),
            "test",
        )
        .unwrap();
        assert_eq!(ring.active_id(), "k2");
        assert!(ring.has_older());
        let s = parse_sealing_keys(&format!("s1 {HEX_A}\n"), "test").unwrap();
        assert_eq!(s.active_id(), "s1");
        for bad in [
            String::new(),
            "# only a comment\n".to_owned(),
            format!("k1 {HEX_A} extra"),
            "k1 abcd".to_owned(),
            format!("k1 {HEX_A}\nk1 {HEX_B}"),
            HEX_A.to_owned(),
        ] {
            let e = parse_token_keys(&bad, "FILE").unwrap_err().to_string();
            assert!(e.starts_with("FILE"), "{bad:?}: {e}");
            assert!(
                !e.contains(HEX_A) && !e.contains("0a0b0c"),
                "no key material: {e}"
            );
        }
    }

    #[test]
    fn key_ids_that_would_break_the_file_are_refused() {
        for bad in ["#new", "# new", "a b", "a\tb", "new\n"] {
            let e = generate_line(Ring::Token, bad).unwrap_err().to_string();
            assert!(
                e.contains("key id") && e.contains("k20261122-1"),
                "{bad:?}: {e}"
            );
        }
        // `#` inside an id is fine: only a leading one starts a comment.
        let l = generate_line(Ring::Sealing, "s#1").unwrap();
        assert_eq!(parse_sealing_keys(&l, "x").unwrap().active_id(), "s#1");
    }

    #[test]
    fn generated_lines_parse() {
        let l = generate_line(Ring::Token, "k-test").unwrap();
        assert_eq!(parse_token_keys(&l, "x").unwrap().active_id(), "k-test");
        let id = default_key_id(Ring::Sealing);
        assert!(
            id.starts_with('s') && id.ends_with("-1") && id.len() == 11,
            "{id}"
        );
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        create_key_file(&p, Ring::Token).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let before = std::fs::read(&p).unwrap();
        assert!(create_key_file(&p, Ring::Token).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let text = read_key_file(&p, Ring::Token).unwrap();
        parse_token_keys(&text, "k").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let e = read_key_file(&p, Ring::Token).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
