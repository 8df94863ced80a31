#![doc = r#"
The in-memory authstore backend: **the reference semantics** every other backend matches.

[`MemoryStore`] implements every trait of [`authstore_core::backend`] over plain maps behind
one [`RwLock`], so each operation is one critical section and every rule of the contract
(compare-and-set code consumption, atomic refresh rotation, grant-wide revocation, cascades,
audit events written with the change they describe, bounded cleanup) is easy to read off the
code. The conformance suite (`authstore-testsuite`) runs against it like against any backend.

Use it for:
- **tests** of code built on authstore (a fresh, empty store per test, no files, no server);
- **single-process development** servers;
- **reading the reference semantics** when a backend's behaviour is in doubt.

**Nothing survives a restart**: every client, grant, token, consent and audit event lives in
the process's memory and is gone when the [`MemoryStore`] is dropped. Do not run production on
it.

```
use std::sync::Arc;
use authstore_core::Backend;
use authstore_memory::MemoryStore;

let backend: Arc<dyn Backend> = Arc::new(MemoryStore::new());
assert_eq!(backend.backend_name(), "memory");
```

Validating an access token ([`GrantStore::find_access_token`]) takes only the read lock and
does one hash-map lookup plus the grant and client checks: about 0.6 µs with 200 000 tokens,
most of it cloning the record the contract returns by value.

# Where the contract is silent, this backend decides

Other backends should match these; the conformance suite is the arbiter.
- **Events only on change.** An operation that finds nothing to change (revoking what is
  already revoked, a failed compare-and-set, a count of 0) writes no event, even where it
  returns success (`Revoked`, `true`).
- **Events say what they are about.** Where the caller only had a hash
  ([`GrantStore::consume_code`], [`GrantStore::revoke_access_token`],
  [`GrantStore::revoke_refresh_token`]), the backend fills the event's unset grant, client
  and subject from the record.
- **An event id is unique.** An event whose id is stored already fails the operation with
  [`Error::Conflict`] before anything changes (a database's primary key does the same).
- **A consumed code is a replay first.** [`GrantStore::consume_code`] answers
  `AlreadyConsumed` for a consumed code even if it has expired or its grant is revoked since.
- **Records stay consistent with their grant.** A code or token whose `grant_id` or
  `client_id` differs from the grant it is stored into is refused with
  [`Error::InvalidInput`]; a hash already stored is refused with [`Error::Conflict`].
- **Rotation checks only what its contract names** (presented token unrevoked, grant
  unrevoked, the mode's condition); expiry and the client's state are the caller's reading
  of [`GrantStore::find_refresh_token`].
- **Consents and authorization sessions need their client** to exist
  ([`Error::NotFound`] otherwise), so deleting the client can take them along.
- **Stats put each record in one bucket**: revoked (itself or its grant) before used, used
  before expired, expired before active. A disabled client does not move its tokens out
  of "active".
- **Cleanup** lists candidates under the read lock, then deletes at most `batch_size` of
  them per write-lock acquisition, re-checking each, so concurrent cleanups and traffic are
  safe. What a deleted grant still held is not counted. `batch_size` must be 1 to 100 000
  and `max_batches` at least 1 ([`Error::InvalidInput`]). The preview
  ([`Maintenance::cleanup_preview`]) applies the same predicates to one read-lock snapshot,
  judging a grant's emptiness by whether each code and token it holds is dead by its own
  rule (those go before the grant pass).
- **Audit order** is by id, and ids (UUIDv7) order events only to the millisecond.
- **Identity.** [`IdentityStore::update_user`], [`IdentityStore::rename_group`] and
  [`IdentityStore::set_password_hash`] always write their event (they are explicit
  changes); [`IdentityStore::set_user_active`] and the membership calls only when something
  changed. A successful login and [`IdentityStore::set_password_hash`] forget which
  failure rows were the user's (the rows stay, counting for their source and for cleanup:
  one account's success does not reset an address's count); erasing the user
  ([`IdentityStore::delete_user`]) deletes their rows outright. A failure for a user id
  that is not stored is remembered for its source only; every failure stores one row, even
  with neither user nor source.
  [`IdentityStore::remove_group_member`] and the list calls answer `false`/empty for a
  missing user or group.
- **Accounts.** Where the caller had only a hash or an id
  ([`AccountStore::consume_one_time_token`], [`AccountStore::revoke_login_session`],
  [`AccountStore::update_passkey_use`], [`AccountStore::update_linked_tokens`],
  [`AccountStore::delete_linked_account`]), the backend fills the event's unset subject
  from the record's user. Explicit changes ([`AccountStore::set_totp`],
  [`AccountStore::replace_recovery_codes`], renames, token updates) always write their
  event. [`AccountStore::set_totp`] stores `last_step = None` whatever the record says. A
  ceremony's user need not exist (it goes with the user when they are erased); an expired
  ceremony is removed by [`AccountStore::take_ceremony`] like a live one. Touching a
  login session moves `last_seen_at` and `idle_expires_at` forward only, the latter never
  past `expires_at`; revoked sessions are touched too (it is bookkeeping).
  [`AccountStore::sealed_values`] and [`AccountStore::replace_sealed`] refuse a
  (table, column) not in `SEALED_COLUMNS` with [`Error::InvalidInput`].
"#]

mod hasher;
mod state;

use std::fmt;
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use authstore_core::backend::{
    AccountStore, AuditStore, AuthorizationSessionStore, CleanupOptions, CleanupReport,
    ClientStore, CodeConsumption, ConsentStore, GrantStore, IdentityStore, KindStats, Maintenance,
    PatStore, RevokeOutcome, Rotation, RotationMode, Stats, TokenIssue, same_key_checks,
};
use authstore_core::identity::{SEALED_COLUMNS, SealedRef, subject_of};
use authstore_core::{
    AccessToken, AuditEvent, AuditQuery, AuthorizationCode, AuthorizationSession, Backend,
    Ceremony, Client, ClientId, Consent, Error, FailureCounts, Grant, GrantId, Group, GroupId,
    KeyCheck, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId, OneTimePurpose,
    OneTimeToken, Passkey, PasswordHash, PatId, PersonalAccessToken, RefreshTokenState, Result,
    Scopes, Sealed, Subject, Timestamp, TokenHash, TotpRecord, User, UserId,
};

use crate::state::{ClientRow, LoginFailure, State, linked_key, user_key};

/// The most rows one cleanup batch may delete ([`CleanupOptions::batch_size`]).
const MAX_BATCH_SIZE: u32 = 100_000;

/// The in-memory backend: every record in process memory, behind one lock.
///
/// Cheap to create ([`MemoryStore::new`]); share it as `Arc<dyn Backend>`. Nothing it holds
/// survives the process: use it for tests, single-process development and as the reference
/// for what every backend does.
pub struct MemoryStore {
    state: RwLock<State>,
}

impl MemoryStore {
    /// A new, empty store. There is no schema: [`Maintenance::migrate`] has nothing to do.
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
        }
    }

    // A poisoned lock means a thread panicked while holding it. Every critical section here
    // checks everything that can fail before its first change, and the changes themselves
    // cannot panic, so the state behind a poisoned lock is still consistent: recover it
    // instead of failing every later call.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes one kind of dead record in batches. `find` lists up to `limit` candidates
    /// under the read lock; `delete` re-checks each under the write lock (traffic or another
    /// cleanup may have changed it since) and deletes it if still dead.
    fn cleanup_kind<K: Copy>(
        &self,
        options: &CleanupOptions,
        deadline: Option<std::time::Instant>,
        incomplete: &mut bool,
        find: impl FnOnce(&State, usize) -> Vec<K>,
        delete: impl Fn(&mut State, K) -> bool,
    ) -> u64 {
        let batch = options.batch_size as usize;
        let limit = batch.saturating_mul(options.max_batches as usize);
        let mut candidates = find(&self.read(), limit.saturating_add(1));
        if candidates.len() > limit {
            *incomplete = true;
            candidates.truncate(limit);
        }
        let mut deleted = 0;
        for chunk in candidates.chunks(batch) {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                *incomplete = true;
                break;
            }
            // One short critical section per batch: traffic runs between batches.
            let mut st = self.write();
            deleted += chunk
                .iter()
                .map(|&k| u64::from(delete(&mut st, k)))
                .sum::<u64>();
        }
        deleted
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the records: they hold token hashes and personal data.
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Backend for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn lookups_are_in_process(&self) -> bool {
        true
    }
}

