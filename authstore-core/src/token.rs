//! Token minting, format checks and keyed hashing.
//!
//! A minted token reads `[<deployment>_]<kind>_<body><checksum>`: `body` is the base62 form
//! of 32 random bytes (always 43 characters) and `checksum` the base62 form of the first four
//! bytes of BLAKE3 over everything before it (always 6 characters). A string that carries one
//! of our kind prefixes but fails this format is rejected before any lookup. Only a 32-byte
//! keyed BLAKE3 hash of a token is ever stored ([`TokenKeyring::hash`]).

use std::fmt;

use zeroize::Zeroizing;

use crate::backend::KEY_CHECK_LEN;
use crate::error::{Error, Result};

/// The longest token string accepted, minted here or elsewhere.
pub const MAX_TOKEN_LEN: usize = 4096;

const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The kinds of credential authstore mints, each with its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenKind {
    /// Authorization code, prefix `ac`.
    AuthorizationCode,
    /// Access token, prefix `at`.
    AccessToken,
    /// Refresh token, prefix `rt`.
    RefreshToken,
    /// Personal access token, prefix `pat`.
    PersonalAccessToken,
    /// Authorization session handle, prefix `as`.
    AuthorizationSession,
    /// Client secret, prefix `cs`.
    ClientSecret,
    /// Login session, prefix `ls`.
    LoginSession,
    /// One-time token (password reset, email verification, magic link), prefix `ot`.
    OneTimeToken,
    /// WebAuthn ceremony handle, prefix `wc`.
    Ceremony,
}

impl TokenKind {
    /// Every kind.
    pub const ALL: [TokenKind; 9] = [
        TokenKind::AuthorizationCode,
        TokenKind::AccessToken,
        TokenKind::RefreshToken,
        TokenKind::PersonalAccessToken,
        TokenKind::AuthorizationSession,
        TokenKind::ClientSecret,
        TokenKind::LoginSession,
        TokenKind::OneTimeToken,
        TokenKind::Ceremony,
    ];

    /// Position in [`TokenKind::ALL`].
    const fn index(self) -> usize {
        match self {
            TokenKind::AuthorizationCode => 0,
            TokenKind::AccessToken => 1,
            TokenKind::RefreshToken => 2,
            TokenKind::PersonalAccessToken => 3,
            TokenKind::AuthorizationSession => 4,
            TokenKind::ClientSecret => 5,
            TokenKind::LoginSession => 6,
            TokenKind::OneTimeToken => 7,
            TokenKind::Ceremony => 8,
        }
    }

    /// The prefix minted tokens of this kind carry.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::AuthorizationCode => "ac",
            TokenKind::AccessToken => "at",
            TokenKind::RefreshToken => "rt",
            TokenKind::PersonalAccessToken => "pat",
            TokenKind::AuthorizationSession => "as",
            TokenKind::ClientSecret => "cs",
            TokenKind::LoginSession => "ls",
            TokenKind::OneTimeToken => "ot",
            TokenKind::Ceremony => "wc",
        }
    }

    /// A human name, used in errors.
    pub const fn name(self) -> &'static str {
        match self {
            TokenKind::AuthorizationCode => "authorization code",
            TokenKind::AccessToken => "access token",
            TokenKind::RefreshToken => "refresh token",
            TokenKind::PersonalAccessToken => "personal access token",
            TokenKind::AuthorizationSession => "authorization session",
            TokenKind::ClientSecret => "client secret",
            TokenKind::LoginSession => "login session",
            TokenKind::OneTimeToken => "one-time token",
            TokenKind::Ceremony => "passkey ceremony",
        }
    }
}

/// How tokens are minted and recognised: the optional deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFormat {
    deployment: Option<String>,
    /// `[<deployment>_]<kind>_` per kind, in [`TokenKind::ALL`] order: computed once so the
    /// validation hot path does not allocate.
    prefixes: [String; 9],
}

impl Default for TokenFormat {
    fn default() -> Self {
        Self::build(None)
    }
}

/// How a presented string relates to the token format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// Carries our prefix for the expected kind, in the minted shape, and (from
    /// [`TokenFormat::check`], not [`TokenFormat::check_shape`]) a valid checksum.
    Minted,
    /// Carries none of our prefixes: minted elsewhere.
    Foreign,
}

