//! Everything the store holds, and the index upkeep every operation shares.
//!
//! Invariants every method here keeps (so cascades and cleanup never scan the world):
//! - every grant's client exists, and the client's `grants` set lists it;
//! - every code and token's grant exists, and the grant's sets list it;
//! - `grants_by_subject` lists exactly the grants with that subject;
//! - `pat_ids` maps every PAT's id to the hash it is stored under.

use std::collections::{BTreeMap, HashMap, HashSet};

use authstore_core::model::AuditEventId;
use authstore_core::{
    AccessToken, AuditEvent, AuthorizationCode, AuthorizationSession, Client, ClientId, Consent,
    Error, Grant, GrantId, PatId, PersonalAccessToken, RefreshToken, Result, Subject, Timestamp,
    TokenHash,
};

use crate::hasher::{TokenMap, TokenSet};

/// A client with its secret hash and the grants that belong to it.
#[derive(Debug)]
pub(crate) struct ClientRow {
    pub(crate) client: Client,
    pub(crate) secret_hash: Option<TokenHash>,
    pub(crate) grants: HashSet<GrantId>,
}

/// A grant with the codes and tokens that belong to it.
#[derive(Debug)]
pub(crate) struct GrantRow {
    pub(crate) grant: Grant,
    pub(crate) codes: TokenSet,
    pub(crate) access: TokenSet,
    pub(crate) refresh: TokenSet,
}

impl GrantRow {
    /// Whether no code or token of the grant is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.access.is_empty() && self.refresh.is_empty()
    }
}

/// All records.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) clients: BTreeMap<ClientId, ClientRow>,
    pub(crate) grants: HashMap<GrantId, GrantRow>,
    pub(crate) grants_by_subject: HashMap<Subject, HashSet<GrantId>>,
    pub(crate) codes: TokenMap<AuthorizationCode>,
    pub(crate) access: TokenMap<AccessToken>,
    pub(crate) refresh: TokenMap<RefreshToken>,
    pub(crate) pats: TokenMap<PersonalAccessToken>,
    pub(crate) pat_ids: BTreeMap<PatId, TokenHash>,
    pub(crate) sessions: TokenMap<AuthorizationSession>,
    pub(crate) consents: BTreeMap<(ClientId, Subject), Consent>,
    pub(crate) audit: BTreeMap<AuditEventId, AuditEvent>,
}

impl State {
    /// Whether the client exists and is enabled.
    pub(crate) fn client_enabled(&self, id: ClientId) -> bool {
        self.clients.get(&id).is_some_and(|c| !c.client.disabled)
    }

    /// The grant if it exists, is unrevoked and its client exists and is enabled.
    pub(crate) fn live_grant(&self, id: GrantId) -> Option<&Grant> {
        let row = self.grants.get(&id)?;
        (row.grant.revoked_at.is_none() && self.client_enabled(row.grant.client_id))
            .then_some(&row.grant)
    }

    /// Fails with [`Error::Conflict`] if an event with this id is stored already: appending
    /// it would lose the older one. Call before changing anything.
    pub(crate) fn check_event(&self, event: &AuditEvent) -> Result<()> {
        if self.audit.contains_key(&event.id) {
            return Err(Error::Conflict {
                what: format!("audit event {}", event.id),
            });
        }
        Ok(())
    }

    /// Appends an event (checked with [`State::check_event`] first).
    pub(crate) fn log(&mut self, event: AuditEvent) {
        self.audit.insert(event.id, event);
    }

    /// Adds a grant whose client exists and whose id is new.
    pub(crate) fn add_grant(&mut self, grant: Grant) {
        if let Some(c) = self.clients.get_mut(&grant.client_id) {
            c.grants.insert(grant.id);
        }
        if let Some(s) = &grant.subject {
            self.grants_by_subject
                .entry(s.clone())
                .or_default()
                .insert(grant.id);
        }
        self.grants.insert(
            grant.id,
            GrantRow {
                grant,
                codes: TokenSet::default(),
                access: TokenSet::default(),
                refresh: TokenSet::default(),
            },
        );
    }

