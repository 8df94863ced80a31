//! Error mapping between rusqlite and authstore.

use authstore_core::Error;
use rusqlite::ErrorCode;
use rusqlite::ffi;

use crate::BACKEND;

/// An error inside a database closure: a driver error (mapped by [`db_err`] at the
/// boundary) or an authstore error decided by the store's logic.
#[derive(Debug)]
pub(crate) enum Fail {
    /// From rusqlite.
    Db(rusqlite::Error),
    /// Decided by the store (inactive, not found, invalid input…).
    Api(Error),
}

/// A result inside a database closure.
pub(crate) type R<T> = std::result::Result<T, Fail>;

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Api(e)
    }
}

impl From<Fail> for Error {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Db(e) => db_err(e),
            Fail::Api(e) => e,
        }
    }
}

/// Maps a rusqlite error: busy or locked database → temporary [`Error::Backend`]; unique or
/// primary key violation → [`Error::Conflict`]; anything else → permanent
/// [`Error::Backend`] keeping the driver error as its source.
pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return Error::backend(BACKEND, true, e);
            }
            ErrorCode::ConstraintViolation
                if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Error::Conflict {
                    what: conflict_what(msg.as_deref()),
                };
            }
            _ => {}
        }
    }
    Error::backend(BACKEND, false, e)
}

/// What collided, from SQLite's message (`UNIQUE constraint failed: clients.id`): table and
/// column names only, never a value.
fn conflict_what(msg: Option<&str>) -> String {
    let cols = msg.and_then(|m| m.rsplit(": ").next()).unwrap_or("");
    let table = cols.split('.').next().unwrap_or("");
    match cols {
        "users.username_key" => return "username".to_owned(),
        "users.email_key" => return "email".to_owned(),
        "groups.name_key" => return "group name".to_owned(),
        _ => {}
    }
    match table {
        "clients" => "client",
        "grants" => "grant",
        "authorization_codes" => "authorization code",
        "access_tokens" => "access token",
        "refresh_tokens" => "refresh token",
        "personal_access_tokens" => "personal access token",
        "authorization_sessions" => "authorization session",
        "consents" => "consent",
        "audit_events" => "audit event",
        "users" => "user",
        "groups" => "group",
        "group_members" => "group member",
        "passwords" => "password",
        "login_failures" => "login failure",
        "login_sessions" => "login session",
        "one_time_tokens" => "one-time token",
        "totp" => "TOTP enrolment",
        "recovery_codes" => "recovery code",
        "passkeys" => "passkey",
        "ceremonies" => "ceremony",
        "linked_accounts" => "linked account",
        "schema_migrations" => "migration",
        "key_checks" => "key check",
        _ => "record",
    }
    .to_owned()
}

/// A bad stored value, as a rusqlite conversion error (→ permanent [`Error::Backend`]).
#[derive(Debug)]
pub(crate) struct Decode(pub(crate) String);

impl std::fmt::Display for Decode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot decode stored value: {}", self.0)
    }
}

impl std::error::Error for Decode {}

/// A decode failure of column `idx`.
pub(crate) fn bad(idx: usize, reason: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        rusqlite::types::Type::Null,
        Box::new(Decode(reason.to_string())),
    )
}

/// An encoding failure before a write (permanent backend error).
pub(crate) fn encode_err(e: serde_json::Error) -> Error {
    Error::backend(BACKEND, false, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_the_table_only() {
        assert_eq!(
            conflict_what(Some("UNIQUE constraint failed: clients.id")),
            "client"
        );
        assert_eq!(
            conflict_what(Some(
                "UNIQUE constraint failed: personal_access_tokens.hash"
            )),
            "personal access token"
        );
        assert_eq!(
            conflict_what(Some("UNIQUE constraint failed: users.email_key")),
            "email"
        );
        assert_eq!(
            conflict_what(Some("UNIQUE constraint failed: users.id")),
            "user"
        );
        assert_eq!(conflict_what(None), "record");
    }
}