impl TokenFormat {
    /// No deployment prefix: tokens read `at_…`.
    pub fn new() -> Self {
        Self::default()
    }

    fn build(deployment: Option<String>) -> Self {
        let prefixes = TokenKind::ALL.map(|k| match &deployment {
            Some(d) => format!("{d}_{}_", k.prefix()),
            None => format!("{}_", k.prefix()),
        });
        Self {
            deployment,
            prefixes,
        }
    }

    /// With a deployment prefix: tokens read `<prefix>_at_…`. The prefix is 1 to 16 lowercase
    /// ASCII letters or digits, so secret scanners can be taught one pattern per deployment.
    pub fn with_deployment_prefix(prefix: &str) -> Result<Self> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 16
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(Error::Config {
                reason: format!(
                    "deployment prefix {prefix:?} must be 1 to 16 lowercase ASCII letters or digits"
                ),
            });
        }
        Ok(Self::build(Some(prefix.to_owned())))
    }

    /// The deployment prefix, if any.
    pub fn deployment_prefix(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    fn full_prefix(&self, kind: TokenKind) -> &str {
        &self.prefixes[kind.index()]
    }

    /// Mints a new token of `kind` from 32 bytes of the operating system's randomness.
    pub fn mint(&self, kind: TokenKind) -> Result<Zeroizing<String>> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        let prefix = self.full_prefix(kind);
        // Sized once, so no reallocation leaves a copy of the token behind.
        let mut out = Zeroizing::new(String::with_capacity(prefix.len() + BODY_LEN + CHECK_LEN));
        out.push_str(prefix);
        out.push_str(&Zeroizing::new(base62_fixed(bytes.as_ref(), BODY_LEN)));
        let check = checksum(out.as_bytes());
        check.iter().for_each(|&d| out.push(char::from(d)));
        Ok(out)
    }

    /// Checks a presented string before any lookup.
    ///
    /// Strings that are empty, longer than [`MAX_TOKEN_LEN`], or contain NUL or control
    /// characters are malformed. A string that starts with one of our kind prefixes must be
    /// a well-formed token of `kind` with a valid checksum. Anything else is
    /// [`Presented::Foreign`].
    pub fn check(&self, kind: TokenKind, s: &str) -> Result<Presented> {
        let presented = self.check_shape(kind, s)?;
        if presented == Presented::Minted {
            self.check_checksum(kind, s)?;
        }
        Ok(presented)
    }

    /// [`check`](Self::check) without the checksum: length, characters and prefix only.
    ///
    /// For a lookup that verifies the checksum only when nothing was found (the hot path of
    /// validation): a stored token was checked in full when it was minted or stored, so a
    /// string that finds one is well formed, and the checksum (an unkeyed hash anyone can
    /// compute, a guard against typos, not against attackers) then only decides which
    /// error a miss gets. Call [`check_checksum`](Self::check_checksum) on a miss.
    pub fn check_shape(&self, kind: TokenKind, s: &str) -> Result<Presented> {
        let malformed = |reason| Error::MalformedToken {
            kind: kind.name(),
            reason,
        };
        if s.is_empty() {
            return Err(malformed("empty"));
        }
        if s.len() > MAX_TOKEN_LEN {
            return Err(malformed("longer than 4096 bytes"));
        }
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(malformed("contains NUL or control characters"));
        }
        let expected = self.full_prefix(kind);
        if let Some(rest) = s.strip_prefix(expected) {
            if rest.len() != BODY_LEN + CHECK_LEN
                || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(malformed("wrong length or characters after the prefix"));
            }
            return Ok(Presented::Minted);
        }
        if self.looks_like_ours(s) {
            return Err(malformed(
                "prefix is for another kind of token or deployment",
            ));
        }
        Ok(Presented::Foreign)
    }

    /// The checksum half of [`check`](Self::check), for a string
    /// [`check_shape`](Self::check_shape) found [`Presented::Minted`]:
    /// [`Error::MalformedToken`] if its last six characters are not the checksum of the
    /// rest (a mistyped or truncated token).
    pub fn check_checksum(&self, kind: TokenKind, s: &str) -> Result<()> {
        let ok = s.len() > CHECK_LEN && s.is_char_boundary(s.len() - CHECK_LEN) && {
            let (signed, check) = s.split_at(s.len() - CHECK_LEN);
            checksum(signed.as_bytes()) == check.as_bytes()
        };
        if ok {
            Ok(())
        } else {
            Err(Error::MalformedToken {
                kind: kind.name(),
                reason: "checksum does not match (mistyped or truncated token)",
            })
        }
    }

    /// Whether `s` has the shape of a token minted by some authstore deployment: our
    /// deployment prefix, or `[<anything>_]<kind>_<49 alphanumerics>`.
    fn looks_like_ours(&self, s: &str) -> bool {
        if let Some(d) = &self.deployment {
            if s.strip_prefix(d.as_str())
                .is_some_and(|r| r.starts_with('_'))
            {
                return true;
            }
        }
        let tail = BODY_LEN + CHECK_LEN;
        if s.len() <= tail + 1 || !s.is_char_boundary(s.len() - tail) {
            return false;
        }
        let (head, body) = s.split_at(s.len() - tail);
        let Some(head) = head.strip_suffix('_') else {
            return false;
        };
        body.bytes().all(|b| b.is_ascii_alphanumeric())
            && TokenKind::ALL.iter().any(|k| {
                head == k.prefix()
                    || head
                        .strip_suffix(k.prefix())
                        .is_some_and(|h| h.ends_with('_'))
            })
    }
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Config {
        reason: format!("the operating system's random number generator failed: {e}"),
    })
}

