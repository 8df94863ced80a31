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
//!   or source;
//! - `login_session_ids` maps every login session's id to the hash it is stored under, and
//!   `login_sessions_by_user`, `one_time_by_user`, `passkeys_by_user`, `ceremonies_by_user`
//!   and `linked_by_user` list exactly the records of that user;
//! - `linked_by_key` maps exactly the stored linked accounts' (provider, provider subject);
//! - every login session, one-time token, TOTP enrolment, recovery code set, passkey and
//!   linked account belongs to a stored user (a ceremony's user need not exist).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use authstore_core::KeyCheck;
use authstore_core::model::AuditEventId;
use authstore_core::{
    AccessToken, AuditEvent, AuthorizationCode, AuthorizationSession, Ceremony, Client, ClientId,
    Consent, Error, Grant, GrantId, Group, GroupId, LinkedAccount, LinkedAccountId, LoginSession,
    LoginSessionId, OneTimeToken, Passkey, PasswordHash, PatId, PersonalAccessToken, RefreshToken,
    Result, Subject, Timestamp, TokenHash, TotpRecord, User, UserId,
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
    pub(crate) login_sessions: TokenMap<LoginSession>,
    pub(crate) login_session_ids: BTreeMap<LoginSessionId, TokenHash>,
    pub(crate) login_sessions_by_user: HashMap<UserId, BTreeSet<LoginSessionId>>,
    pub(crate) one_time: TokenMap<OneTimeToken>,
    pub(crate) one_time_by_user: HashMap<UserId, TokenSet>,
    /// TOTP enrolments by user id bytes (the row id the secret is sealed for), so `reseal`
    /// walks them in byte order.
    pub(crate) totp: BTreeMap<[u8; 16], TotpRecord>,
    /// User -> the hashes of their unused recovery codes.
    pub(crate) recovery_codes: HashMap<UserId, TokenSet>,
    /// Passkeys by credential id (chosen by the authenticator, so SipHash-keyed).
    pub(crate) passkeys: HashMap<Vec<u8>, Passkey>,
    pub(crate) passkeys_by_user: HashMap<UserId, BTreeSet<Vec<u8>>>,
    pub(crate) ceremonies: TokenMap<Ceremony>,
    pub(crate) ceremonies_by_user: HashMap<UserId, TokenSet>,
    /// Linked accounts by id bytes: id order is byte order, which `reseal` walks.
    pub(crate) linked: BTreeMap<[u8; 16], LinkedAccount>,
    /// (provider, provider subject) -> the linked account's id.
    pub(crate) linked_by_key: HashMap<(String, String), LinkedAccountId>,
    pub(crate) linked_by_user: HashMap<UserId, BTreeSet<LinkedAccountId>>,
    /// Key checks by (ring name, key id): the order `key_checks` answers in.
    pub(crate) key_checks: BTreeMap<(&'static str, String), KeyCheck>,
}

/// The bytes a user id is keyed (and its TOTP secret sealed) by.
pub(crate) fn user_key(id: UserId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// The bytes a linked account is keyed (and its tokens sealed) by.
pub(crate) fn linked_key(id: LinkedAccountId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
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

    /// Adds a login session under a new hash and id; its user exists.
    pub(crate) fn add_login_session(&mut self, hash: TokenHash, session: LoginSession) {
        self.login_session_ids.insert(session.id, hash);
        self.login_sessions_by_user
            .entry(session.user)
            .or_default()
            .insert(session.id);
        self.login_sessions.insert(hash, session);
    }

    /// Removes a login session.
    pub(crate) fn remove_login_session(&mut self, hash: &TokenHash) -> bool {
        let Some(session) = self.login_sessions.remove(hash) else {
            return false;
        };
        self.login_session_ids.remove(&session.id);
        if let Some(set) = self.login_sessions_by_user.get_mut(&session.user) {
            set.remove(&session.id);
            if set.is_empty() {
                self.login_sessions_by_user.remove(&session.user);
            }
        }
        true
    }

    /// The hashes of `user`'s login sessions.
    fn login_session_hashes(&self, user: UserId) -> Vec<TokenHash> {
        self.login_sessions_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.login_session_ids.get(id))
            .copied()
            .collect()
    }

    /// Revokes every unrevoked login session of `user`; returns how many changed.
    pub(crate) fn revoke_login_sessions_at(&mut self, user: UserId, at: Timestamp) -> u64 {
        let mut n = 0;
        for h in self.login_session_hashes(user) {
            if let Some(s) = self.login_sessions.get_mut(&h) {
                if s.revoked_at.is_none() {
                    s.revoked_at = Some(at);
                    n += 1;
                }
            }
        }
        n
    }

    /// Consumes every unconsumed one-time token of `user` at `at`.
    pub(crate) fn consume_one_time_of(&mut self, user: UserId, at: Timestamp) {
        let hashes: Vec<TokenHash> = self
            .one_time_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for h in hashes {
            if let Some(t) = self.one_time.get_mut(&h) {
                if t.consumed_at.is_none() {
                    t.consumed_at = Some(at);
                }
            }
        }
    }

    /// Adds a one-time token under a new hash; its user exists.
    pub(crate) fn add_one_time(&mut self, hash: TokenHash, token: OneTimeToken) {
        self.one_time_by_user
            .entry(token.user)
            .or_default()
            .insert(hash);
        self.one_time.insert(hash, token);
    }

    /// Removes a one-time token.
    pub(crate) fn remove_one_time(&mut self, hash: &TokenHash) -> bool {
        let Some(token) = self.one_time.remove(hash) else {
            return false;
        };
        if let Some(set) = self.one_time_by_user.get_mut(&token.user) {
            set.remove(hash);
            if set.is_empty() {
                self.one_time_by_user.remove(&token.user);
            }
        }
        true
    }

    /// Adds a passkey under a new credential id; its user exists.
    pub(crate) fn add_passkey(&mut self, passkey: Passkey) {
        self.passkeys_by_user
            .entry(passkey.user)
            .or_default()
            .insert(passkey.credential_id.clone());
        self.passkeys.insert(passkey.credential_id.clone(), passkey);
    }

    /// Removes a passkey.
    pub(crate) fn remove_passkey(&mut self, credential_id: &[u8]) -> bool {
        let Some(passkey) = self.passkeys.remove(credential_id) else {
            return false;
        };
        if let Some(set) = self.passkeys_by_user.get_mut(&passkey.user) {
            set.remove(credential_id);
            if set.is_empty() {
                self.passkeys_by_user.remove(&passkey.user);
            }
        }
        true
    }

    /// Adds a ceremony under a new hash.
    pub(crate) fn add_ceremony(&mut self, hash: TokenHash, ceremony: Ceremony) {
        if let Some(u) = ceremony.user {
            self.ceremonies_by_user.entry(u).or_default().insert(hash);
        }
        self.ceremonies.insert(hash, ceremony);
    }

    /// Removes a ceremony and returns it.
    pub(crate) fn remove_ceremony(&mut self, hash: &TokenHash) -> Option<Ceremony> {
        let ceremony = self.ceremonies.remove(hash)?;
        if let Some(u) = ceremony.user {
            if let Some(set) = self.ceremonies_by_user.get_mut(&u) {
                set.remove(hash);
                if set.is_empty() {
                    self.ceremonies_by_user.remove(&u);
                }
            }
        }
        Some(ceremony)
    }

    /// Adds a linked account whose id and (provider, provider subject) are new and whose
    /// user exists.
    pub(crate) fn add_linked(&mut self, account: LinkedAccount) {
        self.linked_by_key.insert(
            (account.provider.clone(), account.provider_subject.clone()),
            account.id,
        );
        self.linked_by_user
            .entry(account.user)
            .or_default()
            .insert(account.id);
        self.linked.insert(linked_key(account.id), account);
    }

    /// Removes a linked account.
    pub(crate) fn remove_linked(&mut self, id: LinkedAccountId) -> bool {
        let Some(account) = self.linked.remove(&linked_key(id)) else {
            return false;
        };
        self.linked_by_key
            .remove(&(account.provider, account.provider_subject));
        if let Some(set) = self.linked_by_user.get_mut(&account.user) {
            set.remove(&id);
            if set.is_empty() {
                self.linked_by_user.remove(&account.user);
            }
        }
        true
    }

    /// Removes every account record of `user` (erasure): login sessions, one-time tokens,
    /// TOTP, recovery codes, passkeys, ceremonies, linked accounts.
    pub(crate) fn remove_user_accounts(&mut self, user: UserId) {
        for h in self.login_session_hashes(user) {
            self.remove_login_session(&h);
        }
        for h in self.one_time_by_user.remove(&user).into_iter().flatten() {
            self.one_time.remove(&h);
        }
        self.totp.remove(&user_key(user));
        self.recovery_codes.remove(&user);
        for c in self.passkeys_by_user.remove(&user).into_iter().flatten() {
            self.passkeys.remove(&c);
        }
        for h in self.ceremonies_by_user.remove(&user).into_iter().flatten() {
            self.ceremonies.remove(&h);
        }
        for id in self.linked_by_user.remove(&user).into_iter().flatten() {
            self.remove_linked(id);
        }
    }
}