/// Fills the event's grant, client and subject from the record it is about, where the
/// caller (who only had a token hash) left them unset.
fn describe(
    mut event: AuditEvent,
    grant: GrantId,
    client: ClientId,
    subject: Option<&Subject>,
) -> AuditEvent {
    event.grant_id.get_or_insert(grant);
    event.client_id.get_or_insert(client);
    if event.subject.is_none() {
        event.subject = subject.cloned();
    }
    event
}

fn inactive_grant() -> Error {
    Error::Inactive { kind: "grant" }
}

/// Candidates for cleanup: the keys of `iter` whose value is dead, at most `limit`.
fn dead_keys<'a, K: Copy + 'a, V: 'a>(
    iter: impl Iterator<Item = (&'a K, &'a V)>,
    limit: usize,
    dead: impl Fn(&V) -> bool,
) -> Vec<K> {
    iter.filter(|(_, v)| dead(v))
        .map(|(k, _)| *k)
        .take(limit)
        .collect()
}

fn le(t: Option<Timestamp>, cutoff: Timestamp) -> bool {
    t.is_some_and(|t| t <= cutoff)
}

fn code_dead(c: &AuthorizationCode, cutoff: Timestamp) -> bool {
    c.expires_at <= cutoff
}

fn access_dead(t: &AccessToken, cutoff: Timestamp) -> bool {
    t.expires_at <= cutoff || le(t.revoked_at, cutoff)
}

fn refresh_dead(t: &authstore_core::RefreshToken, cutoff: Timestamp) -> bool {
    t.expires_at <= cutoff || t.idle_expires_at <= cutoff || le(t.revoked_at, cutoff)
}

fn grant_dead(row: &state::GrantRow, cutoff: Timestamp) -> bool {
    grant_dead_if(row, cutoff, || row.is_empty())
}

/// Cleanup's rule for grants, given whether nothing is left of the grant (`empty`, asked
/// only when the grant was created at or before the cutoff and not revoked by then).
fn grant_dead_if(row: &state::GrantRow, cutoff: Timestamp, empty: impl FnOnce() -> bool) -> bool {
    le(row.grant.revoked_at, cutoff)
        || (row.grant.created_at <= cutoff && row.grant.revoked_at.is_none() && empty())
}

/// Whether nothing of the grant is left once cleanup's code and token passes (which run
/// before the grant pass) have deleted everything of it dead by its own rule.
fn grant_empty_after_tokens(st: &State, row: &state::GrantRow, cutoff: Timestamp) -> bool {
    row.codes
        .iter()
        .all(|h| st.codes.get(h).is_none_or(|c| code_dead(c, cutoff)))
        && row
            .access
            .iter()
            .all(|h| st.access.get(h).is_none_or(|t| access_dead(t, cutoff)))
        && row
            .refresh
            .iter()
            .all(|h| st.refresh.get(h).is_none_or(|t| refresh_dead(t, cutoff)))
}

/// How many of `values` are dead.
fn count_dead<'a, V: 'a>(values: impl Iterator<Item = &'a V>, dead: impl Fn(&V) -> bool) -> u64 {
    len_u64(values.filter(|v| dead(v)).count())
}

fn pat_dead(p: &PersonalAccessToken, cutoff: Timestamp) -> bool {
    le(p.expires_at, cutoff) || le(p.revoked_at, cutoff)
}

fn session_dead(s: &AuthorizationSession, cutoff: Timestamp) -> bool {
    s.expires_at <= cutoff || le(s.completed_at, cutoff)
}

fn session_pending(s: &AuthorizationSession, now: Timestamp) -> bool {
    s.expires_at > now && s.completed_at.is_none()
}