/// Fills `buf` from the operating system's randomness.
pub(crate) fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut b = Zeroizing::new([0u8; N]);
    fill_random(b.as_mut())?;
    Ok(b)
}

/// The checksum digits of a token's prefix and body: the first four bytes of their BLAKE3
/// hash (big-endian) in base 62, six digits. On the stack: validation checks it on every
/// presented token, and an allocation there was a measurable part of memory validation.
fn checksum(signed: &[u8]) -> [u8; CHECK_LEN] {
    let h = blake3::hash(signed);
    let b = h.as_bytes();
    let mut n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut out = [b'0'; CHECK_LEN];
    for d in out.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Base62 of a big-endian number, left-padded with `0` to `width` digits.
/// `bytes` (big-endian, at most 32) in base 62, left-padded with `0` to `width` digits
/// (`width` at most 64 and wide enough for the value: 43 for 32 bytes, 6 for 4).
///
/// The number is held as four 64-bit limbs and divided by 62^10 (< 2^64) per pass, so each
/// pass yields ten digits: about 20x faster than one digit per pass over the bytes, which
/// made base62 most of the cost of minting a token. The limbs and digits are wiped.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    const P10: u128 = 839_299_365_868_340_224; // 62^10
    let mut limbs = Zeroizing::new([0u64; 4]);
    let n = bytes.len().min(32);
    for (i, b) in bytes[bytes.len() - n..].iter().enumerate() {
        let bit = (n - 1 - i) * 8;
        limbs[3 - bit / 64] |= u64::from(*b) << (bit % 64);
    }
    let mut digits = Zeroizing::new([b'0'; 64]);
    let mut pos = digits.len();
    while limbs.iter().any(|&l| l != 0) && pos >= 10 {
        let mut rem: u128 = 0;
        for l in limbs.iter_mut() {
            let acc = (rem << 64) | u128::from(*l);
            // acc < 62^10 * 2^64, so the quotient fits in 64 bits.
            *l = u64::try_from(acc / P10).unwrap_or(u64::MAX);
            rem = acc % P10;
        }
        for _ in 0..10 {
            pos -= 1;
            digits[pos] = ALPHABET[(rem % 62) as usize];
            rem /= 62;
        }
    }
    let start = digits.len() - width.min(digits.len());
    let mut out = String::with_capacity(width);
    digits[start..]
        .iter()
        .for_each(|&d| out.push(char::from(d)));
    out
}

