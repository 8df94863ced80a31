//! Error mapping between tokio-postgres/deadpool and authstore, the timestamp codec, and the
//! checks every string passes before it is sent.

use std::error::Error as StdError;
use std::fmt;

use authstore_core::{Error, Result, Timestamp};
use bytes::BytesMut;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::BACKEND;

/// Maps driver results into authstore results: `.db()?`.
pub(crate) trait Db<T> {
    /// Maps the error with [`pg_err`].
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T> {
        self.map_err(pg_err)
    }
}

/// A server error, without the parts that may repeat stored values (`DETAIL` shows key
/// values and failing rows): code, message, table and constraint only.
#[derive(Debug)]
pub(crate) struct ServerError {
    code: String,
    message: String,
    table: Option<String>,
    constraint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres error {}: {}", self.code, self.message)?;
        if let Some(t) = &self.table {
            write!(f, " (table {t})")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, " (constraint {c})")?;
        }
        Ok(())
    }
}

impl StdError for ServerError {}

/// What a foreign-key violation reports as missing.
const FK_MISSING: &str = "the client or grant it refers to";

/// In the issue paths, a foreign-key violation means the grant or client went away during
/// the call (deleted concurrently): the contract's answer is `Inactive`, as a check before
/// the insert would have given.
pub(crate) fn fk_as_inactive<T>(r: Result<T>) -> Result<T> {
    match r {
        Err(Error::NotFound { what }) if what == FK_MISSING => {
            Err(Error::Inactive { kind: "grant" })
        }
        other => other,
    }
}

/// Where a foreign-key violation can only mean that one of the records named by `what`
/// went away during the call (deleted concurrently): [`Error::NotFound`] naming them.
pub(crate) fn fk_as_not_found<T>(r: Result<T>, what: &str) -> Result<T> {
    match r {
        Err(Error::NotFound { what: w }) if w == FK_MISSING => Err(Error::not_found(what)),
        other => other,
    }
}

/// Whether `e` is a lock conflict (lock timeout 55P03, deadlock 40P01): retrying the same
/// work in smaller pieces may succeed at once.
pub(crate) fn is_lock_conflict(e: &Error) -> bool {
    match e {
        Error::Backend { source, .. } => source
            .downcast_ref::<ServerError>()
            .is_some_and(|s| s.code == "55P03" || s.code == "40P01"),
        _ => false,
    }
}

/// Whether a server error code means "retrying may help".
fn temporary_state(s: &SqlState) -> bool {
    let code = s.code();
    // 08: connection exception; 53: insufficient resources (too many connections, …);
    // 57P0x: server shutting down or starting (not 57P04, below); 40: serialization
    // failure / deadlock;
    // 55P03: lock not available; 57014: statement timeout or cancel.
    // 25006: read-only transaction (connected to a former primary after a failover).
    // 57P04 (database dropped) is not: retrying cannot bring it back.
    code.starts_with("08")
        || code.starts_with("53")
        || (code.starts_with("57P") && code != "57P04")
        || code.starts_with("40")
        || code == "55P03"
        || code == "57014"
        || code == "25006"
}

/// Maps a tokio-postgres error:
/// - unique violation → [`Error::Conflict`] naming the table only;
/// - foreign-key violation → [`Error::NotFound`] (what it refers to is gone);
/// - lost or refused connections, timeouts, shutdowns, lock and serialization failures →
///   temporary [`Error::Backend`];
/// - a TLS handshake the client refused (certificate not trusted or not for this host) →
///   permanent [`Error::Backend`], although it comes as an I/O error;
/// - anything else → permanent [`Error::Backend`].
///
/// The source kept is either the driver error (which never holds values) or a
/// [`ServerError`] without the server's `DETAIL` (which can repeat stored values).
pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let state = db.code();
        if *state == SqlState::UNIQUE_VIOLATION {
            let what = constraint_what(db.constraint()).unwrap_or_else(|| table_what(db.table()));
            return Error::Conflict {
                what: what.to_owned(),
            };
        }
        if *state == SqlState::FOREIGN_KEY_VIOLATION {
            return Error::not_found(FK_MISSING);
        }
        let temporary = temporary_state(state);
        let src = ServerError {
            code: state.code().to_owned(),
            message: db.message().to_owned(),
            table: db.table().map(str::to_owned),
            constraint: db.constraint().map(str::to_owned),
        };
        return Error::backend(BACKEND, temporary, src);
    }
    // A TLS handshake the client refused (rustls: untrusted or misnamed certificate,
    // protocol mismatch) comes as an `io::Error` wrapping a `rustls::Error`: permanent,
    // unlike the network failures that are plain `io::Error`s.
    let tls_refused = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<rustls::Error>());
    let temporary = !tls_refused
        && (e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) || {
            // The driver's error kinds are private; its messages are fixed strings.
            let msg = e.to_string();
            msg.starts_with("error connecting")
                || msg.starts_with("timeout")
                || msg.starts_with("error communicating")
                || msg.starts_with("connection closed")
                || msg.starts_with("unexpected message")
        });
    Error::backend(BACKEND, temporary, e)
}

/// Maps a pool error: timeouts and failed connection attempts are temporary; a closed
/// pool or a missing runtime are permanent.
pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => pg_err(e),
        PoolError::Timeout(t) => Error::backend(BACKEND, true, PoolTimeout(format!("{t:?}"))),
        PoolError::Closed => Error::backend(BACKEND, false, Message("the pool is closed")),
        PoolError::NoRuntimeSpecified => {
            Error::backend(BACKEND, false, Message("no async runtime for the pool"))
        }
        PoolError::PostCreateHook(h) => Error::backend(BACKEND, true, Message2(h.to_string())),
    }
}

