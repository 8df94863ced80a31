//! [`Authstore`]: the façade every caller uses.
//!
//! It holds a backend (`Arc<dyn Backend>`), the token keyring, the clock and the
//! configuration, and implements every policy once for all backends: minting, format checks
//! before any lookup, keyed hashing, lifetimes, client rules, scope rules, PKCE, replay and
//! reuse handling. Backends only store and make the atomic steps atomic.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::audit::{AuditContext, AuditEvent, AuditKind, AuditQuery};
use crate::backend::{
    Backend, CleanupOptions, CleanupReport, CodeConsumption, KeyCheck, KeyRingKind, RevokeOutcome,
    Rotation, RotationMode, Stats, TokenIssue,
};
use crate::error::{Error, Result};
use crate::model::{
    AccessToken, AuthContext, AuthorizationCode, AuthorizationSession, Client, ClientId,
    ClientType, ClientUpdate, Consent, Grant, GrantId, GrantType, NewClient, PatId,
    PersonalAccessToken, PkceChallenge, RefreshToken, RefreshTokenState, Scopes, SenderConstraint,
    Subject, TokenEndpointAuthMethod, TokenLifetimes, check_opt_text, check_required_text,
};
use crate::secret::{
    AccessTokenSecret, AuthorizationSessionSecret, ClientSecret, CodeSecret, PatSecret,
    RefreshTokenSecret,
};
use crate::time::{Clock, SystemClock, Timestamp};
use crate::token::{Presented, TokenFormat, TokenHash, TokenKeyring, TokenKind};

/// The longest refresh grace period accepted. A grace period only exists so that a client
/// racing itself is not logged out; longer ones widen the window in which a stolen token
/// works unnoticed.
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(60);

/// Default lifetimes, used where a client sets none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLifetimes {
    /// Access tokens: 1 hour.
    pub access_token: Duration,
    /// Refresh token family, absolute: 30 days.
    pub refresh_token: Duration,
    /// Refresh token idle: 14 days (reset at each rotation, never past the absolute expiry).
    pub refresh_idle: Duration,
    /// Authorization codes: 60 seconds (RFC 6749 §4.1.2 recommends at most 10 minutes).
    pub authorization_code: Duration,
    /// Authorization sessions (a login in progress): 10 minutes.
    pub authorization_session: Duration,
    /// Login sessions, absolute: 14 days.
    pub login_session: Duration,
    /// Login sessions, idle: 1 day (extended as the session is used).
    pub login_session_idle: Duration,
    /// Password reset tokens: 1 hour.
    pub password_reset: Duration,
    /// Email verification tokens: 1 day.
    pub email_verification: Duration,
    /// Magic links: 15 minutes.
    pub magic_link: Duration,
    /// WebAuthn ceremonies: 5 minutes.
    pub ceremony: Duration,
}

impl Default for DefaultLifetimes {
    fn default() -> Self {
        Self {
            access_token: Duration::from_secs(3600),
            refresh_token: Duration::from_secs(30 * 86_400),
            refresh_idle: Duration::from_secs(14 * 86_400),
            authorization_code: Duration::from_secs(60),
            authorization_session: Duration::from_secs(600),
            login_session: Duration::from_secs(14 * 86_400),
            login_session_idle: Duration::from_secs(86_400),
            password_reset: Duration::from_secs(3600),
            email_verification: Duration::from_secs(86_400),
            magic_link: Duration::from_secs(900),
            ceremony: Duration::from_secs(300),
        }
    }
}

/// How an [`Authstore`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Token prefixes (optional deployment prefix).
    pub token_format: TokenFormat,
    /// Default lifetimes.
    pub lifetimes: DefaultLifetimes,
    /// How long after a rotation a concurrent refresh with the old token still gets a valid
    /// answer instead of revoking the family. Default 0 (any reuse revokes), at most
    /// [`MAX_REFRESH_GRACE`].
    pub refresh_grace: Duration,
    /// How many grace answers one rotated refresh token may get in all (default 3, 1 to 100):
    /// enough for a few tabs racing, while a stolen token replayed in the window cannot fork
    /// the family without bound. Past it, a reuse revokes the family.
    pub refresh_grace_max_reuses: u32,
    /// Whether strings that are not tokens minted by this deployment are hashed and looked
    /// up (needed to store tokens minted elsewhere). Default `false`: such strings are
    /// rejected as malformed without a lookup.
    pub accept_foreign_tokens: bool,
    /// Argon2id parameters for passwords (default: OWASP's).
    pub password_params: crate::password::PasswordParams,
    /// Accept password parameters below 8 MiB.
    ///
    /// # Security
    ///
    /// For tests only: weak parameters make stolen hashes cheap to crack.
    pub danger_allow_weak_password_params: bool,
    /// Failed-login limits.
    pub login: LoginPolicy,
}

/// How many failed logins lock what, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures for one user within `window` (since their last success) before logins for
    /// that user are refused. Default 5.
    pub max_user_failures: u32,
    /// Failures from one source address within `window` before logins from it are refused.
    /// Default 50 (a shared address may carry many users).
    pub max_source_failures: u32,
    /// The window. Default 15 minutes.
    pub window: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            max_user_failures: 5,
            max_source_failures: 50,
            window: Duration::from_secs(900),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token_format: TokenFormat::default(),
            lifetimes: DefaultLifetimes::default(),
            refresh_grace: Duration::ZERO,
            refresh_grace_max_reuses: 3,
            accept_foreign_tokens: false,
            password_params: crate::password::PasswordParams::default(),
            danger_allow_weak_password_params: false,
            login: LoginPolicy::default(),
        }
    }
}

impl Config {
    /// Checks bounds.
    pub fn validate(&self) -> Result<()> {
        self.password_params
            .validate(self.danger_allow_weak_password_params)?;
        if self.login.max_user_failures == 0
            || self.login.max_source_failures == 0
            || self.login.window.is_zero()
        {
            return Err(Error::Config {
                reason: "login limits and window must be at least 1".into(),
            });
        }
        if !(1..=100).contains(&self.refresh_grace_max_reuses) {
            return Err(Error::Config {
                reason: "refresh_grace_max_reuses must be 1 to 100".into(),
            });
        }
        if self.refresh_grace > MAX_REFRESH_GRACE {
            return Err(Error::Config {
                reason: format!(
                    "refresh_grace {:?} is longer than the maximum {:?}",
                    self.refresh_grace, MAX_REFRESH_GRACE
                ),
            });
        }
        let l = &self.lifetimes;
        for (name, d) in [
            ("access_token", l.access_token),
            ("refresh_token", l.refresh_token),
            ("refresh_idle", l.refresh_idle),
            ("authorization_code", l.authorization_code),
            ("authorization_session", l.authorization_session),
            ("login_session", l.login_session),
            ("login_session_idle", l.login_session_idle),
            ("password_reset", l.password_reset),
            ("email_verification", l.email_verification),
            ("magic_link", l.magic_link),
            ("ceremony", l.ceremony),
        ] {
            check_lifetime(name, d)?;
        }
        Ok(())
    }
}

const MAX_LIFETIME: Duration = Duration::from_secs(10 * 366 * 86_400);

fn check_lifetime(name: &'static str, d: Duration) -> Result<()> {
    if d.is_zero() || d > MAX_LIFETIME {
        return Err(Error::invalid(
            name,
            "a lifetime must be between 1 second and 10 years",
        ));
    }
    Ok(())
}

/// A client as created: the secret is shown here once and never again.
#[derive(Debug)]
pub struct CreatedClient {
    /// The client.
    pub client: Client,
    /// Its secret (confidential clients only). Store only in the client's configuration.
    pub secret: Option<ClientSecret>,
}

/// Extra properties of issued access tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenOptions {
    /// Audiences (at most 16, each at most 255 bytes).
    pub audience: Vec<String>,
    /// Sender constraint (DPoP or mTLS thumbprint).
    pub cnf: Option<SenderConstraint>,
    /// Extra claims: a JSON object of at most 4 KiB, or `Null`.
    pub claims: serde_json::Value,
}

impl TokenOptions {
    fn validate(&self) -> Result<()> {
        if self.audience.len() > 16 {
            return Err(Error::invalid("audience", "at most 16 audiences"));
        }
        for a in &self.audience {
            check_required_text("audience", a, 255)?;
        }
        if let Some(c) = &self.cnf {
            c.validate()?;
        }
        match &self.claims {
            serde_json::Value::Null => {}
            serde_json::Value::Object(_) => {
                let s = self.claims.to_string();
                if s.len() > 4096 {
                    return Err(Error::invalid("claims", "larger than 4 KiB"));
                }
                if s.contains('\0') || s.contains("\\u0000") {
                    return Err(Error::invalid("claims", "contains NUL"));
                }
            }
            _ => return Err(Error::invalid("claims", "must be a JSON object")),
        }
        Ok(())
    }

    fn claims(&self) -> serde_json::Value {
        match &self.claims {
            serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
            v => v.clone(),
        }
    }
}

