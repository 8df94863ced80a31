//! Audit events: every mutating operation appends one in the same transaction as the change.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{AuditEventId, ClientId, GrantId, Subject, str_enum};
use crate::time::Timestamp;

str_enum!(
    /// What happened.
    AuditKind, "audit kind" {
        /// A client was created.
        ClientCreated => "client.created",
        /// A client was changed.
        ClientUpdated => "client.updated",
        /// A client was disabled.
        ClientDisabled => "client.disabled",
        /// A client was enabled again.
        ClientEnabled => "client.enabled",
        /// A client's secret was rotated.
        ClientSecretRotated => "client.secret_rotated",
        /// A client was deleted, with everything that belonged to it.
        ClientDeleted => "client.deleted",
        /// An authorization code was issued (a grant was made).
        CodeIssued => "code.issued",
        /// An authorization code was redeemed.
        CodeRedeemed => "code.redeemed",
        /// An authorization code was presented again: its grant was revoked.
        CodeReplayDetected => "code.replay_detected",
        /// Tokens were issued for a grant.
        TokensIssued => "tokens.issued",
        /// A refresh token was rotated.
        RefreshRotated => "refresh.rotated",
        /// A rotated refresh token was presented again within the grace period.
        RefreshGraceReuse => "refresh.grace_reuse",
        /// A rotated refresh token was presented again after the grace period: its grant
        /// was revoked.
        RefreshReuseDetected => "refresh.reuse_detected",
        /// An access token was revoked.
        AccessTokenRevoked => "access_token.revoked",
        /// A refresh token was revoked, and with it its grant.
        RefreshTokenRevoked => "refresh_token.revoked",
        /// A grant was revoked.
        GrantRevoked => "grant.revoked",
        /// All grants of a client were revoked.
        ClientGrantsRevoked => "grants.revoked_for_client",
        /// All grants of a subject were revoked (log out everywhere).
        SubjectGrantsRevoked => "grants.revoked_for_subject",
        /// A personal access token was issued.
        PatIssued => "pat.issued",
        /// A personal access token was revoked.
        PatRevoked => "pat.revoked",
        /// An authorization session was created.
        AuthorizationSessionCreated => "authorization_session.created",
        /// A subject logged in to an authorization session.
        AuthorizationSessionSubject => "authorization_session.subject_attached",
        /// An authorization session was completed.
        AuthorizationSessionCompleted => "authorization_session.completed",
        /// An authorization session was ended early.
        AuthorizationSessionExpired => "authorization_session.expired",
        /// A consent was recorded.
        ConsentRecorded => "consent.recorded",
        /// A consent was revoked, with the grants it covered.
        ConsentRevoked => "consent.revoked",
        /// A user was created.
        UserCreated => "user.created",
        /// A user was changed.
        UserUpdated => "user.updated",
        /// A user was disabled (and everything they held revoked).
        UserDisabled => "user.disabled",
        /// A user was enabled again.
        UserEnabled => "user.enabled",
        /// A user was deleted with everything they owned (erasure).
        UserDeleted => "user.deleted",
        /// A group was created.
        GroupCreated => "group.created",
        /// A group was renamed.
        GroupRenamed => "group.renamed",
        /// A group was deleted.
        GroupDeleted => "group.deleted",
        /// A user joined a group.
        GroupMemberAdded => "group.member_added",
        /// A user left a group.
        GroupMemberRemoved => "group.member_removed",
        /// A user's password was set or changed.
        PasswordSet => "password.set",
        /// A login succeeded.
        LoginSucceeded => "login.succeeded",
        /// A login for an existing user began (recorded before the password check, so that
        /// concurrent guesses count against each other).
        LoginAttempted => "login.attempted",
        /// A login failed (never with the password).
        LoginFailed => "login.failed",
        /// A TOTP code or recovery code was wrong (counted with login failures).
        SecondFactorFailed => "second_factor.failed",
        /// A second factor completed a login: the user's failures are cleared only now.
        SecondFactorSucceeded => "second_factor.succeeded",
        /// A login was refused because of too many recent failures.
        LoginLocked => "login.locked",
        /// A login session began.
        LoginSessionCreated => "login_session.created",
        /// A login session was revoked (logout).
        LoginSessionRevoked => "login_session.revoked",
        /// All of a user's login sessions were revoked.
        LoginSessionsRevoked => "login_session.revoked_all",
        /// A one-time token was issued (older ones of its purpose superseded).
        OneTimeTokenIssued => "one_time_token.issued",
        /// A one-time token was used.
        OneTimeTokenUsed => "one_time_token.used",
        /// TOTP was enrolled.
        TotpEnrolled => "totp.enrolled",
        /// A TOTP code was accepted.
        TotpUsed => "totp.used",
        /// TOTP was removed.
        TotpRemoved => "totp.removed",
        /// New recovery codes replaced the old ones.
        RecoveryCodesGenerated => "recovery_codes.generated",
        /// A recovery code was used.
        RecoveryCodeUsed => "recovery_code.used",
        /// A passkey was registered.
        PasskeyRegistered => "passkey.registered",
        /// A passkey was renamed.
        PasskeyRenamed => "passkey.renamed",
        /// A passkey was used to log in.
        PasskeyUsed => "passkey.used",
        /// A passkey was removed.
        PasskeyRemoved => "passkey.removed",
        /// A third-party account was linked.
        AccountLinked => "linked_account.linked",
        /// A linked account's provider tokens were replaced.
        LinkedTokensUpdated => "linked_account.tokens_updated",
        /// A third-party account was unlinked.
        AccountUnlinked => "linked_account.unlinked",

    }
);

