//! The storage contract every backend implements.
//!
//! These traits work on **hashes and prepared records**: minting, hashing, format checks,
//! lifetimes, scope and PKCE rules live once in [`Authstore`](crate::Authstore), which every
//! caller should use. A backend's job is to store records and to make the few operations
//! that must be atomic (consuming a code, rotating a refresh token, revoking a family)
//! atomic. The conformance suite (`authstore-testsuite`) checks every rule here on every
//! backend.
//!
//! Shared rules:
//! - Every method that takes an [`AuditEvent`] writes that event **in the same transaction**
//!   as the change it describes, and only if the change happened. `audit.at` is the
//!   operation's time ("now"). A crash can never leave a change without its event.
//! - Where the caller cannot know them beforehand (consuming a code, revoking one token by
//!   hash), the backend fills the event's `grant_id`, `client_id` and `subject` from the
//!   record when they are `None`, before writing it.
//! - An operation that changes nothing (revoking what is already revoked, a failed
//!   compare-and-set, a set-based revoke that matches no row) writes no event.
//! - A record whose `grant_id`/`client_id` disagree with its grant is refused with
//!   [`Error::InvalidInput`](crate::Error::InvalidInput).
//! - Expiry is enforced in the read: a record with `expires_at <= now` is expired.
//! - A record "depends on" its grant and client: an access or refresh token whose grant is
//!   revoked or whose client is disabled does not validate.
//! - Validation reads never write.
//! - Strings handed in have been validated by core (no NUL, bounded sizes); a backend must
//!   still never panic on what it reads back, and returns [`Error::Backend`](crate::Error::Backend) for rows it
//!   cannot decode.
//! - Inserting a record whose hash (or id) already exists fails with
//!   [`Error::Conflict`](crate::Error::Conflict) and writes nothing: never a silent
//!   overwrite.
//! - Deleting a client deletes everything that belongs to it (grants, codes, tokens,
//!   consents, authorization sessions); audit events stay.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use crate::audit::{AuditEvent, AuditQuery};
use crate::error::Result;
use crate::identity::{
    Ceremony, FailureCounts, Group, GroupId, LinkedAccount, LinkedAccountId, LoginSession,
    LoginSessionId, OneTimePurpose, OneTimeToken, Passkey, SealedRef, TotpRecord, User, UserId,
};
use crate::model::{
    AccessToken, AuthorizationCode, AuthorizationSession, Client, ClientId, Consent, Grant,
    GrantId, PatId, PersonalAccessToken, RefreshToken, RefreshTokenState, Scopes, Subject,
};
use crate::password::PasswordHash;
use crate::seal::Sealed;
use crate::time::Timestamp;
use crate::token::TokenHash;

/// Clients.
#[async_trait]
pub trait ClientStore: Debug + Send + Sync + 'static {
    /// Inserts a new client with the keyed hash of its secret (`None` for public clients).
    /// Fails with [`Error::Conflict`](crate::Error::Conflict) if the id exists.
    async fn insert_client(
        &self,
        client: &Client,
        secret_hash: Option<&TokenHash>,
        audit: AuditEvent,
    ) -> Result<()>;

    /// The client, or `None`.
    async fn get_client(&self, id: ClientId) -> Result<Option<Client>>;

    /// The client and its secret hash, for authentication. One read.
    async fn get_client_with_secret(
        &self,
        id: ClientId,
    ) -> Result<Option<(Client, Option<TokenHash>)>>;

    /// Replaces the mutable fields of the stored client (name, type, redirect URIs, grant
    /// types, scopes, auth method, lifetimes, metadata, updated_at) with `client`'s.
    /// **Never** `disabled` (see [`set_client_disabled`](Self::set_client_disabled): an update
    /// built from a stale read must not re-enable a client disabled meanwhile) nor the secret
    /// hash. [`Error::NotFound`](crate::Error::NotFound) if it does not exist.
    async fn update_client(&self, client: &Client, audit: AuditEvent) -> Result<()>;

    /// Sets only the `disabled` flag (and `updated_at = audit.at`), so it cannot race with
    /// [`update_client`](Self::update_client). No event if the flag already had that value.
    /// [`Error::NotFound`](crate::Error::NotFound) if the client does not exist.
    async fn set_client_disabled(
        &self,
        id: ClientId,
        disabled: bool,
        audit: AuditEvent,
    ) -> Result<()>;

    /// Clients ordered by id, starting after `after`, at most `limit`.
    async fn list_clients(&self, after: Option<ClientId>, limit: u32) -> Result<Vec<Client>>;

    /// Deletes the client and everything that belongs to it. `false` if it did not exist
    /// (and then no event is written).
    async fn delete_client(&self, id: ClientId, audit: AuditEvent) -> Result<bool>;

    /// Replaces the client's secret hash and sets `updated_at = audit.at`.
    /// [`Error::NotFound`](crate::Error::NotFound) if it does not exist.
    async fn set_client_secret_hash(
        &self,
        id: ClientId,
        secret_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<()>;
}