/// An authorization request that has been approved: what the code will carry.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRequest {
    /// The client.
    pub client_id: ClientId,
    /// The subject who approved.
    pub subject: Subject,
    /// The redirect URI of the request; must be registered (exact match).
    pub redirect_uri: String,
    /// The scopes approved; must be within the client's.
    pub scope: Scopes,
    /// PKCE challenge; required for public clients.
    pub code_challenge: Option<PkceChallenge>,
    /// OIDC nonce.
    pub nonce: Option<String>,
    /// How the subject authenticated.
    pub auth: AuthContext,
}

/// A minted authorization code.
#[derive(Debug)]
pub struct IssuedCode {
    /// The code to send to the client.
    pub code: CodeSecret,
    /// The grant it starts.
    pub grant_id: GrantId,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// A token request with an authorization code (the client already authenticated).
#[derive(Clone, Copy)]
pub struct CodeRedemption<'a> {
    /// The presented code.
    pub code: &'a str,
    /// The authenticated client.
    pub client_id: ClientId,
    /// The `redirect_uri` parameter; required unless the code was issued with PKCE.
    pub redirect_uri: Option<&'a str>,
    /// The PKCE `code_verifier`.
    pub code_verifier: Option<&'a str>,
    /// Properties of the access token.
    pub options: &'a TokenOptions,
}

/// A refresh request (the client already authenticated, or is public).
#[derive(Clone, Copy)]
pub struct RefreshRequest<'a> {
    /// The presented refresh token.
    pub refresh_token: &'a str,
    /// The authenticated client.
    pub client_id: ClientId,
    /// A narrower scope for the new access token.
    pub scope: Option<&'a Scopes>,
    /// Properties of the access token. A sender-constrained family requires the same `cnf`
    /// here; an unbound family's new access token gets this `cnf`.
    pub options: &'a TokenOptions,
}

// The request types hold presented secrets as `&str`: their `Debug` prints what is safe.
impl fmt::Debug for CodeRedemption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeRedemption")
            .field("code", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("code_verifier", &self.code_verifier.map(|_| "[redacted]"))
            .field("options", &self.options)
            .finish()
    }
}

impl fmt::Debug for RefreshRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("options", &self.options)
            .finish()
    }
}

impl fmt::Debug for ForeignTokens<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignTokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.map(|_| "[redacted]"))
            .field("expires_in", &self.expires_in)
            .field("client_id", &self.client_id)
            .field("subject", &self.subject)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Tokens as issued: what a token endpoint answers.
#[derive(Debug)]
pub struct IssuedTokens {
    /// The access token.
    pub access_token: AccessTokenSecret,
    /// Always `Bearer` (or `DPoP` when sender-constrained by DPoP).
    pub token_type: &'static str,
    /// Access token lifetime.
    pub expires_in: Duration,
    /// When the access token expires.
    pub expires_at: Timestamp,
    /// The refresh token, if the client may refresh.
    pub refresh_token: Option<RefreshTokenSecret>,
    /// The access token's scope.
    pub scope: Scopes,
    /// The grant (family) the tokens belong to.
    pub grant_id: GrantId,
    /// Whether this answer came from the refresh grace period.
    pub within_grace: bool,
}

/// RFC 7009 `token_type_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    /// `access_token`.
    AccessToken,
    /// `refresh_token`.
    RefreshToken,
}

/// A new personal access token.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPat {
    /// The user it acts for.
    pub user: Subject,
    /// A name (1 to 100 characters).
    pub name: String,
    /// Its scopes.
    pub scope: Scopes,
    /// Lifetime; `None` never expires.
    pub expires_in: Option<Duration>,
}

/// A personal access token as issued: the secret is shown once.
#[derive(Debug)]
pub struct IssuedPat {
    /// The record.
    pub pat: PersonalAccessToken,
    /// The token to show the user once.
    pub secret: PatSecret,
}

/// A new authorization request in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuthorizationSession {
    /// The client asking.
    pub client_id: ClientId,
    /// The requested redirect URI; must be registered (exact match).
    pub redirect_uri: String,
    /// The requested scope; must be within the client's.
    pub scope: Scopes,
    /// The client's `state` (at most 2048 bytes).
    pub state: Option<String>,
    /// PKCE challenge; required for public clients.
    pub code_challenge: Option<PkceChallenge>,
    /// OIDC nonce (at most 255 bytes).
    pub nonce: Option<String>,
}

/// Tokens minted elsewhere, to be stored (hashed) and validated here.
/// Needs [`Config::accept_foreign_tokens`].
#[derive(Clone, Copy)]
pub struct ForeignTokens<'a> {
    /// The access token string.
    pub access_token: &'a str,
    /// The refresh token string, if any.
    pub refresh_token: Option<&'a str>,
    /// Access token lifetime; `None` uses the client's or default.
    pub expires_in: Option<Duration>,
    /// The client they were issued to.
    pub client_id: ClientId,
    /// The subject, `None` for client credentials.
    pub subject: Option<&'a Subject>,
    /// The scope; `None` means the client's allowed scopes.
    pub scope: Option<&'a Scopes>,
}

/// What [`Authstore::verify_keys`] found: the configured keys the database knew, and those it
/// saw for the first time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyVerification {
    /// Configured keys the database was used with before, as recorded then (with when they
    /// were first seen).
    pub matched: Vec<KeyCheck>,
    /// Configured keys new to the database, recorded by this call.
    pub recorded: Vec<KeyCheck>,
}

/// How often [`Authstore::verify_keys`] reads again after another process recorded keys
/// between its read and its write. Each retry means someone else's write succeeded, so this
/// bounds nothing but a pathological stampede.
const KEY_CHECK_ATTEMPTS: usize = 5;

/// The façade: every operation of authstore, on any backend.
///
/// Cheap to clone (everything is behind `Arc`s); clones share the PAT usage buffer.
#[derive(Clone)]
pub struct Authstore {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keys: Arc<TokenKeyring>,
    clock: Arc<dyn Clock>,
    pub(crate) config: Arc<Config>,
    audit: AuditContext,
    pat_usage: Arc<Mutex<HashMap<PatId, Timestamp>>>,
    /// Built on first use (it makes one hash), shared by clones.
    pub(crate) passwords: Arc<std::sync::OnceLock<Arc<crate::password::PasswordHasher>>>,
    /// Keys for reversible secrets (TOTP secrets, provider tokens); `None` until configured.
    pub(crate) sealing: Option<Arc<crate::seal::SealingKeyring>>,
    /// Login session use, buffered like PAT use: id -> (last seen, new idle expiry).
    pub(crate) session_usage:
        Arc<Mutex<HashMap<crate::identity::LoginSessionId, (Timestamp, Timestamp)>>>,
}

impl fmt::Debug for Authstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authstore")
            .field("backend", &self.backend.backend_name())
            .field("active_key", &self.keys.active_id())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Moves a freshly minted token out of its zeroizing buffer into a secret newtype without
/// leaving a copy behind.
fn take(mut z: Zeroizing<String>) -> String {
    std::mem::take(&mut *z)
}

