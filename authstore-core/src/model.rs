//! Domain types: identifiers, scopes, redirect URIs and the records authstore keeps.
//!
//! These are not row types: each backend maps them to and from its own rows, so a change
//! here cannot silently change what is stored.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::token::TokenHash;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new UUIDv7 identifier whose time part is `at`.
            pub fn new_at(at: Timestamp) -> Self {
                Self(new_v7(at))
            }

            /// Wraps an existing UUID (as read back from storage).
            pub const fn from_uuid(u: uuid::Uuid) -> Self {
                Self(u)
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> &uuid::Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| Error::invalid($what, "expected a UUID such as 0192f0c1-7d3e-7c4a-9f57-5a2c1e9b8d10"))
            }
        }
    };
}

/// One context for the process, so ids made in the same millisecond still sort in the order
/// they were made (the audit log relies on it).
static V7_CONTEXT: std::sync::Mutex<uuid::ContextV7> =
    std::sync::Mutex::new(uuid::ContextV7::new());

pub(crate) use id_type;

pub(crate) fn new_v7(at: Timestamp) -> uuid::Uuid {
    let micros = at.as_unix_micros().max(0);
    let secs = u64::try_from(micros / 1_000_000).unwrap_or(0);
    let nanos = u32::try_from((micros % 1_000_000) * 1000).unwrap_or(0);
    // A poisoned lock only means a panic elsewhere mid-call; the counter is still usable.
    let ctx = V7_CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(&*ctx, secs, nanos))
}

id_type!(
    /// A client's identifier (UUIDv7), the OAuth `client_id`.
    ClientId, "client id"
);
id_type!(
    /// A grant's identifier (UUIDv7): the family id that revocation works on.
    GrantId, "grant id"
);
id_type!(
    /// A personal access token's identifier (UUIDv7).
    PatId, "personal access token id"
);
id_type!(
    /// An audit event's identifier (UUIDv7).
    AuditEventId, "audit event id"
);

pub(crate) fn check_text(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(field, format!("longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains NUL or control characters"));
    }
    Ok(())
}

/// The subject a grant or token is for: the OAuth `sub`, usually a user id.
/// 1 to 255 bytes, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
// Shared, not copied: every token record returned by validation carries its subject, and a
// clone is then a reference-count increment instead of an allocation (memory validation's
// hot path clones the record).
pub struct Subject(Arc<str>);

impl Subject {
    /// Validates a subject.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_text("subject", &s, 255)?;
        Ok(Self(s.into()))
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A subject known valid by construction (a UUID's text).
    pub(crate) fn from_trusted(s: String) -> Self {
        Self(s.into())
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({:?})", self.0)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Subject {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.0.to_string()
    }
}

/// One scope token (RFC 6749 §3.3: `1*( %x21 / %x23-5B / %x5D-7E )`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Validates one scope token: printable ASCII without space, `"` or `\`, at most 256
    /// bytes.
    pub fn new(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid(
                "scope",
                "empty scope token (two spaces in a row, or a leading or trailing space?)",
            ));
        }
        if s.len() > 256 {
            return Err(Error::invalid(
                "scope",
                "a scope token is longer than 256 bytes",
            ));
        }
        if let Some(c) = s
            .bytes()
            .find(|&b| !(b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)))
        {
            return Err(Error::invalid(
                "scope",
                format!(
                    "byte 0x{c:02x} is not allowed in a scope token (RFC 6749 §3.3: printable ASCII except space, '\"' and '\\\\')"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The scope token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A validated set of scopes, written space-separated.
///
/// The set is immutable once built and shared between clones (an `Arc`), so copying a token
/// record costs a reference-count increment, not one allocation per scope.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Arc<BTreeSet<Scope>>);

/// The most scope tokens one set may hold.
pub const MAX_SCOPES: usize = 256;

impl Scopes {
    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses a space-delimited scope string (RFC 6749 §3.3). The empty string is the empty
    /// set; duplicates collapse.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(Self::empty());
        }
        if s.len() > 8192 {
            return Err(Error::invalid("scope", "longer than 8192 bytes"));
        }
        let set = s
            .split(' ')
            .map(Scope::new)
            .collect::<Result<BTreeSet<_>>>()?;
        if set.len() > MAX_SCOPES {
            return Err(Error::invalid(
                "scope",
                format!("more than {MAX_SCOPES} scope tokens"),
            ));
        }
        Ok(Self(Arc::new(set)))
    }

    /// Builds a set from scope tokens.
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let set = tokens
            .into_iter()
            .map(Scope::new)
            .collect::<Result<BTreeSet<_>>>()?;
        if set.len() > MAX_SCOPES {
            return Err(Error::invalid(
                "scope",
                format!("more than {MAX_SCOPES} scope tokens"),
            ));
        }
        Ok(Self(Arc::new(set)))
    }

    /// Whether every scope here is also in `other`.
    pub fn is_subset(&self, other: &Scopes) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.0 == scope)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The scopes in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.0.as_str())
    }

    /// The union of two sets.
    pub fn union(&self, other: &Scopes) -> Scopes {
        Scopes(Arc::new(self.0.union(&other.0).cloned().collect()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&s.0)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({:?})", self.to_string())
    }
}

