//! Identity records: users, groups, login failures.
//!
//! A user's OAuth subject is its id as text ([`User::subject`]), so everything issued to a
//! user (grants, tokens, personal access tokens, consents) can be found, revoked and erased
//! by it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Subject, check_text, id_type, new_v7};
use crate::time::Timestamp;

id_type!(
    /// A user's identifier (UUIDv7).
    UserId, "user id"
);
id_type!(
    /// A group's identifier (UUIDv7).
    GroupId, "group id"
);

/// The case-folded form under which usernames, emails and group names are unique and
/// searched. Every backend stores and compares exactly this.
pub fn fold_case(s: &str) -> String {
    s.to_lowercase()
}

/// Checks a username: 1 to 64 characters, letters, digits and `.` `_` `-` `+` `@`.
pub fn check_username(s: &str) -> Result<()> {
    check_text("username", s, 256)?;
    if s.chars().count() > 64 {
        return Err(Error::invalid("username", "at most 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@'))
    {
        return Err(Error::invalid(
            "username",
            "letters, digits and . _ - + @ only",
        ));
    }
    Ok(())
}

/// Checks an email address: at most 254 bytes, one `@` with text on both sides, no spaces.
/// (Whether it is reachable is what email verification is for.)
pub fn check_email(s: &str) -> Result<()> {
    check_text("email", s, 254)?;
    let ok = match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && domain.contains('.')
        }
        None => false,
    };
    if !ok || s.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            "email",
            "expected an address like name@example.com",
        ));
    }
    Ok(())
}

/// A person who can log in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Its id; its OAuth subject is this id as text.
    pub id: UserId,
    /// The username as given (unique case-insensitively).
    pub username: String,
    /// The email address as given (unique case-insensitively), if any.
    pub email: Option<String>,
    /// Whether the email address was verified.
    pub email_verified: bool,
    /// A disabled user cannot log in, and everything they held was revoked.
    pub active: bool,
    /// Free-form metadata (a JSON object, at most 16 KiB).
    pub metadata: serde_json::Value,
    /// When created.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
}

impl User {
    /// The OAuth subject of this user: the id as text.
    pub fn subject(&self) -> Subject {
        subject_of(self.id)
    }

    /// The unique key of the username ([`fold_case`]).
    pub fn username_key(&self) -> String {
        fold_case(&self.username)
    }

    /// The unique key of the email ([`fold_case`]), if any.
    pub fn email_key(&self) -> Option<String> {
        self.email.as_deref().map(fold_case)
    }

    /// Checks the invariants every stored user holds.
    pub fn validate(&self) -> Result<()> {
        check_username(&self.username)?;
        if let Some(e) = &self.email {
            check_email(e)?;
        }
        if !self.metadata.is_object() {
            return Err(Error::invalid("metadata", "must be a JSON object"));
        }
        let text = self.metadata.to_string();
        if text.len() > 16 * 1024 {
            return Err(Error::invalid("metadata", "larger than 16 KiB"));
        }
        if text.contains("\\u0000") {
            return Err(Error::invalid("metadata", "contains NUL"));
        }
        Ok(())
    }
}

/// The OAuth subject of a user id.
pub fn subject_of(id: UserId) -> Subject {
    // A UUID's text is 36 printable ASCII characters: always a valid subject.
    Subject::from_trusted(id.to_string())
}

/// What a new user is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    /// The username.
    pub username: String,
    /// The email address.
    pub email: Option<String>,
    /// Free-form JSON object (`Null` means empty).
    pub metadata: serde_json::Value,
}

impl NewUser {
    /// A user with a username only.
    pub fn new(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            email: None,
            metadata: serde_json::Value::Null,
        }
    }

    /// With an email address.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }
}

/// Changes to a user; `None` leaves a field as it is. Changing the email resets
/// `email_verified` unless it is set in the same update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserUpdate {
    /// New username.
    pub username: Option<String>,
    /// New email (`Some(None)` removes it).
    pub email: Option<Option<String>>,
    /// Mark the email verified or not.
    pub email_verified: Option<bool>,
    /// New metadata.
    pub metadata: Option<serde_json::Value>,
}

/// A named set of users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Its id.
    pub id: GroupId,
    /// Its name (unique case-insensitively; 1 to 128 characters).
    pub name: String,
    /// When created.
    pub created_at: Timestamp,
}

impl Group {
    /// The unique key of the name ([`fold_case`]).
    pub fn name_key(&self) -> String {
        fold_case(&self.name)
    }
}

/// Checks a group name.
pub fn check_group_name(s: &str) -> Result<()> {
    check_text("group name", s, 512)?;
    if s.chars().count() > 128 {
        return Err(Error::invalid("group name", "at most 128 characters"));
    }
    Ok(())
}

/// Recent failed logins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// Failures for the user since the window began and since their last success.
    pub user: u32,
    /// Failures from the source address since the window began.
    pub source: u32,
}

id_type!(
    /// A login session's identifier (UUIDv7), for listing and revoking.
    LoginSessionId, "login session id"
);
id_type!(
    /// A linked account's identifier (UUIDv7).
    LinkedAccountId, "linked account id"
);

/// A logged-in browser or device: stored under the keyed hash of its handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginSession {
    /// Its id.
    pub id: LoginSessionId,
    /// The user.
    pub user: UserId,
    /// When it began.
    pub created_at: Timestamp,
    /// When it was last seen (recorded in batches; may lag).
    pub last_seen_at: Timestamp,
    /// Unused past this, it is dead (moves forward as it is used).
    pub idle_expires_at: Timestamp,
    /// Absolute end.
    pub expires_at: Timestamp,
    /// Where it logged in from.
    pub ip: Option<std::net::IpAddr>,
    /// The user agent it logged in with (at most 512 bytes).
    pub user_agent: Option<String>,
    /// When it was revoked (logout).
    pub revoked_at: Option<Timestamp>,
}

