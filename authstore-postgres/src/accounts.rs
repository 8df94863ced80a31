//! [`AccountStore`] on [`PostgresStore`]: login sessions, one-time tokens, TOTP, recovery
//! codes, passkeys, WebAuthn ceremonies and linked accounts.
//!
//! Everything here belongs to a user and cascades from the user's row, so erasing a user
//! erases it. Locking order as in [`identity`](crate::identity): a write that needs the
//! user to exist takes `FOR KEY SHARE` on the user's row first (which also keeps the user
//! from being deleted until it commits), then touches its own rows; the rest lock only
//! their own rows. No transaction locks one of these rows and then a user, so no lock cycle
//! forms with `delete_user` or `set_user_active`.
//!
//! The compare-and-sets (consuming a one-time token, a TOTP step, a recovery code, taking a
//! ceremony, replacing a sealed value) are single conditional statements: concurrent
//! callers queue on the row lock and re-check the condition on the committed row, so
//! exactly one wins.

use async_trait::async_trait;
use authstore_core::backend::AccountStore;
use authstore_core::identity::SealedRef;
use authstore_core::{
    AuditEvent, Ceremony, Error, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId,
    OneTimePurpose, OneTimeToken, Passkey, Result, Sealed, Timestamp, TokenHash, TotpRecord,
    UserId,
};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::PostgresStore;
use crate::db::{Db, Ts, bad, fk_as_not_found, json_no_nul, no_nul, no_nul_opt, opt_ts, ts};
use crate::rows::{
    self, ceremony_cols, linked_cols, login_session_cols, one_time_cols, passkey_cols,
};
use crate::stores::{all, exec, insert_audit, opt};

/// Locks the user's row `FOR KEY SHARE` (see the module docs); NotFound if there is none.
async fn lock_user<C: GenericClient>(c: &C, user: UserId) -> Result<()> {
    let found = opt(
        c,
        "SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE",
        &[user.as_uuid()],
    )
    .await?
    .is_some();
    if !found {
        return Err(Error::not_found(format!("user {user}")));
    }
    Ok(())
}

fn hash_param(h: &TokenHash) -> &[u8] {
    h.as_bytes().as_slice()
}

/// Where one sealed column lives, with its fixed statements (never built from input).
struct SealedColumn {
    table: &'static str,
    column: &'static str,
    /// `$1` limit: the first page.
    first: &'static str,
    /// `$1` cursor (row id), `$2` limit.
    after: &'static str,
    /// `$1` row id, `$2` old value, `$3` new value.
    replace: &'static str,
}

/// One entry per [`SEALED_COLUMNS`](authstore_core::identity::SEALED_COLUMNS) pair. Rows in
/// uuid order, which is the order of their id bytes.
const SEALED: &[SealedColumn] = &[
    SealedColumn {
        table: "totp",
        column: "secret",
        first: "SELECT user_id, secret FROM totp WHERE secret IS NOT NULL
                ORDER BY user_id LIMIT $1",
        after: "SELECT user_id, secret FROM totp WHERE user_id > $1 AND secret IS NOT NULL
                ORDER BY user_id LIMIT $2",
        replace: "UPDATE totp SET secret = $3 WHERE user_id = $1 AND secret = $2",
    },
    SealedColumn {
        table: "linked_accounts",
        column: "access_token",
        first: "SELECT id, access_token FROM linked_accounts WHERE access_token IS NOT NULL
                ORDER BY id LIMIT $1",
        after: "SELECT id, access_token FROM linked_accounts
                WHERE id > $1 AND access_token IS NOT NULL ORDER BY id LIMIT $2",
        replace: "UPDATE linked_accounts SET access_token = $3
                  WHERE id = $1 AND access_token = $2",
    },
    SealedColumn {
        table: "linked_accounts",
        column: "refresh_token",
        first: "SELECT id, refresh_token FROM linked_accounts WHERE refresh_token IS NOT NULL
                ORDER BY id LIMIT $1",
        after: "SELECT id, refresh_token FROM linked_accounts
                WHERE id > $1 AND refresh_token IS NOT NULL ORDER BY id LIMIT $2",
        replace: "UPDATE linked_accounts SET refresh_token = $3
                  WHERE id = $1 AND refresh_token = $2",
    },
];