/// What [`GrantStore::consume_code`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CodeConsumption {
    /// This call consumed the code: it was unconsumed, unexpired, its grant unrevoked and its
    /// client enabled. The returned code has `consumed_at` set.
    Consumed(AuthorizationCode),
    /// The code exists but was consumed before: a replay, even if it has since expired or its
    /// grant was revoked. Nothing was written; the caller revokes the grant.
    AlreadyConsumed {
        /// The grant to revoke.
        grant_id: GrantId,
    },
    /// Unknown, expired, or its grant is revoked or its client disabled. Nothing was written.
    Inactive,
}

/// Tokens to store for one grant, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIssue {
    /// A grant to create first (client_credentials, foreign tokens); `None` to issue into
    /// the existing grant named by the tokens.
    pub new_grant: Option<Grant>,
    /// The grant the tokens belong to.
    pub grant_id: GrantId,
    /// An access token and its hash.
    pub access: Option<(TokenHash, AccessToken)>,
    /// A refresh token and its hash.
    pub refresh: Option<(TokenHash, RefreshToken)>,
}

/// Which rotation [`GrantStore::rotate_refresh_token`] performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMode {
    /// First use: succeeds only if the presented token is not rotated yet (compare-and-set
    /// on `rotated_at IS NULL`); sets `rotated_at = now` and `successor`.
    First,
    /// Reuse within the grace period: succeeds only if the presented token was rotated at
    /// or after `rotated_since` and has been reused fewer than `max_reuses` times;
    /// increments `reuse_count`. `rotated_at`/`successor` stay.
    Grace {
        /// The earliest rotation time still within the grace period.
        rotated_since: Timestamp,
        /// How many grace answers one rotated token may get in all.
        max_reuses: u32,
    },
}

/// One refresh token rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// The hash of the presented refresh token.
    pub presented: TokenHash,
    /// First rotation or grace reuse.
    pub mode: RotationMode,
    /// The new refresh token (same grant).
    pub refresh: (TokenHash, RefreshToken),
    /// The new access token (same grant).
    pub access: (TokenHash, AccessToken),
}

/// What a single-token revocation found (RFC 7009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeOutcome {
    /// The token was found, belonged to the client, and is now revoked (or already was).
    Revoked {
        /// Its grant.
        grant_id: GrantId,
    },
    /// No such token. RFC 7009 answers 200 all the same.
    NotFound,
    /// The token belongs to another client; nothing was changed.
    WrongClient,
}

