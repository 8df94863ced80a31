//! The identity half of [`Authstore`]: users, groups, passwords and logins.

use std::net::IpAddr;
use std::sync::Arc;

use crate::audit::AuditKind;
use crate::error::{Error, Result};
use crate::identity::{
    Group, GroupId, NewUser, User, UserId, UserUpdate, check_email, check_group_name,
    check_username, fold_case,
};
use crate::password::{PasswordHasher, Verification};
use crate::secret::Password;
use crate::store::Authstore;

/// Runs CPU-heavy work (Argon2id) on a blocking thread when a Tokio runtime is there, so it
/// never stalls an async worker; inline otherwise.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|e| Error::backend("authstore", false, e)),
        Err(_) => Ok(f()),
    }
}

impl Authstore {
    /// The password hasher, built on first use on a blocking thread.
    async fn hasher(&self) -> Result<Arc<PasswordHasher>> {
        if let Some(h) = self.passwords.get() {
            return Ok(h.clone());
        }
        let params = self.config.password_params;
        let weak = self.config.danger_allow_weak_password_params;
        let h = blocking(move || {
            if weak {
                PasswordHasher::danger_weak_params_for_tests(params)
            } else {
                PasswordHasher::new(params)
            }
        })
        .await??;
        let h = Arc::new(h);
        // Two first callers may race; either hasher is as good as the other.
        let _ = self.passwords.set(h.clone());
        Ok(h)
    }

    /// How many Argon2id password verifications this store has run (for metrics; every
    /// login runs exactly one, whether the user exists or not).
    pub async fn password_verifications(&self) -> Result<u64> {
        Ok(self.hasher().await?.verifications())
    }

    // ----- users ----------------------------------------------------------------------

    /// Creates a user (username and email unique case-insensitively).
    pub async fn create_user(&self, new: NewUser) -> Result<User> {
        let now = self.now();
        let user = User {
            id: UserId::new_at(now),
            username: new.username,
            email: new.email,
            email_verified: false,
            active: true,
            metadata: match new.metadata {
                serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
                v => v,
            },
            created_at: now,
            updated_at: now,
        };
        user.validate()?;
        let ev = self
            .event(AuditKind::UserCreated, now)
            .subject(Some(&user.subject()));
        self.backend.insert_user(&user, ev).await?;
        Ok(user)
    }