/// Adds one record to `stats`: revoked wins over used, used over expired.
fn count(stats: &mut KindStats, revoked: bool, used: bool, expired: bool) {
    let slot = if revoked {
        &mut stats.revoked
    } else if used {
        &mut stats.used
    } else if expired {
        &mut stats.expired
    } else {
        &mut stats.active
    };
    *slot += 1;
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[async_trait]
impl ClientStore for MemoryStore {
    async fn insert_client(
        &self,
        client: &Client,
        secret_hash: Option<&TokenHash>,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if st.clients.contains_key(&client.id) {
            return Err(Error::Conflict {
                what: format!("client {}", client.id),
            });
        }
        st.check_event(&audit)?;
        st.clients.insert(
            client.id,
            ClientRow {
                client: client.clone(),
                secret_hash: secret_hash.copied(),
                grants: Default::default(),
            },
        );
        st.log(audit);
        Ok(())
    }

    async fn get_client(&self, id: ClientId) -> Result<Option<Client>> {
        Ok(self.read().clients.get(&id).map(|r| r.client.clone()))
    }

    async fn get_client_with_secret(
        &self,
        id: ClientId,
    ) -> Result<Option<(Client, Option<TokenHash>)>> {
        Ok(self
            .read()
            .clients
            .get(&id)
            .map(|r| (r.client.clone(), r.secret_hash)))
    }

    async fn update_client(&self, client: &Client, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        if !st.clients.contains_key(&client.id) {
            return Err(Error::not_found(format!("client {}", client.id)));
        }
        st.check_event(&audit)?;
        if let Some(row) = st.clients.get_mut(&client.id) {
            // Everything but the id, the creation time and `disabled` (which only
            // set_client_disabled writes: an update from a stale read must not re-enable).
            let created_at = row.client.created_at;
            let disabled = row.client.disabled;
            row.client = Client {
                created_at,
                disabled,
                ..client.clone()
            };
        }
        st.log(audit);
        Ok(())
    }

    async fn set_client_disabled(
        &self,
        id: ClientId,
        disabled: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        match st.clients.get(&id) {
            None => return Err(Error::not_found(format!("client {id}"))),
            Some(row) if row.client.disabled == disabled => return Ok(()),
            Some(_) => {}
        }
        st.check_event(&audit)?;
        if let Some(row) = st.clients.get_mut(&id) {
            row.client.disabled = disabled;
            row.client.updated_at = audit.at;
        }
        st.log(audit);
        Ok(())
    }

    async fn list_clients(&self, after: Option<ClientId>, limit: u32) -> Result<Vec<Client>> {
        use std::ops::Bound;
        let st = self.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(st
            .clients
            .range((lower, Bound::Unbounded))
            .take(limit as usize)
            .map(|(_, r)| r.client.clone())
            .collect())
    }

    async fn delete_client(&self, id: ClientId, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let Some(grants) = st.clients.get(&id).map(|r| r.grants.clone()) else {
            return Ok(false);
        };
        st.check_event(&audit)?;
        for g in grants {
            st.remove_grant(g);
        }
        st.clients.remove(&id);
        st.consents.retain(|(c, _), _| *c != id);
        st.sessions.retain(|_, s| s.client_id != id);
        st.log(audit);
        Ok(true)
    }

    async fn set_client_secret_hash(
        &self,
        id: ClientId,
        secret_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.clients.contains_key(&id) {
            return Err(Error::not_found(format!("client {id}")));
        }
        st.check_event(&audit)?;
        if let Some(row) = st.clients.get_mut(&id) {
            row.secret_hash = Some(*secret_hash);
            row.client.updated_at = audit.at;
        }
        st.log(audit);
        Ok(())
    }
}

#[async_trait]
impl GrantStore for MemoryStore {
    async fn issue_code(
        &self,
        grant: &Grant,
        code_hash: &TokenHash,
        code: &AuthorizationCode,
        audit: AuditEvent,
    ) -> Result<()> {
        if code.grant_id != grant.id || code.client_id != grant.client_id {
            return Err(Error::invalid(
                "authorization code",
                "must belong to the grant issued with it",
            ));
        }
        let mut st = self.write();
        if grant.revoked_at.is_some() || !st.client_enabled(grant.client_id) {
            return Err(inactive_grant());
        }
        if st.grants.contains_key(&grant.id) {
            return Err(Error::Conflict {
                what: format!("grant {}", grant.id),
            });
        }
        State::check_new(&st.codes, "authorization code", [*code_hash])?;
        st.check_event(&audit)?;
        st.add_grant(grant.clone());
        st.add_code(*code_hash, code.clone());
        st.log(audit);
        Ok(())
    }

    async fn consume_code(
        &self,
        code_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<CodeConsumption> {
        let now = audit.at;
        let mut st = self.write();
        let Some(code) = st.codes.get(code_hash) else {
            return Ok(CodeConsumption::Inactive);
        };
        // A consumed code is a replay whatever else is true of it now (expired, grant
        // already revoked by an earlier replay): the caller revokes the grant, idempotently.
        if code.consumed_at.is_some() {
            return Ok(CodeConsumption::AlreadyConsumed {
                grant_id: code.grant_id,
            });
        }
        if code.expires_at <= now || st.live_grant(code.grant_id).is_none() {
            return Ok(CodeConsumption::Inactive);
        }
        st.check_event(&audit)?;
        let consumed = match st.codes.get_mut(code_hash) {
            Some(code) => {
                code.consumed_at = Some(now);
                code.clone()
            }
            None => return Ok(CodeConsumption::Inactive),
        };
        st.log(describe(
            audit,
            consumed.grant_id,
            consumed.client_id,
            Some(&consumed.subject),
        ));
        Ok(CodeConsumption::Consumed(consumed))
    }

    async fn issue_tokens(&self, issue: &TokenIssue, audit: AuditEvent) -> Result<()> {
        if issue
            .new_grant
            .as_ref()
            .is_some_and(|g| g.id != issue.grant_id)
            || issue
                .access
                .as_ref()
                .is_some_and(|(_, t)| t.grant_id != issue.grant_id)
            || issue
                .refresh
                .as_ref()
                .is_some_and(|(_, t)| t.grant_id != issue.grant_id)
        {
            return Err(Error::invalid(
                "grant_id",
                "the tokens and the new grant must name the same grant",
            ));
        }
        let mut st = self.write();
        let client_id = match &issue.new_grant {
            Some(g) => {
                if st.grants.contains_key(&g.id) {
                    return Err(Error::Conflict {
                        what: format!("grant {}", g.id),
                    });
                }
                if g.revoked_at.is_some() || !st.client_enabled(g.client_id) {
                    return Err(inactive_grant());
                }
                g.client_id
            }
            None => {
                st.live_grant(issue.grant_id)
                    .ok_or_else(inactive_grant)?
                    .client_id
            }
        };
        if issue
            .access
            .as_ref()
            .is_some_and(|(_, t)| t.client_id != client_id)
            || issue
                .refresh
                .as_ref()
                .is_some_and(|(_, t)| t.client_id != client_id)
        {
            return Err(Error::invalid(
                "client_id",
                "tokens must belong to their grant's client",
            ));
        }
        State::check_new(
            &st.access,
            "access token",
            issue.access.iter().map(|(h, _)| *h),
        )?;
        State::check_new(
            &st.refresh,
            "refresh token",
            issue.refresh.iter().map(|(h, _)| *h),
        )?;
        st.check_event(&audit)?;
        if let Some(g) = &issue.new_grant {
            st.add_grant(g.clone());
        }
        if let Some((h, t)) = &issue.access {
            st.add_access(*h, t.clone());
        }
        if let Some((h, t)) = &issue.refresh {
            st.add_refresh(*h, t.clone());
        }
        st.log(audit);
        Ok(())
    }

    async fn get_grant(&self, id: GrantId) -> Result<Option<Grant>> {
        Ok(self.read().grants.get(&id).map(|r| r.grant.clone()))
    }

    async fn find_access_token(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AccessToken>> {
        let st = self.read();
        Ok(st
            .access
            .get(hash)
            .filter(|t| {
                t.expires_at > now && t.revoked_at.is_none() && st.live_grant(t.grant_id).is_some()
            })
            .cloned())
    }

    async fn find_refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenState>> {
        let st = self.read();
        let Some(token) = st.refresh.get(hash) else {
            return Ok(None);
        };
        let Some(row) = st.grants.get(&token.grant_id) else {
            return Ok(None);
        };
        Ok(Some(RefreshTokenState {
            token: token.clone(),
            grant: row.grant.clone(),
            client_disabled: !st.client_enabled(row.grant.client_id),
        }))
    }

    async fn rotate_refresh_token(&self, rotation: &Rotation, audit: AuditEvent) -> Result<bool> {
        let now = audit.at;
        let (new_refresh_hash, new_refresh) = &rotation.refresh;
        let (new_access_hash, new_access) = &rotation.access;
        let mut st = self.write();
        let Some(presented) = st.refresh.get(&rotation.presented) else {
            return Ok(false);
        };
        let cas_holds = presented.revoked_at.is_none()
            && presented.expires_at > now
            && presented.idle_expires_at > now
            && st
                .grants
                .get(&presented.grant_id)
                .is_some_and(|g| g.grant.revoked_at.is_none())
            && st
                .clients
                .get(&presented.client_id)
                .is_some_and(|c| !c.client.disabled)
            && match rotation.mode {
                RotationMode::First => presented.rotated_at.is_none(),
                RotationMode::Grace {
                    rotated_since,
                    max_reuses,
                } => {
                    presented.rotated_at.is_some_and(|t| t >= rotated_since)
                        && presented.reuse_count < max_reuses
                }
            };
        if !cas_holds {
            return Ok(false);
        }
        let (grant_id, client_id) = (presented.grant_id, presented.client_id);
        if new_refresh.grant_id != grant_id
            || new_access.grant_id != grant_id
            || new_refresh.client_id != client_id
            || new_access.client_id != client_id
        {
            return Err(Error::invalid(
                "grant_id",
                "the new tokens must belong to the presented token's grant and client",
            ));
        }
        State::check_new(&st.refresh, "refresh token", [*new_refresh_hash])?;
        State::check_new(&st.access, "access token", [*new_access_hash])?;
        st.check_event(&audit)?;
        if let Some(old) = st.refresh.get_mut(&rotation.presented) {
            match rotation.mode {
                RotationMode::First => {
                    old.rotated_at = Some(now);
                    old.successor = Some(*new_refresh_hash);
                }
                RotationMode::Grace { .. } => old.reuse_count = old.reuse_count.saturating_add(1),
            }
        }
        st.add_refresh(*new_refresh_hash, new_refresh.clone());
        st.add_access(*new_access_hash, new_access.clone());
        st.log(audit);
        Ok(true)
    }

    async fn revoke_access_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        let mut st = self.write();
        let Some(token) = st.access.get(hash) else {
            return Ok(RevokeOutcome::NotFound);
        };
        if client.is_some_and(|c| c != token.client_id) {
            return Ok(RevokeOutcome::WrongClient);
        }
        let grant_id = token.grant_id;
        if token.revoked_at.is_none() {
            let audit = describe(audit, grant_id, token.client_id, token.subject.as_ref());
            st.check_event(&audit)?;
            if let Some(t) = st.access.get_mut(hash) {
                t.revoked_at = Some(audit.at);
            }
            st.log(audit);
        }
        Ok(RevokeOutcome::Revoked { grant_id })
    }

    async fn revoke_refresh_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        let mut st = self.write();
        let Some(token) = st.refresh.get(hash) else {
            return Ok(RevokeOutcome::NotFound);
        };
        if client.is_some_and(|c| c != token.client_id) {
            return Ok(RevokeOutcome::WrongClient);
        }
        let grant_id = token.grant_id;
        let audit = describe(audit, grant_id, token.client_id, token.subject.as_ref());
        let token_live = token.revoked_at.is_none();
        let grant_live = st
            .grants
            .get(&grant_id)
            .is_some_and(|g| g.grant.revoked_at.is_none());
        if token_live || grant_live {
            st.check_event(&audit)?;
            if let Some(t) = st.refresh.get_mut(hash) {
                t.revoked_at.get_or_insert(audit.at);
            }
            st.revoke_grant_at(grant_id, audit.at);
            st.log(audit);
        }
        Ok(RevokeOutcome::Revoked { grant_id })
    }

    async fn revoke_grant(&self, id: GrantId, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let Some(row) = st.grants.get(&id) else {
            return Ok(false);
        };
        if row.grant.revoked_at.is_none() {
            st.check_event(&audit)?;
            st.revoke_grant_at(id, audit.at);
            st.log(audit);
        }
        Ok(true)
    }

    async fn revoke_grants_by_client(&self, client: ClientId, audit: AuditEvent) -> Result<u64> {
        let mut st = self.write();
        let Some(row) = st.clients.get(&client) else {
            return Ok(0);
        };
        let ids: Vec<GrantId> = row.grants.iter().copied().collect();
        revoke_set(&mut st, ids, audit)
    }

    async fn revoke_grants_by_subject(&self, subject: &Subject, audit: AuditEvent) -> Result<u64> {
        let mut st = self.write();
        let Some(set) = st.grants_by_subject.get(subject) else {
            return Ok(0);
        };
        let ids: Vec<GrantId> = set.iter().copied().collect();
        revoke_set(&mut st, ids, audit)
    }
}

/// Revokes the unrevoked grants among `ids` and logs `audit` if there was any; the count.
fn revoke_set(st: &mut State, ids: Vec<GrantId>, audit: AuditEvent) -> Result<u64> {
    let live: Vec<GrantId> = ids
        .into_iter()
        .filter(|id| {
            st.grants
                .get(id)
                .is_some_and(|g| g.grant.revoked_at.is_none())
        })
        .collect();
    if live.is_empty() {
        return Ok(0);
    }
    st.check_event(&audit)?;
    let n = st.revoke_grants_at(live, audit.at);
    st.log(audit);
    Ok(n)
}

#[async_trait]
impl PatStore for MemoryStore {
    async fn insert_pat(
        &self,
        hash: &TokenHash,
        pat: &PersonalAccessToken,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if st.pat_ids.contains_key(&pat.id) {
            return Err(Error::Conflict {
                what: format!("personal access token {}", pat.id),
            });
        }
        State::check_new(&st.pats, "personal access token", [*hash])?;
        st.check_event(&audit)?;
        st.pat_ids.insert(pat.id, *hash);
        st.pats.insert(*hash, pat.clone());
        st.log(audit);
        Ok(())
    }

    async fn find_pat(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<PersonalAccessToken>> {
        let st = self.read();
        Ok(st
            .pats
            .get(hash)
            .filter(|p| p.revoked_at.is_none() && p.expires_at.is_none_or(|e| e > now))
            .cloned())
    }

    async fn list_pats(&self, user: &Subject) -> Result<Vec<PersonalAccessToken>> {
        let st = self.read();
        Ok(st
            .pat_ids
            .values()
            .filter_map(|h| st.pats.get(h))
            .filter(|p| &p.user == user)
            .cloned()
            .collect())
    }

    async fn revoke_pat(
        &self,
        id: PatId,
        user: Option<&Subject>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let Some(hash) = st.pat_ids.get(&id).copied() else {
            return Ok(false);
        };
        let Some(pat) = st.pats.get(&hash) else {
            return Ok(false);
        };
        if user.is_some_and(|u| u != &pat.user) {
            return Ok(false);
        }
        if pat.revoked_at.is_none() {
            st.check_event(&audit)?;
            if let Some(p) = st.pats.get_mut(&hash) {
                p.revoked_at = Some(audit.at);
            }
            st.log(audit);
        }
        Ok(true)
    }

    async fn record_pat_usage(&self, usage: &[(PatId, Timestamp)]) -> Result<()> {
        let mut st = self.write();
        for &(id, at) in usage {
            let Some(hash) = st.pat_ids.get(&id).copied() else {
                continue;
            };
            if let Some(p) = st.pats.get_mut(&hash) {
                if p.last_used_at.is_none_or(|t| t < at) {
                    p.last_used_at = Some(at);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AuthorizationSessionStore for MemoryStore {
    async fn insert_authorization_session(
        &self,
        hash: &TokenHash,
        session: &AuthorizationSession,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.clients.contains_key(&session.client_id) {
            return Err(Error::not_found(format!("client {}", session.client_id)));
        }
        State::check_new(&st.sessions, "authorization session", [*hash])?;
        st.check_event(&audit)?;
        st.sessions.insert(*hash, session.clone());
        st.log(audit);
        Ok(())
    }

    async fn find_authorization_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AuthorizationSession>> {
        let st = self.read();
        Ok(st
            .sessions
            .get(hash)
            .filter(|s| session_pending(s, now))
            .cloned())
    }

    async fn set_authorization_session_subject(
        &self,
        hash: &TokenHash,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let Some(s) = st
            .sessions
            .get(hash)
            .filter(|s| session_pending(s, audit.at))
        else {
            return Ok(false);
        };
        match &s.subject {
            Some(current) => Ok(current == subject),
            None => {
                st.check_event(&audit)?;
                if let Some(s) = st.sessions.get_mut(hash) {
                    s.subject = Some(subject.clone());
                }
                st.log(audit);
                Ok(true)
            }
        }
    }

    async fn complete_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<Option<AuthorizationSession>> {
        let mut st = self.write();
        let ready = st
            .sessions
            .get(hash)
            .is_some_and(|s| session_pending(s, audit.at) && s.subject.is_some());
        if !ready {
            return Ok(None);
        }
        st.check_event(&audit)?;
        let done = st.sessions.get_mut(hash).map(|s| {
            s.completed_at = Some(audit.at);
            s.clone()
        });
        st.log(audit);
        Ok(done)
    }

    async fn expire_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if !st
            .sessions
            .get(hash)
            .is_some_and(|s| session_pending(s, audit.at))
        {
            return Ok(false);
        }
        st.check_event(&audit)?;
        if let Some(s) = st.sessions.get_mut(hash) {
            s.expires_at = audit.at;
        }
        st.log(audit);
        Ok(true)
    }
}

#[async_trait]
impl ConsentStore for MemoryStore {
    async fn merge_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        scope: &Scopes,
        audit: AuditEvent,
    ) -> Result<Consent> {
        let mut st = self.write();
        if !st.clients.contains_key(&client) {
            return Err(Error::not_found(format!("client {client}")));
        }
        st.check_event(&audit)?;
        let key = (client, subject.clone());
        let merged = match st.consents.get(&key) {
            Some(old) => Consent {
                scope: old.scope.union(scope),
                updated_at: audit.at,
                ..old.clone()
            },
            None => Consent {
                client_id: client,
                subject: subject.clone(),
                scope: scope.clone(),
                granted_at: audit.at,
                updated_at: audit.at,
            },
        };
        st.consents.insert(key, merged.clone());
        st.log(audit);
        Ok(merged)
    }

    async fn get_consent(&self, client: ClientId, subject: &Subject) -> Result<Option<Consent>> {
        Ok(self
            .read()
            .consents
            .get(&(client, subject.clone()))
            .cloned())
    }

    async fn delete_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let key = (client, subject.clone());
        let existed = st.consents.contains_key(&key);
        let live: Vec<GrantId> = st
            .grants_by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                st.grants
                    .get(id)
                    .is_some_and(|g| g.grant.client_id == client && g.grant.revoked_at.is_none())
            })
            .collect();
        if !existed && live.is_empty() {
            return Ok(false);
        }
        st.check_event(&audit)?;
        st.consents.remove(&key);
        st.revoke_grants_at(live, audit.at);
        st.log(audit);
        Ok(existed)
    }
}

fn user_not_found(id: UserId) -> Error {
    Error::not_found(format!("user {id}"))
}

fn group_not_found(id: GroupId) -> Error {
    Error::not_found(format!("group {id}"))
}

fn failure_dead(f: &LoginFailure, cutoff: Timestamp) -> bool {
    f.at <= cutoff
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl IdentityStore for MemoryStore {
    async fn insert_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        if st.users.contains_key(&user.id) {
            return Err(Error::Conflict {
                what: format!("user {}", user.id),
            });
        }
        st.check_user_keys(user)?;
        st.check_event(&audit)?;
        st.put_user(user.clone());
        st.log(audit);
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        Ok(self.read().users.get(&id).cloned())
    }

    async fn find_user_by_username(&self, username_key: &str) -> Result<Option<User>> {
        let st = self.read();
        Ok(st
            .user_by_username
            .get(username_key)
            .and_then(|id| st.users.get(id))
            .cloned())
    }

    async fn find_user_by_email(&self, email_key: &str) -> Result<Option<User>> {
        let st = self.read();
        Ok(st
            .user_by_email
            .get(email_key)
            .and_then(|id| st.users.get(id))
            .cloned())
    }

    async fn update_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        let Some(old) = st.users.get(&user.id) else {
            return Err(user_not_found(user.id));
        };
        // Everything but the id, the creation time and `active` (which only set_user_active
        // writes: an update from a stale read must not re-enable a user).
        let updated = User {
            id: old.id,
            active: old.active,
            created_at: old.created_at,
            ..user.clone()
        };
        st.check_user_keys(&updated)?;
        st.check_event(&audit)?;
        st.put_user(updated);
        st.log(audit);
        Ok(())
    }

    async fn set_user_active(&self, id: UserId, active: bool, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        match st.users.get(&id) {
            None => return Err(user_not_found(id)),
            Some(u) if u.active == active => return Ok(()),
            Some(_) => {}
        }
        st.check_event(&audit)?;
        if let Some(u) = st.users.get_mut(&id) {
            u.active = active;
            u.updated_at = audit.at;
        }
        if !active {
            // A disabled user's tokens and login sessions stop working with the same change.
            st.revoke_subject_at(&subject_of(id), audit.at);
            st.revoke_login_sessions_at(id, audit.at);
            st.consume_one_time_of(id, audit.at);
        }
        st.log(audit);
        Ok(())
    }

    async fn delete_user(&self, id: UserId, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let Some(user) = st.users.get(&id) else {
            return Ok(false);
        };
        let (name, email) = (user.username_key(), user.email_key());
        st.check_event(&audit)?;
        st.users.remove(&id);
        st.user_by_username.remove(&name);
        if let Some(e) = email {
            st.user_by_email.remove(&e);
        }
        let groups: Vec<GroupId> = st
            .memberships
            .get(&id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for g in groups {
            st.remove_member(g, id);
        }
        st.passwords.remove(&id);
        st.remove_failures(id);
        st.remove_user_accounts(id);
        st.remove_subject(&subject_of(id));
        st.log(audit);
        Ok(true)
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
        search: Option<&str>,
    ) -> Result<Vec<User>> {
        use std::ops::Bound;
        let st = self.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(st
            .users
            .range((lower, Bound::Unbounded))
            .map(|(_, u)| u)
            .filter(|u| {
                search.is_none_or(|s| {
                    u.username_key().contains(s) || u.email_key().is_some_and(|e| e.contains(s))
                })
            })
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn insert_group(&self, group: &Group, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        if st.groups.contains_key(&group.id) {
            return Err(Error::Conflict {
                what: format!("group {}", group.id),
            });
        }
        st.check_group_key(group)?;
        st.check_event(&audit)?;
        st.put_group(group.clone());
        st.log(audit);
        Ok(())
    }

    async fn get_group(&self, id: GroupId) -> Result<Option<Group>> {
        Ok(self.read().groups.get(&id).cloned())
    }

    async fn rename_group(&self, id: GroupId, name: &str, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        let Some(old) = st.groups.get(&id) else {
            return Err(group_not_found(id));
        };
        let renamed = Group {
            name: name.to_owned(),
            ..old.clone()
        };
        st.check_group_key(&renamed)?;
        st.check_event(&audit)?;
        st.put_group(renamed);
        st.log(audit);
        Ok(())
    }

    async fn delete_group(&self, id: GroupId, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let Some(group) = st.groups.get(&id) else {
            return Ok(false);
        };
        let key = group.name_key();
        st.check_event(&audit)?;
        let users: Vec<UserId> = st.members.get(&id).into_iter().flatten().copied().collect();
        for u in users {
            st.remove_member(id, u);
        }
        st.groups.remove(&id);
        st.group_by_name.remove(&key);
        st.log(audit);
        Ok(true)
    }

    async fn add_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if !st.groups.contains_key(&group) {
            return Err(group_not_found(group));
        }
        if !st.users.contains_key(&user) {
            return Err(user_not_found(user));
        }
        if st.is_member(group, user) {
            return Ok(false);
        }
        st.check_event(&audit)?;
        st.add_member(group, user);
        st.log(audit);
        Ok(true)
    }

    async fn remove_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if !st.is_member(group, user) {
            return Ok(false);
        }
        st.check_event(&audit)?;
        st.remove_member(group, user);
        st.log(audit);
        Ok(true)
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let st = self.read();
        let mut groups: Vec<(String, Group)> = st
            .memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|g| st.groups.get(g))
            .map(|g| (g.name_key(), g.clone()))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(groups.into_iter().map(|(_, g)| g).collect())
    }

    async fn group_members(&self, group: GroupId) -> Result<Vec<User>> {
        let st = self.read();
        Ok(st
            .members
            .get(&group)
            .into_iter()
            .flatten()
            .filter_map(|u| st.users.get(u))
            .cloned()
            .collect())
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &PasswordHash,
        revoke_grants: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&user) {
            return Err(user_not_found(user));
        }
        st.check_event(&audit)?;
        st.passwords.insert(user, hash.clone());
        st.forget_user_failures(user);
        if revoke_grants {
            st.revoke_subject_at(&subject_of(user), audit.at);
            st.revoke_login_sessions_at(user, audit.at);
            st.consume_one_time_of(user, audit.at);
        }
        st.log(audit);
        Ok(())
    }

    async fn get_password_hash(&self, user: UserId) -> Result<Option<PasswordHash>> {
        Ok(self.read().passwords.get(&user).cloned())
    }

    async fn record_login_attempt(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        success: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        st.check_event(&audit)?;
        // Only a stored user's failures are remembered under the user: erasing the user
        // erases them.
        let user = user.filter(|u| st.users.contains_key(u));
        if success {
            if let Some(u) = user {
                st.forget_user_failures(u);
            }
        } else {
            st.add_failure(LoginFailure {
                user,
                source,
                at: audit.at,
            });
        }
        st.log(audit);
        Ok(())
    }

    async fn login_failures(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        since: Timestamp,
    ) -> Result<FailureCounts> {
        let st = self.read();
        let recent = |ids: Option<&std::collections::BTreeSet<u64>>| {
            count_u32(
                ids.into_iter()
                    .flatten()
                    .filter_map(|id| st.failures.get(id))
                    .filter(|f| f.at >= since)
                    .count(),
            )
        };
        Ok(FailureCounts {
            user: user.map_or(0, |u| recent(st.failures_by_user.get(&u))),
            source: source.map_or(0, |s| recent(st.failures_by_source.get(&s))),
        })
    }
}