impl FromStr for Scopes {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scopes::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A registered redirect URI: absolute, no fragment, at most 2048 bytes, matched exactly
/// (RFC 9700 §4.1.3: no pattern or prefix matching).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RedirectUri(String);

impl RedirectUri {
    /// Validates a redirect URI. The string is kept exactly as given: matching compares it
    /// byte for byte.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let field = "redirect_uri";
        if s.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if s.len() > 2048 {
            return Err(Error::invalid(field, "longer than 2048 bytes"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid(
                field,
                "contains whitespace, NUL or control characters",
            ));
        }
        let url = url::Url::parse(&s)
            .map_err(|e| Error::invalid(field, format!("not an absolute URI ({e})")))?;
        if s.contains('#') || url.fragment().is_some() {
            return Err(Error::invalid(
                field,
                "must not contain a fragment (RFC 6749 §3.1.2)",
            ));
        }
        if matches!(
            url.scheme(),
            "javascript" | "data" | "vbscript" | "file" | "blob"
        ) {
            return Err(Error::invalid(
                field,
                format!("scheme `{}` is not allowed", url.scheme()),
            ));
        }
        if url.cannot_be_a_base() && !url.scheme().contains('.') {
            return Err(Error::invalid(
                field,
                "must be a hierarchical URI (or a private-use scheme such as com.example.app:/cb)",
            ));
        }
        Ok(Self(s))
    }

    /// The URI exactly as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Exact, byte-for-byte match with a presented URI.
    pub fn matches(&self, presented: &str) -> bool {
        self.0 == presented
    }
}

impl fmt::Debug for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedirectUri({:?})", self.0)
    }
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RedirectUri {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<RedirectUri> for String {
    fn from(u: RedirectUri) -> String {
        u.0
    }
}

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal { $($(#[$vmeta:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $s)] $variant,)+
        }

        impl $name {
            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err($crate::Error::invalid($field, format!(
                        concat!("unknown value {:?}; expected one of:", $(" ", $s),+), s))),
                }
            }
        }
    };
}
pub(crate) use str_enum;

str_enum!(
    /// Whether a client can keep a secret (RFC 6749 §2.1).
    ClientType, "client type" {
        /// Can keep a secret; authenticates at the token endpoint.
        Confidential => "confidential",
        /// Cannot keep a secret (browser and native apps); must use PKCE.
        Public => "public",
    }
);

str_enum!(
    /// OAuth grant types a client may use.
    GrantType, "grant type" {
        /// RFC 6749 §4.1.
        AuthorizationCode => "authorization_code",
        /// RFC 6749 §4.4.
        ClientCredentials => "client_credentials",
        /// RFC 6749 §6.
        RefreshToken => "refresh_token",
    }
);

str_enum!(
    /// How a client authenticates at the token endpoint (RFC 7591 names).
    TokenEndpointAuthMethod, "token endpoint auth method" {
        /// HTTP Basic with the client secret.
        ClientSecretBasic => "client_secret_basic",
        /// The client secret in the form body.
        ClientSecretPost => "client_secret_post",
        /// No authentication (public clients).
        None => "none",
    }
);