/// Who did something, and from where; attached to every event a store writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditContext {
    /// The actor (an admin user, a client id, a service name).
    pub actor: Option<String>,
    /// The source address.
    pub ip: Option<IpAddr>,
}

/// One audit record. It never holds a secret: tokens appear only as the grant or id they
/// belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Its id (UUIDv7, so ids sort by time).
    pub id: AuditEventId,
    /// When it happened: the time of the operation.
    pub at: Timestamp,
    /// What happened.
    pub kind: AuditKind,
    /// Who did it.
    pub actor: Option<String>,
    /// The subject concerned.
    pub subject: Option<Subject>,
    /// The client concerned.
    pub client_id: Option<ClientId>,
    /// The grant concerned.
    pub grant_id: Option<GrantId>,
    /// Source address.
    pub ip: Option<IpAddr>,
    /// Extra details (a JSON object; never a secret).
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new event of `kind` at `at` by the context's actor.
    pub fn new(kind: AuditKind, at: Timestamp, ctx: &AuditContext) -> Self {
        Self {
            id: AuditEventId::new_at(at),
            at,
            kind,
            actor: ctx.actor.clone(),
            subject: None,
            client_id: None,
            grant_id: None,
            ip: ctx.ip,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// The same event as another kind, with a fresh id (for outcomes a backend decides).
    pub fn with_kind(&self, kind: AuditKind) -> Self {
        Self {
            id: AuditEventId::new_at(self.at),
            kind,
            ..self.clone()
        }
    }

    /// Sets the client.
    pub fn client(mut self, id: ClientId) -> Self {
        self.client_id = Some(id);
        self
    }

    /// Sets the grant.
    pub fn grant(mut self, id: GrantId) -> Self {
        self.grant_id = Some(id);
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, s: Option<&Subject>) -> Self {
        self.subject = s.cloned();
        self
    }

    /// Adds a detail.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let serde_json::Value::Object(m) = &mut self.details {
            m.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// A query over the audit log. All filters combine with AND; results are ordered by id
/// ascending (UUIDv7: time order to the millisecond), so `after` pages through them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only events of this kind.
    pub kind: Option<AuditKind>,
    /// Only events about this subject.
    pub subject: Option<Subject>,
    /// Only events about this client.
    pub client_id: Option<ClientId>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
    /// Only events after this one (pagination cursor: the last id of the previous page).
    pub after: Option<AuditEventId>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// The effective limit.
    pub fn effective_limit(&self) -> Result<u32> {
        match self.limit {
            None => Ok(100),
            Some(0) => Err(Error::invalid("limit", "must be at least 1")),
            Some(n) if n > 1000 => Err(Error::invalid("limit", "at most 1000")),
            Some(n) => Ok(n),
        }
    }

    /// Whether `e` passes the filters (the reference semantics backends' queries follow).
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.kind.is_none_or(|k| e.kind == k)
            && self
                .subject
                .as_ref()
                .is_none_or(|s| e.subject.as_ref() == Some(s))
            && self.client_id.is_none_or(|c| e.client_id == Some(c))
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
            && self.after.is_none_or(|a| e.id > a)
    }
}
