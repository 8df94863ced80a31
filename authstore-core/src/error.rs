//! The one error type of authstore.

use crate::backend::KeyRingKind;
use crate::model::GrantId;

/// A convenient alias for results of authstore operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in authstore, by meaning.
///
/// Every variant says what is wrong and, where there is something to do, what to do.
/// Nothing in an error ever contains a token, secret or password. [`Error::code`] gives a
/// stable code (`AS…`) that operators can search for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A presented token string is not well-formed: wrong prefix, bad checksum, wrong length,
    /// empty, oversized or containing NUL. Nothing was looked up.
    #[error("malformed {kind}: {reason}")]
    MalformedToken {
        /// What kind of token was expected.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An input value is invalid; nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field that is wrong.
        field: &'static str,
        /// What is wrong with it and what is accepted.
        reason: String,
    },
    /// The record does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, with its identifier where safe (never a secret).
        what: String,
    },
    /// The token, code or session is unknown, expired, revoked, consumed, or belongs to a
    /// revoked grant or a disabled client. Callers should treat it as absent.
    #[error("{kind} is not active (unknown, expired or revoked)")]
    Inactive {
        /// What kind of credential was presented.
        kind: &'static str,
    },
    /// An authorization code was redeemed a second time. The whole grant has been revoked
    /// (RFC 6749 §4.1.2, RFC 9700 §4.2.4): every token issued from it is now invalid.
    #[error("authorization code replay detected: grant {grant_id} has been revoked")]
    CodeReplay {
        /// The grant that was revoked.
        grant_id: GrantId,
    },
    /// A refresh token that had already been rotated was presented again after the grace
    /// period. The whole grant (token family) has been revoked.
    #[error("refresh token reuse detected: grant {grant_id} has been revoked")]
    RefreshReuse {
        /// The grant that was revoked.
        grant_id: GrantId,
    },
    /// The request does not match the grant it presents: wrong client, redirect URI, PKCE
    /// verifier or scope (RFC 6749 `invalid_grant`).
    #[error("invalid grant: {reason}")]
    InvalidGrant {
        /// What does not match.
        reason: &'static str,
    },
    /// The requested scope is invalid, unknown, or exceeds what the client or grant allows
    /// (RFC 6749 `invalid_scope`).
    #[error("invalid scope: {reason}")]
    InvalidScope {
        /// What is wrong.
        reason: String,
    },
    /// Client authentication failed: unknown client, wrong secret or disabled client. The
    /// three are deliberately not told apart.
    #[error("client authentication failed")]
    InvalidClient,
    /// The client is not allowed to do this (grant type, scope or client type).
    #[error("client not allowed: {reason}")]
    UnauthorizedClient {
        /// What the client is not allowed to do.
        reason: String,
    },
    /// A record with the same unique key exists already.
    #[error("conflict: {what} already exists")]
    Conflict {
        /// What collided.
        what: String,
    },
    /// The database holds a schema newer than this build knows. Nothing was changed; run a
    /// newer authstore against it.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); \
         upgrade authstore before opening this database"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// An applied migration's file changed after it was applied.
    #[error(
        "migration {version} ({name}) changed after it was applied (checksum mismatch); \
         restore the original file: migrations are immutable, add a new one instead"
    )]
    MigrationChecksum {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: String,
    },
    /// The database has not been migrated to the schema this build needs.
    #[error("database schema is at version {found}, this build needs {needed}: run migrate()")]
    NotMigrated {
        /// The version found.
        found: i64,
        /// The version needed.
        needed: i64,
    },
    /// A store URL names no backend this build has, or has bad parameters.
    #[error("unsupported store URL: {reason}")]
    UnsupportedUrl {
        /// What is wrong and which URLs are accepted.
        reason: String,
    },
    /// Configuration is invalid (keys, lifetimes, grace period, …).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A sealed value names a key that is not in the sealing key ring. Add the key (as an
    /// older key) until `reseal` has moved everything to the active key.
    #[error(
        "sealed value uses key {key_id:?}, which is not in the sealing key ring: add it to the older keys"
    )]
    SealingKeyUnknown {
        /// The key id the value carries.
        key_id: String,
    },
    /// A sealed value cannot be opened: it was altered, truncated, or belongs to another
    /// row, column or table than the one it is read from.
    #[error("sealed value cannot be opened: {reason}")]
    SealedValueInvalid {
        /// What is wrong.
        reason: &'static str,
    },
    /// A login failed: unknown user, wrong password, disabled user or no password set. The
    /// cases are deliberately not told apart.
    #[error("the username or password is wrong")]
    InvalidCredentials,
    /// Too many failed logins for this user or from this source recently: try again later.
    #[error("too many failed login attempts: try again in {} seconds", retry_after.as_secs())]
    TooManyAttempts {
        /// How long to wait at most.
        retry_after: std::time::Duration,
    },
    /// A configured key is not the key this database was used with under the same id: what
    /// it hashed (or sealed) would be useless to the rest of the deployment, and what the
    /// database holds under that id would not verify (or open) with it. Nothing was written.
    #[error(
        "the {ring} key {key_id:?} is not the {ring} key this database was used with under \
         that id: use the {ring} key file this database was created with (a new key needs a \
         new id)"
    )]
    KeyMismatch {
        /// The ring of the key.
        ring: KeyRingKind,
        /// The key's id.
        key_id: String,
    },
    /// None of the configured keys of a ring was ever used with this database: every token
    /// (or sealed value) it holds would stop verifying. Nothing was written.
    #[error(
        "none of the configured {ring} keys ({}) was ever used with this database, which was \
         used with the {ring} keys {}: use the {ring} key file this database was created with \
         (to rotate, keep one of those keys as an older key next to the new one)",
        quoted(.configured), quoted(.known)
    )]
    KeysUnknown {
        /// The ring.
        ring: KeyRingKind,
        /// The ids of the configured keys of the ring.
        configured: Vec<String>,
        /// The ids of the keys of the ring the database was used with.
        known: Vec<String>,
    },
    /// The storage backend failed. The source is kept; [`Error::is_temporary`] says whether
    /// retrying may help.
    #[error("{backend} backend error{}", if *.temporary { " (temporary: retry)" } else { "" })]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Whether retrying the same call may succeed (busy database, lost connection).
        temporary: bool,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// Builds an [`Error::Backend`].
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Backend {
            backend,
            temporary,
            source: source.into(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                temporary: true,
                ..
            }
        )
    }

    /// Whether this error means "treat the credential as absent" (inactive, replayed,
    /// reused, malformed).
    pub fn is_inactive_credential(&self) -> bool {
        matches!(
            self,
            Self::Inactive { .. }
                | Self::MalformedToken { .. }
                | Self::CodeReplay { .. }
                | Self::RefreshReuse { .. }
        )
    }

    /// A stable code for this kind of error, for logs and operator documentation.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedToken { .. } => "AS0001",
            Self::InvalidInput { .. } => "AS0002",
            Self::NotFound { .. } => "AS0003",
            Self::Inactive { .. } => "AS0004",
            Self::CodeReplay { .. } => "AS0005",
            Self::RefreshReuse { .. } => "AS0006",
            Self::InvalidGrant { .. } => "AS0007",
            Self::InvalidClient => "AS0008",
            Self::UnauthorizedClient { .. } => "AS0009",
            Self::Conflict { .. } => "AS0010",
            Self::SchemaTooNew { .. } => "AS0011",
            Self::MigrationChecksum { .. } => "AS0012",
            Self::NotMigrated { .. } => "AS0013",
            Self::UnsupportedUrl { .. } => "AS0014",
            Self::Config { .. } => "AS0015",
            Self::Backend { .. } => "AS0016",
            Self::InvalidScope { .. } => "AS0017",
            Self::SealingKeyUnknown { .. } => "AS0018",
            Self::SealedValueInvalid { .. } => "AS0019",
            Self::InvalidCredentials => "AS0020",
            Self::TooManyAttempts { .. } => "AS0021",
            Self::KeyMismatch { .. } => "AS0022",
            Self::KeysUnknown { .. } => "AS0023",
        }
    }
}

/// `"a", "b"` (ids are printable ASCII, never key material).
fn quoted(ids: &[String]) -> String {
    ids.iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
