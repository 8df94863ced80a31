//! Token strings for bulk loading, the keyed hash the store uses, and a small PRNG.
//!
//! Bulk loads insert rows with the raw driver, so the benchmark must make token strings
//! exactly as the store mints them (`<kind>_<43 base62><6 base62 checksum>`, checked by
//! `TokenFormat::check` as minted, not foreign) and store them under the same keyed BLAKE3
//! hash. The body comes from a keyed hash of an index instead of the operating system's
//! randomness, so any token of a load can be made again from its index (a scale run samples
//! 10 million tokens without keeping their strings).

use authstore_core::TokenKind;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;

/// The token of `kind` number `index` of the load seeded with `seed`, in the minted format.
pub(crate) fn token(kind: TokenKind, seed: &[u8; 32], index: u64) -> String {
    let mut input = [0u8; 9];
    input[0] = kind_byte(kind);
    input[1..].copy_from_slice(&index.to_le_bytes());
    let body = blake3::keyed_hash(seed, &input);
    let prefix = kind.prefix();
    let mut out = String::with_capacity(prefix.len() + 1 + BODY_LEN + CHECK_LEN);
    out.push_str(prefix);
    out.push('_');
    push_base62(&mut out, body.as_bytes(), BODY_LEN);
    let check = blake3::hash(out.as_bytes());
    push_base62(&mut out, &check.as_bytes()[..4], CHECK_LEN);
    out
}

fn kind_byte(kind: TokenKind) -> u8 {
    TokenKind::ALL
        .iter()
        .position(|k| *k == kind)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(u8::MAX)
}

/// Appends the base62 form of the big-endian number `bytes`, left-padded with `0` to
/// `width` digits (the store's encoding).
fn push_base62(out: &mut String, bytes: &[u8], width: usize) {
    let mut num = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
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
    digits.iter().rev().for_each(|&d| out.push(char::from(d)));
}

/// The keyed BLAKE3 hash a token is stored under (what `TokenKeyring::hash` computes).
pub(crate) fn hash(key: &[u8; 32], token: &str) -> [u8; 32] {
    *blake3::keyed_hash(key, token.as_bytes()).as_bytes()
}

/// SplitMix64: shuffles and samples; not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Shuffles `v` (Fisher–Yates).
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authstore_core::token::Presented;
    use authstore_core::{TokenFormat, TokenKey, TokenKeyring};

    #[test]
    fn bench_tokens_are_minted_format_and_hash_like_the_store() {
        let seed = [7u8; 32];
        let key = [9u8; 32];
        let ring = TokenKeyring::new(TokenKey::from_bytes("k", key).unwrap());
        let fmt = TokenFormat::new();
        for kind in [
            TokenKind::AccessToken,
            TokenKind::RefreshToken,
            TokenKind::AuthorizationCode,
        ] {
            for i in [0u64, 1, 2, u64::MAX] {
                let t = token(kind, &seed, i);
                assert_eq!(
                    fmt.check(kind, &t).unwrap(),
                    Presented::Minted,
                    "{kind:?} {i}"
                );
                assert_eq!(ring.hash(&t).as_bytes(), &hash(&key, &t));
            }
        }
        assert_ne!(
            token(TokenKind::AccessToken, &seed, 1),
            token(TokenKind::AccessToken, &seed, 2)
        );
        assert_ne!(
            token(TokenKind::AccessToken, &seed, 1),
            token(TokenKind::AccessToken, &[8u8; 32], 1)
        );
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