impl Authstore {
    /// A store on `backend`, hashing with `keys`, on the system clock with the default
    /// configuration.
    pub fn new(backend: Arc<dyn Backend>, keys: TokenKeyring) -> Self {
        Self {
            backend,
            keys: Arc::new(keys),
            clock: Arc::new(SystemClock),
            config: Arc::new(Config::default()),
            audit: AuditContext::default(),
            pat_usage: Arc::new(Mutex::new(HashMap::new())),
            passwords: Arc::new(std::sync::OnceLock::new()),
            sealing: None,
            session_usage: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Uses `clock` for the current time (tests inject a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `config`, after checking it.
    pub fn with_config(mut self, config: Config) -> Result<Self> {
        config.validate()?;
        self.config = Arc::new(config);
        self.passwords = Arc::new(std::sync::OnceLock::new());
        Ok(self)
    }

    /// Uses `keys` to seal reversible secrets (TOTP secrets, linked accounts' provider
    /// tokens). Keys come from configuration, never from the database.
    pub fn with_sealing_keys(mut self, keys: crate::seal::SealingKeyring) -> Self {
        self.sealing = Some(Arc::new(keys));
        self
    }

    /// A handle that records `ctx` (actor, address) in every audit event it writes.
    pub fn with_audit_context(&self, ctx: AuditContext) -> Self {
        Self {
            audit: ctx,
            ..self.clone()
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A 32-byte key for another purpose of the deployment (CSRF tokens, say), derived from
    /// the active token key: see [`TokenKeyring::derive_key`].
    pub fn derive_key(&self, context: &str) -> zeroize::Zeroizing<[u8; 32]> {
        self.keys.derive_key(context)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current time on this store's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(crate) fn event(&self, kind: AuditKind, at: Timestamp) -> AuditEvent {
        AuditEvent::new(kind, at, &self.audit)
    }

    pub(crate) fn mint(&self, kind: TokenKind) -> Result<(String, TokenHash)> {
        let t = take(self.config.token_format.mint(kind)?);
        let h = self.keys.hash(&t);
        Ok((t, h))
    }

    /// Checks a presented string and returns the hashes to try: the active key's first,
    /// then older keys'. No lookup happens for a malformed string.
    pub(crate) fn candidates<'a>(
        &'a self,
        kind: TokenKind,
        presented: &'a str,
    ) -> Result<impl Iterator<Item = TokenHash> + 'a> {
        self.check_presented(kind, presented)?;
        Ok(std::iter::once(self.keys.hash(presented)).chain(self.keys.older_hashes(presented)))
    }

    fn check_presented(&self, kind: TokenKind, presented: &str) -> Result<()> {
        match self.config.token_format.check(kind, presented)? {
            Presented::Minted => Ok(()),
            Presented::Foreign if self.config.accept_foreign_tokens => Ok(()),
            Presented::Foreign => Err(foreign_refused(kind)),
        }
    }

    // ----- clients -------------------------------------------------------------------

    /// Registers a client. A confidential client gets a 256-bit secret, returned here once;
    /// only its keyed hash is stored.
    pub async fn create_client(&self, new: NewClient) -> Result<CreatedClient> {
        let now = self.now();
        let grant_types = if new.grant_types.is_empty() {
            default_grant_types(&new)
        } else {
            new.grant_types
        };
        let method = new
            .token_endpoint_auth_method
            .unwrap_or(match new.client_type {
                ClientType::Confidential => TokenEndpointAuthMethod::ClientSecretBasic,
                ClientType::Public => TokenEndpointAuthMethod::None,
            });
        check_client_lifetimes(&new.lifetimes)?;
        let client = Client {
            id: ClientId::new_at(now),
            name: new.name,
            client_type: new.client_type,
            redirect_uris: new.redirect_uris,
            grant_types,
            scopes: new.scopes,
            token_endpoint_auth_method: method,
            lifetimes: new.lifetimes,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
            disabled: false,
        };
        client.validate()?;
        let (secret, hash) = match client.client_type {
            ClientType::Confidential => {
                let (s, h) = self.mint(TokenKind::ClientSecret)?;
                (Some(ClientSecret::new(s)), Some(h))
            }
            ClientType::Public => (None, None),
        };
        let ev = self
            .event(AuditKind::ClientCreated, now)
            .client(client.id)
            .detail("name", client.name.clone());
        self.backend
            .insert_client(&client, hash.as_ref(), ev)
            .await?;
        Ok(CreatedClient { client, secret })
    }

    /// The client. [`Error::NotFound`] if there is none.
    pub async fn client(&self, id: ClientId) -> Result<Client> {
        self.backend
            .get_client(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("client {id}")))
    }

    /// Clients ordered by id after `after`, at most `limit` (1 to 1000).
    pub async fn list_clients(&self, after: Option<ClientId>, limit: u32) -> Result<Vec<Client>> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be 1 to 1000"));
        }
        self.backend.list_clients(after, limit).await
    }

    /// Changes a client. The result is validated as a whole (e.g. a public client cannot get
    /// `client_credentials`).
    pub async fn update_client(&self, id: ClientId, update: ClientUpdate) -> Result<Client> {
        let mut c = self.client(id).await?;
        if let Some(v) = update.name {
            c.name = v;
        }
        if let Some(v) = update.redirect_uris {
            c.redirect_uris = v;
        }
        if let Some(v) = update.grant_types {
            c.grant_types = v;
        }
        if let Some(v) = update.scopes {
            c.scopes = v;
        }
        if let Some(v) = update.token_endpoint_auth_method {
            c.token_endpoint_auth_method = v;
        }
        if let Some(v) = update.lifetimes {
            check_client_lifetimes(&v)?;
            c.lifetimes = v;
        }
        if let Some(v) = update.metadata {
            c.metadata = v;
        }
        c.validate()?;
        let now = self.now();
        c.updated_at = now;
        self.backend
            .update_client(&c, self.event(AuditKind::ClientUpdated, now).client(id))
            .await?;
        // `disabled` is not written by an update (it may have changed since our read).
        self.client(id).await
    }

    /// Disables a client: it can no longer authenticate and none of its tokens validate,
    /// at once. Reversible with [`enable_client`](Self::enable_client).
    pub async fn disable_client(&self, id: ClientId) -> Result<Client> {
        self.set_disabled(id, true, AuditKind::ClientDisabled).await
    }

    /// Enables a disabled client again; its unexpired, unrevoked tokens validate again.
    pub async fn enable_client(&self, id: ClientId) -> Result<Client> {
        self.set_disabled(id, false, AuditKind::ClientEnabled).await
    }

    async fn set_disabled(&self, id: ClientId, disabled: bool, kind: AuditKind) -> Result<Client> {
        let now = self.now();
        self.backend
            .set_client_disabled(id, disabled, self.event(kind, now).client(id))
            .await?;
        self.client(id).await
    }

    /// Replaces a confidential client's secret; the old one stops working at once. Returns
    /// the new secret, once.
    pub async fn rotate_client_secret(&self, id: ClientId) -> Result<ClientSecret> {
        let c = self.client(id).await?;
        if c.client_type == ClientType::Public {
            return Err(Error::UnauthorizedClient {
                reason: "a public client has no secret".into(),
            });
        }
        let (s, h) = self.mint(TokenKind::ClientSecret)?;
        let now = self.now();
        self.backend
            .set_client_secret_hash(
                id,
                &h,
                self.event(AuditKind::ClientSecretRotated, now).client(id),
            )
            .await?;
        Ok(ClientSecret::new(s))
    }

    /// Authenticates a confidential client by its secret, in constant time. Unknown client,
    /// wrong secret, public or disabled client all give [`Error::InvalidClient`].
    pub async fn verify_client_secret(&self, id: ClientId, presented: &str) -> Result<Client> {
        let well_formed = matches!(
            self.config
                .token_format
                .check(TokenKind::ClientSecret, presented),
            Ok(Presented::Minted)
        );
        // Hash even a malformed secret, so every failure costs about the same.
        let mut hashes = vec![self.keys.hash(presented)];
        hashes.extend(self.keys.older_hashes(presented));
        let found = self.backend.get_client_with_secret(id).await?;
        let Some((client, Some(stored))) = found else {
            return Err(Error::InvalidClient);
        };
        let mut ok = false;
        for h in &hashes {
            ok |= h.ct_eq(&stored);
        }
        if ok && well_formed && !client.disabled && client.client_type == ClientType::Confidential {
            Ok(client)
        } else {
            Err(Error::InvalidClient)
        }
    }