/// The 32-byte keyed hash under which a token is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// From raw bytes, as read back from storage.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw bytes, for storage.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From a slice, as read back from storage; fails unless it is 32 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        <[u8; 32]>::try_from(b).map(Self).map_err(|_| {
            Error::invalid("token hash", format!("expected 32 bytes, got {}", b.len()))
        })
    }

    /// Compares in constant time.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A keyed hash is not a secret, but a short prefix is all anyone needs to read.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A 256-bit token-hashing key, with an identifier. Zeroized on drop; `Debug` shows the id only.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl TokenKey {
    /// A key from 32 bytes. `id` names it in configuration and logs (1 to 64 printable ASCII
    /// characters).
    pub fn from_bytes(id: &str, key: [u8; 32]) -> Result<Self> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config {
                reason: format!("token key id {id:?} must be 1 to 64 printable ASCII characters"),
            });
        }
        Ok(Self {
            id: id.to_owned(),
            key: Zeroizing::new(key),
        })
    }

    /// A key from 64 hex digits (as kept in a key file or environment variable).
    pub fn from_hex(id: &str, hex: &str) -> Result<Self> {
        let hex = hex.trim();
        let bad = || Error::Config {
            reason: format!("token key {id:?} must be 64 hex digits (32 bytes)"),
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, out) in key.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Self::from_bytes(id, *key)
    }

    /// A fresh random key.
    pub fn generate(id: &str) -> Result<Self> {
        let b = random_bytes::<32>()?;
        Self::from_bytes(id, *b)
    }

    /// The key as 64 hex digits, for writing a key file.
    ///
    /// # Security
    ///
    /// This is key material: write it only to a file with mode 0600 or a secret store.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64));
        for b in self.key.iter() {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }

    /// The key's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key, for the other keyed primitives of this crate (sealing).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn hash(&self, token: &[u8]) -> TokenHash {
        TokenHash(*blake3::keyed_hash(&self.key, token).as_bytes())
    }

    /// The key's check: 16 bytes that tell this key apart from any other and reveal nothing
    /// about it, recorded in the database the key is used with
    /// ([`Authstore::verify_keys`](crate::Authstore::verify_keys)). The first 16 bytes of
    /// BLAKE3's key derivation from the key under the context [`TOKEN_KEY_CHECK_CONTEXT`]:
    /// key-derivation mode, so no token hash (keyed-hash mode) can ever equal it.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        key_check(TOKEN_KEY_CHECK_CONTEXT, &self.key)
    }
}

/// The BLAKE3 key-derivation context of [`TokenKey::key_check`].
pub const TOKEN_KEY_CHECK_CONTEXT: &str = "authstore 2026 token key check v1";

/// The first [`KEY_CHECK_LEN`] bytes of BLAKE3's key derivation from `key` under `context`.
pub(crate) fn key_check(context: &str, key: &[u8; 32]) -> [u8; KEY_CHECK_LEN] {
    let derived = Zeroizing::new(blake3::derive_key(context, key));
    let mut out = [0u8; KEY_CHECK_LEN];
    out.copy_from_slice(&derived[..KEY_CHECK_LEN]);
    out
}

/// The deployment's token-hashing keys: the active key hashes new tokens; older keys still
/// find tokens hashed before a rotation.
#[derive(Debug, Clone)]
pub struct TokenKeyring {
    active: TokenKey,
    older: Vec<TokenKey>,
}

impl TokenKeyring {
    /// A ring with one key.
    pub fn new(active: TokenKey) -> Self {
        Self {
            active,
            older: Vec::new(),
        }
    }

    /// A ring with an active key and older keys still accepted for lookup, newest first.
    pub fn with_older(active: TokenKey, older: Vec<TokenKey>) -> Result<Self> {
        let mut ids = std::collections::HashSet::new();
        for k in std::iter::once(&active).chain(&older) {
            if !ids.insert(k.id.as_str()) {
                return Err(Error::Config {
                    reason: format!("token key id {:?} appears twice", k.id),
                });
            }
        }
        Ok(Self { active, older })
    }

    /// The active key's id.
    pub fn active_id(&self) -> &str {
        self.active.id()
    }

    /// The hash a new token is stored under (active key).
    pub fn hash(&self, token: &str) -> TokenHash {
        self.active.hash(token.as_bytes())
    }

    /// The hashes of `token` under the older keys, newest first; tried after the active one
    /// misses.
    pub fn older_hashes<'a>(&'a self, token: &'a str) -> impl Iterator<Item = TokenHash> + 'a {
        self.older.iter().map(move |k| k.hash(token.as_bytes()))
    }