fn sealed_column(table: &str, column: &str) -> Result<&'static SealedColumn> {
    SEALED
        .iter()
        .find(|s| s.table == table && s.column == column)
        .ok_or_else(|| Error::invalid("sealed column", format!("unknown column {table}.{column}")))
}

#[async_trait]
impl AccountStore for PostgresStore {
    // ----- login sessions -----

    async fn insert_login_session(
        &self,
        hash: &TokenHash,
        session: &LoginSession,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul_opt("user agent", session.user_agent.as_deref())?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, session.user).await?;
        exec(
            &tx,
            "INSERT INTO login_sessions (hash, id, user_id, created_at, last_seen_at,
                 idle_expires_at, expires_at, ip, user_agent, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &hash_param(hash),
                session.id.as_uuid(),
                session.user.as_uuid(),
                &ts(session.created_at),
                &ts(session.last_seen_at),
                &ts(session.idle_expires_at),
                &ts(session.expires_at),
                &session.ip,
                &session.user_agent.as_deref(),
                &opt_ts(session.revoked_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn find_login_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<LoginSession>> {
        let conn = self.inner.conn().await?;
        // One statement: the session by primary key joined to its user by primary key.
        opt(
            &conn,
            concat!(
                "SELECT ",
                login_session_cols!(),
                " FROM login_sessions AS s JOIN users AS u ON u.id = s.user_id
                 WHERE s.hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2
                   AND s.idle_expires_at > $2 AND u.active"
            ),
            &[&hash_param(hash), &ts(now)],
        )
        .await?
        .map(|r| rows::login_session(&r))
        .transpose()
    }

    async fn touch_login_sessions(
        &self,
        touches: &[(LoginSessionId, Timestamp, Timestamp)],
    ) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = touches.iter().map(|(id, _, _)| *id.as_uuid()).collect();
        let seen: Vec<Ts> = touches.iter().map(|(_, t, _)| ts(*t)).collect();
        let idle: Vec<Ts> = touches.iter().map(|(_, _, t)| ts(*t)).collect();
        let conn = self.inner.conn().await?;
        // One statement for the whole batch; the latest values per id win, nothing moves
        // backwards, and a touch never carries the idle end past the absolute end.
        exec(
            &conn,
            "UPDATE login_sessions AS s
             SET last_seen_at = greatest(s.last_seen_at, u.seen),
                 idle_expires_at = greatest(s.idle_expires_at, least(u.idle, s.expires_at))
             FROM (SELECT id, max(seen) AS seen, max(idle) AS idle
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
                        AS t (id, seen, idle)
                   GROUP BY id) AS u
             WHERE s.id = u.id
               AND (s.last_seen_at < u.seen
                    OR s.idle_expires_at < least(u.idle, s.expires_at))",
            &[&ids, &seen, &idle],
        )
        .await?;
        Ok(())
    }

    async fn list_login_sessions(&self, user: UserId) -> Result<Vec<LoginSession>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                login_session_cols!(),
                " FROM login_sessions AS s WHERE s.user_id = $1 ORDER BY s.id"
            ),
            &[user.as_uuid()],
        )
        .await?
        .iter()
        .map(rows::login_session)
        .collect()
    }

    async fn revoke_login_session(
        &self,
        id: LoginSessionId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE login_sessions SET revoked_at = $3
             WHERE id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR user_id = $2::uuid)",
            &[
                id.as_uuid(),
                &user.as_ref().map(UserId::as_uuid),
                &ts(audit.at),
            ],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn revoke_user_login_sessions(&self, user: UserId, audit: AuditEvent) -> Result<u64> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE login_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            &[user.as_uuid(), &ts(audit.at)],
        )
        .await?;
        if n == 0 {
            return Ok(0);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(n)
    }

    // ----- one-time tokens -----

    async fn insert_one_time_token(
        &self,
        hash: &TokenHash,
        token: &OneTimeToken,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul_opt("email", token.email.as_deref())?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, token.user).await?;
        // The older ones of the same user and purpose are superseded.
        exec(
            &tx,
            "UPDATE one_time_tokens SET consumed_at = $3
             WHERE user_id = $1 AND purpose = $2 AND consumed_at IS NULL",
            &[token.user.as_uuid(), &token.purpose.as_str(), &ts(audit.at)],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO one_time_tokens (hash, user_id, purpose, email, issued_at, expires_at,
                 consumed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &hash_param(hash),
                token.user.as_uuid(),
                &token.purpose.as_str(),
                &token.email.as_deref(),
                &ts(token.issued_at),
                &ts(token.expires_at),
                &opt_ts(token.consumed_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        audit: AuditEvent,
    ) -> Result<Option<OneTimeToken>> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let row = opt(
            &tx,
            concat!(
                "UPDATE one_time_tokens AS t SET consumed_at = $3
                 WHERE t.hash = $1 AND t.purpose = $2 AND t.consumed_at IS NULL
                   AND t.expires_at > $3
                   AND EXISTS (SELECT 1 FROM users AS u WHERE u.id = t.user_id)
                 RETURNING ",
                one_time_cols!()
            ),
            &[&hash_param(hash), &purpose.as_str(), &ts(audit.at)],
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let token = rows::one_time_token(&row)?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(Some(token))
    }

    // ----- TOTP and recovery codes -----

    async fn set_totp(&self, user: UserId, totp: &TotpRecord, audit: AuditEvent) -> Result<()> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, user).await?;
        // Re-enrolling forgets the last step.
        exec(
            &tx,
            "INSERT INTO totp (user_id, secret, last_step, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret,
                 last_step = excluded.last_step, created_at = excluded.created_at",
            &[
                user.as_uuid(),
                &totp.secret.as_bytes(),
                &totp.last_step,
                &ts(totp.created_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn get_totp(&self, user: UserId) -> Result<Option<TotpRecord>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            "SELECT secret, last_step, created_at FROM totp WHERE user_id = $1",
            &[user.as_uuid()],
        )
        .await?
        .map(|r| {
            Ok(TotpRecord {
                secret: Sealed::from_bytes(rows::get(&r, 0)?),
                last_step: rows::get(&r, 1)?,
                created_at: rows::ts(&r, 2)?,
            })
        })
        .transpose()
    }

    async fn use_totp_step(&self, user: UserId, step: i64, audit: AuditEvent) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE totp SET last_step = $2
             WHERE user_id = $1 AND (last_step IS NULL OR last_step < $2)",
            &[user.as_uuid(), &step],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn delete_totp(&self, user: UserId, audit: AuditEvent) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "DELETE FROM totp WHERE user_id = $1",
            &[user.as_uuid()],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[TokenHash],
        audit: AuditEvent,
    ) -> Result<()> {
        let hashes: Vec<&[u8]> = hashes.iter().map(hash_param).collect();
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, user).await?;
        exec(
            &tx,
            "DELETE FROM recovery_codes WHERE user_id = $1",
            &[user.as_uuid()],
        )
        .await?;
        if !hashes.is_empty() {
            // A hash given twice is one code.
            exec(
                &tx,
                "INSERT INTO recovery_codes (user_id, hash)
                 SELECT $1, h FROM unnest($2::bytea[]) AS t (h)
                 ON CONFLICT DO NOTHING",
                &[user.as_uuid(), &hashes],
            )
            .await?;
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "DELETE FROM recovery_codes WHERE user_id = $1 AND hash = $2",
            &[user.as_uuid(), &hash_param(hash)],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<u32> {
        let conn = self.inner.conn().await?;
        let n: i64 = match opt(
            &conn,
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1",
            &[user.as_uuid()],
        )
        .await?
        {
            Some(r) => rows::get(&r, 0)?,
            None => 0,
        };
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    }

    // ----- passkeys and ceremonies -----

    async fn insert_passkey(&self, passkey: &Passkey, audit: AuditEvent) -> Result<()> {
        no_nul("passkey name", &passkey.name)?;
        json_no_nul("credential", &passkey.credential)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, passkey.user).await?;
        exec(
            &tx,
            "INSERT INTO passkeys (credential_id, user_id, name, credential, counter,
                 backup_state, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &passkey.credential_id.as_slice(),
                passkey.user.as_uuid(),
                &passkey.name,
                &passkey.credential,
                &i64::from(passkey.counter),
                &passkey.backup_state,
                &ts(passkey.created_at),
                &opt_ts(passkey.last_used_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                passkey_cols!(),
                " FROM passkeys WHERE credential_id = $1"
            ),
            &[&credential_id],
        )
        .await?
        .map(|r| rows::passkey(&r))
        .transpose()
    }

    async fn list_passkeys(&self, user: UserId) -> Result<Vec<Passkey>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                passkey_cols!(),
                " FROM passkeys WHERE user_id = $1 ORDER BY created_at, credential_id"
            ),
            &[user.as_uuid()],
        )
        .await?
        .iter()
        .map(rows::passkey)
        .collect()
    }

    async fn rename_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool> {
        no_nul("passkey name", name)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE passkeys SET name = $3 WHERE user_id = $1 AND credential_id = $2",
            &[user.as_uuid(), &credential_id, &name],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn update_passkey_use(
        &self,
        credential_id: &[u8],
        counter: u32,
        backup_state: bool,
        credential: Option<&serde_json::Value>,
        audit: AuditEvent,
    ) -> Result<bool> {
        if let Some(c) = credential {
            json_no_nul("credential", c)?;
        }
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE passkeys SET counter = GREATEST(counter, $2), backup_state = $3, last_used_at = $4,
                 credential = coalesce($5::jsonb, credential)
             WHERE credential_id = $1",
            &[
                &credential_id,
                &i64::from(counter),
                &backup_state,
                &ts(audit.at),
                &credential,
            ],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn delete_passkey(
        &self,
        user: UserId,
        credential_id: &[u8],
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "DELETE FROM passkeys WHERE user_id = $1 AND credential_id = $2",
            &[user.as_uuid(), &credential_id],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn insert_ceremony(&self, hash: &TokenHash, ceremony: &Ceremony) -> Result<()> {
        json_no_nul("ceremony state", &ceremony.state)?;
        let conn = self.inner.conn().await?;
        // One statement (no event): its user, if any, must exist.
        fk_as_not_found(
            exec(
                &conn,
                "INSERT INTO ceremonies (hash, kind, user_id, state, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &hash_param(hash),
                    &ceremony.kind.as_str(),
                    &ceremony.user.as_ref().map(UserId::as_uuid),
                    &ceremony.state,
                    &ts(ceremony.expires_at),
                ],
            )
            .await,
            "the user of the ceremony",
        )?;
        Ok(())
    }

    async fn take_ceremony(&self, hash: &TokenHash, now: Timestamp) -> Result<Option<Ceremony>> {
        let conn = self.inner.conn().await?;
        // Single use: one `DELETE … RETURNING`; an expired one goes too.
        let row = opt(
            &conn,
            concat!(
                "DELETE FROM ceremonies WHERE hash = $1 RETURNING ",
                ceremony_cols!()
            ),
            &[&hash_param(hash)],
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let ceremony = rows::ceremony(&row)?;
        Ok((now < ceremony.expires_at).then_some(ceremony))
    }

    // ----- linked accounts -----

    async fn insert_linked_account(
        &self,
        account: &LinkedAccount,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul("provider", &account.provider)?;
        no_nul("provider subject", &account.provider_subject)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        lock_user(&tx, account.user).await?;
        exec(
            &tx,
            "INSERT INTO linked_accounts (id, provider, provider_subject, user_id, access_token,
                 refresh_token, token_expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                account.id.as_uuid(),
                &account.provider,
                &account.provider_subject,
                account.user.as_uuid(),
                &account.access_token.as_ref().map(Sealed::as_bytes),
                &account.refresh_token.as_ref().map(Sealed::as_bytes),
                &opt_ts(account.token_expires_at),
                &ts(account.created_at),
                &ts(account.updated_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn find_linked_account(
        &self,
        provider: &str,
        provider_subject: &str,
    ) -> Result<Option<LinkedAccount>> {
        // Nothing stored holds NUL (it is refused on the way in): nothing can match.
        if provider.contains('\0') || provider_subject.contains('\0') {
            return Ok(None);
        }
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                linked_cols!(),
                " FROM linked_accounts WHERE provider = $1 AND provider_subject = $2"
            ),
            &[&provider, &provider_subject],
        )
        .await?
        .map(|r| rows::linked_account(&r))
        .transpose()
    }

    async fn list_linked_accounts(&self, user: UserId) -> Result<Vec<LinkedAccount>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                linked_cols!(),
                " FROM linked_accounts WHERE user_id = $1 ORDER BY id"
            ),
            &[user.as_uuid()],
        )
        .await?
        .iter()
        .map(rows::linked_account)
        .collect()
    }

    async fn update_linked_tokens(
        &self,
        id: LinkedAccountId,
        access_token: Option<&Sealed>,
        refresh_token: Option<&Sealed>,
        token_expires_at: Option<Timestamp>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE linked_accounts SET access_token = $2, refresh_token = $3,
                 token_expires_at = $4, updated_at = $5
             WHERE id = $1",
            &[
                id.as_uuid(),
                &access_token.map(Sealed::as_bytes),
                &refresh_token.map(Sealed::as_bytes),
                &opt_ts(token_expires_at),
                &ts(audit.at),
            ],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn delete_linked_account(
        &self,
        id: LinkedAccountId,
        user: Option<UserId>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "DELETE FROM linked_accounts
             WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2::uuid)",
            &[id.as_uuid(), &user.as_ref().map(UserId::as_uuid)],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    // ----- reseal -----

    async fn sealed_values(
        &self,
        table: &'static str,
        column: &'static str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(SealedRef, Sealed)>> {
        let col = sealed_column(table, column)?;
        let after = after
            .map(|b| {
                Uuid::from_slice(b)
                    .map_err(|_| Error::invalid("after", "expected the 16 bytes of a row id"))
            })
            .transpose()?;
        let limit = i64::from(limit);
        let conn = self.inner.conn().await?;
        let found = match after {
            None => all(&conn, col.first, &[&limit]).await?,
            Some(after) => all(&conn, col.after, &[&after, &limit]).await?,
        };
        found
            .iter()
            .map(|r| {
                let id: Uuid = rows::get(r, 0)?;
                let value: Option<Vec<u8>> = rows::get(r, 1)?;
                let value = value.ok_or_else(|| bad(col.column, "unexpected NULL"))?;
                Ok((
                    SealedRef {
                        table: col.table,
                        column: col.column,
                        row: id.as_bytes().to_vec(),
                    },
                    Sealed::from_bytes(value),
                ))
            })
            .collect()
    }

    async fn replace_sealed(&self, at: &SealedRef, old: &Sealed, new: &Sealed) -> Result<bool> {
        let col = sealed_column(at.table, at.column)?;
        // Row ids are uuids: other bytes name no row.
        let Ok(id) = Uuid::from_slice(&at.row) else {
            return Ok(false);
        };
        let conn = self.inner.conn().await?;
        let n = exec(&conn, col.replace, &[&id, &old.as_bytes(), &new.as_bytes()]).await?;
        Ok(n == 1)
    }
}