    /// Deletes a client and everything that belongs to it (grants, codes, tokens, consents,
    /// authorization sessions). [`Error::NotFound`] if there is none.
    pub async fn delete_client(&self, id: ClientId) -> Result<()> {
        let now = self.now();
        if self
            .backend
            .delete_client(id, self.event(AuditKind::ClientDeleted, now).client(id))
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found(format!("client {id}")))
        }
    }

    async fn active_client(&self, id: ClientId) -> Result<Client> {
        let c = self.client(id).await?;
        if c.disabled {
            return Err(Error::UnauthorizedClient {
                reason: format!("client {id} is disabled"),
            });
        }
        Ok(c)
    }

    /// The checks every authorization request passes before a session or code exists:
    /// client enabled and allowed `authorization_code`, redirect URI registered (exact
    /// match), scope within the client's, PKCE present for public clients.
    async fn check_authorization_request(
        &self,
        client_id: ClientId,
        redirect_uri: &str,
        scope: &Scopes,
        has_pkce: bool,
    ) -> Result<(Client, crate::model::RedirectUri)> {
        let client = self.active_client(client_id).await?;
        if !client.allows_grant(GrantType::AuthorizationCode) {
            return Err(Error::UnauthorizedClient {
                reason: "the client may not use the authorization_code grant".into(),
            });
        }
        let redirect_uri = client.redirect_uri(redirect_uri).cloned().ok_or_else(|| {
            Error::invalid(
                "redirect_uri",
                "not registered for this client (exact match required)",
            )
        })?;
        check_scope_within(scope, &client.scopes, "the client's allowed scopes")?;
        if client.client_type == ClientType::Public && !has_pkce {
            return Err(Error::invalid(
                "code_challenge",
                "PKCE (S256) is required for public clients",
            ));
        }
        Ok((client, redirect_uri))
    }

    /// A new refresh token starting a family: absolute and idle expiry from the client's
    /// lifetimes or the defaults.
    fn first_refresh_record(
        &self,
        client: &Client,
        grant: &Grant,
        cnf: Option<SenderConstraint>,
        now: Timestamp,
    ) -> RefreshToken {
        let abs = client
            .lifetimes
            .refresh_token
            .unwrap_or(self.config.lifetimes.refresh_token);
        let idle = client
            .lifetimes
            .refresh_idle
            .unwrap_or(self.config.lifetimes.refresh_idle);
        let expires_at = now.saturating_add(abs);
        RefreshToken {
            grant_id: grant.id,
            client_id: grant.client_id,
            subject: grant.subject.clone(),
            scope: grant.scope.clone(),
            issued_at: now,
            expires_at,
            idle_expires_at: now.saturating_add(idle).min(expires_at),
            rotated_at: None,
            successor: None,
            reuse_count: 0,
            revoked_at: None,
            cnf,
        }
    }

    // ----- authorization codes --------------------------------------------------------

    /// Issues an authorization code for an approved request, starting a new grant. Checks
    /// the client allows `authorization_code`, the redirect URI is registered (exact match),
    /// the scope is within the client's, and PKCE is present for public clients.
    pub async fn issue_code(&self, req: CodeRequest) -> Result<IssuedCode> {
        let (client, redirect_uri) = self
            .check_authorization_request(
                req.client_id,
                &req.redirect_uri,
                &req.scope,
                req.code_challenge.is_some(),
            )
            .await?;
        check_opt_text("nonce", req.nonce.as_deref(), 255)?;
        req.auth.validate()?;
        let now = self.now();
        let lifetime = client
            .lifetimes
            .authorization_code
            .unwrap_or(self.config.lifetimes.authorization_code);
        let grant = Grant {
            id: GrantId::new_at(now),
            client_id: client.id,
            subject: Some(req.subject.clone()),
            scope: req.scope.clone(),
            auth: req.auth,
            created_at: now,
            revoked_at: None,
        };
        let code = AuthorizationCode {
            grant_id: grant.id,
            client_id: client.id,
            subject: req.subject,
            redirect_uri,
            scope: req.scope,
            code_challenge: req.code_challenge,
            nonce: req.nonce,
            issued_at: now,
            expires_at: now.saturating_add(lifetime),
            consumed_at: None,
        };
        let (secret, hash) = self.mint(TokenKind::AuthorizationCode)?;
        let ev = self
            .event(AuditKind::CodeIssued, now)
            .client(client.id)
            .grant(grant.id)
            .subject(grant.subject.as_ref());
        self.backend.issue_code(&grant, &hash, &code, ev).await?;
        Ok(IssuedCode {
            code: CodeSecret::new(secret),
            grant_id: grant.id,
            expires_at: code.expires_at,
        })
    }

    /// Redeems an authorization code for tokens.
    ///
    /// The code is consumed by one atomic compare-and-set: of any number of concurrent
    /// redeemers exactly one succeeds. A code presented again revokes its whole grant, so
    /// every token issued from it dies, and gives [`Error::CodeReplay`]. A code presented by
    /// the wrong client, with the wrong redirect URI or a failing PKCE verifier is burnt and
    /// its grant revoked ([`Error::InvalidGrant`]).
    pub async fn redeem_code(&self, r: CodeRedemption<'_>) -> Result<IssuedTokens> {
        r.options.validate()?;
        let now = self.now();
        let mut consumed = None;
        for h in self.candidates(TokenKind::AuthorizationCode, r.code)? {
            match self
                .backend
                .consume_code(&h, self.event(AuditKind::CodeRedeemed, now))
                .await?
            {
                CodeConsumption::Consumed(code) => {
                    consumed = Some(code);
                    break;
                }
                CodeConsumption::AlreadyConsumed { grant_id } => {
                    let ev = self
                        .event(AuditKind::CodeReplayDetected, now)
                        .grant(grant_id);
                    self.backend.revoke_grant(grant_id, ev).await?;
                    tracing::warn!(%grant_id, "authorization code replay: grant revoked");
                    return Err(Error::CodeReplay { grant_id });
                }
                CodeConsumption::Inactive => {}
                #[allow(unreachable_patterns)] // the enum is non_exhaustive for other crates only
                _ => {}
            }
        }
        let code = consumed.ok_or(Error::Inactive {
            kind: TokenKind::AuthorizationCode.name(),
        })?;
        if let Err(reason) = check_code_binding(&code, &r) {
            let ev = self
                .event(AuditKind::GrantRevoked, now)
                .grant(code.grant_id)
                .detail("reason", reason);
            self.backend.revoke_grant(code.grant_id, ev).await?;
            return Err(Error::InvalidGrant { reason });
        }
        let client = self.active_client(code.client_id).await?;
        if !client.allows_grant(GrantType::AuthorizationCode) {
            return Err(Error::UnauthorizedClient {
                reason: "the client may no longer use the authorization_code grant".into(),
            });
        }
        let grant = self
            .backend
            .get_grant(code.grant_id)
            .await?
            .ok_or(Error::Inactive { kind: "grant" })?;
        let with_refresh = client.allows_grant(GrantType::RefreshToken);
        self.issue_into(
            &client,
            &grant,
            None,
            code.scope.clone(),
            with_refresh,
            r.options,
            now,
        )
        .await
    }

    /// Builds and stores tokens for `grant` (created first if `new_grant`).
    #[allow(clippy::too_many_arguments)] // one private helper shared by every grant type
    async fn issue_into(
        &self,
        client: &Client,
        grant: &Grant,
        new_grant: Option<Grant>,
        scope: Scopes,
        with_refresh: bool,
        options: &TokenOptions,
        now: Timestamp,
    ) -> Result<IssuedTokens> {
        let access_life = client
            .lifetimes
            .access_token
            .unwrap_or(self.config.lifetimes.access_token);
        let (at, at_hash) = self.mint(TokenKind::AccessToken)?;
        let access = self.access_record(
            grant,
            scope.clone(),
            options,
            options.cnf.clone(),
            now,
            access_life,
        );
        let refresh = if with_refresh {
            let (rt, rt_hash) = self.mint(TokenKind::RefreshToken)?;
            let record = self.first_refresh_record(client, grant, options.cnf.clone(), now);
            Some((rt, rt_hash, record))
        } else {
            None
        };
        let issue = TokenIssue {
            new_grant,
            grant_id: grant.id,
            access: Some((at_hash, access.clone())),
            refresh: refresh.as_ref().map(|(_, h, r)| (*h, r.clone())),
        };
        let ev = self
            .event(AuditKind::TokensIssued, now)
            .client(grant.client_id)
            .grant(grant.id)
            .subject(grant.subject.as_ref())
            .detail("refresh_token", refresh.is_some());
        self.backend.issue_tokens(&issue, ev).await?;
        Ok(IssuedTokens {
            access_token: AccessTokenSecret::new(at),
            token_type: token_type(&access.cnf),
            expires_in: access_life,
            expires_at: access.expires_at,
            refresh_token: refresh.map(|(rt, _, _)| RefreshTokenSecret::new(rt)),
            scope,
            grant_id: grant.id,
            within_grace: false,
        })
    }

    fn access_record(
        &self,
        grant: &Grant,
        scope: Scopes,
        options: &TokenOptions,
        cnf: Option<SenderConstraint>,
        now: Timestamp,
        life: Duration,
    ) -> AccessToken {
        AccessToken {
            grant_id: grant.id,
            client_id: grant.client_id,
            subject: grant.subject.clone(),
            scope,
            audience: options.audience.clone(),
            issued_at: now,
            expires_at: now.saturating_add(life),
            revoked_at: None,
            cnf,
            auth: grant.auth.clone(),
            claims: options.claims(),
        }
    }

    // ----- client credentials ---------------------------------------------------------

    /// Issues an access token to an (already authenticated) confidential client for itself
    /// (RFC 6749 §4.4): a new grant with no subject and no refresh token. `scope` defaults
    /// to all the client's allowed scopes and must be within them.
    pub async fn issue_client_credentials(
        &self,
        client_id: ClientId,
        scope: Option<&Scopes>,
        options: &TokenOptions,
    ) -> Result<IssuedTokens> {
        options.validate()?;
        let client = self.active_client(client_id).await?;
        self.issue_client_credentials_for(&client, scope, options)
            .await
    }

    /// [`issue_client_credentials`](Self::issue_client_credentials) for a client record
    /// just read, typically the one [`verify_client_secret`](Self::verify_client_secret)
    /// returned when the token endpoint authenticated it: one read fewer per token.
    ///
    /// The record's grant types, type, scopes and lifetimes are checked as
    /// `issue_client_credentials` checks them; the write itself still refuses a client that
    /// was deleted or disabled since it was read (the new grant is inserted only if its
    /// client exists and is enabled, in the same statement), so a stale record cannot
    /// revive a client. A change of the client's scopes or grant types made between the
    /// read and this call is not seen (the same window as reading it here: one request).
    /// Pass only a record read from this store: the record is trusted for the rest.
    pub async fn issue_client_credentials_for(
        &self,
        client: &Client,
        scope: Option<&Scopes>,
        options: &TokenOptions,
    ) -> Result<IssuedTokens> {
        options.validate()?;
        // The record's own limits are checked as a stored client's were when it was
        // written (a record built by hand gets no lifetime the store would refuse).
        check_client_lifetimes(&client.lifetimes)?;
        if client.disabled {
            return Err(Error::UnauthorizedClient {
                reason: format!("client {} is disabled", client.id),
            });
        }
        let client_id = client.id;
        if !client.allows_grant(GrantType::ClientCredentials)
            || client.client_type != ClientType::Confidential
        {
            return Err(Error::UnauthorizedClient {
                reason: "the client may not use the client_credentials grant".into(),
            });
        }
        let scope = match scope {
            Some(s) => {
                check_scope_within(s, &client.scopes, "the client's allowed scopes")?;
                s.clone()
            }
            None => client.scopes.clone(),
        };
        let now = self.now();
        let grant = Grant {
            id: GrantId::new_at(now),
            client_id,
            subject: None,
            scope: scope.clone(),
            auth: AuthContext::default(),
            created_at: now,
            revoked_at: None,
        };
        self.issue_into(
            client,
            &grant,
            Some(grant.clone()),
            scope,
            false,
            options,
            now,
        )
        .await
    }

    // ----- validation -----------------------------------------------------------------

    /// **The hot path**: validates an access token with one keyed hash and one indexed read
    /// (a second read per older key only during a key rotation, for tokens the active key
    /// does not find). Expiry, revocation of the token and its grant, and the client being
    /// enabled are all checked in that read. Never writes.
    ///
    /// [`Error::MalformedToken`] for strings that cannot be our tokens (without a database
    /// read; an in-process backend, see [`Backend::lookups_are_in_process`], may look one up
    /// first, with the same answer), [`Error::Inactive`] for unknown, expired or revoked
    /// ones.
    pub async fn validate_access_token(&self, token: &str) -> Result<AccessToken> {
        let kind = TokenKind::AccessToken;
        let now = self.now();
        if !self.backend.lookups_are_in_process() {
            for h in self.candidates(kind, token)? {
                if let Some(t) = self.backend.find_access_token(&h, now).await? {
                    return Ok(t);
                }
            }
            return Err(Error::Inactive { kind: kind.name() });
        }
        // An in-process backend: length, characters and prefix before the lookup, the
        // checksum only on a miss (see `TokenFormat::check_shape`). A found token was
        // checked in full when it was stored, and such a lookup cannot fail, so the answers
        // are those of checking first.
        let presented = self.config.token_format.check_shape(kind, token)?;
        if presented == Presented::Foreign && !self.config.accept_foreign_tokens {
            return Err(foreign_refused(kind));
        }
        let active = self.keys.hash(token);
        if let Some(t) = self.backend.find_access_token(&active, now).await? {
            return Ok(t);
        }
        for h in self.keys.older_hashes(token) {
            if let Some(t) = self.backend.find_access_token(&h, now).await? {
                return Ok(t);
            }
        }
        if presented == Presented::Minted {
            self.config.token_format.check_checksum(kind, token)?;
        }
        Err(Error::Inactive { kind: kind.name() })
    }

    /// Introspects a refresh token (RFC 7662): the record if it is usable now (unexpired,
    /// not rotated, unrevoked, grant unrevoked, client enabled), else [`Error::Inactive`].
    /// Never writes.
    pub async fn introspect_refresh_token(&self, token: &str) -> Result<RefreshToken> {
        let now = self.now();
        match self.find_refresh(token).await? {
            Some((_, s)) if refresh_usable(&s, now) && s.token.rotated_at.is_none() => Ok(s.token),
            _ => Err(Error::Inactive {
                kind: TokenKind::RefreshToken.name(),
            }),
        }
    }

    async fn find_refresh(&self, token: &str) -> Result<Option<(TokenHash, RefreshTokenState)>> {
        for h in self.candidates(TokenKind::RefreshToken, token)? {
            if let Some(s) = self.backend.find_refresh_token(&h).await? {
                return Ok(Some((h, s)));
            }
        }
        Ok(None)
    }

    // ----- refresh --------------------------------------------------------------------

    /// Exchanges a refresh token for a new access token and a new refresh token (rotation).
    ///
    /// The old token is marked rotated and linked to its successor atomically. Presenting a
    /// rotated token again revokes the whole grant ([`Error::RefreshReuse`]) unless it
    /// happens within [`Config::refresh_grace`] of the rotation, in which case a fresh pair
    /// is issued (a client racing itself is not logged out). The new refresh token keeps the
    /// family's scope and absolute expiry; its idle expiry restarts. `scope` may narrow the
    /// access token's scope.
    pub async fn refresh(&self, r: RefreshRequest<'_>) -> Result<IssuedTokens> {
        r.options.validate()?;
        let Some((hash, mut state)) = self.find_refresh(r.refresh_token).await? else {
            return Err(Error::Inactive {
                kind: TokenKind::RefreshToken.name(),
            });
        };
        if state.token.client_id != r.client_id {
            return Err(Error::InvalidGrant {
                reason: "the refresh token was issued to another client",
            });
        }
        let client = self.active_client(r.client_id).await?;
        if !client.allows_grant(GrantType::RefreshToken) {
            return Err(Error::UnauthorizedClient {
                reason: "the client may not use the refresh_token grant".into(),
            });
        }
        let scope = match r.scope {
            Some(s) => {
                check_scope_within(s, &state.token.scope, "the scope originally granted")?;
                s.clone()
            }
            None => state.token.scope.clone(),
        };
        let access_life = client
            .lifetimes
            .access_token
            .unwrap_or(self.config.lifetimes.access_token);
        let idle = client
            .lifetimes
            .refresh_idle
            .unwrap_or(self.config.lifetimes.refresh_idle);
        let grace = self.config.refresh_grace;
        let max_reuses = self.config.refresh_grace_max_reuses;
        // A refresh token bound to a key (DPoP) or certificate (mTLS) must be presented with
        // the same binding (RFC 9449 §5, RFC 8705 §3).
        if state.token.cnf.is_some() && r.options.cnf != state.token.cnf {
            return Err(Error::InvalidGrant {
                reason: "the refresh token is sender-constrained to another key or certificate",
            });
        }
        // A failed compare-and-set means another caller changed the token; re-read and
        // decide again. Two rounds settle every interleaving (first -> rotated -> grace or
        // reuse); the third is a safety margin.
        for _ in 0..3 {
            let now = self.now();
            let t = &state.token;
            if t.revoked_at.is_some() || state.grant.revoked_at.is_some() || state.client_disabled {
                return Err(Error::Inactive {
                    kind: TokenKind::RefreshToken.name(),
                });
            }
            let mode = match t.rotated_at {
                Some(rotated_at)
                    if !grace.is_zero()
                        && now <= rotated_at.saturating_add(grace)
                        && t.reuse_count < max_reuses =>
                {
                    RotationMode::Grace {
                        rotated_since: now.saturating_sub(grace),
                        max_reuses,
                    }
                }
                Some(_) => {
                    let grant_id = t.grant_id;
                    let ev = self
                        .event(AuditKind::RefreshReuseDetected, now)
                        .client(t.client_id)
                        .grant(grant_id)
                        .subject(t.subject.as_ref());
                    self.backend.revoke_grant(grant_id, ev).await?;
                    tracing::warn!(%grant_id, "refresh token reuse: grant revoked");
                    return Err(Error::RefreshReuse { grant_id });
                }
                None => RotationMode::First,
            };
            if now >= t.expires_at || now >= t.idle_expires_at {
                return Err(Error::Inactive {
                    kind: TokenKind::RefreshToken.name(),
                });
            }
            let (new_rt, new_rt_hash) = self.mint(TokenKind::RefreshToken)?;
            let (new_at, new_at_hash) = self.mint(TokenKind::AccessToken)?;
            let refresh = RefreshToken {
                grant_id: t.grant_id,
                client_id: t.client_id,
                subject: t.subject.clone(),
                scope: t.scope.clone(),
                issued_at: now,
                expires_at: t.expires_at,
                idle_expires_at: now.saturating_add(idle).min(t.expires_at),
                rotated_at: None,
                successor: None,
                reuse_count: 0,
                revoked_at: None,
                cnf: t.cnf.clone(),
            };
            let access = self.access_record(
                &state.grant,
                scope.clone(),
                r.options,
                t.cnf.clone().or_else(|| r.options.cnf.clone()),
                now,
                access_life,
            );
            let kind = match mode {
                RotationMode::First => AuditKind::RefreshRotated,
                RotationMode::Grace { .. } => AuditKind::RefreshGraceReuse,
            };
            let ev = self
                .event(kind, now)
                .client(t.client_id)
                .grant(t.grant_id)
                .subject(t.subject.as_ref());
            let rotation = Rotation {
                presented: hash,
                mode,
                refresh: (new_rt_hash, refresh),
                access: (new_at_hash, access.clone()),
            };
            if self.backend.rotate_refresh_token(&rotation, ev).await? {
                return Ok(IssuedTokens {
                    access_token: AccessTokenSecret::new(new_at),
                    token_type: token_type(&access.cnf),
                    expires_in: access_life,
                    expires_at: access.expires_at,
                    refresh_token: Some(RefreshTokenSecret::new(new_rt)),
                    scope,
                    grant_id: access.grant_id,
                    within_grace: matches!(mode, RotationMode::Grace { .. }),
                });
            }
            state = self
                .backend
                .find_refresh_token(&hash)
                .await?
                .ok_or(Error::Inactive {
                    kind: TokenKind::RefreshToken.name(),
                })?;
        }
        Err(Error::Inactive {
            kind: TokenKind::RefreshToken.name(),
        })
    }

    // ----- revocation -----------------------------------------------------------------

    /// Revokes one token (RFC 7009). Revoking a refresh token revokes its whole grant, access
    /// tokens included. With `client`, only that client's tokens are revoked
    /// ([`RevokeOutcome::WrongClient`] otherwise). Unknown tokens give
    /// [`RevokeOutcome::NotFound`] (RFC 7009 answers 200 for them). Minted tokens are
    /// recognised by prefix, so the hint only orders lookups of foreign tokens.
    pub async fn revoke_token(
        &self,
        token: &str,
        hint: Option<TokenTypeHint>,
        client: Option<ClientId>,
    ) -> Result<RevokeOutcome> {
        let fmt = &self.config.token_format;
        let order = match (
            fmt.check(TokenKind::AccessToken, token),
            fmt.check(TokenKind::RefreshToken, token),
        ) {
            (Ok(Presented::Minted), _) => vec![TokenTypeHint::AccessToken],
            (_, Ok(Presented::Minted)) => vec![TokenTypeHint::RefreshToken],
            (Ok(Presented::Foreign), Ok(Presented::Foreign)) => {
                if !self.config.accept_foreign_tokens {
                    return Ok(RevokeOutcome::NotFound);
                }
                match hint {
                    Some(TokenTypeHint::RefreshToken) => {
                        vec![TokenTypeHint::RefreshToken, TokenTypeHint::AccessToken]
                    }
                    _ => vec![TokenTypeHint::AccessToken, TokenTypeHint::RefreshToken],
                }
            }
            (Err(e), _) => return Err(e),
            (_, Err(e)) => return Err(e),
        };
        let now = self.now();
        let hashes: Vec<TokenHash> = std::iter::once(self.keys.hash(token))
            .chain(self.keys.older_hashes(token))
            .collect();
        for kind in order {
            for h in &hashes {
                let out = match kind {
                    TokenTypeHint::AccessToken => {
                        self.backend
                            .revoke_access_token(
                                h,
                                client,
                                self.event(AuditKind::AccessTokenRevoked, now),
                            )
                            .await?
                    }
                    TokenTypeHint::RefreshToken => {
                        self.backend
                            .revoke_refresh_token(
                                h,
                                client,
                                self.event(AuditKind::RefreshTokenRevoked, now),
                            )
                            .await?
                    }
                };
                if out != RevokeOutcome::NotFound {
                    return Ok(out);
                }
            }
        }
        Ok(RevokeOutcome::NotFound)
    }

    /// Revokes a grant: every code and token of it stops working at once.
    /// [`Error::NotFound`] if there is no such grant.
    pub async fn revoke_grant(&self, id: GrantId) -> Result<()> {
        let now = self.now();
        if self
            .backend
            .revoke_grant(id, self.event(AuditKind::GrantRevoked, now).grant(id))
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found(format!("grant {id}")))
        }
    }

    /// The grant, revoked or not. [`Error::NotFound`] if there is none.
    pub async fn grant(&self, id: GrantId) -> Result<Grant> {
        self.backend
            .get_grant(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("grant {id}")))
    }

    /// Revokes every grant of a client (one set-based statement); returns how many.
    pub async fn revoke_client_grants(&self, client: ClientId) -> Result<u64> {
        let now = self.now();
        self.backend
            .revoke_grants_by_client(
                client,
                self.event(AuditKind::ClientGrantsRevoked, now)
                    .client(client),
            )
            .await
    }

    /// Revokes every grant of a subject: log out everywhere. Returns how many.
    pub async fn revoke_subject_grants(&self, subject: &Subject) -> Result<u64> {
        let now = self.now();
        self.backend
            .revoke_grants_by_subject(
                subject,
                self.event(AuditKind::SubjectGrantsRevoked, now)
                    .subject(Some(subject)),
            )
            .await
    }

    // ----- foreign tokens -------------------------------------------------------------

    /// Stores tokens minted elsewhere (hashed, like ours) in a new grant, so they validate
    /// and revoke here. Needs [`Config::accept_foreign_tokens`].
    pub async fn store_foreign_tokens(&self, t: ForeignTokens<'_>) -> Result<GrantId> {
        if !self.config.accept_foreign_tokens {
            return Err(Error::Config {
                reason:
                    "storing tokens minted elsewhere needs Config::accept_foreign_tokens = true"
                        .into(),
            });
        }
        self.check_presented(TokenKind::AccessToken, t.access_token)?;
        if let Some(rt) = t.refresh_token {
            self.check_presented(TokenKind::RefreshToken, rt)?;
        }
        let client = self.active_client(t.client_id).await?;
        let scope = match t.scope {
            Some(s) => {
                check_scope_within(s, &client.scopes, "the client's allowed scopes")?;
                s.clone()
            }
            None => client.scopes.clone(),
        };
        let now = self.now();
        let access_life = match t.expires_in {
            Some(d) => {
                check_lifetime("expires_in", d)?;
                d
            }
            None => client
                .lifetimes
                .access_token
                .unwrap_or(self.config.lifetimes.access_token),
        };
        let grant = Grant {
            id: GrantId::new_at(now),
            client_id: client.id,
            subject: t.subject.cloned(),
            scope: scope.clone(),
            auth: AuthContext::default(),
            created_at: now,
            revoked_at: None,
        };
        let access = self.access_record(
            &grant,
            scope.clone(),
            &TokenOptions::default(),
            None,
            now,
            access_life,
        );
        let refresh = t.refresh_token.map(|rt| {
            let record = self.first_refresh_record(&client, &grant, None, now);
            (self.keys.hash(rt), record)
        });
        let issue = TokenIssue {
            new_grant: Some(grant.clone()),
            grant_id: grant.id,
            access: Some((self.keys.hash(t.access_token), access)),
            refresh,
        };
        let ev = self
            .event(AuditKind::TokensIssued, now)
            .client(client.id)
            .grant(grant.id)
            .subject(grant.subject.as_ref())
            .detail("foreign", true);
        self.backend.issue_tokens(&issue, ev).await?;
        Ok(grant.id)
    }

    /// Stores the tokens of an `oauth2` crate token response (see
    /// [`store_foreign_tokens`](Self::store_foreign_tokens)).
    #[cfg(feature = "oauth2")]
    pub async fn store_token_response<R: oauth2::TokenResponse>(
        &self,
        response: &R,
        client_id: ClientId,
        subject: Option<&Subject>,
    ) -> Result<GrantId> {
        let scope = match response.scopes() {
            Some(v) => Some(Scopes::from_tokens(v.iter().map(|s| s.as_str()))?),
            None => None,
        };
        self.store_foreign_tokens(ForeignTokens {
            access_token: response.access_token().secret(),
            refresh_token: response.refresh_token().map(|r| r.secret().as_str()),
            expires_in: response.expires_in(),
            client_id,
            subject,
            scope: scope.as_ref(),
        })
        .await
    }

    // ----- personal access tokens -----------------------------------------------------

    /// Issues a personal access token; the secret is shown once.
    pub async fn issue_pat(&self, new: NewPat) -> Result<IssuedPat> {
        check_required_text("name", &new.name, 100)?;
        if let Some(d) = new.expires_in {
            check_lifetime("expires_in", d)?;
        }
        let now = self.now();
        let pat = PersonalAccessToken {
            id: PatId::new_at(now),
            user: new.user,
            name: new.name,
            scope: new.scope,
            created_at: now,
            expires_at: new.expires_in.map(|d| now.saturating_add(d)),
            last_used_at: None,
            revoked_at: None,
        };
        let (secret, hash) = self.mint(TokenKind::PersonalAccessToken)?;
        let ev = self
            .event(AuditKind::PatIssued, now)
            .subject(Some(&pat.user))
            .detail("pat_id", pat.id.to_string());
        self.backend.insert_pat(&hash, &pat, ev).await?;
        Ok(IssuedPat {
            pat,
            secret: PatSecret::new(secret),
        })
    }

    /// Validates a personal access token (one hash, one read). The last-used time is
    /// buffered in memory and written by [`flush_pat_usage`](Self::flush_pat_usage), off
    /// the hot path.
    pub async fn validate_pat(&self, token: &str) -> Result<PersonalAccessToken> {
        let now = self.now();
        let mut found = None;
        for h in self.candidates(TokenKind::PersonalAccessToken, token)? {
            if let Some(p) = self.backend.find_pat(&h, now).await? {
                found = Some(p);
                break;
            }
        }
        let pat = found.ok_or(Error::Inactive {
            kind: TokenKind::PersonalAccessToken.name(),
        })?;
        // A poisoned buffer only means another thread panicked mid-insert; the map is still
        // a valid map of timestamps.
        let mut buf = self.pat_usage.lock().unwrap_or_else(|p| p.into_inner());
        let e = buf.entry(pat.id).or_insert(now);
        if *e < now {
            *e = now;
        }
        Ok(pat)
    }

    /// Writes buffered PAT last-used times in one batch; returns how many. Call it on an
    /// interval (the server does, every few seconds) and at shutdown.
    pub async fn flush_pat_usage(&self) -> Result<usize> {
        let batch: Vec<(PatId, Timestamp)> = {
            let mut buf = self.pat_usage.lock().unwrap_or_else(|p| p.into_inner());
            buf.drain().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.backend.record_pat_usage(&batch).await {
            // Put them back so the next flush retries; later times win.
            let mut buf = self.pat_usage.lock().unwrap_or_else(|p| p.into_inner());
            for (id, t) in batch {
                let e = buf.entry(id).or_insert(t);
                if *e < t {
                    *e = t;
                }
            }
            return Err(e);
        }
        Ok(batch.len())
    }

    /// A user's personal access tokens, in any state.
    pub async fn list_pats(&self, user: &Subject) -> Result<Vec<PersonalAccessToken>> {
        self.backend.list_pats(user).await
    }

    /// Revokes a personal access token; with `user`, only if it is theirs.
    /// [`Error::NotFound`] otherwise.
    pub async fn revoke_pat(&self, id: PatId, user: Option<&Subject>) -> Result<()> {
        let now = self.now();
        let ev = self
            .event(AuditKind::PatRevoked, now)
            .subject(user)
            .detail("pat_id", id.to_string());
        if self.backend.revoke_pat(id, user, ev).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!("personal access token {id}")))
        }
    }

    // ----- authorization sessions -----------------------------------------------------

    /// Starts an authorization request in flight; returns it and its handle (to keep in a
    /// cookie or form). Checks client, redirect URI, scope and PKCE as
    /// [`issue_code`](Self::issue_code) does, so a bad request fails before any login.
    pub async fn create_authorization_session(
        &self,
        req: NewAuthorizationSession,
    ) -> Result<(AuthorizationSession, AuthorizationSessionSecret)> {
        let (client, redirect_uri) = self
            .check_authorization_request(
                req.client_id,
                &req.redirect_uri,
                &req.scope,
                req.code_challenge.is_some(),
            )
            .await?;
        check_opt_text("state", req.state.as_deref(), 2048)?;
        check_opt_text("nonce", req.nonce.as_deref(), 255)?;
        let now = self.now();
        let session = AuthorizationSession {
            client_id: client.id,
            redirect_uri,
            scope: req.scope,
            state: req.state,
            code_challenge: req.code_challenge,
            nonce: req.nonce,
            subject: None,
            created_at: now,
            expires_at: now.saturating_add(self.config.lifetimes.authorization_session),
            completed_at: None,
        };
        let (secret, hash) = self.mint(TokenKind::AuthorizationSession)?;
        let ev = self
            .event(AuditKind::AuthorizationSessionCreated, now)
            .client(client.id);
        self.backend
            .insert_authorization_session(&hash, &session, ev)
            .await?;
        Ok((session, AuthorizationSessionSecret::new(secret)))
    }

    /// The pending (unexpired, uncompleted) session, else [`Error::Inactive`].
    pub async fn authorization_session(&self, handle: &str) -> Result<AuthorizationSession> {
        let now = self.now();
        for h in self.candidates(TokenKind::AuthorizationSession, handle)? {
            if let Some(s) = self.backend.find_authorization_session(&h, now).await? {
                return Ok(s);
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::AuthorizationSession.name(),
        })
    }

    /// Records who logged in for a pending session. A session's subject cannot change once
    /// set. [`Error::Inactive`] if the session is not pending (or has another subject).
    pub async fn attach_subject(&self, handle: &str, subject: &Subject) -> Result<()> {
        let now = self.now();
        for h in self.candidates(TokenKind::AuthorizationSession, handle)? {
            let ev = self
                .event(AuditKind::AuthorizationSessionSubject, now)
                .subject(Some(subject));
            if self
                .backend
                .set_authorization_session_subject(&h, subject, ev)
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::AuthorizationSession.name(),
        })
    }

    /// Completes a pending session that has a subject, exactly once (compare-and-set): the
    /// caller then issues the code. [`Error::Inactive`] for every other caller.
    pub async fn complete_authorization_session(
        &self,
        handle: &str,
    ) -> Result<AuthorizationSession> {
        let now = self.now();
        for h in self.candidates(TokenKind::AuthorizationSession, handle)? {
            let ev = self.event(AuditKind::AuthorizationSessionCompleted, now);
            if let Some(s) = self.backend.complete_authorization_session(&h, ev).await? {
                return Ok(s);
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::AuthorizationSession.name(),
        })
    }

    /// Ends a pending session now (the user cancelled). [`Error::Inactive`] if none pending.
    pub async fn expire_authorization_session(&self, handle: &str) -> Result<()> {
        let now = self.now();
        for h in self.candidates(TokenKind::AuthorizationSession, handle)? {
            let ev = self.event(AuditKind::AuthorizationSessionExpired, now);
            if self.backend.expire_authorization_session(&h, ev).await? {
                return Ok(());
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::AuthorizationSession.name(),
        })
    }

    // ----- consents -------------------------------------------------------------------

    /// Records that `subject` granted `scope` to `client`, adding to what was granted before.
    pub async fn record_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        scope: &Scopes,
    ) -> Result<Consent> {
        let c = self.client(client).await?;
        check_scope_within(scope, &c.scopes, "the client's allowed scopes")?;
        let now = self.now();
        let ev = self
            .event(AuditKind::ConsentRecorded, now)
            .client(client)
            .subject(Some(subject))
            .detail("scope", scope.to_string());
        self.backend.merge_consent(client, subject, scope, ev).await
    }

    /// The consent `subject` gave `client`, if any.
    pub async fn consent(&self, client: ClientId, subject: &Subject) -> Result<Option<Consent>> {
        self.backend.get_consent(client, subject).await
    }

    /// Withdraws a consent and revokes every grant of that client for that subject.
    /// Returns whether a consent existed.
    pub async fn revoke_consent(&self, client: ClientId, subject: &Subject) -> Result<bool> {
        let now = self.now();
        let ev = self
            .event(AuditKind::ConsentRevoked, now)
            .client(client)
            .subject(Some(subject));
        self.backend.delete_consent(client, subject, ev).await
    }

    // ----- audit and maintenance ------------------------------------------------------

    /// Audit events matching `query`, ordered by id.
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        query.effective_limit()?;
        if let (Some(a), Some(b)) = (query.since, query.until) {
            if a > b {
                return Err(Error::invalid("since", "is after until"));
            }
        }
        self.backend.query_audit(query).await
    }

    /// Applies pending schema migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        self.backend.migrate().await
    }

    /// Checks that this store's keys are the keys its database was used with, and records
    /// the keys it sees for the first time. Call it right after [`migrate`](Self::migrate),
    /// before serving: a store opened with another key file would otherwise hash new tokens
    /// and client secrets under a key the rest of the deployment does not have, while every
    /// existing token silently stops verifying.
    ///
    /// Each key of the token ring (active and older), and of the sealing ring if one is
    /// configured, is compared with the check recorded for its (ring, id)
    /// ([`TokenKey::key_check`](crate::TokenKey::key_check)):
    /// - a recorded check that differs is [`Error::KeyMismatch`];
    /// - a ring with checks recorded of which none has an id of the configured ring is
    ///   [`Error::KeysUnknown`] (none of these keys was ever used with this database);
    /// - otherwise the keys not recorded yet are recorded (the first use of a database; a
    ///   rotation that adds a new active key and keeps an old one as an older key), and
    ///   returned in [`KeyVerification::recorded`].
    ///
    /// A sealing ring that is not configured is not checked. Recorded checks are never
    /// changed or removed: an id keeps naming the same key for the life of the database. A
    /// refused call writes nothing. One read, plus one write when a key is new (a
    /// compare-and-set: if another process recorded keys in between, it reads and decides
    /// again). Writes no audit event.
    pub async fn verify_keys(&self) -> Result<KeyVerification> {
        let mine = self.configured_key_checks(self.now());
        for _ in 0..KEY_CHECK_ATTEMPTS {
            let stored = self.backend.key_checks().await?;
            let found = compare_key_checks(&stored, &mine)?;
            if found.recorded.is_empty() {
                return Ok(found);
            }
            if self
                .backend
                .add_key_checks(&stored, &found.recorded)
                .await?
            {
                for c in &found.recorded {
                    tracing::info!(
                        ring = %c.ring,
                        key_id = %c.key_id,
                        "recorded a key new to this database"
                    );
                }
                return Ok(found);
            }
        }
        Err(Error::backend(
            self.backend.backend_name(),
            true,
            "other processes kept recording keys while this one tried to: try again",
        ))
    }

    /// The key checks recorded for this database (see [`verify_keys`](Self::verify_keys)),
    /// ordered by ring name then key id.
    pub async fn key_checks(&self) -> Result<Vec<KeyCheck>> {
        self.backend.key_checks().await
    }

    /// The checks of the configured keys: the token ring's, then the sealing ring's.
    fn configured_key_checks(&self, at: Timestamp) -> Vec<KeyCheck> {
        let token = self.keys.keys().map(|k| KeyCheck {
            ring: KeyRingKind::Token,
            key_id: k.id().to_owned(),
            check: k.key_check(),
            recorded_at: at,
        });
        let sealing = self
            .sealing
            .iter()
            .flat_map(|r| r.keys())
            .map(|k| KeyCheck {
                ring: KeyRingKind::Sealing,
                key_id: k.id().to_owned(),
                check: k.key_check(),
                recorded_at: at,
            });
        token.chain(sealing).collect()
    }

    /// Deletes dead rows past the retention window in bounded batches (see
    /// [`Maintenance::cleanup`](crate::backend::Maintenance::cleanup)); returns counts.
    pub async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        if !(1..=100_000).contains(&options.batch_size) {
            return Err(Error::invalid("batch_size", "must be 1 to 100000"));
        }
        if options.max_batches == 0 {
            return Err(Error::invalid("max_batches", "must be at least 1"));
        }
        self.backend.cleanup(options, self.now()).await
    }

    /// What [`cleanup`](Self::cleanup) with the same `options.retention` would delete now if
    /// it had no batch or time bound, deleting nothing (see
    /// [`Maintenance::cleanup_preview`](crate::backend::Maintenance::cleanup_preview)): for
    /// `cleanup --dry-run`. `batch_size`, `max_batches` and `time_budget` are ignored;
    /// `retention` is taken as `cleanup` takes it (any duration: a cutoff before the start
    /// of representable time saturates). Writes nothing, not even an audit event.
    pub async fn cleanup_preview(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        self.backend.cleanup_preview(options, self.now()).await
    }

    /// Counts per kind and the database size where known.
    pub async fn stats(&self) -> Result<Stats> {
        self.backend.stats(self.now()).await
    }
}

