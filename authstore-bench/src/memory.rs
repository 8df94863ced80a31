//! The memory backend's "raw driver": plain hash maps behind one `RwLock`, keyed by the same
//! keyed BLAKE3 hash, doing what `MemoryStore` does for each operation and nothing else
//! (no audit event, no façade checks).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use authstore_core::{
    AccessToken, AuthorizationCode, ClientId, Grant, GrantId, RefreshToken, Timestamp, TokenHash,
};

use crate::tokens::hash;

/// Hashes a 32-byte keyed hash by its first 8 bytes, as `MemoryStore` does: the bytes are
/// uniformly distributed and unpredictable without the key.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prefix;

/// The hasher of [`Prefix`].
#[derive(Debug, Default)]
pub(crate) struct PrefixHasher(u64);

impl BuildHasher for Prefix {
    type Hasher = PrefixHasher;

    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

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

type ByHash<V> = HashMap<[u8; 32], V, Prefix>;

#[derive(Default)]
struct State {
    access: ByHash<AccessToken>,
    codes: ByHash<AuthorizationCode>,
    refresh: ByHash<RefreshToken>,
    grants: HashMap<GrantId, Grant>,
    /// Client id → disabled.
    clients: HashMap<ClientId, bool>,
}

impl State {
    fn live_grant(&self, id: GrantId) -> bool {
        self.grants.get(&id).is_some_and(|g| {
            g.revoked_at.is_none() && self.clients.get(&g.client_id) == Some(&false)
        })
    }
}

/// Hash maps behind one lock (see the module documentation).
pub(crate) struct MemRaw {
    key: [u8; 32],
    state: RwLock<State>,
    /// The grant raw-issued access tokens belong to.
    issue_grant: GrantId,
}

impl MemRaw {
    /// Maps knowing one enabled client and `issue_grant`, the grant raw issuance uses.
    pub(crate) fn new(key: [u8; 32], client: ClientId, issue_grant: Grant) -> Self {
        let mut st = State::default();
        st.clients.insert(client, false);
        let id = issue_grant.id;
        st.grants.insert(id, issue_grant);
        Self {
            key,
            state: RwLock::new(st),
            issue_grant: id,
        }
    }

    /// The grant raw issuance uses.
    pub(crate) fn issue_grant(&self) -> GrantId {
        self.issue_grant
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads a grant.
    pub(crate) fn add_grant(&self, g: Grant) {
        self.write().grants.insert(g.id, g);
    }

    /// Loads an access token under `token`'s hash.
    pub(crate) fn add_access(&self, token: &str, t: AccessToken) {
        let h = hash(&self.key, token);
        self.write().access.insert(h, t);
    }

    /// Loads a code under `token`'s hash.
    pub(crate) fn add_code(&self, token: &str, c: AuthorizationCode) {
        let h = hash(&self.key, token);
        self.write().codes.insert(h, c);
    }

    /// Loads a refresh token under `token`'s hash.
    pub(crate) fn add_refresh(&self, token: &str, t: RefreshToken) {
        let h = hash(&self.key, token);
        self.write().refresh.insert(h, t);
    }

    /// Validation: hash, read lock, token lookup, grant and client checks, clone.
    pub(crate) fn validate(&self, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.key, token);
        let st = self.read();
        let found = st
            .access
            .get(&h)
            .filter(|t| t.expires_at > now && t.revoked_at.is_none() && st.live_grant(t.grant_id))
            .cloned();
        drop(st);
        match black_box(found) {
            Some(_) => Ok(()),
            None => Err("raw memory: token not found".into()),
        }
    }

    /// Issuance: hash, write lock, one insert.
    pub(crate) fn insert_access(&self, token: &str, t: &AccessToken) -> Result<(), String> {
        let h = hash(&self.key, token);
        let mut st = self.write();
        if st.access.contains_key(&h) {
            return Err("raw memory: duplicate token".into());
        }
        st.access.insert(h, t.clone());
        Ok(())
    }

    /// Code consumption: the compare-and-set on `consumed_at`, returning the code.
    pub(crate) fn consume(&self, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.key, token);
        let mut st = self.write();
        let live = st
            .codes
            .get(&h)
            .is_some_and(|c| c.consumed_at.is_none() && c.expires_at > now)
            && st.codes.get(&h).is_some_and(|c| st.live_grant(c.grant_id));
        if !live {
            return Err("raw memory: code not consumable".into());
        }
        let code = st.codes.get_mut(&h).map(|c| {
            c.consumed_at = Some(now);
            c.clone()
        });
        drop(st);
        black_box(code);
        Ok(())
    }

    /// Rotation: the compare-and-set on `rotated_at` that links the successor.
    pub(crate) fn rotate(
        &self,
        token: &str,
        successor: &str,
        now: Timestamp,
    ) -> Result<(), String> {
        let h = hash(&self.key, token);
        let next = TokenHash::from_bytes(hash(&self.key, successor));
        let mut st = self.write();
        let live = st.refresh.get(&h).is_some_and(|t| {
            t.rotated_at.is_none()
                && t.revoked_at.is_none()
                && t.expires_at > now
                && t.idle_expires_at > now
                && st.live_grant(t.grant_id)
        });
        if !live {
            return Err("raw memory: refresh token not rotatable".into());
        }
        if let Some(t) = st.refresh.get_mut(&h) {
            t.rotated_at = Some(now);
            t.successor = Some(next);
        }
        Ok(())
    }

    /// Grant revocation: one field set under the write lock.
    pub(crate) fn revoke(&self, id: GrantId, now: Timestamp) -> Result<(), String> {
        let mut st = self.write();
        match st.grants.get_mut(&id) {
            Some(g) if g.revoked_at.is_none() => {
                g.revoked_at = Some(now);
                Ok(())
            }
            _ => Err("raw memory: grant not revocable".into()),
        }
    }
}