/// Grants, authorization codes, access and refresh tokens.
#[async_trait]
pub trait GrantStore: Debug + Send + Sync + 'static {
    /// Creates `grant` and stores its authorization code under `code_hash`, atomically.
    /// [`Error::Inactive`](crate::Error::Inactive) if the client is missing or disabled.
    async fn issue_code(
        &self,
        grant: &Grant,
        code_hash: &TokenHash,
        code: &AuthorizationCode,
        audit: AuditEvent,
    ) -> Result<()>;

    /// **One atomic compare-and-set**: marks the code consumed at `audit.at` if it is
    /// unconsumed, unexpired (`expires_at > now`), its grant unrevoked and its client enabled.
    /// Of any number of concurrent callers presenting the same code exactly one gets
    /// [`CodeConsumption::Consumed`]; the others get `AlreadyConsumed` (the caller then
    /// revokes the grant). The event is written only for `Consumed`.
    async fn consume_code(
        &self,
        code_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<CodeConsumption>;

    /// Stores tokens for a grant in one transaction (creating `new_grant` first if given).
    /// [`Error::Inactive`](crate::Error::Inactive) and nothing written if the grant is
    /// missing or revoked or its client missing or disabled.
    async fn issue_tokens(&self, issue: &TokenIssue, audit: AuditEvent) -> Result<()>;

    /// The grant, revoked or not, or `None`.
    async fn get_grant(&self, id: GrantId) -> Result<Option<Grant>>;

    /// **The hot path.** One indexed read: the access token stored under `hash` if it is
    /// unexpired (`expires_at > now`), unrevoked, its grant unrevoked and its client
    /// enabled; otherwise `None`. Never writes.
    async fn find_access_token(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AccessToken>>;

    /// The refresh token stored under `hash` in whatever state, with its grant and client
    /// state, or `None`. One read; never writes.
    async fn find_refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenState>>;

    /// Rotates a refresh token atomically: applies `rotation.mode`'s compare-and-set on the
    /// presented token (which must also be unrevoked, unexpired at `audit.at` — both
    /// `expires_at` and `idle_expires_at` — with its grant unrevoked and its client enabled),
    /// and in the same transaction stores the new refresh and access tokens. `Ok(false)` and nothing
    /// written if the compare-and-set fails; the caller re-reads and decides.
    async fn rotate_refresh_token(&self, rotation: &Rotation, audit: AuditEvent) -> Result<bool>;

    /// Revokes one access token (RFC 7009). With `client`, only if it belongs to that client.
    async fn revoke_access_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome>;

    /// Revokes one refresh token and its whole grant, so every access token of the grant
    /// stops validating at once (RFC 7009 §2.1). With `client`, only if it belongs to it.
    async fn revoke_refresh_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome>;

    /// Revokes a grant (sets `revoked_at` if unset). `true` if the grant exists. Every code
    /// and token of the grant stops working at once.
    async fn revoke_grant(&self, id: GrantId, audit: AuditEvent) -> Result<bool>;

    /// Revokes every unrevoked grant of a client in one set-based statement; returns how many.
    async fn revoke_grants_by_client(&self, client: ClientId, audit: AuditEvent) -> Result<u64>;

    /// Revokes every unrevoked grant of a subject in one set-based statement ("log out
    /// everywhere"); returns how many.
    async fn revoke_grants_by_subject(&self, subject: &Subject, audit: AuditEvent) -> Result<u64>;
}

/// Personal access tokens.
#[async_trait]
pub trait PatStore: Debug + Send + Sync + 'static {
    /// Stores a new PAT under `hash`.
    async fn insert_pat(
        &self,
        hash: &TokenHash,
        pat: &PersonalAccessToken,
        audit: AuditEvent,
    ) -> Result<()>;

    /// One read: the PAT under `hash` if unrevoked and unexpired (`expires_at` is `None` or
    /// `> now`), else `None`. Never writes.
    async fn find_pat(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<PersonalAccessToken>>;

    /// A user's PATs, any state, ordered by id.
    async fn list_pats(&self, user: &Subject) -> Result<Vec<PersonalAccessToken>>;

    /// Revokes a PAT; `false` if it does not exist or belongs to another user than `user`
    /// (when given).
    async fn revoke_pat(
        &self,
        id: PatId,
        user: Option<&Subject>,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Records last-used times in one batch (later times win; unknown ids are ignored). Not
    /// audited: it is bookkeeping, not a security change.
    async fn record_pat_usage(&self, usage: &[(PatId, Timestamp)]) -> Result<()>;
}

/// Authorization requests in flight.
#[async_trait]
pub trait AuthorizationSessionStore: Debug + Send + Sync + 'static {
    /// Stores a new session under `hash`.
    async fn insert_authorization_session(
        &self,
        hash: &TokenHash,
        session: &AuthorizationSession,
        audit: AuditEvent,
    ) -> Result<()>;

    /// The session if unexpired and not completed, else `None`.
    async fn find_authorization_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AuthorizationSession>>;

    /// Sets the subject of a pending (unexpired, uncompleted) session; `false` if there is
    /// none. A subject already attached may not be replaced by another one (`false`).
    async fn set_authorization_session_subject(
        &self,
        hash: &TokenHash,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// **Compare-and-set**: completes a pending session that has a subject; exactly one of
    /// concurrent callers gets it back (with `completed_at` set), the others `None`.
    async fn complete_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<Option<AuthorizationSession>>;

    /// Ends a pending session now (sets `expires_at = now`); `false` if none was pending.
    async fn expire_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool>;
}

/// Remembered consents.
#[async_trait]
pub trait ConsentStore: Debug + Send + Sync + 'static {
    /// Adds `scope` to the consent of (client, subject) **in one transaction** (read, union,
    /// write), creating it if there is none (`granted_at = updated_at = audit.at`); an
    /// existing one keeps `granted_at` and gets `updated_at = audit.at`. Returns what is
    /// stored. [`Error::NotFound`](crate::Error::NotFound) if the client does not exist.
    async fn merge_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        scope: &Scopes,
        audit: AuditEvent,
    ) -> Result<Consent>;

    /// The consent of (client, subject), or `None`.
    async fn get_consent(&self, client: ClientId, subject: &Subject) -> Result<Option<Consent>>;

    /// Deletes the consent and, in the same transaction, revokes every grant of that client
    /// for that subject. `false` if there was no consent (grants are revoked all the same).
    async fn delete_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Debug + Send + Sync + 'static {
    /// Events matching `query` ([`AuditQuery::matches`]), ordered by id ascending, at most
    /// `query.effective_limit()`.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
}