/// The rule of [`Authstore::verify_keys`]: the configured keys (`mine`) against the recorded
/// ones, ring by ring (token first). A ring with no configured key is not checked.
fn compare_key_checks(stored: &[KeyCheck], mine: &[KeyCheck]) -> Result<KeyVerification> {
    let mut out = KeyVerification::default();
    for ring in [KeyRingKind::Token, KeyRingKind::Sealing] {
        let configured: Vec<&KeyCheck> = mine.iter().filter(|c| c.ring == ring).collect();
        if configured.is_empty() {
            continue;
        }
        let known: Vec<&KeyCheck> = stored.iter().filter(|c| c.ring == ring).collect();
        let mut any_known = false;
        for c in &configured {
            match known.iter().find(|k| k.key_id == c.key_id) {
                Some(k) if k.check == c.check => {
                    any_known = true;
                    out.matched.push((*k).clone());
                }
                Some(_) => {
                    return Err(Error::KeyMismatch {
                        ring,
                        key_id: c.key_id.clone(),
                    });
                }
                None => out.recorded.push((*c).clone()),
            }
        }
        if !known.is_empty() && !any_known {
            return Err(Error::KeysUnknown {
                ring,
                configured: configured.iter().map(|c| c.key_id.clone()).collect(),
                known: known.iter().map(|c| c.key_id.clone()).collect(),
            });
        }
    }
    Ok(out)
}

