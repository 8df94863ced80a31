//! [`AccountStore`] on [`SqliteStore`]: login sessions, one-time tokens, TOTP, recovery
//! codes, passkeys, WebAuthn ceremonies and linked accounts (schema 3).
//!
//! Every record references its user by foreign key with `ON DELETE CASCADE`, so erasing a
//! user erases them in the same statement. A record for a user who does not exist is
//! refused with [`Error::NotFound`] after an explicit check in the writing transaction (a
//! foreign key failure would be an opaque backend error). Single-use operations (consuming
//! a one-time token, a TOTP step, a recovery code, a ceremony) are each one conditional
//! statement, so of concurrent callers exactly one wins. Sealed values are stored as their
//! bytes and never opened here.

use async_trait::async_trait;
use authstore_core::backend::AccountStore;
use authstore_core::identity::{SealedRef, subject_of};
use authstore_core::{
    AuditEvent, Ceremony, Error, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId,
    OneTimePurpose, OneTimeToken, Passkey, Result, Sealed, Timestamp, TokenHash, TotpRecord,
    UserId,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::SqliteStore;
use crate::db::R;
use crate::identity::{user_exists, user_not_found};
use crate::rows::{
    self, ceremony_cols, linked_cols, login_session_cols, one_time_cols, passkey_cols, totp_cols,
};
use crate::stores::{Bytes, insert_audit, opt_us, us};

/// The most login session touches in one transaction; a longer flush runs off the async
/// worker, one transaction per chunk.
const TOUCH_CHUNK: usize = 500;

/// Refuses a record for a user who does not exist.
fn require_user(tx: &Connection, user: UserId) -> R<()> {
    if !user_exists(tx, user)? {
        return Err(user_not_found(user).into());
    }
    Ok(())
}

/// The event with its subject set to `user`'s when the caller left it unset (the caller may
/// know only a hash or an id).
fn about(mut audit: AuditEvent, user: UserId) -> AuditEvent {
    if audit.subject.is_none() {
        audit.subject = Some(subject_of(user));
    }
    audit
}

fn touch_chunk(tx: &Connection, touches: &[(LoginSessionId, Timestamp, Timestamp)]) -> R<()> {
    // Later values win; the idle deadline never passes the absolute one.
    let mut stmt = tx.prepare_cached(
        "UPDATE login_sessions SET last_seen_at = max(last_seen_at, ?2),
             idle_expires_at = min(max(idle_expires_at, ?3), expires_at)
         WHERE id = ?1",
    )?;
    for (id, seen, idle) in touches {
        stmt.execute(params![id.b(), us(*seen), us(*idle)])?;
    }
    Ok(())
}

/// A sealed column's statements: `(select, replace)`. `select` takes `?1` the row id bytes
/// to start after and `?2` the limit, and returns `(row id, value)` in row id order, nulls
/// skipped; `replace` takes `?1` row id, `?2` old value, `?3` new value. Fixed strings
/// picked by the pair: identifiers are never built from input.
fn sealed_sql(
    table: &str,
    column: &str,
) -> Result<(&'static str, &'static str, &'static str, &'static str)> {
    Ok(match (table, column) {
        ("totp", "secret") => (
            "totp",
            "secret",
            "SELECT user_id, secret FROM totp
             WHERE user_id > ?1 AND secret IS NOT NULL ORDER BY user_id LIMIT ?2",
            "UPDATE totp SET secret = ?3 WHERE user_id = ?1 AND secret = ?2",
        ),
        ("linked_accounts", "access_token") => (
            "linked_accounts",
            "access_token",
            "SELECT id, access_token FROM linked_accounts
             WHERE id > ?1 AND access_token IS NOT NULL ORDER BY id LIMIT ?2",
            "UPDATE linked_accounts SET access_token = ?3 WHERE id = ?1 AND access_token = ?2",
        ),
        ("linked_accounts", "refresh_token") => (
            "linked_accounts",
            "refresh_token",
            "SELECT id, refresh_token FROM linked_accounts
             WHERE id > ?1 AND refresh_token IS NOT NULL ORDER BY id LIMIT ?2",
            "UPDATE linked_accounts SET refresh_token = ?3 WHERE id = ?1 AND refresh_token = ?2",
        ),
        _ => {
            return Err(Error::invalid(
                "sealed column",
                format!("{table}.{column} is not a sealed column"),
            ));
        }
    })
}

#[async_trait]
impl AccountStore for SqliteStore {
    // ----- login sessions -----

    async fn insert_login_session(
        &self,
        hash: &TokenHash,
        session: &LoginSession,
        audit: AuditEvent,
    ) -> Result<()> {
        let ip = session.ip.map(|ip| ip.to_string());
        self.inner
            .write(|tx| {
                require_user(tx, session.user)?;
                tx.prepare_cached(
                    "INSERT INTO login_sessions (hash, id, user_id, created_at, last_seen_at,
                         idle_expires_at, expires_at, ip, user_agent, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    hash.b(),
                    session.id.b(),
                    session.user.b(),
                    us(session.created_at),
                    us(session.last_seen_at),
                    us(session.idle_expires_at),
                    us(session.expires_at),
                    ip,
                    session.user_agent.as_deref(),
                    opt_us(session.revoked_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn find_login_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<LoginSession>> {
        // One statement, no write: the user's `active` flag by a correlated primary-key
        // subquery (NULL, so false, when the user is gone), as for access tokens.
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    login_session_cols!(),
                    " FROM login_sessions AS s
                     WHERE s.hash = ?1 AND s.revoked_at IS NULL
                       AND s.expires_at > ?2 AND s.idle_expires_at > ?2
                       AND (SELECT u.active = 1 FROM users AS u WHERE u.id = s.user_id)"
                ))?
                .query_row(params![hash.b(), us(now)], rows::login_session)
                .optional()?)
        })
    }

    async fn touch_login_sessions(
        &self,
        touches: &[(LoginSessionId, Timestamp, Timestamp)],
    ) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        if touches.len() <= TOUCH_CHUNK {
            // A short flush: one transaction, inline.
            return self.inner.write(|tx| touch_chunk(tx, touches)).await;
        }
        // A long one: on a blocking thread, in bounded transactions, taking the writer gate
        // per chunk so other writers interleave.
        let touches = touches.to_vec();
        self.blocking(move |inner| {
            for chunk in touches.chunks(TOUCH_CHUNK) {
                let gate = inner.gate_blocking()?;
                inner.write_gated(&gate, |tx| touch_chunk(tx, chunk))?;
            }
            Ok(())
        })
        .await
    }

    async fn list_login_sessions(&self, user: UserId) -> Result<Vec<LoginSession>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(concat!(
                        "SELECT ",
                        login_session_cols!(),
                        " FROM login_sessions WHERE user_id = ?1 ORDER BY id"
                    ))?
                    .query_map([user.b()], rows::login_session)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn revoke_login_session(
        &self,
        id: LoginSessionId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let owner = tx
                    .prepare_cached(
                        "UPDATE login_sessions SET revoked_at = ?2
                         WHERE id = ?1 AND revoked_at IS NULL AND (?3 IS NULL OR user_id = ?3)
                         RETURNING user_id",
                    )?
                    .query_row(
                        params![id.b(), us(audit.at), user.as_ref().map(Bytes::b)],
                        |r| rows::user_id(r, 0),
                    )
                    .optional()?;
                let Some(owner) = owner else {
                    return Ok(false);
                };
                insert_audit(tx, &about(audit, owner))?;
                Ok(true)
            })
            .await
    }

    async fn revoke_user_login_sessions(&self, user: UserId, audit: AuditEvent) -> Result<u64> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE login_sessions SET revoked_at = ?2
                         WHERE user_id = ?1 AND revoked_at IS NULL",
                    )?
                    .execute(params![user.b(), us(audit.at)])?;
                if n > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(n as u64)
            })
            .await
    }

    // ----- one-time tokens -----

    async fn insert_one_time_token(
        &self,
        hash: &TokenHash,
        token: &OneTimeToken,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                require_user(tx, token.user)?;
                // Supersede the older ones first; a conflicting insert rolls this back too.
                tx.prepare_cached(
                    "UPDATE one_time_tokens SET consumed_at = ?3
                     WHERE user_id = ?1 AND purpose = ?2 AND consumed_at IS NULL",
                )?
                .execute(params![
                    token.user.b(),
                    token.purpose.as_str(),
                    us(audit.at)
                ])?;
                tx.prepare_cached(
                    "INSERT INTO one_time_tokens (hash, user_id, purpose, email, issued_at,
                         expires_at, consumed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    hash.b(),
                    token.user.b(),
                    token.purpose.as_str(),
                    token.email.as_deref(),
                    us(token.issued_at),
                    us(token.expires_at),
                    opt_us(token.consumed_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        audit: AuditEvent,
    ) -> Result<Option<OneTimeToken>> {
        self.inner
            .write(|tx| {
                let consumed = tx
                    .prepare_cached(concat!(
                        "UPDATE one_time_tokens SET consumed_at = ?3
                         WHERE hash = ?1 AND purpose = ?2 AND consumed_at IS NULL
                           AND expires_at > ?3
                           AND EXISTS (SELECT 1 FROM users AS u
                                       WHERE u.id = one_time_tokens.user_id)
                         RETURNING ",
                        one_time_cols!()
                    ))?
                    .query_row(
                        params![hash.b(), purpose.as_str(), us(audit.at)],
                        rows::one_time_token,
                    )
                    .optional()?;
                if let Some(token) = &consumed {
                    insert_audit(tx, &about(audit, token.user))?;
                }
                Ok(consumed)
            })
            .await
    }

    // ----- TOTP and recovery codes -----

    async fn set_totp(&self, user: UserId, totp: &TotpRecord, audit: AuditEvent) -> Result<()> {
        self.inner
            .write(|tx| {
                require_user(tx, user)?;
                // (Re-)enrolling forgets the last step used.
                tx.prepare_cached(
                    "INSERT INTO totp (user_id, secret, last_step, created_at)
                     VALUES (?1, ?2, NULL, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET
                         secret = excluded.secret,
                         last_step = NULL,
                         created_at = excluded.created_at",
                )?
                .execute(params![
                    user.b(),
                    totp.secret.as_bytes(),
                    us(totp.created_at)
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn get_totp(&self, user: UserId) -> Result<Option<TotpRecord>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    totp_cols!(),
                    " FROM totp WHERE user_id = ?1"
                ))?
                .query_row([user.b()], rows::totp)
                .optional()?)
        })
    }

    async fn use_totp_step(&self, user: UserId, step: i64, audit: AuditEvent) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE totp SET last_step = ?2
                         WHERE user_id = ?1 AND (last_step IS NULL OR last_step < ?2)",
                    )?
                    .execute(params![user.b(), step])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn delete_totp(&self, user: UserId, audit: AuditEvent) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached("DELETE FROM totp WHERE user_id = ?1")?
                    .execute([user.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[TokenHash],
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                require_user(tx, user)?;
                tx.prepare_cached("DELETE FROM recovery_codes WHERE user_id = ?1")?
                    .execute([user.b()])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO recovery_codes (user_id, hash) VALUES (?1, ?2)
                     ON CONFLICT (user_id, hash) DO NOTHING",
                )?;
                for hash in hashes {
                    insert.execute(params![user.b(), hash.b()])?;
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached("DELETE FROM recovery_codes WHERE user_id = ?1 AND hash = ?2")?
                    .execute(params![user.b(), hash.b()])?;
                if n != 1 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<u32> {
        self.inner.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM recovery_codes WHERE user_id = ?1")?
                .query_row([user.b()], |r| r.get(0))?;
            Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
        })
    }

    // ----- passkeys and ceremonies -----

    async fn insert_passkey(&self, passkey: &Passkey, audit: AuditEvent) -> Result<()> {
        let credential = rows::enc_json(&passkey.credential);
        self.inner
            .write(|tx| {
                require_user(tx, passkey.user)?;
                tx.prepare_cached(
                    "INSERT INTO passkeys (credential_id, user_id, name, credential, counter,
                         backup_state, created_at, last_used_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    passkey.credential_id,
                    passkey.user.b(),
                    passkey.name,
                    credential,
                    i64::from(passkey.counter),
                    passkey.backup_state,
                    us(passkey.created_at),
                    opt_us(passkey.last_used_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    passkey_cols!(),
                    " FROM passkeys WHERE credential_id = ?1"
                ))?
                .query_row([credential_id], rows::passkey)
                .optional()?)
        })
    }

    async fn list_passkeys(&self, user: UserId) -> Result<Vec<Passkey>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(concat!(
                        "SELECT ",
                        passkey_cols!(),
                        " FROM passkeys WHERE user_id = ?1 ORDER BY created_at, credential_id"
                    ))?
                    .query_map([user.b()], rows::passkey)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn rename_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE passkeys SET name = ?3 WHERE credential_id = ?2 AND user_id = ?1",
                    )?
                    .execute(params![user.b(), credential_id, name])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn update_passkey_use(
        &self,
        credential_id: &[u8],
        counter: u32,
        backup_state: bool,
        credential: Option<&serde_json::Value>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let credential = credential.map(rows::enc_json);
        self.inner
            .write(|tx| {
                let owner = tx
                    .prepare_cached(
                        "UPDATE passkeys SET counter = max(counter, ?2), backup_state = ?3, last_used_at = ?4,
                             credential = coalesce(?5, credential)
                         WHERE credential_id = ?1
                         RETURNING user_id",
                    )?
                    .query_row(
                        params![
                            credential_id,
                            i64::from(counter),
                            backup_state,
                            us(audit.at),
                            credential
                        ],
                        |r| rows::user_id(r, 0),
                    )
                    .optional()?;
                let Some(owner) = owner else {
                    return Ok(false);
                };
                insert_audit(tx, &about(audit, owner))?;
                Ok(true)
            })
            .await
    }

    async fn delete_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM passkeys WHERE credential_id = ?2 AND user_id = ?1",
                    )?
                    .execute(params![user.b(), credential_id])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn insert_ceremony(&self, hash: &TokenHash, ceremony: &Ceremony) -> Result<()> {
        let state = rows::enc_json(&ceremony.state);
        self.inner
            .write(|tx| {
                if let Some(user) = ceremony.user {
                    require_user(tx, user)?;
                }
                tx.prepare_cached(
                    "INSERT INTO ceremonies (hash, kind, user_id, state, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    hash.b(),
                    ceremony.kind.as_str(),
                    ceremony.user.as_ref().map(Bytes::b),
                    state,
                    us(ceremony.expires_at),
                ])?;
                Ok(())
            })
            .await
    }

    async fn take_ceremony(&self, hash: &TokenHash, now: Timestamp) -> Result<Option<Ceremony>> {
        // Single use: whoever deletes the row has it; an expired one goes all the same.
        let taken = self
            .inner
            .write(|tx| {
                Ok(tx
                    .prepare_cached(concat!(
                        "DELETE FROM ceremonies WHERE hash = ?1 RETURNING ",
                        ceremony_cols!()
                    ))?
                    .query_row([hash.b()], rows::ceremony)
                    .optional()?)
            })
            .await?;
        Ok(taken.filter(|c| now < c.expires_at))
    }

    // ----- linked accounts -----

    async fn insert_linked_account(
        &self,
        account: &LinkedAccount,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                require_user(tx, account.user)?;
                tx.prepare_cached(
                    "INSERT INTO linked_accounts (id, provider, provider_subject, user_id,
                         access_token, refresh_token, token_expires_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    account.id.b(),
                    account.provider,
                    account.provider_subject,
                    account.user.b(),
                    account.access_token.as_ref().map(Sealed::as_bytes),
                    account.refresh_token.as_ref().map(Sealed::as_bytes),
                    opt_us(account.token_expires_at),
                    us(account.created_at),
                    us(account.updated_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn find_linked_account(
        &self,
        provider: &str,
        provider_subject: &str,
    ) -> Result<Option<LinkedAccount>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    linked_cols!(),
                    " FROM linked_accounts WHERE provider = ?1 AND provider_subject = ?2"
                ))?
                .query_row(params![provider, provider_subject], rows::linked_account)
                .optional()?)
        })
    }

    async fn list_linked_accounts(&self, user: UserId) -> Result<Vec<LinkedAccount>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(concat!(
                        "SELECT ",
                        linked_cols!(),
                        " FROM linked_accounts WHERE user_id = ?1 ORDER BY id"
                    ))?
                    .query_map([user.b()], rows::linked_account)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn update_linked_tokens(
        &self,
        id: LinkedAccountId,
        access_token: Option<&Sealed>,
        refresh_token: Option<&Sealed>,
        token_expires_at: Option<Timestamp>,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let owner = tx
                    .prepare_cached(
                        "UPDATE linked_accounts SET access_token = ?2, refresh_token = ?3,
                             token_expires_at = ?4, updated_at = ?5
                         WHERE id = ?1
                         RETURNING user_id",
                    )?
                    .query_row(
                        params![
                            id.b(),
                            access_token.map(Sealed::as_bytes),
                            refresh_token.map(Sealed::as_bytes),
                            opt_us(token_expires_at),
                            us(audit.at),
                        ],
                        |r| rows::user_id(r, 0),
                    )
                    .optional()?;
                let Some(owner) = owner else {
                    return Ok(false);
                };
                insert_audit(tx, &about(audit, owner))?;
                Ok(true)
            })
            .await
    }

    async fn delete_linked_account(
        &self,
        id: LinkedAccountId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let owner = tx
                    .prepare_cached(
                        "DELETE FROM linked_accounts
                         WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)
                         RETURNING user_id",
                    )?
                    .query_row(params![id.b(), user.as_ref().map(Bytes::b)], |r| {
                        rows::user_id(r, 0)
                    })
                    .optional()?;
                let Some(owner) = owner else {
                    return Ok(false);
                };
                insert_audit(tx, &about(audit, owner))?;
                Ok(true)
            })
            .await
    }

    // ----- reseal -----

    async fn sealed_values(
        &self,
        table: &'static str,
        column: &'static str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(SealedRef, Sealed)>> {
        let (table, column, select, _) = sealed_sql(table, column)?;
        // Every row id is 16 bytes, so each sorts after the empty blob.
        let after = after.map(<[u8]>::to_vec).unwrap_or_default();
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(select)?
                    .query_map(params![after, i64::from(limit)], |r| {
                        let row = r.get_ref(0)?.as_blob()?.to_vec();
                        Ok((SealedRef { table, column, row }, rows::sealed(r, 1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn replace_sealed(&self, at: &SealedRef, old: &Sealed, new: &Sealed) -> Result<bool> {
        let (_, _, _, replace) = sealed_sql(at.table, at.column)?;
        self.inner
            .write(|tx| {
                let n = tx.prepare_cached(replace)?.execute(params![
                    at.row,
                    old.as_bytes(),
                    new.as_bytes()
                ])?;
                Ok(n == 1)
            })
            .await
    }
}