fn login_session_dead(s: &LoginSession, cutoff: Timestamp) -> bool {
    s.expires_at <= cutoff || s.idle_expires_at <= cutoff || le(s.revoked_at, cutoff)
}

fn one_time_dead(t: &OneTimeToken, cutoff: Timestamp) -> bool {
    t.expires_at <= cutoff || le(t.consumed_at, cutoff)
}

fn ceremony_dead(c: &Ceremony, cutoff: Timestamp) -> bool {
    c.expires_at <= cutoff
}

/// Fills the event's subject from the user the record belongs to, where the caller (who
/// only had a hash or an id) left it unset.
fn about_user(mut event: AuditEvent, user: UserId) -> AuditEvent {
    if event.subject.is_none() {
        event.subject = Some(subject_of(user));
    }
    event
}

/// The `(table, column)` of [`SEALED_COLUMNS`] matching the arguments, or InvalidInput.
fn sealed_column(table: &str, column: &str) -> Result<(&'static str, &'static str)> {
    SEALED_COLUMNS
        .into_iter()
        .find(|&(t, c)| t == table && c == column)
        .ok_or_else(|| Error::invalid("column", format!("no sealed column {table}.{column}")))
}

/// The sealed value stored in `column` of a linked account.
fn linked_column<'a>(account: &'a mut LinkedAccount, column: &str) -> &'a mut Option<Sealed> {
    if column == "access_token" {
        &mut account.access_token
    } else {
        &mut account.refresh_token
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn insert_login_session(
        &self,
        hash: &TokenHash,
        session: &LoginSession,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&session.user) {
            return Err(user_not_found(session.user));
        }
        State::check_new(&st.login_sessions, "login session", [*hash])?;
        if st.login_session_ids.contains_key(&session.id) {
            return Err(Error::Conflict {
                what: format!("login session {}", session.id),
            });
        }
        st.check_event(&audit)?;
        st.add_login_session(*hash, session.clone());
        st.log(audit);
        Ok(())
    }

    async fn find_login_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<LoginSession>> {
        let st = self.read();
        Ok(st
            .login_sessions
            .get(hash)
            .filter(|s| {
                s.revoked_at.is_none()
                    && now < s.expires_at
                    && now < s.idle_expires_at
                    && st.users.get(&s.user).is_some_and(|u| u.active)
            })
            .cloned())
    }

    async fn touch_login_sessions(
        &self,
        touches: &[(LoginSessionId, Timestamp, Timestamp)],
    ) -> Result<()> {
        let mut st = self.write();
        for &(id, last_seen_at, idle_expires_at) in touches {
            let Some(hash) = st.login_session_ids.get(&id).copied() else {
                continue;
            };
            if let Some(s) = st.login_sessions.get_mut(&hash) {
                s.last_seen_at = s.last_seen_at.max(last_seen_at);
                // Forward only, and never past the absolute end (a stored value already past
                // it is not moved back either).
                s.idle_expires_at = s.idle_expires_at.max(idle_expires_at.min(s.expires_at));
            }
        }
        Ok(())
    }

    async fn list_login_sessions(&self, user: UserId) -> Result<Vec<LoginSession>> {
        let st = self.read();
        Ok(st
            .login_sessions_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| st.login_session_ids.get(id))
            .filter_map(|h| st.login_sessions.get(h))
            .cloned()
            .collect())
    }

    async fn revoke_login_session(
        &self,
        id: LoginSessionId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let Some(hash) = st.login_session_ids.get(&id).copied() else {
            return Ok(false);
        };
        let Some(session) = st.login_sessions.get(&hash) else {
            return Ok(false);
        };
        if user.is_some_and(|u| u != session.user) || session.revoked_at.is_some() {
            return Ok(false);
        }
        let audit = about_user(audit, session.user);
        st.check_event(&audit)?;
        if let Some(s) = st.login_sessions.get_mut(&hash) {
            s.revoked_at = Some(audit.at);
        }
        st.log(audit);
        Ok(true)
    }

    async fn revoke_user_login_sessions(&self, user: UserId, audit: AuditEvent) -> Result<u64> {
        let mut st = self.write();
        st.check_event(&audit)?;
        let n = st.revoke_login_sessions_at(user, audit.at);
        if n > 0 {
            st.log(audit);
        }
        Ok(n)
    }

    async fn insert_one_time_token(
        &self,
        hash: &TokenHash,
        token: &OneTimeToken,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&token.user) {
            return Err(user_not_found(token.user));
        }
        State::check_new(&st.one_time, "one-time token", [*hash])?;
        st.check_event(&audit)?;
        // Supersede: only the newest token of a user and purpose works.
        let older: Vec<TokenHash> = st
            .one_time_by_user
            .get(&token.user)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for h in older {
            if let Some(t) = st.one_time.get_mut(&h) {
                if t.purpose == token.purpose && t.consumed_at.is_none() {
                    t.consumed_at = Some(audit.at);
                }
            }
        }
        st.add_one_time(*hash, token.clone());
        st.log(audit);
        Ok(())
    }

    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        audit: AuditEvent,
    ) -> Result<Option<OneTimeToken>> {
        let mut st = self.write();
        let Some(token) = st.one_time.get(hash) else {
            return Ok(None);
        };
        if token.purpose != purpose
            || token.consumed_at.is_some()
            || audit.at >= token.expires_at
            || !st.users.contains_key(&token.user)
        {
            return Ok(None);
        }
        let audit = about_user(audit, token.user);
        st.check_event(&audit)?;
        let consumed = st.one_time.get_mut(hash).map(|t| {
            t.consumed_at = Some(audit.at);
            t.clone()
        });
        st.log(audit);
        Ok(consumed)
    }

    async fn set_totp(&self, user: UserId, totp: &TotpRecord, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&user) {
            return Err(user_not_found(user));
        }
        st.check_event(&audit)?;
        let record = TotpRecord {
            last_step: None,
            ..totp.clone()
        };
        st.totp.insert(user_key(user), record);
        st.log(audit);
        Ok(())
    }

    async fn get_totp(&self, user: UserId) -> Result<Option<TotpRecord>> {
        Ok(self.read().totp.get(&user_key(user)).cloned())
    }

    async fn use_totp_step(&self, user: UserId, step: i64, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let key = user_key(user);
        let Some(totp) = st.totp.get(&key) else {
            return Ok(false);
        };
        if totp.last_step.is_some_and(|last| step <= last) {
            return Ok(false);
        }
        st.check_event(&audit)?;
        if let Some(t) = st.totp.get_mut(&key) {
            t.last_step = Some(step);
        }
        st.log(audit);
        Ok(true)
    }

    async fn delete_totp(&self, user: UserId, audit: AuditEvent) -> Result<bool> {
        let mut st = self.write();
        let key = user_key(user);
        if !st.totp.contains_key(&key) {
            return Ok(false);
        }
        st.check_event(&audit)?;
        st.totp.remove(&key);
        st.log(audit);
        Ok(true)
    }

    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[TokenHash],
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&user) {
            return Err(user_not_found(user));
        }
        st.check_event(&audit)?;
        if hashes.is_empty() {
            st.recovery_codes.remove(&user);
        } else {
            st.recovery_codes
                .insert(user, hashes.iter().copied().collect());
        }
        st.log(audit);
        Ok(())
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if !st
            .recovery_codes
            .get(&user)
            .is_some_and(|c| c.contains(hash))
        {
            return Ok(false);
        }
        st.check_event(&audit)?;
        if let Some(codes) = st.recovery_codes.get_mut(&user) {
            codes.remove(hash);
            if codes.is_empty() {
                st.recovery_codes.remove(&user);
            }
        }
        st.log(audit);
        Ok(true)
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<u32> {
        Ok(count_u32(
            self.read().recovery_codes.get(&user).map_or(0, |c| c.len()),
        ))
    }

    async fn insert_passkey(&self, passkey: &Passkey, audit: AuditEvent) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&passkey.user) {
            return Err(user_not_found(passkey.user));
        }
        if st.passkeys.contains_key(&passkey.credential_id) {
            return Err(Error::Conflict {
                what: "passkey with this credential id".to_owned(),
            });
        }
        st.check_event(&audit)?;
        st.add_passkey(passkey.clone());
        st.log(audit);
        Ok(())
    }

    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>> {
        Ok(self.read().passkeys.get(credential_id).cloned())
    }

    async fn list_passkeys(&self, user: UserId) -> Result<Vec<Passkey>> {
        let st = self.read();
        let mut keys: Vec<Passkey> = st
            .passkeys_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|c| st.passkeys.get(c))
            .cloned()
            .collect();
        keys.sort_by(|a, b| {
            (a.created_at, &a.credential_id).cmp(&(b.created_at, &b.credential_id))
        });
        Ok(keys)
    }

    async fn rename_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if st
            .passkeys
            .get(credential_id)
            .is_none_or(|p| p.user != user)
        {
            return Ok(false);
        }
        st.check_event(&audit)?;
        if let Some(p) = st.passkeys.get_mut(credential_id) {
            name.clone_into(&mut p.name);
        }
        st.log(audit);
        Ok(true)
    }

    async fn update_passkey_use(
        &self,
        credential_id: &[u8],
        counter: u32,
        backup_state: bool,
        credential: Option<&serde_json::Value>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let Some(passkey) = st.passkeys.get(credential_id) else {
            return Ok(false);
        };
        let audit = about_user(audit, passkey.user);
        st.check_event(&audit)?;
        if let Some(p) = st.passkeys.get_mut(credential_id) {
            p.counter = p.counter.max(counter);
            p.backup_state = backup_state;
            p.last_used_at = Some(audit.at);
            if let Some(c) = credential {
                p.credential = c.clone();
            }
        }
        st.log(audit);
        Ok(true)
    }

    async fn delete_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        if st
            .passkeys
            .get(credential_id)
            .is_none_or(|p| p.user != user)
        {
            return Ok(false);
        }
        st.check_event(&audit)?;
        st.remove_passkey(credential_id);
        st.log(audit);
        Ok(true)
    }

    async fn insert_ceremony(&self, hash: &TokenHash, ceremony: &Ceremony) -> Result<()> {
        let mut st = self.write();
        State::check_new(&st.ceremonies, "ceremony", [*hash])?;
        st.add_ceremony(*hash, ceremony.clone());
        Ok(())
    }

    async fn take_ceremony(&self, hash: &TokenHash, now: Timestamp) -> Result<Option<Ceremony>> {
        // Removed whether or not it has expired: single use either way.
        Ok(self
            .write()
            .remove_ceremony(hash)
            .filter(|c| now < c.expires_at))
    }

    async fn insert_linked_account(
        &self,
        account: &LinkedAccount,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut st = self.write();
        if !st.users.contains_key(&account.user) {
            return Err(user_not_found(account.user));
        }
        if st.linked.contains_key(&linked_key(account.id)) {
            return Err(Error::Conflict {
                what: format!("linked account {}", account.id),
            });
        }
        let key = (account.provider.clone(), account.provider_subject.clone());
        if st.linked_by_key.contains_key(&key) {
            return Err(Error::Conflict {
                what: format!("linked {} account with this subject", account.provider),
            });
        }
        st.check_event(&audit)?;
        st.add_linked(account.clone());
        st.log(audit);
        Ok(())
    }

    async fn find_linked_account(
        &self,
        provider: &str,
        provider_subject: &str,
    ) -> Result<Option<LinkedAccount>> {
        let st = self.read();
        Ok(st
            .linked_by_key
            .get(&(provider.to_owned(), provider_subject.to_owned()))
            .and_then(|id| st.linked.get(&linked_key(*id)))
            .cloned())
    }

    async fn list_linked_accounts(&self, user: UserId) -> Result<Vec<LinkedAccount>> {
        let st = self.read();
        Ok(st
            .linked_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| st.linked.get(&linked_key(*id)))
            .cloned()
            .collect())
    }

    async fn update_linked_tokens(
        &self,
        id: LinkedAccountId,
        access_token: Option<&Sealed>,
        refresh_token: Option<&Sealed>,
        token_expires_at: Option<Timestamp>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let key = linked_key(id);
        let Some(account) = st.linked.get(&key) else {
            return Ok(false);
        };
        let audit = about_user(audit, account.user);
        st.check_event(&audit)?;
        if let Some(a) = st.linked.get_mut(&key) {
            a.access_token = access_token.cloned();
            a.refresh_token = refresh_token.cloned();
            a.token_expires_at = token_expires_at;
            a.updated_at = audit.at;
        }
        st.log(audit);
        Ok(true)
    }

    async fn delete_linked_account(
        &self,
        id: LinkedAccountId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut st = self.write();
        let Some(account) = st.linked.get(&linked_key(id)) else {
            return Ok(false);
        };
        if user.is_some_and(|u| u != account.user) {
            return Ok(false);
        }
        let audit = about_user(audit, account.user);
        st.check_event(&audit)?;
        st.remove_linked(id);
        st.log(audit);
        Ok(true)
    }

    async fn sealed_values(
        &self,
        table: &'static str,
        column: &'static str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(SealedRef, Sealed)>> {
        use std::ops::Bound;
        let (table, column) = sealed_column(table, column)?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = (lower, Bound::Unbounded);
        let at = |row: &[u8; 16]| SealedRef {
            table,
            column,
            row: row.to_vec(),
        };
        let st = self.read();
        let limit = limit as usize;
        Ok(if table == "totp" {
            st.totp
                .range::<[u8], _>(range)
                .map(|(row, t)| (at(row), t.secret.clone()))
                .take(limit)
                .collect()
        } else {
            st.linked
                .range::<[u8], _>(range)
                .filter_map(|(row, a)| {
                    let value = if column == "access_token" {
                        &a.access_token
                    } else {
                        &a.refresh_token
                    };
                    value.as_ref().map(|v| (at(row), v.clone()))
                })
                .take(limit)
                .collect()
        })
    }

    async fn replace_sealed(&self, at: &SealedRef, old: &Sealed, new: &Sealed) -> Result<bool> {
        let (table, column) = sealed_column(at.table, at.column)?;
        let mut st = self.write();
        let slot = if table == "totp" {
            st.totp.get_mut(at.row.as_slice()).map(|t| &mut t.secret)
        } else {
            st.linked
                .get_mut(at.row.as_slice())
                .and_then(|a| linked_column(a, column).as_mut())
        };
        match slot {
            Some(value) if value == old => {
                *value = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        use std::ops::Bound;
        let limit = query.effective_limit()? as usize;
        let st = self.read();
        let lower = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(st
            .audit
            .range((lower, Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| query.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Maintenance for MemoryStore {
    async fn migrate(&self) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }

    async fn key_checks(&self) -> Result<Vec<KeyCheck>> {
        Ok(self.read().key_checks.values().cloned().collect())
    }

    async fn add_key_checks(&self, seen: &[KeyCheck], new: &[KeyCheck]) -> Result<bool> {
        let mut st = self.write();
        let stored: Vec<KeyCheck> = st.key_checks.values().cloned().collect();
        if !same_key_checks(&stored, seen) {
            return Ok(false);
        }
        // Everything checked before the first insert: a conflict writes nothing.
        let mut ids = std::collections::HashSet::new();
        for c in new {
            let key = (c.ring.as_str(), c.key_id.clone());
            if st.key_checks.contains_key(&key) || !ids.insert(key) {
                return Err(Error::Conflict {
                    what: "key check".into(),
                });
            }
        }
        for c in new {
            st.key_checks
                .insert((c.ring.as_str(), c.key_id.clone()), c.clone());
        }
        Ok(true)
    }

    async fn cleanup(&self, options: &CleanupOptions, now: Timestamp) -> Result<CleanupReport> {
        if options.batch_size == 0 || options.batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid(
                "batch_size",
                format!("1 to {MAX_BATCH_SIZE}"),
            ));
        }
        if options.max_batches == 0 {
            return Err(Error::invalid("max_batches", "at least 1"));
        }
        let cutoff = now.saturating_sub(options.retention);
        let mut r = CleanupReport::default();
        let deadline = options.time_budget.map(|b| std::time::Instant::now() + b);
        let inc = &mut r.incomplete;
        // Tokens first, grants after: a grant whose last token goes now goes in this run.
        r.authorization_codes = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.codes.iter(), n, |c| code_dead(c, cutoff)),
            |st, h| st.codes.get(&h).is_some_and(|c| code_dead(c, cutoff)) && st.remove_code(&h),
        );
        r.access_tokens = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.access.iter(), n, |t| access_dead(t, cutoff)),
            |st, h| {
                st.access.get(&h).is_some_and(|t| access_dead(t, cutoff)) && st.remove_access(&h)
            },
        );
        r.refresh_tokens = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.refresh.iter(), n, |t| refresh_dead(t, cutoff)),
            |st, h| {
                st.refresh.get(&h).is_some_and(|t| refresh_dead(t, cutoff)) && st.remove_refresh(&h)
            },
        );
        // A grant goes only if revoked (nothing of it is live) or empty: never one a live
        // token depends on. Whatever is left of a revoked grant goes with it, uncounted.
        r.grants = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.grants.iter(), n, |g| grant_dead(g, cutoff)),
            |st, id| {
                st.grants.get(&id).is_some_and(|g| grant_dead(g, cutoff)) && st.remove_grant(id)
            },
        );
        r.personal_access_tokens = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.pats.iter(), n, |p| pat_dead(p, cutoff)),
            |st, h| st.pats.get(&h).is_some_and(|p| pat_dead(p, cutoff)) && st.remove_pat(&h),
        );
        r.authorization_sessions = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.sessions.iter(), n, |s| session_dead(s, cutoff)),
            |st, h| {
                st.sessions.get(&h).is_some_and(|s| session_dead(s, cutoff))
                    && st.sessions.remove(&h).is_some()
            },
        );
        // Last: nothing depends on a failure row.
        r.login_failures = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.failures.iter(), n, |f| failure_dead(f, cutoff)),
            |st, id| {
                st.failures
                    .get(&id)
                    .is_some_and(|f| failure_dead(f, cutoff))
                    && st.remove_failure(id)
            },
        );
        r.login_sessions = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| {
                dead_keys(st.login_sessions.iter(), n, |s| {
                    login_session_dead(s, cutoff)
                })
            },
            |st, h| {
                st.login_sessions
                    .get(&h)
                    .is_some_and(|s| login_session_dead(s, cutoff))
                    && st.remove_login_session(&h)
            },
        );
        r.one_time_tokens = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.one_time.iter(), n, |t| one_time_dead(t, cutoff)),
            |st, h| {
                st.one_time
                    .get(&h)
                    .is_some_and(|t| one_time_dead(t, cutoff))
                    && st.remove_one_time(&h)
            },
        );
        r.ceremonies = self.cleanup_kind(
            options,
            deadline,
            inc,
            |st, n| dead_keys(st.ceremonies.iter(), n, |c| ceremony_dead(c, cutoff)),
            |st, h| {
                st.ceremonies
                    .get(&h)
                    .is_some_and(|c| ceremony_dead(c, cutoff))
                    && st.remove_ceremony(&h).is_some()
            },
        );
        Ok(r)
    }

    async fn cleanup_preview(
        &self,
        options: &CleanupOptions,
        now: Timestamp,
    ) -> Result<CleanupReport> {
        let cutoff = now.saturating_sub(options.retention);
        // One read-lock hold: every count is of the same state.
        let st = self.read();
        Ok(CleanupReport {
            authorization_codes: count_dead(st.codes.values(), |c| code_dead(c, cutoff)),
            access_tokens: count_dead(st.access.values(), |t| access_dead(t, cutoff)),
            refresh_tokens: count_dead(st.refresh.values(), |t| refresh_dead(t, cutoff)),
            // As cleanup sees grants: after its code and token passes.
            grants: count_dead(st.grants.values(), |g| {
                grant_dead_if(g, cutoff, || grant_empty_after_tokens(&st, g, cutoff))
            }),
            personal_access_tokens: count_dead(st.pats.values(), |p| pat_dead(p, cutoff)),
            authorization_sessions: count_dead(st.sessions.values(), |s| session_dead(s, cutoff)),
            login_failures: count_dead(st.failures.values(), |f| failure_dead(f, cutoff)),
            login_sessions: count_dead(st.login_sessions.values(), |s| {
                login_session_dead(s, cutoff)
            }),
            one_time_tokens: count_dead(st.one_time.values(), |t| one_time_dead(t, cutoff)),
            ceremonies: count_dead(st.ceremonies.values(), |c| ceremony_dead(c, cutoff)),
            incomplete: false,
        })
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let st = self.read();
        let revoked_grant = |id: &GrantId| {
            st.grants
                .get(id)
                .is_none_or(|g| g.grant.revoked_at.is_some())
        };
        let mut s = Stats {
            clients: len_u64(st.clients.len()),
            disabled_clients: len_u64(st.clients.values().filter(|c| c.client.disabled).count()),
            consents: len_u64(st.consents.len()),
            audit_events: len_u64(st.audit.len()),
            database_bytes: None,
            ..Stats::default()
        };
        for g in st.grants.values() {
            count(&mut s.grants, g.grant.revoked_at.is_some(), false, false);
        }
        for c in st.codes.values() {
            let revoked = revoked_grant(&c.grant_id);
            count(
                &mut s.authorization_codes,
                revoked,
                c.consumed_at.is_some(),
                c.expires_at <= now,
            );
        }
        for t in st.access.values() {
            let revoked = t.revoked_at.is_some() || revoked_grant(&t.grant_id);
            count(&mut s.access_tokens, revoked, false, t.expires_at <= now);
        }
        for t in st.refresh.values() {
            let revoked = t.revoked_at.is_some() || revoked_grant(&t.grant_id);
            let expired = t.expires_at <= now || t.idle_expires_at <= now;
            count(
                &mut s.refresh_tokens,
                revoked,
                t.rotated_at.is_some(),
                expired,
            );
        }
        for p in st.pats.values() {
            let expired = p.expires_at.is_some_and(|e| e <= now);
            count(
                &mut s.personal_access_tokens,
                p.revoked_at.is_some(),
                false,
                expired,
            );
        }
        for x in st.sessions.values() {
            let expired = x.expires_at <= now;
            count(
                &mut s.authorization_sessions,
                false,
                x.completed_at.is_some(),
                expired,
            );
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