str_enum!(
    /// PKCE code challenge method. Only `S256` is accepted (RFC 9700 §2.1.1).
    PkceMethod, "code_challenge_method" {
        /// SHA-256 of the verifier, base64url without padding.
        S256 => "S256",
    }
);

/// Per-client token lifetimes; `None` uses the store's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLifetimes {
    /// Access token lifetime.
    #[serde(default, with = "opt_secs")]
    pub access_token: Option<Duration>,
    /// Refresh token absolute lifetime (of the whole family).
    #[serde(default, with = "opt_secs")]
    pub refresh_token: Option<Duration>,
    /// Refresh token idle lifetime (reset at each rotation).
    #[serde(default, with = "opt_secs")]
    pub refresh_idle: Option<Duration>,
    /// Authorization code lifetime.
    #[serde(default, with = "opt_secs")]
    pub authorization_code: Option<Duration>,
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

/// A registered OAuth client. The secret is never part of it: only its keyed hash is stored,
/// and only the backend sees that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    /// The `client_id`.
    pub id: ClientId,
    /// A display name.
    pub name: String,
    /// Confidential or public.
    pub client_type: ClientType,
    /// Registered redirect URIs, matched exactly.
    pub redirect_uris: Vec<RedirectUri>,
    /// Grant types the client may use.
    pub grant_types: BTreeSet<GrantType>,
    /// Scopes the client may request.
    pub scopes: Scopes,
    /// How the client authenticates at the token endpoint.
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    /// Per-client token lifetimes.
    pub lifetimes: TokenLifetimes,
    /// Free-form metadata (a JSON object, at most 16 KiB serialized).
    pub metadata: serde_json::Value,
    /// When the client was created.
    pub created_at: Timestamp,
    /// When the client was last changed.
    pub updated_at: Timestamp,
    /// A disabled client cannot authenticate, and its tokens do not validate.
    pub disabled: bool,
}

impl Client {
    /// Whether the client may use `grant_type`.
    pub fn allows_grant(&self, grant_type: GrantType) -> bool {
        self.grant_types.contains(&grant_type)
    }

    /// The registered redirect URI exactly equal to `presented`, if any.
    pub fn redirect_uri(&self, presented: &str) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|u| u.matches(presented))
    }

    /// Checks the invariants every stored client holds.
    pub fn validate(&self) -> Result<()> {
        check_text("client name", &self.name, 200)?;
        if self.grant_types.is_empty() {
            return Err(Error::invalid(
                "grant_types",
                "a client needs at least one grant type",
            ));
        }
        match self.client_type {
            ClientType::Public => {
                if self.grant_types.contains(&GrantType::ClientCredentials) {
                    return Err(Error::invalid(
                        "grant_types",
                        "a public client cannot use client_credentials (it has no secret)",
                    ));
                }
                if self.token_endpoint_auth_method != TokenEndpointAuthMethod::None {
                    return Err(Error::invalid(
                        "token_endpoint_auth_method",
                        "a public client must use `none`",
                    ));
                }
            }
            ClientType::Confidential => {
                if self.token_endpoint_auth_method == TokenEndpointAuthMethod::None {
                    return Err(Error::invalid(
                        "token_endpoint_auth_method",
                        "a confidential client must use client_secret_basic or client_secret_post",
                    ));
                }
            }
        }
        if self.grant_types.contains(&GrantType::AuthorizationCode) && self.redirect_uris.is_empty()
        {
            return Err(Error::invalid(
                "redirect_uris",
                "the authorization_code grant needs at least one redirect URI",
            ));
        }
        if self.redirect_uris.len() > 32 {
            return Err(Error::invalid("redirect_uris", "at most 32 redirect URIs"));
        }
        if !self.metadata.is_object() {
            return Err(Error::invalid("metadata", "must be a JSON object"));
        }
        if self.metadata.to_string().len() > 16 * 1024 {
            return Err(Error::invalid("metadata", "larger than 16 KiB"));
        }
        if self.metadata.to_string().contains('\0') {
            return Err(Error::invalid("metadata", "contains NUL"));
        }
        Ok(())
    }
}