fn default_grant_types(new: &NewClient) -> BTreeSet<GrantType> {
    let mut g = BTreeSet::new();
    if new.redirect_uris.is_empty() {
        g.insert(GrantType::ClientCredentials);
    } else {
        g.insert(GrantType::AuthorizationCode);
        g.insert(GrantType::RefreshToken);
    }
    g
}

fn check_client_lifetimes(l: &TokenLifetimes) -> Result<()> {
    for (name, d) in [
        ("lifetimes.access_token", l.access_token),
        ("lifetimes.refresh_token", l.refresh_token),
        ("lifetimes.refresh_idle", l.refresh_idle),
        ("lifetimes.authorization_code", l.authorization_code),
    ] {
        if let Some(d) = d {
            check_lifetime(name, d)?;
        }
    }
    Ok(())
}

fn check_scope_within(requested: &Scopes, allowed: &Scopes, what: &str) -> Result<()> {
    if requested.is_subset(allowed) {
        return Ok(());
    }
    let extra: Vec<&str> = requested.iter().filter(|s| !allowed.contains(s)).collect();
    Err(Error::InvalidScope {
        reason: format!("{} exceed {what}", extra.join(" ")),
    })
}

fn check_code_binding(
    code: &AuthorizationCode,
    r: &CodeRedemption<'_>,
) -> std::result::Result<(), &'static str> {
    if code.client_id != r.client_id {
        return Err("the code was issued to another client");
    }
    match (r.redirect_uri, &code.code_challenge) {
        (Some(u), _) if !code.redirect_uri.matches(u) => {
            return Err("redirect_uri does not match the authorization request");
        }
        (None, None) => return Err("redirect_uri is required (the code was issued without PKCE)"),
        _ => {}
    }
    match (&code.code_challenge, r.code_verifier) {
        (Some(c), Some(v)) if c.verify(v) => Ok(()),
        (Some(_), Some(_)) => Err("PKCE verification failed"),
        (Some(_), None) => Err("code_verifier is required: a code_challenge was sent"),
        (None, Some(_)) => {
            Err("code_verifier sent for a code issued without code_challenge (PKCE downgrade)")
        }
        (None, None) => Ok(()),
    }
}