/// Users, groups, passwords and login failures.
///
/// Unique keys are case-folded with [`fold_case`](crate::identity::fold_case): a username
/// or email (or group name) that folds to an existing one is a
/// [`Error::Conflict`](crate::Error::Conflict).
#[async_trait]
pub trait IdentityStore: Debug + Send + Sync + 'static {
    /// Inserts a user. Conflict if the id, username key or email key exists.
    async fn insert_user(&self, user: &User, audit: AuditEvent) -> Result<()>;

    /// The user, or `None`.
    async fn get_user(&self, id: UserId) -> Result<Option<User>>;

    /// The user whose username key is `username_key`, or `None`.
    async fn find_user_by_username(&self, username_key: &str) -> Result<Option<User>>;

    /// The user whose email key is `email_key`, or `None`.
    async fn find_user_by_email(&self, email_key: &str) -> Result<Option<User>>;

    /// Replaces username, email, email_verified, metadata and updated_at; **never** `active`
    /// (see [`set_user_active`](Self::set_user_active)). NotFound / Conflict.
    async fn update_user(&self, user: &User, audit: AuditEvent) -> Result<()>;

    /// Sets `active` (and `updated_at = audit.at`). Disabling also revokes, in the same
    /// transaction, every unrevoked grant of the user's subject, every unrevoked PAT and
    /// every unrevoked login session of theirs, and consumes (`consumed_at = audit.at`) their
    /// unconsumed one-time tokens: a disabled user's tokens stop working at once, and stay
    /// dead if the user is enabled again. No event if unchanged.
    /// NotFound if the user does not exist.
    async fn set_user_active(&self, id: UserId, active: bool, audit: AuditEvent) -> Result<()>;

    /// Erases a user: the user, their group memberships, password, login failures, login
    /// sessions, one-time tokens, TOTP, recovery codes, passkeys, ceremonies and linked
    /// accounts, and everything whose subject is theirs — grants (with their codes and
    /// tokens), PATs, consents, authorization sessions. Audit events stay. `false` if there was no user
    /// (no event then).
    async fn delete_user(&self, id: UserId, audit: AuditEvent) -> Result<bool>;

    /// Users ordered by id after `after`, at most `limit`; with `search`, only those whose
    /// username key or email key contains `search` (already case-folded).
    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
        search: Option<&str>,
    ) -> Result<Vec<User>>;

    /// Inserts a group. Conflict if the id or name key exists.
    async fn insert_group(&self, group: &Group, audit: AuditEvent) -> Result<()>;

    /// The group, or `None`.
    async fn get_group(&self, id: GroupId) -> Result<Option<Group>>;

    /// Renames a group. NotFound / Conflict.
    async fn rename_group(&self, id: GroupId, name: &str, audit: AuditEvent) -> Result<()>;

    /// Deletes a group and its memberships; `false` if none.
    async fn delete_group(&self, id: GroupId, audit: AuditEvent) -> Result<bool>;

    /// Adds a user to a group; `false` (no event) if already a member. NotFound if either
    /// does not exist.
    async fn add_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Removes a user from a group; `false` (no event) if not a member.
    async fn remove_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// The groups of a user, ordered by name key.
    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>>;

    /// The members of a group, ordered by user id.
    async fn group_members(&self, group: GroupId) -> Result<Vec<User>>;

    /// Stores the user's password hash (replacing any), detaches their login failures (as a
    /// successful login does) and,
    /// with `revoke_grants`, revokes in the same transaction every unrevoked grant of their
    /// subject, every unrevoked PAT and every unrevoked login session of theirs, and consumes
    /// their unconsumed one-time tokens (an old reset link must not outlive the change). NotFound if the user does not exist.
    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &PasswordHash,
        revoke_grants: bool,
        audit: AuditEvent,
    ) -> Result<()>;

    /// The user's password hash, or `None`.
    async fn get_password_hash(&self, user: UserId) -> Result<Option<PasswordHash>>;

    /// Records a login attempt and writes `audit` in the same transaction. A failure is
    /// remembered for `user` (if known and stored; else source only) and `source` (if
    /// known) at `audit.at`. A success **detaches** the user's failure rows (their user
    /// becomes unknown): the user's count drops to zero while the per-source counts stay.
    async fn record_login_attempt(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        success: bool,
        audit: AuditEvent,
    ) -> Result<()>;

    /// Failures of `user` and from `source` at or after `since`.
    async fn login_failures(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        since: Timestamp,
    ) -> Result<FailureCounts>;
}