    /// Removes a grant and whatever is left of its codes and tokens.
    pub(crate) fn remove_grant(&mut self, id: GrantId) -> bool {
        let Some(row) = self.grants.remove(&id) else {
            return false;
        };
        for h in &row.codes {
            self.codes.remove(h);
        }
        for h in &row.access {
            self.access.remove(h);
        }
        for h in &row.refresh {
            self.refresh.remove(h);
        }
        if let Some(c) = self.clients.get_mut(&row.grant.client_id) {
            c.grants.remove(&id);
        }
        // No let chains: the workspace's rust-version (1.85) predates them.
        if let Some(s) = &row.grant.subject {
            if let Some(set) = self.grants_by_subject.get_mut(s) {
                set.remove(&id);
                if set.is_empty() {
                    self.grants_by_subject.remove(s);
                }
            }
        }
        true
    }

    /// Sets the grant's `revoked_at` if unset; `true` if it changed.
    pub(crate) fn revoke_grant_at(&mut self, id: GrantId, at: Timestamp) -> bool {
        match self.grants.get_mut(&id) {
            Some(row) if row.grant.revoked_at.is_none() => {
                row.grant.revoked_at = Some(at);
                true
            }
            _ => false,
        }
    }

    /// Revokes every unrevoked grant in `ids`; returns how many changed.
    pub(crate) fn revoke_grants_at(
        &mut self,
        ids: impl IntoIterator<Item = GrantId>,
        at: Timestamp,
    ) -> u64 {
        ids.into_iter()
            .map(|id| u64::from(self.revoke_grant_at(id, at)))
            .sum()
    }

    /// Adds a code under a new hash; its grant exists.
    pub(crate) fn add_code(&mut self, hash: TokenHash, code: AuthorizationCode) {
        if let Some(g) = self.grants.get_mut(&code.grant_id) {
            g.codes.insert(hash);
        }
        self.codes.insert(hash, code);
    }

    /// Adds an access token under a new hash; its grant exists.
    pub(crate) fn add_access(&mut self, hash: TokenHash, token: AccessToken) {
        if let Some(g) = self.grants.get_mut(&token.grant_id) {
            g.access.insert(hash);
        }
        self.access.insert(hash, token);
    }

    /// Adds a refresh token under a new hash; its grant exists.
    pub(crate) fn add_refresh(&mut self, hash: TokenHash, token: RefreshToken) {
        if let Some(g) = self.grants.get_mut(&token.grant_id) {
            g.refresh.insert(hash);
        }
        self.refresh.insert(hash, token);
    }

    /// Removes a code.
    pub(crate) fn remove_code(&mut self, hash: &TokenHash) -> bool {
        let Some(code) = self.codes.remove(hash) else {
            return false;
        };
        if let Some(g) = self.grants.get_mut(&code.grant_id) {
            g.codes.remove(hash);
        }
        true
    }

    /// Removes an access token.
    pub(crate) fn remove_access(&mut self, hash: &TokenHash) -> bool {
        let Some(token) = self.access.remove(hash) else {
            return false;
        };
        if let Some(g) = self.grants.get_mut(&token.grant_id) {
            g.access.remove(hash);
        }
        true
    }

    /// Removes a refresh token.
    pub(crate) fn remove_refresh(&mut self, hash: &TokenHash) -> bool {
        let Some(token) = self.refresh.remove(hash) else {
            return false;
        };
        if let Some(g) = self.grants.get_mut(&token.grant_id) {
            g.refresh.remove(hash);
        }
        true
    }

    /// Removes a PAT.
    pub(crate) fn remove_pat(&mut self, hash: &TokenHash) -> bool {
        let Some(pat) = self.pats.remove(hash) else {
            return false;
        };
        self.pat_ids.remove(&pat.id);
        true
    }

    /// Fails with [`Error::Conflict`] if any of `hashes` is stored in `map` already.
    pub(crate) fn check_new<V>(
        map: &TokenMap<V>,
        what: &str,
        hashes: impl IntoIterator<Item = TokenHash>,
    ) -> Result<()> {
        for h in hashes {
            if map.contains_key(&h) {
                return Err(Error::Conflict {
                    what: format!("{what} with this hash"),
                });
            }
        }
        Ok(())
    }
}
