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