/// Login sessions, one-time tokens, TOTP, recovery codes, passkeys, WebAuthn ceremonies and
/// linked accounts. Every mutating method writes its event in the same transaction, only
/// when something changed (ceremonies, being transient, and usage bookkeeping write none).
#[async_trait]
pub trait AccountStore: Debug + Send + Sync + 'static {
    // ----- login sessions -----

    /// Stores a login session under `hash`. NotFound if the user does not exist.
    async fn insert_login_session(
        &self,
        hash: &TokenHash,
        session: &LoginSession,
        audit: AuditEvent,
    ) -> Result<()>;

    /// One read: the session under `hash` if unrevoked, `now < expires_at`,
    /// `now < idle_expires_at` and its user active; else `None`. Never writes.
    async fn find_login_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<LoginSession>>;

    /// Records use in one batch: for each `(id, last_seen_at, idle_expires_at)` the later
    /// values win (never moved backwards, never past `expires_at`). Unknown ids are ignored.
    async fn touch_login_sessions(
        &self,
        touches: &[(LoginSessionId, Timestamp, Timestamp)],
    ) -> Result<()>;

    /// A user's sessions, any state, ordered by id.
    async fn list_login_sessions(&self, user: UserId) -> Result<Vec<LoginSession>>;

    /// Revokes one session; with `user`, only if it is theirs. `false` if none (or already
    /// revoked: then no event).
    async fn revoke_login_session(
        &self,
        id: LoginSessionId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Revokes every unrevoked session of a user (log out everywhere); how many.
    async fn revoke_user_login_sessions(&self, user: UserId, audit: AuditEvent) -> Result<u64>;

    // ----- one-time tokens -----

    /// Stores a one-time token under `hash` and, in the same transaction, marks every
    /// unconsumed token of the same user and purpose consumed (superseded). NotFound if the
    /// user does not exist.
    async fn insert_one_time_token(
        &self,
        hash: &TokenHash,
        token: &OneTimeToken,
        audit: AuditEvent,
    ) -> Result<()>;

    /// **Compare-and-set**: consumes the token under `hash` if it is of `purpose`,
    /// unconsumed, `audit.at < expires_at` and its user exists. Exactly one of concurrent
    /// callers gets it (with `consumed_at` set); the others `None`. Event only on success.
    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        audit: AuditEvent,
    ) -> Result<Option<OneTimeToken>>;

    // ----- TOTP and recovery codes -----

    /// Enrols (or re-enrols) a user's TOTP: stores the sealed secret, forgets the last
    /// step. NotFound if the user does not exist.
    async fn set_totp(&self, user: UserId, totp: &TotpRecord, audit: AuditEvent) -> Result<()>;

    /// The user's TOTP enrolment, or `None`.
    async fn get_totp(&self, user: UserId) -> Result<Option<TotpRecord>>;

    /// **Compare-and-set**: records `step` as used if it is later than the last step used
    /// (or none was). `false` (no event) for a replayed or older step or no enrolment.
    async fn use_totp_step(&self, user: UserId, step: i64, audit: AuditEvent) -> Result<bool>;

    /// Removes the TOTP enrolment; `false` if none.
    async fn delete_totp(&self, user: UserId, audit: AuditEvent) -> Result<bool>;

    /// Replaces the user's recovery codes with these hashes (all unused). NotFound if the
    /// user does not exist.
    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[TokenHash],
        audit: AuditEvent,
    ) -> Result<()>;

    /// **Compare-and-set**: uses the user's unused recovery code with this hash; exactly one
    /// of concurrent callers gets `true`. No event on `false`.
    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// How many unused recovery codes the user has.
    async fn unused_recovery_codes(&self, user: UserId) -> Result<u32>;

    // ----- passkeys and ceremonies -----

    /// Stores a passkey. Conflict if its credential id exists (for any user); NotFound if
    /// the user does not exist.
    async fn insert_passkey(&self, passkey: &Passkey, audit: AuditEvent) -> Result<()>;

    /// The passkey with this credential id, or `None`.
    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>>;

    /// A user's passkeys, ordered by creation time then credential id.
    async fn list_passkeys(&self, user: UserId) -> Result<Vec<Passkey>>;

    /// Renames a user's passkey; `false` if they have none with this id.
    async fn rename_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// After an authentication: sets the counter to the larger of the stored and the given
    /// one (concurrent uses must never move it backwards: it is the clone detector), backup
    /// state and `last_used_at = audit.at`
    /// (and replaces `credential` when given: webauthn-rs updates it). `false` if no such
    /// passkey.
    async fn update_passkey_use(
        &self,
        credential_id: &[u8],
        counter: u32,
        backup_state: bool,
        credential: Option<&serde_json::Value>,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Deletes a user's passkey; `false` if they have none with this id.
    async fn delete_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Stores ceremony state under `hash` (no event).
    async fn insert_ceremony(&self, hash: &TokenHash, ceremony: &Ceremony) -> Result<()>;

    /// **Single use**: removes and returns the ceremony under `hash` if `now < expires_at`;
    /// exactly one of concurrent callers gets it. An expired one is removed too.
    async fn take_ceremony(&self, hash: &TokenHash, now: Timestamp) -> Result<Option<Ceremony>>;

    // ----- linked accounts -----

    /// Links an account. Conflict if (provider, provider subject) is linked already;
    /// NotFound if the user does not exist.
    async fn insert_linked_account(&self, account: &LinkedAccount, audit: AuditEvent)
    -> Result<()>;

    /// The account linked as (provider, provider subject), or `None`.
    async fn find_linked_account(
        &self,
        provider: &str,
        provider_subject: &str,
    ) -> Result<Option<LinkedAccount>>;

    /// A user's linked accounts, ordered by id.
    async fn list_linked_accounts(&self, user: UserId) -> Result<Vec<LinkedAccount>>;

    /// Replaces the provider tokens and their expiry, and `updated_at = audit.at`. `false`
    /// if no such account.
    async fn update_linked_tokens(
        &self,
        id: LinkedAccountId,
        access_token: Option<&Sealed>,
        refresh_token: Option<&Sealed>,
        token_expires_at: Option<Timestamp>,
        audit: AuditEvent,
    ) -> Result<bool>;

    /// Unlinks; with `user`, only if it is theirs. `false` if none.
    async fn delete_linked_account(
        &self,
        id: LinkedAccountId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool>;

    // ----- reseal -----

    /// Up to `limit` stored sealed values of one column (`table`, `column` from
    /// [`SEALED_COLUMNS`](crate::identity::SEALED_COLUMNS)), ordered by row id bytes, after
    /// `after` (row id bytes). Nulls are skipped.
    async fn sealed_values(
        &self,
        table: &'static str,
        column: &'static str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(SealedRef, Sealed)>>;

    /// **Compare-and-set**: replaces the sealed value at `at` with `new` if it still is
    /// `old` (byte for byte). No event (the caller writes one for the whole pass).
    async fn replace_sealed(&self, at: &SealedRef, old: &Sealed, new: &Sealed) -> Result<bool>;
}

/// How [`Maintenance::cleanup`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Keep expired, revoked and consumed rows this long after they stopped being valid, so
    /// replays are still recognised and operators can look. Default one day.
    pub retention: Duration,
    /// Rows deleted per batch (one short transaction each). Default 1000, at most 100 000.
    pub batch_size: u32,
    /// Most batches per kind in one call; the report says whether more remain. Default 1000.
    pub max_batches: u32,
    /// Stop starting new batches once this much time has passed since the call began (the
    /// report then says `incomplete`; the next call goes on). Default 30 s; `None` means no
    /// time bound (only `max_batches`). Measured with a monotonic clock: it bounds how long a
    /// call runs, it is not domain time.
    pub time_budget: Option<Duration>,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(86_400),
            batch_size: 1000,
            max_batches: 1000,
            time_budget: Some(Duration::from_secs(30)),
        }
    }
}

