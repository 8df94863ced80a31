//! A trivial hasher for maps keyed by [`TokenHash`].

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use authstore_core::TokenHash;

/// Builds [`PrefixHasher`]s.
///
/// Why this is sound: every key of these maps is a [`TokenHash`], a BLAKE3 hash keyed with
/// the deployment's token key. Its bytes are uniformly distributed and cannot be predicted
/// (let alone chosen) without that key, so its first 8 bytes already are a perfect 64-bit
/// hash. SipHash, std's default, exists to stop attackers from choosing colliding keys
/// (HashDoS); here they cannot, and re-hashing 32 bytes would only slow the hot path down.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenHashState;

impl BuildHasher for TokenHashState {
    type Hasher = PrefixHasher;

    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

/// Folds in the first 8 bytes of each write. Meant for [`TokenHash`] keys only (see
/// [`TokenHashState`]): their `Hash` impl writes the constant length prefix, then the
/// 32 bytes.
#[derive(Debug, Default)]
pub(crate) struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(32) ^ u64::from_le_bytes(head);
    }
}

/// A map keyed by token hashes.
pub(crate) type TokenMap<V> = HashMap<TokenHash, V, TokenHashState>;

/// A set of token hashes.
pub(crate) type TokenSet = HashSet<TokenHash, TokenHashState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_prefixes_hash_apart_and_maps_work() {
        let a = TokenHash::from_bytes([1; 32]);
        let mut b_bytes = [1; 32];
        b_bytes[31] = 2;
        let b = TokenHash::from_bytes(b_bytes);
        let c = TokenHash::from_bytes([3; 32]);
        let s = TokenHashState;
        assert_ne!(s.hash_one(a), s.hash_one(c));
        // Same first 8 bytes: same hash, still told apart by equality.
        assert_eq!(s.hash_one(a), s.hash_one(b));
        let mut m: TokenMap<u8> = TokenMap::default();
        m.insert(a, 1);
        m.insert(b, 2);
        m.insert(c, 3);
        assert_eq!((m[&a], m[&b], m[&c]), (1, 2, 3));
    }
}
