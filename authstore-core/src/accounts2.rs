//! The account-security half of [`Authstore`]: login sessions, one-time tokens, TOTP,
//! recovery codes, passkeys, linked accounts and resealing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::audit::AuditKind;
use crate::error::{Error, Result};
use crate::identity::{
    Ceremony, CeremonyKind, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId,
    OneTimePurpose, OneTimeToken, Passkey, SEALED_COLUMNS, TotpRecord, UserId, subject_of,
};
use crate::model::check_text;
use crate::seal::{SealContext, Sealed, SealingKeyring};
use crate::secret::{
    CeremonySecret, LoginSessionSecret, OneTimeTokenSecret, ProviderToken, RecoveryCode, TotpSecret,
};
use crate::store::Authstore;
use crate::time::Timestamp;
use crate::token::{TokenHash, TokenKind, random_bytes};

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;

/// What [`Authstore::reseal`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Values re-encrypted under the active key.
    pub resealed: u64,
    /// Values already under the active key.
    pub current: u64,
    /// Values that do not open (altered, moved to another row, or under a key missing from
    /// the ring): left as they are, counted here so an operator can look.
    pub unreadable: u64,
}

/// A passkey to register: what webauthn-rs gives after a successful registration.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPasskey {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// The user.
    pub user: UserId,
    /// A name for it (1 to 100 characters).
    pub name: String,
    /// The serialized webauthn-rs `Passkey`.
    pub credential: serde_json::Value,
    /// Its signature counter.
    pub counter: u32,
    /// Whether it is backed up.
    pub backup_state: bool,
}

fn user_ctx(user: UserId) -> [u8; 16] {
    *user.as_uuid().as_bytes()
}

impl Authstore {
    fn sealing(&self) -> Result<&Arc<SealingKeyring>> {
        self.sealing.as_ref().ok_or_else(|| Error::Config {
            reason: "no sealing keys configured: call Authstore::with_sealing_keys".into(),
        })
    }

    fn ev(&self, kind: AuditKind, user: UserId) -> crate::audit::AuditEvent {
        self.event(kind, self.now())
            .subject(Some(&subject_of(user)))
    }

    async fn active_user(&self, user: UserId) -> Result<crate::identity::User> {
        let u = self.user(user).await?;
        if !u.active {
            return Err(Error::InvalidCredentials);
        }
        Ok(u)
    }

    // ----- login sessions ---------------------------------------------------------------