/// What cleanup deleted, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Authorization codes.
    pub authorization_codes: u64,
    /// Access tokens.
    pub access_tokens: u64,
    /// Refresh tokens.
    pub refresh_tokens: u64,
    /// Grants (and, by cascade, anything left of them: already counted above or dead).
    pub grants: u64,
    /// Personal access tokens.
    pub personal_access_tokens: u64,
    /// Authorization sessions.
    pub authorization_sessions: u64,
    /// Login failures recorded at or before the cutoff.
    pub login_failures: u64,
    /// Login sessions with `expires_at`, `idle_expires_at` or `revoked_at` at or before the
    /// cutoff.
    pub login_sessions: u64,
    /// One-time tokens with `expires_at` or `consumed_at` at or before the cutoff.
    pub one_time_tokens: u64,
    /// Ceremonies with `expires_at` at or before the cutoff.
    pub ceremonies: u64,
    /// Whether a kind hit `max_batches` or the time budget ran out, so more may remain.
    pub incomplete: bool,
}

impl CleanupReport {
    /// Total rows deleted.
    pub fn total(&self) -> u64 {
        self.authorization_codes
            + self.access_tokens
            + self.refresh_tokens
            + self.grants
            + self.personal_access_tokens
            + self.authorization_sessions
            + self.login_failures
            + self.login_sessions
            + self.one_time_tokens
            + self.ceremonies
    }
}