/// What a one-time token is for. Issuing one invalidates the older unconsumed ones of the
/// same user and purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OneTimePurpose {
    /// Reset a forgotten password.
    PasswordReset,
    /// Prove an email address.
    EmailVerification,
    /// Log in by a link.
    MagicLink,
}

impl OneTimePurpose {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OneTimePurpose::PasswordReset => "password_reset",
            OneTimePurpose::EmailVerification => "email_verification",
            OneTimePurpose::MagicLink => "magic_link",
        }
    }
}

impl FromStr for OneTimePurpose {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "password_reset" => Ok(OneTimePurpose::PasswordReset),
            "email_verification" => Ok(OneTimePurpose::EmailVerification),
            "magic_link" => Ok(OneTimePurpose::MagicLink),
            other => Err(Error::invalid(
                "purpose",
                format!("unknown purpose {other:?}"),
            )),
        }
    }
}

impl fmt::Display for OneTimePurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A one-time token as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneTimeToken {
    /// The user.
    pub user: UserId,
    /// What it is for.
    pub purpose: OneTimePurpose,
    /// For email verification: the address it proves (at most 254 bytes).
    pub email: Option<String>,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// When it was used (or superseded by a newer one).
    pub consumed_at: Option<Timestamp>,
}

/// A user's TOTP enrolment: the shared secret, sealed, and the last time step accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct TotpRecord {
    /// The secret, sealed for (`totp`, `secret`, user id bytes).
    pub secret: crate::seal::Sealed,
    /// The last 30-second step accepted: a code for it or an earlier one is a replay.
    pub last_step: Option<i64>,
    /// When enrolled.
    pub created_at: Timestamp,
}

/// A registered passkey. `credential` is the serialized webauthn-rs `Passkey` (JSON, as
/// `serde_json::to_value(&passkey)` gives it), stored as it is; the counter and backup
/// state are kept apart so they can be updated after each use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passkey {
    /// The credential id (unique across all users; 1 to 1023 bytes).
    pub credential_id: Vec<u8>,
    /// The user.
    pub user: UserId,
    /// A name the user gave it (1 to 100 characters).
    pub name: String,
    /// The webauthn-rs credential, serialized.
    pub credential: serde_json::Value,
    /// The signature counter last seen.
    pub counter: u32,
    /// Whether the credential is backed up (synced passkey).
    pub backup_state: bool,
    /// When registered.
    pub created_at: Timestamp,
    /// When last used.
    pub last_used_at: Option<Timestamp>,
}

/// What a WebAuthn ceremony is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CeremonyKind {
    /// Registering a new passkey.
    Registration,
    /// Logging in with a passkey.
    Authentication,
}

impl CeremonyKind {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Registration => "registration",
            CeremonyKind::Authentication => "authentication",
        }
    }
}

impl FromStr for CeremonyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "registration" => Ok(CeremonyKind::Registration),
            "authentication" => Ok(CeremonyKind::Authentication),
            other => Err(Error::invalid(
                "ceremony",
                format!("unknown kind {other:?}"),
            )),
        }
    }
}

/// WebAuthn ceremony state between the challenge and the answer (the serialized
/// webauthn-rs `PasskeyRegistration` / `PasskeyAuthentication`): single use, short-lived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceremony {
    /// Registration or authentication.
    pub kind: CeremonyKind,
    /// The user, when known (registration; identified authentication).
    pub user: Option<UserId>,
    /// The serialized state.
    pub state: serde_json::Value,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// An account at a third-party provider linked to a user: (provider, provider subject) is
/// unique. The provider's tokens are sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedAccount {
    /// Its id.
    pub id: LinkedAccountId,
    /// The provider (e.g. `github`; 1 to 64 characters).
    pub provider: String,
    /// The user's subject at the provider (1 to 255 bytes).
    pub provider_subject: String,
    /// The local user.
    pub user: UserId,
    /// The provider's access token, sealed for (`linked_accounts`, `access_token`, id).
    pub access_token: Option<crate::seal::Sealed>,
    /// The provider's refresh token, sealed for (`linked_accounts`, `refresh_token`, id).
    pub refresh_token: Option<crate::seal::Sealed>,
    /// When the provider's access token expires, if known.
    pub token_expires_at: Option<Timestamp>,
    /// When linked.
    pub created_at: Timestamp,
    /// When the tokens were last replaced.
    pub updated_at: Timestamp,
}

/// Where a sealed value lives, for `reseal`: table, column and the row's id bytes (the same
/// triple it is sealed for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRef {
    /// The table: `totp` or `linked_accounts`.
    pub table: &'static str,
    /// The column: `secret`, `access_token` or `refresh_token`.
    pub column: &'static str,
    /// The row's id bytes (user id for `totp`, linked account id otherwise).
    pub row: Vec<u8>,
}

impl SealedRef {
    /// The context the value is sealed for.
    pub fn context(&self) -> crate::seal::SealContext<'_> {
        crate::seal::SealContext {
            table: self.table,
            column: self.column,
            row: &self.row,
        }
    }
}

/// Every sealed column, in the order `reseal` walks them.
pub const SEALED_COLUMNS: [(&str, &str); 3] = [
    ("totp", "secret"),
    ("linked_accounts", "access_token"),
    ("linked_accounts", "refresh_token"),
];
