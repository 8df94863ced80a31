//! [`IdentityStore`] on [`PostgresStore`]: users, groups, passwords and login failures.
//!
//! Locking order: every write that concerns one user locks that user's row first (the
//! update itself, or `SELECT … FOR UPDATE` / `FOR NO KEY UPDATE` / `FOR KEY SHARE`), and only
//! then touches grants, PATs and login sessions. The grant store never locks users, and issuers lock a
//! grant then its client, so no lock cycle forms with them.

use std::net::IpAddr;

use async_trait::async_trait;
use authstore_core::backend::IdentityStore;
use authstore_core::identity::{fold_case, subject_of};
use authstore_core::{
    AuditEvent, Error, FailureCounts, Group, GroupId, PasswordHash, Result, Timestamp, User, UserId,
};
use deadpool_postgres::GenericClient;

use crate::PostgresStore;
use crate::db::{Db, fk_as_not_found, json_no_nul, no_nul, no_nul_opt, ts};
use crate::rows::{self, group_cols, user_cols};
use crate::stores::{all, exec, insert_audit, opt};

/// Refuses what PostgreSQL cannot store in a user row.
fn check_user(u: &User) -> Result<()> {
    no_nul("username", &u.username)?;
    no_nul_opt("email", u.email.as_deref())?;
    json_no_nul("metadata", &u.metadata)
}

/// Revokes every unrevoked grant, PAT and login session of `user`, and consumes their
/// unconsumed one-time tokens, at `at`; returns how many. The caller holds the user's row lock (see the module docs).
async fn revoke_user_holdings<C: GenericClient>(c: &C, user: UserId, at: Timestamp) -> Result<u64> {
    let subject = subject_of(user);
    let grants = exec(
        c,
        "UPDATE grants SET revoked_at = $2 WHERE subject = $1 AND revoked_at IS NULL",
        &[&subject.as_str(), &ts(at)],
    )
    .await?;
    let pats = exec(
        c,
        "UPDATE personal_access_tokens SET revoked_at = $2
         WHERE user_subject = $1 AND revoked_at IS NULL",
        &[&subject.as_str(), &ts(at)],
    )
    .await?;
    let sessions = exec(
        c,
        "UPDATE login_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        &[user.as_uuid(), &ts(at)],
    )
    .await?;
    let one_time = exec(
        c,
        "UPDATE one_time_tokens SET consumed_at = $2 WHERE user_id = $1 AND consumed_at IS NULL",
        &[user.as_uuid(), &ts(at)],
    )
    .await?;
    Ok(grants + pats + sessions + one_time)
}

/// Forgets which failure rows were the user's. The rows stay, counting for their source
/// (one account's success does not reset an address's count) until cleanup deletes them.
async fn forget_user_failures<C: GenericClient>(c: &C, user: UserId) -> Result<()> {
    exec(
        c,
        "UPDATE login_failures SET user_id = NULL WHERE user_id = $1",
        &[user.as_uuid()],
    )
    .await?;
    Ok(())
}

/// Whether the user exists (no lock).
async fn user_exists<C: GenericClient>(c: &C, id: UserId) -> Result<bool> {
    Ok(opt(c, "SELECT 1 FROM users WHERE id = $1", &[id.as_uuid()])
        .await?
        .is_some())
}

/// Whether the group exists (no lock).
async fn group_exists<C: GenericClient>(c: &C, id: GroupId) -> Result<bool> {
    Ok(
        opt(c, "SELECT 1 FROM groups WHERE id = $1", &[id.as_uuid()])
            .await?
            .is_some(),
    )
}

#[async_trait]
impl IdentityStore for PostgresStore {
    async fn insert_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        check_user(user)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        exec(
            &tx,
            "INSERT INTO users (id, username, username_key, email, email_key, email_verified,
                 active, metadata, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                user.id.as_uuid(),
                &user.username,
                &user.username_key(),
                &user.email.as_deref(),
                &user.email_key(),
                &user.email_verified,
                &user.active,
                &user.metadata,
                &ts(user.created_at),
                &ts(user.updated_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"),
            &[id.as_uuid()],
        )
        .await?
        .map(|r| rows::user(&r, 0))
        .transpose()
    }