fn refresh_usable(s: &RefreshTokenState, now: Timestamp) -> bool {
    s.token.revoked_at.is_none()
        && s.grant.revoked_at.is_none()
        && !s.client_disabled
        && now < s.token.expires_at
        && now < s.token.idle_expires_at
}

fn token_type(cnf: &Option<SenderConstraint>) -> &'static str {
    match cnf {
        Some(SenderConstraint::DpopJkt(_)) => "DPoP",
        _ => "Bearer",
    }
}

/// The answer to a string that is not our token while foreign tokens are not accepted.
fn foreign_refused(kind: TokenKind) -> Error {
    Error::MalformedToken {
        kind: kind.name(),
        reason: "not minted by this deployment (enable Config::accept_foreign_tokens to look \
                 up tokens minted elsewhere)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compile-time proof that the façade's futures are `Send`, so they run under
    /// `tokio::spawn` and in axum handlers.
    #[allow(dead_code)] // never called: it only has to compile
    fn futures_are_send(s: &Authstore, o: &TokenOptions, c: ClientId) {
        fn send<T: Send>(_: T) {}
        send(s.validate_access_token(""));
        send(s.validate_pat(""));
        send(s.introspect_refresh_token(""));
        send(s.refresh(RefreshRequest {
            refresh_token: "",
            client_id: c,
            scope: None,
            options: o,
        }));
        send(s.redeem_code(CodeRedemption {
            code: "",
            client_id: c,
            redirect_uri: None,
            code_verifier: None,
            options: o,
        }));
        send(s.revoke_token("", None, None));
        send(s.issue_client_credentials(c, None, o));
        send(s.authorization_session(""));
        send(s.cleanup(&CleanupOptions::default()));
        send(s.verify_keys());
    }

    fn check(ring: KeyRingKind, id: &str, byte: u8) -> KeyCheck {
        KeyCheck {
            ring,
            key_id: id.to_owned(),
            check: [byte; 16],
            recorded_at: Timestamp::from_unix_micros(0),
        }
    }

    #[test]
    fn key_check_rules() {
        use KeyRingKind::{Sealing, Token};
        let t1 = check(Token, "k1", 1);
        let t2 = check(Token, "k2", 2);
        let s1 = check(Sealing, "s1", 3);
        // Fresh database: everything is new.
        let v = compare_key_checks(&[], &[t1.clone(), s1.clone()]).unwrap();
        assert_eq!(v.recorded, [t1.clone(), s1.clone()]);
        assert!(v.matched.is_empty());
        // Same keys again: all matched, nothing new.
        let stored = [s1.clone(), t1.clone()];
        let v = compare_key_checks(&stored, &[t1.clone(), s1.clone()]).unwrap();
        assert_eq!(v.matched, [t1.clone(), s1.clone()]);
        assert!(v.recorded.is_empty());
        // Another key under a known id.
        let e = compare_key_checks(&stored, &[check(Token, "k1", 9)]).unwrap_err();
        assert!(matches!(&e, Error::KeyMismatch { ring: Token, key_id } if key_id == "k1"));
        assert_eq!(e.code(), "AS0022");
        assert!(!e.is_temporary());
        // An older key under a known id that differs is refused too.
        assert!(matches!(
            compare_key_checks(&stored, &[t2.clone(), check(Token, "k1", 9)]),
            Err(Error::KeyMismatch { .. })
        ));
        // Only unknown ids.
        let e = compare_key_checks(&stored, std::slice::from_ref(&t2)).unwrap_err();
        assert!(
            matches!(&e, Error::KeysUnknown { ring: Token, configured, known }
                if configured == &["k2"] && known == &["k1"]),
            "{e:?}"
        );
        assert_eq!(e.code(), "AS0023");
        assert!(e.to_string().contains("\"k1\"") && e.to_string().contains("\"k2\""));
        // Rotation: new active, old kept.
        let v = compare_key_checks(&stored, &[t2.clone(), t1.clone()]).unwrap();
        assert_eq!(
            (v.matched, v.recorded),
            (vec![t1.clone()], vec![t2.clone()])
        );
        // No sealing ring configured: the recorded sealing checks are not looked at.
        let v = compare_key_checks(
            &[check(Sealing, "s1", 8), t1.clone()],
            std::slice::from_ref(&t1),
        )
        .unwrap();
        assert_eq!(v.matched.len(), 1);
        assert_eq!(v.matched[0], t1);
        // The sealing ring is checked like the token ring.
        assert!(matches!(
            compare_key_checks(&stored, &[t1.clone(), check(Sealing, "s1", 8)]),
            Err(Error::KeyMismatch { ring: Sealing, .. })
        ));
        assert!(matches!(
            compare_key_checks(&stored, &[t1, check(Sealing, "s2", 3)]),
            Err(Error::KeysUnknown { ring: Sealing, .. })
        ));
    }
}
