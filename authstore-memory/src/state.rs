//! Everything the store holds, and the index upkeep every operation shares.
//!
//! Invariants every method here keeps (so cascades and cleanup never scan the world):
//! - every grant's client exists, and the client's `grants` set lists it;
//! - every code and token's grant exists, and the grant's sets list it;
//! - `grants_by_subject` lists exactly the grants with that subject;
//! - `pat_ids` maps every PAT's id to the hash it is stored under;
//! - `user_by_username` / `user_by_email` map exactly the stored users' username and email
//!   keys ([`User::username_key`], [`User::email_key`]) to their ids, `group_by_name` the
//!   groups' name keys ([`Group::name_key`]);
//! - `members` and `memberships` list the same (group, user) pairs, both of which exist;
//! - `failures_by_user` / `failures_by_source` list exactly the failure rows with that user
//!   or source.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use authstore_core::model::AuditEventId;
use authstore_core::{
    AccessToken, AuditEvent, AuthorizationCode, AuthorizationSession, Client, ClientId, Consent,
    Error, Grant, GrantId, Group, GroupId, PasswordHash, PatId, PersonalAccessToken, RefreshToken,
    Result, Subject, Timestamp, TokenHash, User, UserId,
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

/// One failed login: for whom (if known), from where (if known), when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginFailure {
    pub(crate) user: Option<UserId>,
    pub(crate) source: Option<IpAddr>,
    pub(crate) at: Timestamp,
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
    pub(crate) users: BTreeMap<UserId, User>,
    pub(crate) user_by_username: HashMap<String, UserId>,
    pub(crate) user_by_email: HashMap<String, UserId>,
    pub(crate) groups: BTreeMap<GroupId, Group>,
    pub(crate) group_by_name: HashMap<String, GroupId>,
    /// Group -> its members.
    pub(crate) members: HashMap<GroupId, BTreeSet<UserId>>,
    /// User -> the groups they belong to.
    pub(crate) memberships: HashMap<UserId, HashSet<GroupId>>,
    pub(crate) passwords: HashMap<UserId, PasswordHash>,
    /// Failure rows by a sequence number (insertion order).
    pub(crate) failures: BTreeMap<u64, LoginFailure>,
    pub(crate) failures_by_user: HashMap<UserId, BTreeSet<u64>>,
    pub(crate) failures_by_source: HashMap<IpAddr, BTreeSet<u64>>,
    pub(crate) next_failure: u64,
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
    /// Fails with [`Error::Conflict`] if `user`'s username or email key belongs to another
    /// user than `user.id`.
    pub(crate) fn check_user_keys(&self, user: &User) -> Result<()> {
        if self
            .user_by_username
            .get(&user.username_key())
            .is_some_and(|id| *id != user.id)
        {
            return Err(Error::Conflict {
                what: format!("user with username {:?}", user.username),
            });
        }
        if let Some(key) = user.email_key() {
            if self
                .user_by_email
                .get(&key)
                .is_some_and(|id| *id != user.id)
            {
                return Err(Error::Conflict {
                    what: "user with this email".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Stores a user (keys checked) and indexes its keys, replacing the old record's keys.
    pub(crate) fn put_user(&mut self, user: User) {
        if let Some(old) = self.users.get(&user.id) {
            let (name, email) = (old.username_key(), old.email_key());
            self.user_by_username.remove(&name);
            if let Some(e) = email {
                self.user_by_email.remove(&e);
            }
        }
        self.user_by_username.insert(user.username_key(), user.id);
        if let Some(e) = user.email_key() {
            self.user_by_email.insert(e, user.id);
        }
        self.users.insert(user.id, user);
    }

    /// Fails with [`Error::Conflict`] if `group`'s name key belongs to another group.
    pub(crate) fn check_group_key(&self, group: &Group) -> Result<()> {
        if self
            .group_by_name
            .get(&group.name_key())
            .is_some_and(|id| *id != group.id)
        {
            return Err(Error::Conflict {
                what: format!("group named {:?}", group.name),
            });
        }
        Ok(())
    }

    /// Stores a group (key checked) and indexes its name key, replacing the old one's.
    pub(crate) fn put_group(&mut self, group: Group) {
        if let Some(old) = self.groups.get(&group.id) {
            let key = old.name_key();
            self.group_by_name.remove(&key);
        }
        self.group_by_name.insert(group.name_key(), group.id);
        self.groups.insert(group.id, group);
    }

    /// Whether `user` is a member of `group`.
    pub(crate) fn is_member(&self, group: GroupId, user: UserId) -> bool {
        self.members.get(&group).is_some_and(|m| m.contains(&user))
    }

    /// Adds a membership (both exist); `true` if it is new.
    pub(crate) fn add_member(&mut self, group: GroupId, user: UserId) -> bool {
        self.memberships.entry(user).or_default().insert(group);
        self.members.entry(group).or_default().insert(user)
    }

    /// Removes a membership; `true` if there was one.
    pub(crate) fn remove_member(&mut self, group: GroupId, user: UserId) -> bool {
        if let Some(set) = self.memberships.get_mut(&user) {
            set.remove(&group);
            if set.is_empty() {
                self.memberships.remove(&user);
            }
        }
        let Some(set) = self.members.get_mut(&group) else {
            return false;
        };
        let removed = set.remove(&user);
        if set.is_empty() {
            self.members.remove(&group);
        }
        removed
    }

    /// Records a failed login.
    pub(crate) fn add_failure(&mut self, row: LoginFailure) {
        let id = self.next_failure;
        self.next_failure += 1;
        if let Some(u) = row.user {
            self.failures_by_user.entry(u).or_default().insert(id);
        }
        if let Some(s) = row.source {
            self.failures_by_source.entry(s).or_default().insert(id);
        }
        self.failures.insert(id, row);
    }

    /// Removes one failure row.
    pub(crate) fn remove_failure(&mut self, id: u64) -> bool {
        let Some(row) = self.failures.remove(&id) else {
            return false;
        };
        if let Some(u) = row.user {
            if let Some(set) = self.failures_by_user.get_mut(&u) {
                set.remove(&id);
                if set.is_empty() {
                    self.failures_by_user.remove(&u);
                }
            }
        }
        if let Some(s) = row.source {
            if let Some(set) = self.failures_by_source.get_mut(&s) {
                set.remove(&id);
                if set.is_empty() {
                    self.failures_by_source.remove(&s);
                }
            }
        }
        true
    }

    /// Removes every failure row of `user` (erasure).
    pub(crate) fn remove_failures(&mut self, user: UserId) {
        for id in self.failures_by_user.remove(&user).into_iter().flatten() {
            self.remove_failure(id);
        }
    }

    /// Forgets which failure rows were `user`'s: they no longer count for the user but
    /// still count for their source (and for cleanup).
    pub(crate) fn forget_user_failures(&mut self, user: UserId) {
        for id in self.failures_by_user.remove(&user).into_iter().flatten() {
            if let Some(row) = self.failures.get_mut(&id) {
                row.user = None;
            }
        }
    }

    /// Revokes every unrevoked grant of `subject` and every unrevoked PAT whose user is
    /// `subject`.
    pub(crate) fn revoke_subject_at(&mut self, subject: &Subject, at: Timestamp) {
        let grants: Vec<GrantId> = self
            .grants_by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        self.revoke_grants_at(grants, at);
        for p in self.pats.values_mut() {
            if &p.user == subject && p.revoked_at.is_none() {
                p.revoked_at = Some(at);
            }
        }
    }

    /// Removes everything whose subject is `subject`: grants (with their codes and tokens),
    /// PATs, consents, authorization sessions.
    pub(crate) fn remove_subject(&mut self, subject: &Subject) {
        let grants: Vec<GrantId> = self
            .grants_by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for g in grants {
            self.remove_grant(g);
        }
        let pats: Vec<TokenHash> = self
            .pats
            .iter()
            .filter(|(_, p)| &p.user == subject)
            .map(|(h, _)| *h)
            .collect();
        for h in pats {
            self.remove_pat(&h);
        }
        self.consents.retain(|(_, s), _| s != subject);
        self.sessions
            .retain(|_, s| s.subject.as_ref() != Some(subject));
    }
}