#[derive(Debug)]
struct PoolTimeout(String);

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out getting a PostgreSQL connection from the pool ({}): the server is \
             unreachable or every connection is busy",
            self.0
        )
    }
}

impl StdError for PoolTimeout {}

/// A fixed message as an error source.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) &'static str);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Message {}

#[derive(Debug)]
struct Message2(String);

impl fmt::Display for Message2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message2 {}

/// What a unique violation on `table` collided with (never a value).
fn table_what(table: Option<&str>) -> &'static str {
    match table.unwrap_or("") {
        "clients" => "client",
        "grants" => "grant",
        "authorization_codes" => "authorization code",
        "access_tokens" => "access token",
        "refresh_tokens" => "refresh token",
        "personal_access_tokens" => "personal access token",
        "authorization_sessions" => "authorization session",
        "consents" => "consent",
        "audit_events" => "audit event",
        "schema_migrations" => "migration",
        "key_checks" => "key check",
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
        _ => "record",
    }
}

/// What a unique violation of one of the named unique keys collided with, where the table
/// alone would not say (never a value).
fn constraint_what(constraint: Option<&str>) -> Option<&'static str> {
    match constraint? {
        "users_username_key" => Some("username"),
        "users_email_key" => Some("email"),
        "groups_name_key" => Some("group name"),
        "linked_accounts_provider_key" => Some("linked account"),
        _ => None,
    }
}

/// A stored value that cannot be decoded.
#[derive(Debug)]
pub(crate) struct Decode(pub(crate) String);

impl fmt::Display for Decode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode stored value: {}", self.0)
    }
}

impl StdError for Decode {}

/// A decode failure of `column` (permanent backend error).
pub(crate) fn bad(column: &str, reason: impl fmt::Display) -> Error {
    Error::backend(BACKEND, false, Decode(format!("{column}: {reason}")))
}

/// An encoding failure before a write (permanent backend error).
pub(crate) fn encode_err(e: serde_json::Error) -> Error {
    Error::backend(BACKEND, false, e)
}

// ---- timestamps ----

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01T00:00:00Z).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// The earliest `timestamptz` PostgreSQL accepts (4714-11-24 BC), in its own epoch.
const PG_MIN_US: i64 = -211_813_488_000_000_000;
/// One past the latest `timestamptz` PostgreSQL accepts (294277 AD), in its own epoch.
const PG_END_US: i64 = 9_223_371_331_200_000_000;

/// A [`Timestamp`] as a `timestamptz`, exactly (both count microseconds).
///
/// PostgreSQL's binary `timestamptz` is microseconds since 2000-01-01 UTC, so the mapping
/// is one subtraction. Every `Timestamp` up to `i64::MAX` µs fits; times before 4714 BC
/// (only made by saturating arithmetic, e.g. `now - Duration::MAX`) are sent as
/// `-infinity`, which compares below every real time, and read back as the earliest
/// `Timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ts(pub(crate) Timestamp);

impl ToSql for Ts {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let pg = self
            .0
            .as_unix_micros()
            .checked_sub(PG_EPOCH_OFFSET_US)
            .filter(|v| *v >= PG_MIN_US)
            .map_or(i64::MIN, |v| v.min(PG_END_US - 1));
        out.extend_from_slice(&pg.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Ts {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        let b: [u8; 8] = raw
            .try_into()
            .map_err(|_| Box::new(Decode("timestamptz is not 8 bytes".into())))?;
        let pg = i64::from_be_bytes(b);
        let us = if pg == i64::MIN {
            i64::MIN
        } else {
            pg.saturating_add(PG_EPOCH_OFFSET_US)
        };
        Ok(Ts(Timestamp::from_unix_micros(us)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// `t` as a parameter.
pub(crate) fn ts(t: Timestamp) -> Ts {
    Ts(t)
}

/// `t` as a nullable parameter.
pub(crate) fn opt_ts(t: Option<Timestamp>) -> Option<Ts> {
    t.map(Ts)
}

// ---- what PostgreSQL cannot store ----

/// Refuses text with NUL: PostgreSQL `text` cannot hold it, and it would fail at the
/// server with an encoding error after a round trip.
pub(crate) fn no_nul(field: &'static str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::invalid(
            field,
            "contains NUL, which PostgreSQL text cannot store",
        ));
    }
    Ok(())
}

/// [`no_nul`] on an optional string.
pub(crate) fn no_nul_opt(field: &'static str, s: Option<&str>) -> Result<()> {
    s.map_or(Ok(()), |s| no_nul(field, s))
}

/// Refuses JSON with NUL in any string or key (`jsonb` refuses `\u0000`).
pub(crate) fn json_no_nul(field: &'static str, v: &serde_json::Value) -> Result<()> {
    match v {
        serde_json::Value::String(s) => no_nul(field, s),
        serde_json::Value::Array(a) => a.iter().try_for_each(|v| json_no_nul(field, v)),
        serde_json::Value::Object(m) => m.iter().try_for_each(|(k, v)| {
            no_nul(field, k)?;
            json_no_nul(field, v)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_anywhere_in_json() {
        assert!(json_no_nul("x", &serde_json::json!({"a": [1, {"b": "c"}]})).is_ok());
        assert!(json_no_nul("x", &serde_json::json!({"a": [1, {"b": "c\0"}]})).is_err());
        assert!(json_no_nul("x", &serde_json::json!({"a\0": 1})).is_err());
        assert!(no_nul("x", "a\0b").is_err());
    }

    #[test]
    fn tables_name_the_record_only() {
        assert_eq!(table_what(Some("clients")), "client");
        assert_eq!(table_what(None), "record");
        assert_eq!(constraint_what(Some("users_email_key")), Some("email"));
        assert_eq!(constraint_what(Some("users_pkey")), None);
    }
}