    /// A 32-byte key for another purpose, derived from the active key with BLAKE3's key
    /// derivation (`context` must be a fixed, globally unique string such as
    /// `"authstore-server 2026 csrf"`). Servers use it for CSRF tokens, so every node with the
    /// same token key agrees without another secret. It changes when the active key rotates.
    pub fn derive_key(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.active.bytes()))
    }

    /// Whether the ring holds keys besides the active one.
    pub fn has_older(&self) -> bool {
        !self.older.is_empty()
    }

    /// Every key of the ring: the active one first, then the older ones, newest first.
    pub fn keys(&self) -> impl Iterator<Item = &TokenKey> {
        std::iter::once(&self.active).chain(&self.older)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_check_and_reject_tampering() {
        let f = TokenFormat::new();
        let t = f.mint(TokenKind::AccessToken).unwrap();
        assert!(t.starts_with("at_"));
        assert_eq!(t.len(), 3 + BODY_LEN + CHECK_LEN);
        assert_eq!(
            f.check(TokenKind::AccessToken, &t).unwrap(),
            Presented::Minted
        );
        // Wrong kind.
        assert!(matches!(
            f.check(TokenKind::RefreshToken, &t),
            Err(Error::MalformedToken { .. })
        ));
        // One character changed: checksum fails.
        let mut bad = t.to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'a' { 'b' } else { 'a' });
        assert!(matches!(
            f.check(TokenKind::AccessToken, &bad),
            Err(Error::MalformedToken { .. })
        ));
        // Truncated.
        assert!(f.check(TokenKind::AccessToken, &t[..t.len() - 1]).is_err());
        // Foreign strings pass the format check.
        assert_eq!(
            f.check(TokenKind::AccessToken, "eyJhbGciOi.x.y").unwrap(),
            Presented::Foreign
        );
        assert!(f.check(TokenKind::AccessToken, "").is_err());
        assert!(f.check(TokenKind::AccessToken, "a\0b").is_err());
        assert!(f.check(TokenKind::AccessToken, &"x".repeat(4097)).is_err());
    }

    #[test]
    fn deployment_prefix() {
        let f = TokenFormat::with_deployment_prefix("acme").unwrap();
        let t = f.mint(TokenKind::RefreshToken).unwrap();
        assert!(t.starts_with("acme_rt_"));
        assert_eq!(
            f.check(TokenKind::RefreshToken, &t).unwrap(),
            Presented::Minted
        );
        let plain = TokenFormat::new().mint(TokenKind::RefreshToken).unwrap();
        assert!(f.check(TokenKind::RefreshToken, &plain).is_err());
        assert!(TokenFormat::with_deployment_prefix("Bad_").is_err());
    }

    #[test]
    fn base62_is_fixed_width_and_distinct() {
        assert_eq!(base62_fixed(&[0; 32], 43), "0".repeat(43));
        assert_eq!(base62_fixed(&[0xff; 32], 43).len(), 43);
        assert_eq!(base62_fixed(&[0, 61], 2), "0z");
        assert_eq!(base62_fixed(&[0, 62], 2), "10");
        // The limb algorithm gives exactly the digits of the plain one-digit-per-pass
        // division, on all-zero, all-ones and 2,000 varied inputs of both widths used.
        fn reference(bytes: &[u8], width: usize) -> String {
            let mut num = bytes.to_vec();
            let mut digits = Vec::new();
            while num.iter().any(|&b| b != 0) {
                let mut rem: u32 = 0;
                for b in num.iter_mut() {
                    let acc = (rem << 8) | u32::from(*b);
                    *b = (acc / 62) as u8;
                    rem = acc % 62;
                }
                digits.push(ALPHABET[rem as usize]);
            }
            while digits.len() < width {
                digits.push(b'0');
            }
            digits.reverse();
            String::from_utf8(digits).unwrap()
        }
        let mut x = [0xffu8; 32];
        for i in 0..2000u32 {
            if i > 0 {
                for (j, b) in x.iter_mut().enumerate() {
                    *b = (i as u8)
                        .wrapping_mul(31)
                        .wrapping_add((j as u8).wrapping_mul(7))
                        ^ ((i >> 8) as u8);
                }
            }
            if i == 1 {
                x = [0; 32];
            }
            assert_eq!(base62_fixed(&x, 43), reference(&x, 43), "{x:?}");
            assert_eq!(base62_fixed(&x[..4], 6), reference(&x[..4], 6), "{x:?}");
        }
    }

    #[test]
    fn check_is_shape_then_checksum() {
        let f = TokenFormat::new();
        let t = f.mint(TokenKind::AccessToken).unwrap();
        let mut typo = t.to_string();
        let last = typo.pop().unwrap();
        typo.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            f.check_shape(TokenKind::AccessToken, &typo).unwrap(),
            Presented::Minted,
            "the shape holds"
        );
        assert!(f.check_checksum(TokenKind::AccessToken, &typo).is_err());
        assert!(f.check(TokenKind::AccessToken, &typo).is_err());
        assert!(f.check_checksum(TokenKind::AccessToken, &t).is_ok());
        // Never a panic on strings check_shape would refuse.
        for s in ["", "abc", "ééééé", "at_ééé"] {
            assert!(f.check_checksum(TokenKind::AccessToken, s).is_err(), "{s}");
        }
    }

    #[test]
    fn checksum_is_base62_of_the_hash_prefix() {
        // 2^32 - 1 < 62^6, so six digits always hold it; the stack version gives the digits
        // of the general base-62 routine (tokens minted before it still check).
        for i in 0..2000u32 {
            let signed = format!("at_{i:043}");
            let h = blake3::hash(signed.as_bytes());
            assert_eq!(
                checksum(signed.as_bytes()).as_slice(),
                base62_fixed(&h.as_bytes()[..4], CHECK_LEN).as_bytes()
            );
        }
        assert_eq!(base62_fixed(&[0xff; 4], CHECK_LEN).len(), CHECK_LEN);
    }

    #[test]
    fn key_checks_tell_keys_apart_and_are_no_token_hash() {
        let a = TokenKey::from_bytes("k1", [7; 32]).unwrap();
        let same = TokenKey::from_bytes("other-id", [7; 32]).unwrap();
        let b = TokenKey::from_bytes("k1", [8; 32]).unwrap();
        assert_eq!(
            a.key_check(),
            same.key_check(),
            "the check depends on the key only"
        );
        assert_ne!(a.key_check(), b.key_check());
        // Not the keyed hash of the context string (what a foreign token with that text
        // would be stored under), and not the key's bytes.
        let ring = TokenKeyring::new(a.clone());
        assert_ne!(
            &ring.hash(TOKEN_KEY_CHECK_CONTEXT).as_bytes()[..KEY_CHECK_LEN],
            &a.key_check()
        );
        assert_ne!(&a.bytes()[..KEY_CHECK_LEN], &a.key_check());
        // Fixed across releases: a database records it once.
        assert_eq!(
            a.key_check(),
            blake3::derive_key(TOKEN_KEY_CHECK_CONTEXT, &[7; 32])[..KEY_CHECK_LEN]
        );
        let ring = TokenKeyring::with_older(
            TokenKey::from_bytes("k3", [3; 32]).unwrap(),
            vec![b, TokenKey::from_bytes("k0", [0; 32]).unwrap()],
        )
        .unwrap();
        let ids: Vec<&str> = ring.keys().map(TokenKey::id).collect();
        assert_eq!(
            ids,
            ["k3", "k1", "k0"],
            "active first, then older, newest first"
        );
    }

    #[test]
    fn keyring_hashes_with_active_then_older() {
        let k1 = TokenKey::generate("k1").unwrap();
        let k2 = TokenKey::generate("k2").unwrap();
        let old = TokenKeyring::new(k1.clone());
        let ring = TokenKeyring::with_older(k2, vec![k1]).unwrap();
        let h_old = old.hash("tok");
        assert_ne!(ring.hash("tok"), h_old);
        assert_eq!(ring.older_hashes("tok").next(), Some(h_old));
        assert!(!format!("{ring:?}").contains(&*ring.active.to_hex()));
        let hex = ring.active.to_hex();
        let again = TokenKey::from_hex("k2", &hex).unwrap();
        assert_eq!(TokenKeyring::new(again).hash("tok"), ring.hash("tok"));
    }
}