    /// The user. [`Error::NotFound`] if there is none.
    pub async fn user(&self, id: UserId) -> Result<User> {
        self.backend
            .get_user(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("user {id}")))
    }

    /// The user with this username (case-insensitive). [`Error::NotFound`] if none.
    pub async fn user_by_username(&self, username: &str) -> Result<User> {
        check_username(username)?;
        self.backend
            .find_user_by_username(&fold_case(username))
            .await?
            .ok_or_else(|| Error::not_found("user with that username"))
    }

    /// The user with this email (case-insensitive). [`Error::NotFound`] if none.
    pub async fn user_by_email(&self, email: &str) -> Result<User> {
        check_email(email)?;
        self.backend
            .find_user_by_email(&fold_case(email))
            .await?
            .ok_or_else(|| Error::not_found("user with that email"))
    }

    /// Changes a user. A new email is unverified unless the update says otherwise.
    pub async fn update_user(&self, id: UserId, update: UserUpdate) -> Result<User> {
        let mut u = self.user(id).await?;
        if let Some(v) = update.username {
            u.username = v;
        }
        if let Some(v) = update.email {
            if v != u.email {
                u.email_verified = false;
            }
            u.email = v;
        }
        if let Some(v) = update.email_verified {
            u.email_verified = v;
        }
        if let Some(v) = update.metadata {
            u.metadata = v;
        }
        u.validate()?;
        let now = self.now();
        u.updated_at = now;
        let ev = self
            .event(AuditKind::UserUpdated, now)
            .subject(Some(&u.subject()));
        self.backend.update_user(&u, ev).await?;
        self.user(id).await
    }

    /// Disables a user: no more logins, and every grant and personal access token they hold
    /// is revoked at once. Enabling them again does not bring those back.
    pub async fn disable_user(&self, id: UserId) -> Result<User> {
        let now = self.now();
        let ev = self
            .event(AuditKind::UserDisabled, now)
            .subject(Some(&crate::identity::subject_of(id)));
        self.backend.set_user_active(id, false, ev).await?;
        self.user(id).await
    }

    /// Enables a disabled user again.
    pub async fn enable_user(&self, id: UserId) -> Result<User> {
        let now = self.now();
        let ev = self
            .event(AuditKind::UserEnabled, now)
            .subject(Some(&crate::identity::subject_of(id)));
        self.backend.set_user_active(id, true, ev).await?;
        self.user(id).await
    }

    /// Erases a user and everything they own: memberships, password, login failures, grants
    /// with their codes and tokens, personal access tokens, consents, authorization
    /// sessions (the right to erasure). The audit log keeps their id. [`Error::NotFound`] if
    /// there is no such user.
    pub async fn delete_user(&self, id: UserId) -> Result<()> {
        let now = self.now();
        let ev = self
            .event(AuditKind::UserDeleted, now)
            .subject(Some(&crate::identity::subject_of(id)));
        if self.backend.delete_user(id, ev).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!("user {id}")))
        }
    }

    /// Users ordered by id after `after`, at most `limit` (1 to 1000); with `search`, only
    /// those whose username or email contains it (case-insensitive).
    pub async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
        search: Option<&str>,
    ) -> Result<Vec<User>> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be 1 to 1000"));
        }
        let folded = match search {
            Some(s) => {
                crate::model::check_text("search", s, 254)?;
                Some(fold_case(s))
            }
            None => None,
        };
        self.backend
            .list_users(after, limit, folded.as_deref())
            .await
    }

    // ----- groups ---------------------------------------------------------------------

    /// Creates a group (name unique case-insensitively).
    pub async fn create_group(&self, name: &str) -> Result<Group> {
        check_group_name(name)?;
        let now = self.now();
        let group = Group {
            id: GroupId::new_at(now),
            name: name.to_owned(),
            created_at: now,
        };
        let ev = self
            .event(AuditKind::GroupCreated, now)
            .detail("group_id", group.id.to_string());
        self.backend.insert_group(&group, ev).await?;
        Ok(group)
    }

    /// The group. [`Error::NotFound`] if none.
    pub async fn group(&self, id: GroupId) -> Result<Group> {
        self.backend
            .get_group(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("group {id}")))
    }

    /// Renames a group.
    pub async fn rename_group(&self, id: GroupId, name: &str) -> Result<Group> {
        check_group_name(name)?;
        let now = self.now();
        let ev = self
            .event(AuditKind::GroupRenamed, now)
            .detail("group_id", id.to_string());
        self.backend.rename_group(id, name, ev).await?;
        self.group(id).await
    }

    /// Deletes a group and its memberships. [`Error::NotFound`] if none.
    pub async fn delete_group(&self, id: GroupId) -> Result<()> {
        let now = self.now();
        let ev = self
            .event(AuditKind::GroupDeleted, now)
            .detail("group_id", id.to_string());
        if self.backend.delete_group(id, ev).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!("group {id}")))
        }
    }

    /// Adds a user to a group; `false` if they were a member already.
    pub async fn add_group_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let now = self.now();
        let ev = self
            .event(AuditKind::GroupMemberAdded, now)
            .subject(Some(&crate::identity::subject_of(user)))
            .detail("group_id", group.to_string());
        self.backend.add_group_member(group, user, ev).await
    }

    /// Removes a user from a group; `false` if they were not a member.
    pub async fn remove_group_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let now = self.now();
        let ev = self
            .event(AuditKind::GroupMemberRemoved, now)
            .subject(Some(&crate::identity::subject_of(user)))
            .detail("group_id", group.to_string());
        self.backend.remove_group_member(group, user, ev).await
    }

    /// A user's groups, by name.
    pub async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        self.backend.user_groups(user).await
    }

    /// A group's members, by id.
    pub async fn group_members(&self, group: GroupId) -> Result<Vec<User>> {
        self.backend.group_members(group).await
    }

    // ----- passwords and logins -------------------------------------------------------

    /// Sets a user's password (NIST length policy; Argon2id on a blocking thread). With
    /// `revoke_grants`, every grant and personal access token the user holds is revoked in
    /// the same transaction ("log out everywhere" after a password change). Clears the
    /// user's failed-login count.
    pub async fn set_password(
        &self,
        user: UserId,
        password: &Password,
        revoke_grants: bool,
    ) -> Result<()> {
        PasswordHasher::check_policy(password)?;
        let hasher = self.hasher().await?;
        let pw = password.clone();
        let hash = blocking(move || hasher.hash(&pw)).await??;
        let now = self.now();
        let ev = self
            .event(AuditKind::PasswordSet, now)
            .subject(Some(&crate::identity::subject_of(user)))
            .detail("revoke_grants", revoke_grants);
        self.backend
            .set_password_hash(user, &hash, revoke_grants, ev)
            .await
    }

    /// Logs a user in by username or email (case-insensitive) and password.
    ///
    /// Unknown user, wrong password, disabled user and no password set are one answer,
    /// [`Error::InvalidCredentials`], and cost the same: an unknown user is verified against
    /// a hash with the live parameters. More than [`LoginPolicy::max_user_failures`] failures
    /// for the user, or [`LoginPolicy::max_source_failures`] from `source`, within the window
    /// give [`Error::TooManyAttempts`] until the window passes. A success with a hash made
    /// under older parameters re-hashes the password. Every attempt is audited, never with
    /// the password (nor, for unknown users, the identifier typed, which is often a
    /// password typed into the wrong field).
    ///
    /// For a user with TOTP enrolled, a right password is only the first half: the caller
    /// must then check [`verify_totp`](Self::verify_totp) or
    /// [`use_recovery_code`](Self::use_recovery_code), and until one succeeds this attempt
    /// keeps counting as a failure (so retyping the password cannot reset the second
    /// factor's lockout).
    ///
    /// [`LoginPolicy::max_user_failures`]: crate::LoginPolicy::max_user_failures
    /// [`LoginPolicy::max_source_failures`]: crate::LoginPolicy::max_source_failures
    pub async fn login(
        &self,
        identifier: &str,
        password: &Password,
        source: Option<IpAddr>,
    ) -> Result<User> {
        let hasher = self.hasher().await?;
        let now = self.now();
        let user = self.find_login_user(identifier).await?;
        let policy = self.config.login;
        let counts = self
            .backend
            .login_failures(
                user.as_ref().map(|u| u.id),
                source,
                now.saturating_sub(policy.window),
            )
            .await?;
        let subject = user.as_ref().map(User::subject);
        if counts.user >= policy.max_user_failures || counts.source >= policy.max_source_failures {
            let ev = with_source(
                self.event(AuditKind::LoginLocked, now)
                    .subject(subject.as_ref()),
                source,
            );
            self.backend
                .record_login_attempt(user.as_ref().map(|u| u.id), source, false, ev)
                .await?;
            return Err(Error::TooManyAttempts {
                retry_after: policy.window,
            });
        }
        // Record this attempt against the user *before* verifying, then count again:
        // concurrent guesses see each other's rows, so at most `max_user_failures` of them can
        // reach the password check in a window, however many run at once. A success detaches
        // the row again (`record_login_attempt(.., true, ..)`).
        if let Some(u) = &user {
            let ev = with_source(
                self.event(AuditKind::LoginAttempted, now)
                    .subject(subject.as_ref()),
                source,
            );
            self.backend
                .record_login_attempt(Some(u.id), None, false, ev)
                .await?;
            let counts = self
                .backend
                .login_failures(Some(u.id), None, now.saturating_sub(policy.window))
                .await?;
            if counts.user > policy.max_user_failures {
                return Err(Error::TooManyAttempts {
                    retry_after: policy.window,
                });
            }
        }
        let stored = match &user {
            Some(u) if u.active => self.backend.get_password_hash(u.id).await?,
            _ => None,
        };
        let pw = password.clone();
        let h = hasher.clone();
        let verdict = blocking(move || match stored {
            Some(stored) => h.verify(&pw, &stored).map(|v| (v, Some(pw))),
            None => Ok((h.verify_unknown_user(&pw), None)),
        })
        .await??;
        let (verification, typed) = verdict;
        match (verification, user) {
            (Verification::Valid { needs_rehash }, Some(u)) => {
                if let (true, Some(pw)) = (needs_rehash, typed) {
                    let h = hasher.clone();
                    let hash = blocking(move || h.rehash(&pw)).await??;
                    let ev = self
                        .event(AuditKind::PasswordSet, now)
                        .subject(Some(&u.subject()))
                        .detail("rehash", true);
                    self.backend
                        .set_password_hash(u.id, &hash, false, ev)
                        .await?;
                }
                // With a second factor enrolled, the password alone is half a login: the
                // attempt row recorded above stays counted against the user until
                // `verify_totp` or `use_recovery_code` succeeds. Otherwise someone who knows
                // the password could clear the second factor's failures by typing it again.
                let second_factor = self.backend.get_totp(u.id).await?.is_some();
                let ev = with_source(
                    self.event(AuditKind::LoginSucceeded, now)
                        .subject(Some(&u.subject()))
                        .detail("second_factor_pending", second_factor),
                    source,
                );
                let detach = if second_factor { None } else { Some(u.id) };
                self.backend
                    .record_login_attempt(detach, source, true, ev)
                    .await?;
                Ok(u)
            }
            _ => {
                let ev = with_source(
                    self.event(AuditKind::LoginFailed, now)
                        .subject(subject.as_ref()),
                    source,
                );
                // The user's failure is the attempt row recorded above; this row counts
                // against the source.
                self.backend
                    .record_login_attempt(None, source, false, ev)
                    .await?;
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// The user an identifier names: a username, else (if it looks like one) an email.
    /// Identifiers that cannot be either name nobody.
    async fn find_login_user(&self, identifier: &str) -> Result<Option<User>> {
        if check_username(identifier).is_ok() {
            if let Some(u) = self
                .backend
                .find_user_by_username(&fold_case(identifier))
                .await?
            {
                return Ok(Some(u));
            }
        }
        if check_email(identifier).is_ok() {
            return self
                .backend
                .find_user_by_email(&fold_case(identifier))
                .await;
        }
        Ok(None)
    }
}

/// The source of a login attempt, when the caller knows it better than the audit context.
fn with_source(mut ev: crate::audit::AuditEvent, ip: Option<IpAddr>) -> crate::audit::AuditEvent {
    if ip.is_some() {
        ev.ip = ip;
    }
    ev
}