/// What a new client is made of; the store fills in id and times.
#[derive(Debug, Clone, PartialEq)]
pub struct NewClient {
    /// A display name.
    pub name: String,
    /// Confidential (gets a secret) or public.
    pub client_type: ClientType,
    /// Redirect URIs (needed for `authorization_code`).
    pub redirect_uris: Vec<RedirectUri>,
    /// Grant types; empty means `authorization_code` + `refresh_token` for clients with
    /// redirect URIs, else `client_credentials`.
    pub grant_types: BTreeSet<GrantType>,
    /// Scopes the client may request.
    pub scopes: Scopes,
    /// `None` means `client_secret_basic` for confidential clients, `none` for public ones.
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// Per-client lifetimes.
    pub lifetimes: TokenLifetimes,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
}

impl NewClient {
    /// A confidential client with no redirect URIs, for `client_credentials`.
    pub fn confidential(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            client_type: ClientType::Confidential,
            redirect_uris: Vec::new(),
            grant_types: BTreeSet::new(),
            scopes: Scopes::empty(),
            token_endpoint_auth_method: None,
            lifetimes: TokenLifetimes::default(),
            metadata: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// A public client (browser or native app) with one redirect URI.
    pub fn public(name: impl Into<String>, redirect_uri: RedirectUri) -> Self {
        Self {
            client_type: ClientType::Public,
            redirect_uris: vec![redirect_uri],
            ..Self::confidential(name)
        }
    }

    /// Adds a redirect URI.
    pub fn redirect_uri(mut self, uri: RedirectUri) -> Self {
        self.redirect_uris.push(uri);
        self
    }

    /// Adds a grant type.
    pub fn grant_type(mut self, g: GrantType) -> Self {
        self.grant_types.insert(g);
        self
    }

    /// Sets the allowed scopes.
    pub fn scopes(mut self, s: Scopes) -> Self {
        self.scopes = s;
        self
    }
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New redirect URIs (replaces the list).
    pub redirect_uris: Option<Vec<RedirectUri>>,
    /// New grant types (replaces the set).
    pub grant_types: Option<BTreeSet<GrantType>>,
    /// New allowed scopes.
    pub scopes: Option<Scopes>,
    /// New auth method.
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// New lifetimes.
    pub lifetimes: Option<TokenLifetimes>,
    /// New metadata.
    pub metadata: Option<serde_json::Value>,
}

/// How the user authenticated, carried from login to every token of the grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthContext {
    /// Authentication context class reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Authentication methods references (`pwd`, `otp`, `hwk`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Whether a second factor was verified.
    #[serde(default)]
    pub mfa_verified: bool,
}

impl AuthContext {
    /// Checks sizes and characters.
    pub fn validate(&self) -> Result<()> {
        if let Some(acr) = &self.acr {
            check_text("acr", acr, 255)?;
        }
        if self.amr.len() > 16 {
            return Err(Error::invalid("amr", "at most 16 methods"));
        }
        for m in &self.amr {
            check_text("amr", m, 64)?;
        }
        Ok(())
    }
}

/// A sender constraint binding a token to a key (RFC 9449 DPoP) or certificate (RFC 8705).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SenderConstraint {
    /// DPoP: the JWK SHA-256 thumbprint (`cnf.jkt`).
    DpopJkt(String),
    /// Mutual TLS: the certificate SHA-256 thumbprint (`cnf.x5t#S256`).
    MtlsX5tS256(String),
}

impl SenderConstraint {
    /// The kind, as stored: `jkt` or `x5t#S256`.
    pub fn kind(&self) -> &'static str {
        match self {
            SenderConstraint::DpopJkt(_) => "jkt",
            SenderConstraint::MtlsX5tS256(_) => "x5t#S256",
        }
    }

    /// The thumbprint.
    pub fn value(&self) -> &str {
        match self {
            SenderConstraint::DpopJkt(v) | SenderConstraint::MtlsX5tS256(v) => v,
        }
    }

    /// Rebuilds from stored parts.
    pub fn from_parts(kind: &str, value: String) -> Result<Self> {
        let c = match kind {
            "jkt" => SenderConstraint::DpopJkt(value),
            "x5t#S256" => SenderConstraint::MtlsX5tS256(value),
            other => {
                return Err(Error::invalid(
                    "cnf",
                    format!("unknown sender constraint kind {other:?}; expected jkt or x5t#S256"),
                ));
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the thumbprint: base64url, 43 characters (SHA-256).
    pub fn validate(&self) -> Result<()> {
        let v = self.value();
        if v.len() != 43
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::invalid(
                "cnf",
                "thumbprint must be base64url SHA-256 (43 characters)",
            ));
        }
        Ok(())
    }
}