/// Counts of one kind of record. Each record is counted once, in the first class that
/// applies: revoked (itself or through its grant), else used, else expired, else active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Usable now.
    pub active: u64,
    /// Past expiry (and not revoked).
    pub expired: u64,
    /// Revoked (itself or through its grant).
    pub revoked: u64,
    /// Used up: consumed codes, rotated refresh tokens, completed sessions (not revoked).
    pub used: u64,
}

/// Counts per kind, and the database size where the backend knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Clients (all).
    pub clients: u64,
    /// Disabled clients.
    pub disabled_clients: u64,
    /// Grants: active or revoked (grants do not expire).
    pub grants: KindStats,
    /// Authorization codes.
    pub authorization_codes: KindStats,
    /// Access tokens.
    pub access_tokens: KindStats,
    /// Refresh tokens.
    pub refresh_tokens: KindStats,
    /// Personal access tokens.
    pub personal_access_tokens: KindStats,
    /// Authorization sessions.
    pub authorization_sessions: KindStats,
    /// Consents.
    pub consents: u64,
    /// Audit events.
    pub audit_events: u64,
    /// Bytes the database occupies, where known.
    pub database_bytes: Option<u64>,
}

/// Which key ring a [`KeyCheck`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRingKind {
    /// The token key ring ([`TokenKeyring`](crate::TokenKeyring)): hashes every token and
    /// client secret.
    Token,
    /// The sealing key ring ([`SealingKeyring`](crate::SealingKeyring)): seals reversible
    /// secrets.
    Sealing,
}

impl KeyRingKind {
    /// Both rings, in the order [`Maintenance::key_checks`] lists them (by name).
    pub const ALL: [KeyRingKind; 2] = [KeyRingKind::Sealing, KeyRingKind::Token];

    /// The name stored in the database: `token` or `sealing`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyRingKind::Token => "token",
            KeyRingKind::Sealing => "sealing",
        }
    }

    /// The ring named `s` (as stored), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for KeyRingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The length of a key check in bytes.
pub const KEY_CHECK_LEN: usize = 16;

/// A key used with a database, recorded so that the database can tell when it is opened with
/// another key under the same id, or with none of the keys it was used with
/// ([`Authstore::verify_keys`](crate::Authstore::verify_keys)).
///
/// `check` is derived from the key with BLAKE3's key derivation under a fixed context
/// ([`TokenKey::key_check`](crate::TokenKey::key_check),
/// [`SealingKey::key_check`](crate::SealingKey::key_check)): it tells two keys apart and
/// reveals nothing about either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// The ring the key belongs to.
    pub ring: KeyRingKind,
    /// The key's id (1 to 64 printable ASCII characters).
    pub key_id: String,
    /// The key's check value.
    pub check: [u8; KEY_CHECK_LEN],
    /// When the key was first seen with this database.
    pub recorded_at: Timestamp,
}

impl KeyCheck {
    /// Whether `other` is about the same key: same ring, id and check (`recorded_at` aside).
    pub fn same_key(&self, other: &KeyCheck) -> bool {
        self.ring == other.ring && self.key_id == other.key_id && self.check == other.check
    }
}

