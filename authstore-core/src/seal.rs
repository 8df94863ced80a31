//! Sealing: reversible secrets (third-party tokens of linked accounts, TOTP secrets) encrypted
//! with AES-256-GCM under a key ring.
//!
//! A sealed value reads `0x01 | key id length | key id | 12-byte nonce | ciphertext and tag`.
//! It carries the id of the key that sealed it, so keys can rotate: the active key seals,
//! older keys still open, and [`SealingKeyring::reseal`] moves a value to the active key. The
//! associated data binds the value to its table, column and row: a ciphertext copied to
//! another row or column fails to open with [`Error::SealedValueInvalid`]. Nonces are 96
//! random bits from the operating system per seal. Keys come from configuration, never from
//! the database.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use zeroize::Zeroizing;

use crate::backend::KEY_CHECK_LEN;
use crate::error::{Error, Result};
use crate::token::{TokenKey, key_check, random_bytes};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_KEY_ID: usize = 64;

/// A 256-bit sealing key with an identifier (at most 64 printable ASCII characters, written
/// into every value it seals). Zeroized on drop; `Debug` shows the id only.
#[derive(Clone)]
pub struct SealingKey {
    key: TokenKey,
    cipher: Aes256Gcm,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("id", &self.key.id())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SealingKey {
    fn from_token_key(key: TokenKey) -> Self {
        let cipher = Aes256Gcm::new(key.bytes().into());
        Self { key, cipher }
    }

    /// A key from 32 bytes.
    pub fn from_bytes(id: &str, key: [u8; 32]) -> Result<Self> {
        Ok(Self::from_token_key(TokenKey::from_bytes(id, key)?))
    }

    /// A key from 64 hex digits (as kept in a key file or environment variable).
    pub fn from_hex(id: &str, hex: &str) -> Result<Self> {
        Ok(Self::from_token_key(TokenKey::from_hex(id, hex)?))
    }

    /// A fresh random key.
    pub fn generate(id: &str) -> Result<Self> {
        Ok(Self::from_token_key(TokenKey::generate(id)?))
    }

    /// The key as 64 hex digits, for writing a key file.
    ///
    /// # Security
    ///
    /// This is key material: write it only to a file with mode 0600 or a secret store, never
    /// next to the data it protects in a backup.
    pub fn to_hex(&self) -> Zeroizing<String> {
        self.key.to_hex()
    }

    /// The key's identifier.
    pub fn id(&self) -> &str {
        self.key.id()
    }

    /// The key's check: 16 bytes that tell this key apart from any other and reveal nothing
    /// about it, recorded in the database the key is used with
    /// ([`Authstore::verify_keys`](crate::Authstore::verify_keys)). Derived like
    /// [`TokenKey::key_check`] under its own context, [`SEALING_KEY_CHECK_CONTEXT`], so the
    /// same bytes used as a token key and as a sealing key give different checks.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        key_check(SEALING_KEY_CHECK_CONTEXT, self.key.bytes())
    }
}

/// The BLAKE3 key-derivation context of [`SealingKey::key_check`].
pub const SEALING_KEY_CHECK_CONTEXT: &str = "authstore 2026 sealing key check v1";

/// Where a sealed value lives: the associated data it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// The table (e.g. `linked_accounts`).
    pub table: &'a str,
    /// The column (e.g. `access_token`).
    pub column: &'a str,
    /// The row's identity (e.g. the bytes of its id).
    pub row: &'a [u8],
}

impl SealContext<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.table.len() + self.column.len() + self.row.len());
        out.extend_from_slice(b"authstore-seal-v1");
        // Length-prefixed parts, so no two contexts encode alike.
        for part in [
            self.table.as_bytes(),
            self.column.as_bytes(),
            self.row,
            key_id.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// A sealed value, as stored. `Debug` shows the key id and length, never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key {:?}, {} bytes)",
            self.key_id().unwrap_or("?"),
            self.0.len()
        )
    }
}

impl Sealed {
    /// Wraps bytes read back from storage (checked when opened).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of the key that sealed it, if the header is well-formed.
    pub fn key_id(&self) -> Option<&str> {
        let (id, _) = self.split().ok()?;
        Some(id)
    }

    /// `(key id, nonce || ciphertext || tag)`.
    fn split(&self) -> Result<(&str, &[u8])> {
        let bad = |reason| Error::SealedValueInvalid { reason };
        let (&version, rest) = self.0.split_first().ok_or(bad("empty"))?;
        if version != VERSION {
            return Err(bad("unknown format version"));
        }
        let (&len, rest) = rest.split_first().ok_or(bad("truncated header"))?;
        let len = usize::from(len);
        if len == 0 || len > MAX_KEY_ID || rest.len() < len + NONCE_LEN + TAG_LEN {
            return Err(bad("truncated or malformed"));
        }
        let (id, body) = rest.split_at(len);
        let id = std::str::from_utf8(id).map_err(|_| bad("malformed key id"))?;
        Ok((id, body))
    }
}