/// One authorization of one client by one subject (or by itself, for client_credentials)
/// for a set of scopes: the family every code and token belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// The family id.
    pub id: GrantId,
    /// The client authorized.
    pub client_id: ClientId,
    /// The subject who authorized; `None` for client_credentials.
    pub subject: Option<Subject>,
    /// The scopes granted.
    pub scope: Scopes,
    /// How the subject authenticated.
    pub auth: AuthContext,
    /// When the grant was made.
    pub created_at: Timestamp,
    /// When the grant was revoked; a revoked grant invalidates all its codes and tokens.
    pub revoked_at: Option<Timestamp>,
}

/// A PKCE challenge (RFC 7636).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkceChallenge {
    /// The `code_challenge`: base64url, 43 characters for S256.
    pub challenge: String,
    /// The method (S256).
    pub method: PkceMethod,
}

impl PkceChallenge {
    /// Validates an S256 challenge.
    pub fn s256(challenge: impl Into<String>) -> Result<Self> {
        let challenge = challenge.into();
        if challenge.len() != 43 || !challenge.bytes().all(is_unreserved) {
            return Err(Error::invalid(
                "code_challenge",
                "an S256 challenge is 43 base64url characters",
            ));
        }
        Ok(Self {
            challenge,
            method: PkceMethod::S256,
        })
    }

    /// Computes the S256 challenge of a verifier (for clients and tests).
    pub fn from_verifier(verifier: &str) -> Result<Self> {
        check_verifier(verifier)?;
        Self::s256(s256(verifier))
    }

    /// Whether `verifier` matches, compared in constant time.
    pub fn verify(&self, verifier: &str) -> bool {
        if check_verifier(verifier).is_err() {
            return false;
        }
        let computed = s256(verifier);
        let a = blake3::hash(computed.as_bytes());
        let b = blake3::hash(self.challenge.as_bytes());
        a == b
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_verifier(v: &str) -> Result<()> {
    if !(43..=128).contains(&v.len()) || !v.bytes().all(is_unreserved) {
        return Err(Error::invalid(
            "code_verifier",
            "43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636 §4.1)",
        ));
    }
    Ok(())
}

fn s256(verifier: &str) -> String {
    use sha2::Digest;
    base64url(&sha2::Sha256::digest(verifier.as_bytes()))
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An authorization code as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationCode {
    /// The grant the code belongs to.
    pub grant_id: GrantId,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The subject who authorized.
    pub subject: Subject,
    /// The redirect URI of the authorization request; the token request must repeat it.
    pub redirect_uri: RedirectUri,
    /// The scopes granted.
    pub scope: Scopes,
    /// The PKCE challenge, if one was sent.
    pub code_challenge: Option<PkceChallenge>,
    /// The OIDC nonce, if one was sent.
    pub nonce: Option<String>,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being redeemable.
    pub expires_at: Timestamp,
    /// When it was redeemed.
    pub consumed_at: Option<Timestamp>,
}

/// An access token as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The grant it belongs to.
    pub grant_id: GrantId,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The subject; `None` for client_credentials.
    pub subject: Option<Subject>,
    /// The scopes it carries.
    pub scope: Scopes,
    /// Audiences it is meant for.
    pub audience: Vec<String>,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Sender constraint, if bound.
    pub cnf: Option<SenderConstraint>,
    /// How the subject authenticated.
    pub auth: AuthContext,
    /// Small extra claims (a JSON object, at most 4 KiB).
    pub claims: serde_json::Value,
}

/// A refresh token as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// The grant (token family) it belongs to.
    pub grant_id: GrantId,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The subject.
    pub subject: Option<Subject>,
    /// The scopes of the grant (a refresh keeps them; RFC 6749 §6).
    pub scope: Scopes,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// Absolute expiry of the family.
    pub expires_at: Timestamp,
    /// Idle expiry: unused past this, it is dead.
    pub idle_expires_at: Timestamp,
    /// When it was exchanged for a successor.
    pub rotated_at: Option<Timestamp>,
    /// The successor's hash (not serialized).
    #[serde(skip)]
    pub successor: Option<TokenHash>,
    /// How many times it was presented again within the grace period.
    pub reuse_count: u32,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Sender constraint, if bound.
    pub cnf: Option<SenderConstraint>,
}

/// A refresh token with the state of what it depends on, as read for rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenState {
    /// The token.
    pub token: RefreshToken,
    /// The grant it belongs to.
    pub grant: Grant,
    /// Whether its client is disabled.
    pub client_disabled: bool,
}