    async fn find_user_by_username(&self, username_key: &str) -> Result<Option<User>> {
        // No stored key holds NUL (it is refused on the way in): nothing can match.
        if username_key.contains('\0') {
            return Ok(None);
        }
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                user_cols!(),
                " FROM users WHERE username_key = $1"
            ),
            &[&username_key],
        )
        .await?
        .map(|r| rows::user(&r, 0))
        .transpose()
    }

    async fn find_user_by_email(&self, email_key: &str) -> Result<Option<User>> {
        if email_key.contains('\0') {
            return Ok(None);
        }
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!("SELECT ", user_cols!(), " FROM users WHERE email_key = $1"),
            &[&email_key],
        )
        .await?
        .map(|r| rows::user(&r, 0))
        .transpose()
    }

    async fn update_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        check_user(user)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // Never `active`: see `set_user_active`.
        let n = exec(
            &tx,
            "UPDATE users SET username = $2, username_key = $3, email = $4, email_key = $5,
                 email_verified = $6, metadata = $7, updated_at = $8
             WHERE id = $1",
            &[
                user.id.as_uuid(),
                &user.username,
                &user.username_key(),
                &user.email.as_deref(),
                &user.email_key(),
                &user.email_verified,
                &user.metadata,
                &ts(user.updated_at),
            ],
        )
        .await?;
        if n == 0 {
            return Err(Error::not_found(format!("user {}", user.id)));
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn set_user_active(&self, id: UserId, active: bool, audit: AuditEvent) -> Result<()> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE users SET active = $2, updated_at = $3 WHERE id = $1 AND active <> $2",
            &[id.as_uuid(), &active, &ts(audit.at)],
        )
        .await?;
        if n == 0 {
            if !user_exists(&tx, id).await? {
                return Err(Error::not_found(format!("user {id}")));
            }
            return tx.commit().await.db();
        }
        if !active {
            // With the user's row locked by the update: everything they hold stops at once.
            revoke_user_holdings(&tx, id, audit.at).await?;
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn delete_user(&self, id: UserId, audit: AuditEvent) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // The user first (every identity write locks the user before grants), then the
        // grants, before anything else: issuers hold `FOR KEY SHARE` on a grant and then need
        // locks elsewhere, so taking the grant locks first makes us wait for them instead
        // of forming a cycle. Codes and tokens go with their grants by cascade.
        let found = opt(
            &tx,
            "SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
            &[id.as_uuid()],
        )
        .await?
        .is_some();
        if !found {
            return Ok(false);
        }
        let subject = subject_of(id);
        let s = subject.as_str();
        exec(&tx, "DELETE FROM grants WHERE subject = $1", &[&s]).await?;
        exec(
            &tx,
            "DELETE FROM personal_access_tokens WHERE user_subject = $1",
            &[&s],
        )
        .await?;
        exec(&tx, "DELETE FROM consents WHERE subject = $1", &[&s]).await?;
        exec(
            &tx,
            "DELETE FROM authorization_sessions WHERE subject = $1",
            &[&s],
        )
        .await?;
        // Memberships, password, login failures, login sessions, one-time tokens, TOTP,
        // recovery codes, passkeys, ceremonies and linked accounts go by cascade.
        exec(&tx, "DELETE FROM users WHERE id = $1", &[id.as_uuid()]).await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
        search: Option<&str>,
    ) -> Result<Vec<User>> {
        if search.is_some_and(|s| s.contains('\0')) {
            // No stored key holds NUL.
            return Ok(Vec::new());
        }
        let limit = i64::from(limit);
        let conn = self.inner.conn().await?;
        let found = match (after, search) {
            (None, None) => {
                all(
                    &conn,
                    concat!("SELECT ", user_cols!(), " FROM users ORDER BY id LIMIT $1"),
                    &[&limit],
                )
                .await?
            }
            (Some(after), None) => {
                all(
                    &conn,
                    concat!(
                        "SELECT ",
                        user_cols!(),
                        " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                    ),
                    &[after.as_uuid(), &limit],
                )
                .await?
            }
            (None, Some(search)) => {
                all(
                    &conn,
                    concat!(
                        "SELECT ",
                        user_cols!(),
                        " FROM users
                         WHERE strpos(username_key, $1) > 0 OR strpos(email_key, $1) > 0
                         ORDER BY id LIMIT $2"
                    ),
                    &[&search, &limit],
                )
                .await?
            }
            (Some(after), Some(search)) => {
                all(
                    &conn,
                    concat!(
                        "SELECT ",
                        user_cols!(),
                        " FROM users
                         WHERE id > $1
                           AND (strpos(username_key, $2) > 0 OR strpos(email_key, $2) > 0)
                         ORDER BY id LIMIT $3"
                    ),
                    &[after.as_uuid(), &search, &limit],
                )
                .await?
            }
        };
        found.iter().map(|r| rows::user(r, 0)).collect()
    }

    async fn insert_group(&self, group: &Group, audit: AuditEvent) -> Result<()> {
        no_nul("group name", &group.name)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        exec(
            &tx,
            "INSERT INTO groups (id, name, name_key, created_at) VALUES ($1, $2, $3, $4)",
            &[
                group.id.as_uuid(),
                &group.name,
                &group.name_key(),
                &ts(group.created_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn get_group(&self, id: GroupId) -> Result<Option<Group>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!("SELECT ", group_cols!(), " FROM groups WHERE id = $1"),
            &[id.as_uuid()],
        )
        .await?
        .map(|r| rows::group(&r, 0))
        .transpose()
    }

    async fn rename_group(&self, id: GroupId, name: &str, audit: AuditEvent) -> Result<()> {
        no_nul("group name", name)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE groups SET name = $2, name_key = $3 WHERE id = $1",
            &[id.as_uuid(), &name, &fold_case(name)],
        )
        .await?;
        if n == 0 {
            return Err(Error::not_found(format!("group {id}")));
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn delete_group(&self, id: GroupId, audit: AuditEvent) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // Memberships go by cascade.
        let n = exec(&tx, "DELETE FROM groups WHERE id = $1", &[id.as_uuid()]).await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn add_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = fk_as_not_found(
            exec(
                &tx,
                "INSERT INTO group_members (group_id, user_id)
                 SELECT $1::uuid, $2::uuid
                 WHERE EXISTS (SELECT 1 FROM groups WHERE id = $1::uuid)
                   AND EXISTS (SELECT 1 FROM users WHERE id = $2::uuid)
                 ON CONFLICT DO NOTHING",
                &[group.as_uuid(), user.as_uuid()],
            )
            .await,
            "the group or user",
        )?;
        if n == 0 {
            if !group_exists(&tx, group).await? {
                return Err(Error::not_found(format!("group {group}")));
            }
            if !user_exists(&tx, user).await? {
                return Err(Error::not_found(format!("user {user}")));
            }
            // Already a member: nothing changed, no event.
            tx.commit().await.db()?;
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn remove_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
            &[group.as_uuid(), user.as_uuid()],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                group_cols!(),
                " FROM groups
                 WHERE id IN (SELECT group_id FROM group_members WHERE user_id = $1)
                 ORDER BY name_key"
            ),
            &[user.as_uuid()],
        )
        .await?
        .iter()
        .map(|r| rows::group(r, 0))
        .collect()
    }

    async fn group_members(&self, group: GroupId) -> Result<Vec<User>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                user_cols!(),
                " FROM users
                 WHERE id IN (SELECT user_id FROM group_members WHERE group_id = $1)
                 ORDER BY id"
            ),
            &[group.as_uuid()],
        )
        .await?
        .iter()
        .map(|r| rows::user(r, 0))
        .collect()
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &PasswordHash,
        revoke_grants: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul("password hash", hash.as_phc())?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // The user's row first (see the module docs); it also keeps the user from being
        // deleted under us.
        let found = opt(
            &tx,
            "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[user.as_uuid()],
        )
        .await?
        .is_some();
        if !found {
            return Err(Error::not_found(format!("user {user}")));
        }
        exec(
            &tx,
            "INSERT INTO passwords (user_id, phc, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET phc = excluded.phc,
                 updated_at = excluded.updated_at",
            &[user.as_uuid(), &hash.as_phc(), &ts(audit.at)],
        )
        .await?;
        forget_user_failures(&tx, user).await?;
        if revoke_grants {
            revoke_user_holdings(&tx, user, audit.at).await?;
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn get_password_hash(&self, user: UserId) -> Result<Option<PasswordHash>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            "SELECT phc FROM passwords WHERE user_id = $1",
            &[user.as_uuid()],
        )
        .await?
        .map(|r| rows::get::<String>(&r, 0).map(PasswordHash::from_phc))
        .transpose()
    }

    async fn record_login_attempt(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        success: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        if success {
            if let Some(user) = user {
                forget_user_failures(&tx, user).await?;
            }
        } else {
            // The user as it exists now, locked against deletion until we commit, so the
            // failure row's foreign key holds; a user deleted meanwhile is unknown, and
            // the failure still counts for the source.
            let user_id: Option<uuid::Uuid> = match user {
                Some(user) => opt(
                    &tx,
                    "SELECT id FROM users WHERE id = $1 FOR KEY SHARE",
                    &[user.as_uuid()],
                )
                .await?
                .map(|r| rows::get::<uuid::Uuid>(&r, 0))
                .transpose()?,
                None => None,
            };
            // One row per failure, even with neither user nor source.
            exec(
                &tx,
                "INSERT INTO login_failures (user_id, source, at) VALUES ($1, $2, $3)",
                &[&user_id, &source, &ts(audit.at)],
            )
            .await?;
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn login_failures(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        since: Timestamp,
    ) -> Result<FailureCounts> {
        let conn = self.inner.conn().await?;
        // One statement, one snapshot; a `NULL` parameter matches no row.
        let row = opt(
            &conn,
            "SELECT
                 (SELECT count(*) FROM login_failures WHERE user_id = $1 AND at >= $3),
                 (SELECT count(*) FROM login_failures WHERE source = $2 AND at >= $3)",
            &[&user.as_ref().map(UserId::as_uuid), &source, &ts(since)],
        )
        .await?;
        let Some(row) = row else {
            return Ok(FailureCounts::default());
        };
        let n = |i: usize| -> Result<u32> {
            let v: i64 = rows::get(&row, i)?;
            Ok(u32::try_from(v.max(0)).unwrap_or(u32::MAX))
        };
        Ok(FailureCounts {
            user: n(0)?,
            source: n(1)?,
        })
    }
}