    /// Starts a login session for an active user; returns it and its handle (the cookie
    /// value; only its keyed hash is stored).
    pub async fn create_login_session(
        &self,
        user: UserId,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(LoginSession, LoginSessionSecret)> {
        self.active_user(user).await?;
        if let Some(ua) = user_agent {
            check_text("user_agent", ua, 512)?;
        }
        let now = self.now();
        let l = &self.config.lifetimes;
        let expires_at = now.saturating_add(l.login_session);
        let session = LoginSession {
            id: LoginSessionId::new_at(now),
            user,
            created_at: now,
            last_seen_at: now,
            idle_expires_at: now.saturating_add(l.login_session_idle).min(expires_at),
            expires_at,
            ip,
            user_agent: user_agent.map(str::to_owned),
            revoked_at: None,
        };
        let (secret, hash) = self.mint(TokenKind::LoginSession)?;
        let ev = self
            .ev(AuditKind::LoginSessionCreated, user)
            .detail("session_id", session.id.to_string());
        let ev = match ip {
            Some(_) => crate::audit::AuditEvent { ip, ..ev },
            None => ev,
        };
        self.backend
            .insert_login_session(&hash, &session, ev)
            .await?;
        Ok((session, LoginSessionSecret::new(secret)))
    }

    /// Validates a login session (one hash, one read: unrevoked, within idle and absolute
    /// expiry, user active). Its use is buffered and written by
    /// [`flush_login_session_usage`](Self::flush_login_session_usage), which moves the idle
    /// expiry forward.
    pub async fn validate_login_session(&self, handle: &str) -> Result<LoginSession> {
        let now = self.now();
        let mut found = None;
        for h in self.candidates(TokenKind::LoginSession, handle)? {
            if let Some(s) = self.backend.find_login_session(&h, now).await? {
                found = Some(s);
                break;
            }
        }
        let s = found.ok_or(Error::Inactive {
            kind: TokenKind::LoginSession.name(),
        })?;
        let idle = now
            .saturating_add(self.config.lifetimes.login_session_idle)
            .min(s.expires_at);
        let mut buf = self.session_usage.lock().unwrap_or_else(|p| p.into_inner());
        let e = buf.entry(s.id).or_insert((now, idle));
        *e = (e.0.max(now), e.1.max(idle));
        Ok(s)
    }

    /// Writes buffered login-session use in one batch; returns how many.
    pub async fn flush_login_session_usage(&self) -> Result<usize> {
        let batch: Vec<(LoginSessionId, Timestamp, Timestamp)> = {
            let mut buf = self.session_usage.lock().unwrap_or_else(|p| p.into_inner());
            buf.drain()
                .map(|(id, (seen, idle))| (id, seen, idle))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.backend.touch_login_sessions(&batch).await {
            let mut buf = self.session_usage.lock().unwrap_or_else(|p| p.into_inner());
            for (id, seen, idle) in batch {
                let e = buf.entry(id).or_insert((seen, idle));
                *e = (e.0.max(seen), e.1.max(idle));
            }
            return Err(e);
        }
        Ok(batch.len())
    }

    /// A user's login sessions (with address and user agent), any state.
    pub async fn list_login_sessions(&self, user: UserId) -> Result<Vec<LoginSession>> {
        self.backend.list_login_sessions(user).await
    }

    /// Ends one session (logout); with `user`, only if it is theirs. [`Error::NotFound`]
    /// otherwise.
    pub async fn revoke_login_session(
        &self,
        id: LoginSessionId,
        user: Option<UserId>,
    ) -> Result<()> {
        let mut ev = self
            .event(AuditKind::LoginSessionRevoked, self.now())
            .detail("session_id", id.to_string());
        if let Some(u) = user {
            ev = ev.subject(Some(&subject_of(u)));
        }
        if self.backend.revoke_login_session(id, user, ev).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!("login session {id}")))
        }
    }

    /// Ends every session of a user (log out everywhere); returns how many.
    pub async fn revoke_all_login_sessions(&self, user: UserId) -> Result<u64> {
        self.backend
            .revoke_user_login_sessions(user, self.ev(AuditKind::LoginSessionsRevoked, user))
            .await
    }

    // ----- one-time tokens --------------------------------------------------------------

    /// Issues a one-time token (to send by email) and supersedes the user's older ones of
    /// the same purpose. An email verification token proves the user's current email.
    pub async fn issue_one_time_token(
        &self,
        user: UserId,
        purpose: OneTimePurpose,
    ) -> Result<(OneTimeToken, OneTimeTokenSecret)> {
        let u = self.active_user(user).await?;
        let email = match purpose {
            OneTimePurpose::EmailVerification => Some(
                u.email
                    .clone()
                    .ok_or_else(|| Error::invalid("email", "the user has no email to verify"))?,
            ),
            _ => None,
        };
        let l = &self.config.lifetimes;
        let ttl = match purpose {
            OneTimePurpose::PasswordReset => l.password_reset,
            OneTimePurpose::EmailVerification => l.email_verification,
            OneTimePurpose::MagicLink => l.magic_link,
        };
        let now = self.now();
        let token = OneTimeToken {
            user,
            purpose,
            email,
            issued_at: now,
            expires_at: now.saturating_add(ttl),
            consumed_at: None,
        };
        let (secret, hash) = self.mint(TokenKind::OneTimeToken)?;
        let ev = self
            .ev(AuditKind::OneTimeTokenIssued, user)
            .detail("purpose", purpose.as_str());
        self.backend
            .insert_one_time_token(&hash, &token, ev)
            .await?;
        Ok((token, OneTimeTokenSecret::new(secret)))
    }

    /// Uses a one-time token of `purpose`, exactly once (compare-and-set): of concurrent
    /// callers one gets it, the others [`Error::Inactive`]. An email verification token marks
    /// the email verified if it is still the user's email.
    pub async fn consume_one_time_token(
        &self,
        token: &str,
        purpose: OneTimePurpose,
    ) -> Result<OneTimeToken> {
        let now = self.now();
        for h in self.candidates(TokenKind::OneTimeToken, token)? {
            let ev = self
                .event(AuditKind::OneTimeTokenUsed, now)
                .detail("purpose", purpose.as_str());
            if let Some(t) = self.backend.consume_one_time_token(&h, purpose, ev).await? {
                let mut u = self.user(t.user).await?;
                if !u.active {
                    // A disabled user's outstanding links and resets are dead.
                    return Err(Error::Inactive {
                        kind: TokenKind::OneTimeToken.name(),
                    });
                }
                if let (OneTimePurpose::EmailVerification, Some(email)) = (purpose, &t.email) {
                    // Check and write from the same read: the stored pair (email, verified)
                    // is always one we saw together, so a concurrent email change can never
                    // get another address marked verified.
                    if u.email.as_deref() == Some(email.as_str()) && !u.email_verified {
                        u.email_verified = true;
                        u.updated_at = self.now();
                        let ev = self
                            .ev(AuditKind::UserUpdated, u.id)
                            .detail("email_verified", true);
                        self.backend.update_user(&u, ev).await?;
                    }
                }
                return Ok(t);
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::OneTimeToken.name(),
        })
    }

    // ----- TOTP -------------------------------------------------------------------------

    /// Enrols a user in TOTP: a fresh 160-bit secret, sealed at rest, returned once in
    /// base32 for the authenticator app (see [`totp_uri`](Self::totp_uri)). Re-enrolling
    /// replaces the old secret.
    pub async fn enroll_totp(&self, user: UserId) -> Result<TotpSecret> {
        let keys = self.sealing()?.clone();
        self.active_user(user).await?;
        let secret = random_bytes::<20>()?;
        let row = user_ctx(user);
        let sealed = keys.seal(
            secret.as_ref(),
            &SealContext {
                table: "totp",
                column: "secret",
                row: &row,
            },
        )?;
        let record = TotpRecord {
            secret: sealed,
            last_step: None,
            created_at: self.now(),
        };
        self.backend
            .set_totp(user, &record, self.ev(AuditKind::TotpEnrolled, user))
            .await?;
        Ok(TotpSecret::new(crate::totp::base32(secret.as_ref())))
    }

    /// The `otpauth://` URI an authenticator app scans (as a QR code).
    ///
    /// # Security
    ///
    /// It contains the secret: show it to its user once, never log it.
    pub fn totp_uri(issuer: &str, account: &str, secret: &TotpSecret) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
            enc(issuer),
            enc(account),
            secret.secret(),
            enc(issuer)
        )
    }

    /// Checks a TOTP code (one step of clock drift either way). A code is accepted once:
    /// the same or an earlier step again is refused (`false`), so a code seen over a
    /// shoulder cannot be replayed.
    pub async fn verify_totp(&self, user: UserId, code: &str) -> Result<bool> {
        let keys = self.sealing()?.clone();
        self.second_factor_allowed(user).await?;
        let Some(record) = self.backend.get_totp(user).await? else {
            return Ok(false);
        };
        let row = user_ctx(user);
        let secret = keys.open(
            &record.secret,
            &SealContext {
                table: "totp",
                column: "secret",
                row: &row,
            },
        )?;
        let now_step = crate::totp::step_at(self.now().as_unix_seconds());
        let accepted = match crate::totp::matching_step(&secret, code, now_step) {
            Some(step) => {
                self.backend
                    .use_totp_step(user, step, self.ev(AuditKind::TotpUsed, user))
                    .await?
            }
            None => false,
        };
        if accepted {
            self.second_factor_succeeded(user).await?;
        } else {
            self.second_factor_failed(user).await?;
        }
        Ok(accepted)
    }

    /// Removes a user's TOTP enrolment. [`Error::NotFound`] if there was none.
    pub async fn disable_totp(&self, user: UserId) -> Result<()> {
        if self
            .backend
            .delete_totp(user, self.ev(AuditKind::TotpRemoved, user))
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("TOTP enrolment"))
        }
    }

    // ----- recovery codes ---------------------------------------------------------------

    fn recovery_hash(&self, code: &str) -> Option<TokenHash> {
        let norm: String = code
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .collect::<String>()
            .to_ascii_uppercase();
        (norm.len() == 10 && norm.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| self.keys.hash(&format!("recovery:{norm}")))
    }

    /// Replaces a user's recovery codes with 10 new ones (50 bits each), returned once;
    /// only their keyed hashes are stored.
    pub async fn generate_recovery_codes(&self, user: UserId) -> Result<Vec<RecoveryCode>> {
        self.user(user).await?;
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let raw = random_bytes::<10>()?;
            let b32 = crate::totp::base32(raw.as_ref());
            let code = format!("{}-{}", &b32[..5], &b32[5..10]);
            if let Some(h) = self.recovery_hash(&code) {
                hashes.push(h);
            }
            codes.push(RecoveryCode::new(code));
        }
        self.backend
            .replace_recovery_codes(
                user,
                &hashes,
                self.ev(AuditKind::RecoveryCodesGenerated, user),
            )
            .await?;
        Ok(codes)
    }

    /// Uses one recovery code, exactly once. `false` for an unknown or used code.
    pub async fn use_recovery_code(&self, user: UserId, code: &str) -> Result<bool> {
        self.second_factor_allowed(user).await?;
        let used = match self.recovery_hash(code) {
            Some(h) => {
                self.backend
                    .use_recovery_code(user, &h, self.ev(AuditKind::RecoveryCodeUsed, user))
                    .await?
            }
            None => false,
        };
        if used {
            self.second_factor_succeeded(user).await?;
        } else {
            self.second_factor_failed(user).await?;
        }
        Ok(used)
    }

    /// Second factors are guessable (a TOTP guess hits 3 times in a million): refuse them for
    /// disabled users, and count their failures with the user's login failures, so
    /// [`LoginPolicy::max_user_failures`](crate::LoginPolicy::max_user_failures) within the
    /// window locks TOTP and recovery codes too.
    async fn second_factor_allowed(&self, user: UserId) -> Result<()> {
        self.active_user(user).await?;
        let policy = self.config.login;
        let counts = self
            .backend
            .login_failures(Some(user), None, self.now().saturating_sub(policy.window))
            .await?;
        if counts.user >= policy.max_user_failures {
            return Err(Error::TooManyAttempts {
                retry_after: policy.window,
            });
        }
        Ok(())
    }

    /// A second factor passed: the login is complete, so the user's failures (the
    /// password step's attempt row included) are cleared, as a password-only success does.
    async fn second_factor_succeeded(&self, user: UserId) -> Result<()> {
        let ev = self.ev(AuditKind::SecondFactorSucceeded, user);
        self.backend
            .record_login_attempt(Some(user), None, true, ev)
            .await
    }

    async fn second_factor_failed(&self, user: UserId) -> Result<()> {
        let ev = self.ev(AuditKind::SecondFactorFailed, user);
        self.backend
            .record_login_attempt(Some(user), None, false, ev)
            .await
    }

    /// How many unused recovery codes a user has left.
    pub async fn unused_recovery_codes(&self, user: UserId) -> Result<u32> {
        self.backend.unused_recovery_codes(user).await
    }

    // ----- passkeys ---------------------------------------------------------------------

    /// Registers a passkey (credential id unique across users).
    pub async fn register_passkey(&self, new: NewPasskey) -> Result<Passkey> {
        if new.credential_id.is_empty() || new.credential_id.len() > 1023 {
            return Err(Error::invalid("credential_id", "1 to 1023 bytes"));
        }
        check_text("passkey name", &new.name, 400)?;
        if new.name.chars().count() > 100 {
            return Err(Error::invalid("passkey name", "at most 100 characters"));
        }
        if !new.credential.is_object() || new.credential.to_string().len() > 64 * 1024 {
            return Err(Error::invalid(
                "credential",
                "a serialized webauthn-rs Passkey (JSON object, at most 64 KiB)",
            ));
        }
        self.active_user(new.user).await?;
        let passkey = Passkey {
            credential_id: new.credential_id,
            user: new.user,
            name: new.name,
            credential: new.credential,
            counter: new.counter,
            backup_state: new.backup_state,
            created_at: self.now(),
            last_used_at: None,
        };
        self.backend
            .insert_passkey(
                &passkey,
                self.ev(AuditKind::PasskeyRegistered, passkey.user),
            )
            .await?;
        Ok(passkey)
    }

    /// The passkey with this credential id. [`Error::NotFound`] if none.
    pub async fn passkey(&self, credential_id: &[u8]) -> Result<Passkey> {
        self.backend
            .find_passkey(credential_id)
            .await?
            .ok_or_else(|| Error::not_found("passkey"))
    }

    /// A user's passkeys.
    pub async fn list_passkeys(&self, user: UserId) -> Result<Vec<Passkey>> {
        self.backend.list_passkeys(user).await
    }

    /// Renames a user's passkey. [`Error::NotFound`] if they have none with this id.
    pub async fn rename_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        name: &str,
    ) -> Result<()> {
        check_text("passkey name", name, 400)?;
        if self
            .backend
            .rename_passkey(
                user,
                credential_id,
                name,
                self.ev(AuditKind::PasskeyRenamed, user),
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("passkey"))
        }
    }

    /// Records a successful passkey authentication: counter, backup state and, when
    /// webauthn-rs updated it, the credential.
    pub async fn record_passkey_use(
        &self,
        credential_id: &[u8],
        counter: u32,
        backup_state: bool,
        credential: Option<&serde_json::Value>,
    ) -> Result<()> {
        let p = self.passkey(credential_id).await?;
        let ev = self.ev(AuditKind::PasskeyUsed, p.user);
        if self
            .backend
            .update_passkey_use(credential_id, counter, backup_state, credential, ev)
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("passkey"))
        }
    }

    /// Removes a user's passkey. [`Error::NotFound`] if they have none with this id.
    pub async fn delete_passkey(&self, user: UserId, credential_id: &[u8]) -> Result<()> {
        if self
            .backend
            .delete_passkey(
                user,
                credential_id,
                self.ev(AuditKind::PasskeyRemoved, user),
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("passkey"))
        }
    }

    /// Stores WebAuthn ceremony state (the serialized webauthn-rs `PasskeyRegistration` or
    /// `PasskeyAuthentication`) for a short time; returns its single-use handle.
    pub async fn start_ceremony(
        &self,
        kind: CeremonyKind,
        user: Option<UserId>,
        state: serde_json::Value,
    ) -> Result<CeremonySecret> {
        if state.to_string().len() > 64 * 1024 {
            return Err(Error::invalid("ceremony state", "at most 64 KiB"));
        }
        let ceremony = Ceremony {
            kind,
            user,
            state,
            expires_at: self.now().saturating_add(self.config.lifetimes.ceremony),
        };
        let (secret, hash) = self.mint(TokenKind::Ceremony)?;
        self.backend.insert_ceremony(&hash, &ceremony).await?;
        Ok(CeremonySecret::new(secret))
    }

    /// Takes ceremony state, exactly once, if unexpired and of `kind`; else
    /// [`Error::Inactive`].
    pub async fn finish_ceremony(&self, handle: &str, kind: CeremonyKind) -> Result<Ceremony> {
        let now = self.now();
        for h in self.candidates(TokenKind::Ceremony, handle)? {
            if let Some(c) = self.backend.take_ceremony(&h, now).await? {
                if c.kind == kind {
                    return Ok(c);
                }
                break;
            }
        }
        Err(Error::Inactive {
            kind: TokenKind::Ceremony.name(),
        })
    }

    // ----- linked accounts --------------------------------------------------------------

    fn seal_provider(
        &self,
        id: LinkedAccountId,
        column: &'static str,
        t: Option<&ProviderToken>,
    ) -> Result<Option<Sealed>> {
        match t {
            None => Ok(None),
            Some(t) => {
                check_text("provider token", t.secret(), 16 * 1024)?;
                let row = *id.as_uuid().as_bytes();
                self.sealing()?
                    .seal_str(
                        t.secret(),
                        &SealContext {
                            table: "linked_accounts",
                            column,
                            row: &row,
                        },
                    )
                    .map(Some)
            }
        }
    }

    /// Links a third-party account to a user; the provider's tokens are sealed at rest.
    pub async fn link_account(
        &self,
        user: UserId,
        provider: &str,
        provider_subject: &str,
        access_token: Option<&ProviderToken>,
        refresh_token: Option<&ProviderToken>,
        token_expires_at: Option<Timestamp>,
    ) -> Result<LinkedAccount> {
        check_text("provider", provider, 64)?;
        check_text("provider_subject", provider_subject, 255)?;
        self.user(user).await?;
        let now = self.now();
        let id = LinkedAccountId::new_at(now);
        let account = LinkedAccount {
            id,
            provider: provider.to_owned(),
            provider_subject: provider_subject.to_owned(),
            user,
            access_token: self.seal_provider(id, "access_token", access_token)?,
            refresh_token: self.seal_provider(id, "refresh_token", refresh_token)?,
            token_expires_at,
            created_at: now,
            updated_at: now,
        };
        let ev = self
            .ev(AuditKind::AccountLinked, user)
            .detail("provider", provider);
        self.backend.insert_linked_account(&account, ev).await?;
        Ok(account)
    }

    /// The account linked as (provider, provider subject). [`Error::NotFound`] if none.
    pub async fn linked_account(
        &self,
        provider: &str,
        provider_subject: &str,
    ) -> Result<LinkedAccount> {
        self.backend
            .find_linked_account(provider, provider_subject)
            .await?
            .ok_or_else(|| Error::not_found("linked account"))
    }

    /// A user's linked accounts.
    pub async fn list_linked_accounts(&self, user: UserId) -> Result<Vec<LinkedAccount>> {
        self.backend.list_linked_accounts(user).await
    }

    /// Opens a linked account's provider tokens (access, refresh).
    pub fn provider_tokens(
        &self,
        account: &LinkedAccount,
    ) -> Result<(Option<ProviderToken>, Option<ProviderToken>)> {
        let keys = self.sealing()?;
        let row = *account.id.as_uuid().as_bytes();
        let open = |column: &'static str, v: &Option<Sealed>| -> Result<Option<ProviderToken>> {
            match v {
                None => Ok(None),
                Some(s) => {
                    let mut text = keys.open_str(
                        s,
                        &SealContext {
                            table: "linked_accounts",
                            column,
                            row: &row,
                        },
                    )?;
                    Ok(Some(ProviderToken::new(std::mem::take(&mut *text))))
                }
            }
        };
        Ok((
            open("access_token", &account.access_token)?,
            open("refresh_token", &account.refresh_token)?,
        ))
    }

    /// Replaces a linked account's provider tokens (after the provider refreshed them).
    pub async fn update_provider_tokens(
        &self,
        account: &LinkedAccount,
        access_token: Option<&ProviderToken>,
        refresh_token: Option<&ProviderToken>,
        token_expires_at: Option<Timestamp>,
    ) -> Result<()> {
        let a = self.seal_provider(account.id, "access_token", access_token)?;
        let r = self.seal_provider(account.id, "refresh_token", refresh_token)?;
        let ev = self
            .ev(AuditKind::LinkedTokensUpdated, account.user)
            .detail("provider", account.provider.clone());
        if self
            .backend
            .update_linked_tokens(account.id, a.as_ref(), r.as_ref(), token_expires_at, ev)
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found("linked account"))
        }
    }

    /// Unlinks an account; with `user`, only if it is theirs. [`Error::NotFound`] otherwise.
    pub async fn unlink_account(&self, id: LinkedAccountId, user: Option<UserId>) -> Result<()> {
        let mut ev = self
            .event(AuditKind::AccountUnlinked, self.now())
            .detail("linked_account_id", id.to_string());
        if let Some(u) = user {
            ev = ev.subject(Some(&subject_of(u)));
        }
        if self.backend.delete_linked_account(id, user, ev).await? {
            Ok(())
        } else {
            Err(Error::not_found("linked account"))
        }
    }

    // ----- reseal -----------------------------------------------------------------------

    /// Re-encrypts every sealed value (TOTP secrets, provider tokens) under the active
    /// sealing key, in batches of `batch_size`, each value by compare-and-set (a value
    /// changed meanwhile is left to the next run). Run it after adding a new active key;
    /// once it reports nothing left to reseal, the old key can be removed. It writes no
    /// audit event per value: re-encryption changes no secret, only the key it is under.
    pub async fn reseal(&self, batch_size: u32) -> Result<ResealReport> {
        if !(1..=10_000).contains(&batch_size) {
            return Err(Error::invalid("batch_size", "must be 1 to 10000"));
        }
        let keys = self.sealing()?.clone();
        let mut report = ResealReport::default();
        for (table, column) in SEALED_COLUMNS {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self
                    .backend
                    .sealed_values(table, column, after.as_deref(), batch_size)
                    .await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.row.clone());
                let full = page.len() as u32 == batch_size;
                for (at, old) in page {
                    match keys.reseal(&old, &at.context()) {
                        Ok(Some(new)) => {
                            if self.backend.replace_sealed(&at, &old, &new).await? {
                                report.resealed += 1;
                            }
                        }
                        Ok(None) => report.current += 1,
                        Err(Error::SealedValueInvalid { .. } | Error::SealingKeyUnknown { .. }) => {
                            report.unreadable += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(feature = "webauthn")]
mod webauthn_types {
    use super::*;

    fn json_err(e: serde_json::Error) -> Error {
        Error::invalid("passkey", format!("not a webauthn-rs Passkey ({e})"))
    }

    impl NewPasskey {
        /// A passkey to register from what webauthn-rs' `finish_passkey_registration`
        /// returned.
        pub fn from_webauthn(
            user: UserId,
            name: impl Into<String>,
            passkey: &webauthn_rs::prelude::Passkey,
        ) -> Result<Self> {
            let credential = serde_json::to_value(passkey).map_err(json_err)?;
            let inner = &credential["cred"];
            Ok(Self {
                credential_id: AsRef::<[u8]>::as_ref(passkey.cred_id()).to_vec(),
                user,
                name: name.into(),
                counter: inner["counter"]
                    .as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0),
                backup_state: inner["backup_state"].as_bool().unwrap_or(false),
                credential,
            })
        }
    }

    impl Passkey {
        /// The stored credential as the webauthn-rs type (for
        /// `start_passkey_authentication`).
        pub fn to_webauthn(&self) -> Result<webauthn_rs::prelude::Passkey> {
            serde_json::from_value(self.credential.clone()).map_err(json_err)
        }
    }

    impl Authstore {
        /// Records a successful passkey authentication from webauthn-rs'
        /// `finish_passkey_authentication` result: the credential is updated as
        /// webauthn-rs says (counter, backup state) and stored with them.
        pub async fn record_passkey_authentication(
            &self,
            result: &webauthn_rs::prelude::AuthenticationResult,
        ) -> Result<()> {
            let id: &[u8] = result.cred_id().as_ref();
            let mut passkey = self.passkey(id).await?.to_webauthn()?;
            passkey.update_credential(result);
            let credential = serde_json::to_value(&passkey).map_err(json_err)?;
            self.record_passkey_use(
                id,
                result.counter(),
                result.backup_state(),
                Some(&credential),
            )
            .await
        }

        /// A user's passkeys as webauthn-rs types (to start an authentication).
        pub async fn webauthn_passkeys(
            &self,
            user: UserId,
        ) -> Result<Vec<webauthn_rs::prelude::Passkey>> {
            self.list_passkeys(user)
                .await?
                .iter()
                .map(Passkey::to_webauthn)
                .collect()
        }
    }
}