/// A personal access token as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonalAccessToken {
    /// Its id, for listing and revocation.
    pub id: PatId,
    /// The user it acts for.
    pub user: Subject,
    /// A name the user gave it.
    pub name: String,
    /// Its scopes.
    pub scope: Scopes,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires; `None` never.
    pub expires_at: Option<Timestamp>,
    /// When it was last used (recorded in batches, may lag).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// An authorization request in flight, between `/authorize` and the code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationSession {
    /// The client asking.
    pub client_id: ClientId,
    /// Where to send the answer (a registered URI).
    pub redirect_uri: RedirectUri,
    /// The scopes asked for.
    pub scope: Scopes,
    /// The client's `state`, returned verbatim.
    pub state: Option<String>,
    /// PKCE challenge, if sent.
    pub code_challenge: Option<PkceChallenge>,
    /// OIDC nonce, if sent.
    pub nonce: Option<String>,
    /// The subject, once logged in.
    pub subject: Option<Subject>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// When it was completed (single use).
    pub completed_at: Option<Timestamp>,
}

/// Scopes a subject has granted a client, remembered so the consent page can be skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    /// The client.
    pub client_id: ClientId,
    /// The subject.
    pub subject: Subject,
    /// The scopes granted so far.
    pub scope: Scopes,
    /// When first granted.
    pub granted_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
}

/// Validates an optional short text field (state, nonce, names).
pub(crate) fn check_opt_text(field: &'static str, s: Option<&str>, max: usize) -> Result<()> {
    match s {
        Some(s) => check_text(field, s, max),
        None => Ok(()),
    }
}

/// Validates a required short text field.
pub(crate) fn check_required_text(field: &'static str, s: &str, max: usize) -> Result<()> {
    check_text(field, s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_rfc6749() {
        let s = Scopes::parse("read write read").unwrap();
        assert_eq!(s.to_string(), "read write");
        assert!(Scopes::parse("a  b").is_err());
        assert!(Scopes::parse(" a").is_err());
        assert!(Scopes::parse("a\"b").is_err());
        assert!(Scopes::parse("a\\b").is_err());
        assert!(Scopes::parse("é").is_err());
        assert!(Scopes::parse("a\0").is_err());
        assert!(Scopes::parse("").unwrap().is_empty());
        assert!(Scopes::parse("read").unwrap().is_subset(&s));
    }

    #[test]
    fn redirect_uris_are_absolute_without_fragment() {
        assert!(RedirectUri::new("https://app.example/cb").is_ok());
        assert!(RedirectUri::new("http://127.0.0.1:8080/cb").is_ok());
        assert!(RedirectUri::new("com.example.app:/oauth").is_ok());
        assert!(RedirectUri::new("/relative").is_err());
        assert!(RedirectUri::new("https://app.example/cb#frag").is_err());
        assert!(RedirectUri::new("javascript:alert(1)").is_err());
        assert!(RedirectUri::new("https://a.example/\0").is_err());
        let u = RedirectUri::new("https://app.example/cb").unwrap();
        assert!(u.matches("https://app.example/cb"));
        assert!(!u.matches("https://app.example/cb/"));
        assert!(!u.matches("https://APP.example/cb"));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let c = PkceChallenge::from_verifier(v).unwrap();
        assert_eq!(c.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(c.verify(v));
        assert!(!c.verify("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx"));
        assert!(!c.verify("short"));
    }
}