/// Whether two lists of key checks hold the same keys (ring, id and check; `recorded_at` and
/// order aside). What [`Maintenance::add_key_checks`] compares.
pub fn same_key_checks(a: &[KeyCheck], b: &[KeyCheck]) -> bool {
    let key = |c: &KeyCheck| (c.ring, c.key_id.clone(), c.check);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Upkeep: schema, cleanup, statistics.
#[async_trait]
pub trait Maintenance: Debug + Send + Sync + 'static {
    /// Brings the schema to the newest version this build knows; returns the versions
    /// applied. Refuses (changing nothing) a database whose schema is newer.
    async fn migrate(&self) -> Result<Vec<i64>>;

    /// Deletes, in bounded batches, rows dead for longer than `options.retention` before
    /// `now`:
    /// - authorization codes with `expires_at <= cutoff`;
    /// - access tokens with `expires_at <= cutoff` or `revoked_at <= cutoff`;
    /// - refresh tokens with `expires_at <= cutoff`, `idle_expires_at <= cutoff` or
    ///   `revoked_at <= cutoff` (a rotated token is kept until then: reuse detection needs it);
    /// - grants revoked at or before `cutoff` (with whatever remains of them), and unrevoked
    ///   grants created at or before `cutoff` that have no code, access or refresh token left
    ///   (a grant revoked after `cutoff` waits for its own retention window);
    /// - PATs with `expires_at <= cutoff` or `revoked_at <= cutoff`;
    /// - authorization sessions with `expires_at <= cutoff` or `completed_at <= cutoff`;
    /// - login failures recorded at or before `cutoff` (after grants);
    /// - login sessions with `expires_at`, `idle_expires_at` or `revoked_at` `<= cutoff`;
    /// - one-time tokens with `expires_at` or `consumed_at` `<= cutoff`;
    /// - ceremonies with `expires_at <= cutoff`.
    ///
    /// where `cutoff = now - retention`, in this order: codes, access tokens, refresh
    /// tokens, PATs, authorization sessions, then grants. Each count is of rows deleted by
    /// that kind's own rule (rows that go by cascade with a grant are not counted). Never
    /// deletes a row a live token depends on. Safe to run concurrently with itself and with
    /// traffic.
    async fn cleanup(&self, options: &CleanupOptions, now: Timestamp) -> Result<CleanupReport>;

    /// What one [`cleanup`](Maintenance::cleanup) call with the same `options.retention` at
    /// `now` would delete if it had no batch or time bound, **deleting nothing**: the counts
    /// per kind, by the same rules and the same counting convention as `cleanup`.
    ///
    /// - `batch_size`, `max_batches` and `time_budget` are ignored (not even validated), and
    ///   `incomplete` is always `false`.
    /// - Each count is of rows the kind's own rule would delete; rows that would go by
    ///   cascade with their grant are not counted.
    /// - A grant with nothing left counts as it would in `cleanup`: after the codes and
    ///   tokens that `cleanup` deletes first are gone, so an old grant whose every code and
    ///   token is dead by its own rule counts as empty.
    ///
    /// Read-only: never writes and takes no write lock; the counts are of one consistent
    /// snapshot. Equals the report of an unbounded `cleanup` at the same `now` when nothing
    /// else writes in between.
    async fn cleanup_preview(
        &self,
        options: &CleanupOptions,
        now: Timestamp,
    ) -> Result<CleanupReport>;

    /// Counts per kind as of `now`.
    async fn stats(&self, now: Timestamp) -> Result<Stats>;

    /// Every key check recorded for this database, ordered by ring name (`sealing` before
    /// `token`) then key id (byte order). One read; never writes.
    async fn key_checks(&self) -> Result<Vec<KeyCheck>>;

    /// **Compare-and-set**: in one transaction, if the stored key checks are still exactly
    /// `seen` (the same keys, compared with [`same_key_checks`]), inserts `new` and returns
    /// `true`; otherwise writes nothing and returns `false` (another process recorded keys
    /// meanwhile: the caller reads again and decides again). A check is never overwritten:
    /// an entry of `new` whose (ring, key id) is stored already, or appears twice in `new`,
    /// fails with [`Error::Conflict`](crate::Error::Conflict) and writes nothing. Not
    /// audited: it records configuration, not a change of security state.
    async fn add_key_checks(&self, seen: &[KeyCheck], new: &[KeyCheck]) -> Result<bool>;
}

/// Everything a backend provides; what [`Authstore`](crate::Authstore) holds as
/// `Arc<dyn Backend>`. Implemented for every type that implements the parts.
pub trait Backend:
    ClientStore
    + GrantStore
    + PatStore
    + AuthorizationSessionStore
    + ConsentStore
    + AuditStore
    + IdentityStore
    + AccountStore
    + Maintenance
{
    /// The backend's name (`memory`, `sqlite`, …), for logs and errors.
    fn backend_name(&self) -> &'static str;

    /// Whether a lookup is an in-process map read: no I/O, never a temporary failure, and
    /// cheaper than verifying a presented token's checksum. Access-token validation then
    /// looks up first and verifies the checksum only on a miss (same answers, one hash
    /// fewer per valid token). The default, `false`, is right for every backend that
    /// reaches a database: it is never asked about a string whose checksum is wrong.
    fn lookups_are_in_process(&self) -> bool {
        false
    }
}