/// The deployment's sealing keys: the active key seals; older keys still open values sealed
/// before a rotation, until [`reseal`](Self::reseal) has moved them.
#[derive(Debug, Clone)]
pub struct SealingKeyring {
    active: SealingKey,
    older: Vec<SealingKey>,
}

impl SealingKeyring {
    /// A ring with one key.
    pub fn new(active: SealingKey) -> Self {
        Self {
            active,
            older: Vec::new(),
        }
    }

    /// A ring with an active key and older keys that still open old values.
    pub fn with_older(active: SealingKey, older: Vec<SealingKey>) -> Result<Self> {
        let mut ids = std::collections::HashSet::new();
        for k in std::iter::once(&active).chain(&older) {
            if !ids.insert(k.id()) {
                return Err(Error::Config {
                    reason: format!("sealing key id {:?} appears twice", k.id()),
                });
            }
        }
        Ok(Self { active, older })
    }

    /// The active key's id.
    pub fn active_id(&self) -> &str {
        self.active.id()
    }

    /// Every key of the ring: the active one first, then the older ones.
    pub fn keys(&self) -> impl Iterator<Item = &SealingKey> {
        std::iter::once(&self.active).chain(&self.older)
    }

    /// Seals `plaintext` for `ctx` under the active key.
    pub fn seal(&self, plaintext: &[u8], ctx: &SealContext<'_>) -> Result<Sealed> {
        let key = &self.active;
        let id = key.id().as_bytes();
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let nonce = Nonce::<Aes256Gcm>::from(*nonce_bytes);
        let aad = ctx.aad(key.id());
        let ct = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Config {
                reason: "AES-GCM refused to seal (value too large?)".into(),
            })?;
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ct.len());
        out.push(VERSION);
        // The id is at most 64 bytes (checked when the key was made).
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(nonce_bytes.as_ref());
        out.extend_from_slice(&ct);
        Ok(Sealed(out))
    }

    /// Opens a value sealed for `ctx`. [`Error::SealingKeyUnknown`] if its key is not in the
    /// ring; [`Error::SealedValueInvalid`] if it was altered or belongs elsewhere.
    pub fn open(&self, sealed: &Sealed, ctx: &SealContext<'_>) -> Result<Zeroizing<Vec<u8>>> {
        let (id, body) = sealed.split()?;
        let key = std::iter::once(&self.active)
            .chain(&self.older)
            .find(|k| k.id() == id)
            .ok_or_else(|| Error::SealingKeyUnknown {
                key_id: id.to_owned(),
            })?;
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| Error::SealedValueInvalid {
            reason: "malformed nonce",
        })?;
        let aad = ctx.aad(id);
        key.cipher
            .decrypt(&nonce, Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| Error::SealedValueInvalid {
                reason: "authentication failed: altered, or sealed for another table, column or row",
            })
    }

    /// [`seal`](Self::seal) for text.
    pub fn seal_str(&self, plaintext: &str, ctx: &SealContext<'_>) -> Result<Sealed> {
        self.seal(plaintext.as_bytes(), ctx)
    }

    /// [`open`](Self::open) for text sealed with [`seal_str`](Self::seal_str).
    pub fn open_str(&self, sealed: &Sealed, ctx: &SealContext<'_>) -> Result<Zeroizing<String>> {
        let mut bytes = self.open(sealed, ctx)?;
        let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            // Wipe the plaintext that came back in the error.
            drop(Zeroizing::new(e.into_bytes()));
            Error::SealedValueInvalid {
                reason: "not UTF-8 text",
            }
        })?;
        Ok(Zeroizing::new(text))
    }

    /// Whether `sealed` is under another key than the active one.
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != Some(self.active.id())
    }

    /// Re-encrypts a value under the active key (for rotation, in batches); `None` if it is
    /// already under the active key. The value must open for `ctx`.
    pub fn reseal(&self, sealed: &Sealed, ctx: &SealContext<'_>) -> Result<Option<Sealed>> {
        if !self.needs_reseal(sealed) {
            // Still prove it opens, so a reseal pass also finds broken values.
            self.open(sealed, ctx)?;
            return Ok(None);
        }
        let plain = self.open(sealed, ctx)?;
        self.seal(&plain, ctx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(row: &[u8]) -> SealContext<'_> {
        SealContext {
            table: "linked_accounts",
            column: "access_token",
            row,
        }
    }

    #[test]
    fn seals_and_opens_bound_to_table_column_row() {
        let ring = SealingKeyring::new(SealingKey::from_bytes("s1", [3; 32]).unwrap());
        let a = ring
            .seal_str("ya29.provider-token", &ctx(b"row-1"))
            .unwrap();
        assert_eq!(
            &*ring.open_str(&a, &ctx(b"row-1")).unwrap(),
            "ya29.provider-token"
        );
        assert_eq!(a.key_id(), Some("s1"));
        // Same plaintext twice: different nonces, different bytes.
        let b = ring
            .seal_str("ya29.provider-token", &ctx(b"row-1"))
            .unwrap();
        assert_ne!(a, b);
        // Moved to another row, column or table: refused.
        let moved = [
            ctx(b"row-2"),
            SealContext {
                column: "refresh_token",
                ..ctx(b"row-1")
            },
            SealContext {
                table: "users",
                ..ctx(b"row-1")
            },
        ];
        for other in moved {
            assert!(matches!(
                ring.open(&a, &other),
                Err(Error::SealedValueInvalid { .. })
            ));
        }
        // Any altered byte: refused, never a panic.
        for i in 0..a.as_bytes().len() {
            let mut bytes = a.as_bytes().to_vec();
            bytes[i] ^= 1;
            assert!(
                ring.open(&Sealed::from_bytes(bytes), &ctx(b"row-1"))
                    .is_err(),
                "byte {i}"
            );
        }
        for n in 0..a.as_bytes().len() {
            let cut = Sealed::from_bytes(a.as_bytes()[..n].to_vec());
            assert!(ring.open(&cut, &ctx(b"row-1")).is_err());
        }
        // Empty plaintext works.
        let e = ring.seal(b"", &ctx(b"r")).unwrap();
        assert!(ring.open(&e, &ctx(b"r")).unwrap().is_empty());
    }

    #[test]
    fn rotation_and_reseal() {
        let old = SealingKey::generate("2026-01").unwrap();
        let new = SealingKey::generate("2026-06").unwrap();
        let before = SealingKeyring::new(old.clone());
        let v = before.seal_str("secret", &ctx(b"r")).unwrap();
        let ring = SealingKeyring::with_older(new.clone(), vec![old]).unwrap();
        assert_eq!(&*ring.open_str(&v, &ctx(b"r")).unwrap(), "secret");
        assert!(ring.needs_reseal(&v));
        let moved = ring.reseal(&v, &ctx(b"r")).unwrap().unwrap();
        assert_eq!(moved.key_id(), Some("2026-06"));
        assert!(!ring.needs_reseal(&moved));
        assert_eq!(ring.reseal(&moved, &ctx(b"r")).unwrap(), None);
        // Once the old key is gone, old values name it in the error.
        let only_new = SealingKeyring::new(new);
        assert!(matches!(
            only_new.open(&v, &ctx(b"r")),
            Err(Error::SealingKeyUnknown { key_id }) if key_id == "2026-01"
        ));
        assert_eq!(&*only_new.open_str(&moved, &ctx(b"r")).unwrap(), "secret");
        // Reseal of a value moved to another row fails instead of laundering it.
        assert!(ring.reseal(&v, &ctx(b"other")).is_err());
    }

    #[test]
    fn key_checks_differ_from_token_key_checks() {
        let s = SealingKey::from_bytes("k", [5; 32]).unwrap();
        let t = TokenKey::from_bytes("k", [5; 32]).unwrap();
        assert_ne!(s.key_check(), t.key_check(), "own context per ring");
        assert_eq!(
            s.key_check(),
            SealingKey::from_hex("other", &s.to_hex())
                .unwrap()
                .key_check()
        );
        assert_ne!(
            s.key_check(),
            SealingKey::from_bytes("k", [6; 32]).unwrap().key_check()
        );
        let ring =
            SealingKeyring::with_older(s, vec![SealingKey::generate("old").unwrap()]).unwrap();
        let ids: Vec<&str> = ring.keys().map(SealingKey::id).collect();
        assert_eq!(ids, ["k", "old"]);
    }

    #[test]
    fn nothing_secret_in_debug() {
        let key = SealingKey::from_bytes("k", [0xab; 32]).unwrap();
        let ring = SealingKeyring::new(key.clone());
        let v = ring.seal_str("hunter2-provider-token", &ctx(b"r")).unwrap();
        let shown = format!("{key:?} {ring:?} {v:?}");
        assert!(!shown.contains("abab") && !shown.contains("hunter2"));
        assert!(SealingKeyring::with_older(key.clone(), vec![key]).is_err());
        assert!(SealingKey::from_bytes(&"x".repeat(65), [0; 32]).is_err());
    }
}
