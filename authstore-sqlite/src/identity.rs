//! [`IdentityStore`] on [`SqliteStore`]: users, groups, passwords and login failures.
//!
//! Unique keys (`username_key`, `email_key`, `name_key`) are the case-folded forms computed
//! by core ([`fold_case`]); SQLite never folds case itself. Everything issued to a user is
//! found by their subject ([`subject_of`]), through the subject indexes of schema 1 and 2;
//! the account records of schema 3 (login sessions, one-time tokens, TOTP, recovery codes,
//! passkeys, ceremonies, linked accounts) reference the user by foreign key and cascade.

use std::net::IpAddr;

use async_trait::async_trait;
use authstore_core::backend::IdentityStore;
use authstore_core::identity::{fold_case, subject_of};
use authstore_core::{
    AuditEvent, Error, FailureCounts, Group, GroupId, PasswordHash, Result, Timestamp, User, UserId,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::SqliteStore;
use crate::db::R;
use crate::rows::{self, group_cols, user_cols};
use crate::stores::{Bytes, insert_audit, us};

/// Revokes every unrevoked grant and PAT of the user's subject and every unrevoked login
/// session of theirs, and consumes their unconsumed one-time tokens, at `at`; returns how
/// many rows changed.
fn revoke_everything_of(tx: &Connection, user: UserId, at: i64) -> R<usize> {
    let subject = subject_of(user);
    let grants = tx
        .prepare_cached(
            "UPDATE grants SET revoked_at = ?2 WHERE subject = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![subject.as_str(), at])?;
    let pats = tx
        .prepare_cached(
            "UPDATE personal_access_tokens SET revoked_at = ?2
             WHERE user_subject = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![subject.as_str(), at])?;
    let sessions = tx
        .prepare_cached(
            "UPDATE login_sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![user.b(), at])?;
    let one_time = tx
        .prepare_cached(
            "UPDATE one_time_tokens SET consumed_at = ?2 WHERE user_id = ?1 AND consumed_at IS NULL",
        )?
        .execute(params![user.b(), at])?;
    Ok(grants + pats + sessions + one_time)
}

pub(crate) fn user_exists(tx: &Connection, id: UserId) -> R<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
        .exists([id.b()])?)
}

fn group_exists(tx: &Connection, id: GroupId) -> R<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
        .exists([id.b()])?)
}

pub(crate) fn user_not_found(id: UserId) -> Error {
    Error::not_found(format!("user {id}"))
}

fn group_not_found(id: GroupId) -> Error {
    Error::not_found(format!("group {id}"))
}

/// Forgets which failures were `user`'s: they no longer count for the user, but still
/// count for their source address (a success on one account must not reset what an
/// address has tried against others) and stay until cleanup deletes them.
fn forget_user_failures(tx: &Connection, user: UserId) -> R<()> {
    tx.prepare_cached("UPDATE login_failures SET user_id = NULL WHERE user_id = ?1")?
        .execute([user.b()])?;
    Ok(())
}

/// A count for [`FailureCounts`], saturating.
fn failures(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// One user by a unique column.
fn find_user(conn: &Connection, sql: &str, key: &dyn rusqlite::ToSql) -> R<Option<User>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row([key], rows::user)
        .optional()?)
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn insert_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        let metadata = rows::enc_json(&user.metadata);
        let username_key = user.username_key();
        let email_key = user.email_key();
        self.inner
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO users (id, username, username_key, email, email_key,
                     email_verified, active, metadata, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    user.id.b(),
                    user.username,
                    username_key,
                    user.email.as_deref(),
                    email_key,
                    user.email_verified,
                    user.active,
                    metadata,
                    us(user.created_at),
                    us(user.updated_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        self.inner.read(|conn| {
            find_user(
                conn,
                concat!("SELECT ", user_cols!(), " FROM users WHERE id = ?1"),
                &id.b(),
            )
        })
    }

    async fn find_user_by_username(&self, username_key: &str) -> Result<Option<User>> {
        self.inner.read(|conn| {
            find_user(
                conn,
                concat!(
                    "SELECT ",
                    user_cols!(),
                    " FROM users WHERE username_key = ?1"
                ),
                &username_key,
            )
        })
    }

    async fn find_user_by_email(&self, email_key: &str) -> Result<Option<User>> {
        self.inner.read(|conn| {
            find_user(
                conn,
                concat!("SELECT ", user_cols!(), " FROM users WHERE email_key = ?1"),
                &email_key,
            )
        })
    }

    async fn update_user(&self, user: &User, audit: AuditEvent) -> Result<()> {
        let metadata = rows::enc_json(&user.metadata);
        let username_key = user.username_key();
        let email_key = user.email_key();
        self.inner
            .write(|tx| {
                // Never `active`: see `set_user_active`.
                let n = tx
                    .prepare_cached(
                        "UPDATE users SET username = ?2, username_key = ?3, email = ?4,
                         email_key = ?5, email_verified = ?6, metadata = ?7, updated_at = ?8
                     WHERE id = ?1",
                    )?
                    .execute(params![
                        user.id.b(),
                        user.username,
                        username_key,
                        user.email.as_deref(),
                        email_key,
                        user.email_verified,
                        metadata,
                        us(user.updated_at),
                    ])?;
                if n == 0 {
                    return Err(user_not_found(user.id).into());
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn set_user_active(&self, id: UserId, active: bool, audit: AuditEvent) -> Result<()> {
        self.inner
            .write(|tx| {
                let flipped = tx
                    .prepare_cached(
                        "UPDATE users SET active = ?2, updated_at = ?3
                     WHERE id = ?1 AND active <> ?2",
                    )?
                    .execute(params![id.b(), active, us(audit.at)])?;
                if flipped == 0 && !user_exists(tx, id)? {
                    return Err(user_not_found(id).into());
                }
                let mut changed = flipped > 0;
                if !active {
                    // Also when the flag was already off: nothing of a disabled user's may
                    // stay valid.
                    changed |= revoke_everything_of(tx, id, us(audit.at))? > 0;
                }
                if changed {
                    insert_audit(tx, &audit)?;
                }
                Ok(())
            })
            .await
    }

    async fn delete_user(&self, id: UserId, audit: AuditEvent) -> Result<bool> {
        // Everything a user held may be a lot of rows: off the async worker.
        self.blocking_write(move |inner, gate| {
            inner.write_gated(gate, |tx| {
                // Memberships, password, login failures, login sessions, one-time tokens,
                // TOTP, recovery codes, passkeys, ceremonies and linked accounts go by
                // cascade (foreign keys to users), in this same transaction.
                let n = tx
                    .prepare_cached("DELETE FROM users WHERE id = ?1")?
                    .execute([id.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                let subject = subject_of(id);
                for sql in [
                    // Codes and tokens go with their grants (cascade).
                    "DELETE FROM grants WHERE subject = ?1",
                    "DELETE FROM personal_access_tokens WHERE user_subject = ?1",
                    "DELETE FROM consents WHERE subject = ?1",
                    "DELETE FROM authorization_sessions WHERE subject = ?1",
                ] {
                    tx.prepare_cached(sql)?.execute([subject.as_str()])?;
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
        search: Option<&str>,
    ) -> Result<Vec<User>> {
        let mut sql = String::from(concat!("SELECT ", user_cols!(), " FROM users WHERE 1 = 1"));
        let mut values: Vec<Value> = Vec::new();
        if let Some(after) = after {
            values.push(Value::Blob(after.b().to_vec()));
            sql.push_str(&format!(" AND id > ?{}", values.len()));
        }
        if let Some(search) = search {
            values.push(Value::Text(search.to_owned()));
            let n = values.len();
            sql.push_str(&format!(
                " AND (instr(username_key, ?{n}) > 0 OR instr(email_key, ?{n}) > 0)"
            ));
        }
        values.push(Value::Integer(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", values.len()));
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_map(params_from_iter(values.iter()), rows::user)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn insert_group(&self, group: &Group, audit: AuditEvent) -> Result<()> {
        let name_key = group.name_key();
        self.inner
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO groups (id, name, name_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    group.id.b(),
                    group.name,
                    name_key,
                    us(group.created_at)
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn get_group(&self, id: GroupId) -> Result<Option<Group>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    group_cols!(),
                    " FROM groups WHERE id = ?1"
                ))?
                .query_row([id.b()], rows::group)
                .optional()?)
        })
    }

    async fn rename_group(&self, id: GroupId, name: &str, audit: AuditEvent) -> Result<()> {
        // The key exactly as `Group::name_key` computes it.
        let name_key = fold_case(name);
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached("UPDATE groups SET name = ?2, name_key = ?3 WHERE id = ?1")?
                    .execute(params![id.b(), name, name_key])?;
                if n == 0 {
                    return Err(group_not_found(id).into());
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn delete_group(&self, id: GroupId, audit: AuditEvent) -> Result<bool> {
        self.inner
            .write(|tx| {
                // Memberships go by cascade.
                let n = tx
                    .prepare_cached("DELETE FROM groups WHERE id = ?1")?
                    .execute([id.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn add_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                if !group_exists(tx, group)? {
                    return Err(group_not_found(group).into());
                }
                if !user_exists(tx, user)? {
                    return Err(user_not_found(user).into());
                }
                let n = tx
                    .prepare_cached(
                        "INSERT INTO group_members (group_id, user_id) VALUES (?1, ?2)
                     ON CONFLICT (group_id, user_id) DO NOTHING",
                    )?
                    .execute(params![group.b(), user.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn remove_group_member(
        &self,
        group: GroupId,
        user: UserId,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                    )?
                    .execute(params![group.b(), user.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT g.id, g.name, g.created_at
                         FROM group_members AS m JOIN groups AS g ON g.id = m.group_id
                         WHERE m.user_id = ?1 ORDER BY g.name_key",
                    )?
                    .query_map([user.b()], rows::group)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn group_members(&self, group: GroupId) -> Result<Vec<User>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT u.id, u.username, u.email, u.email_verified, u.active,
                                u.metadata, u.created_at, u.updated_at
                         FROM group_members AS m JOIN users AS u ON u.id = m.user_id
                         WHERE m.group_id = ?1 ORDER BY m.user_id",
                    )?
                    .query_map([group.b()], rows::user)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn set_password_hash(
        &self,
        user: UserId,
        hash: &PasswordHash,
        revoke_grants: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                if !user_exists(tx, user)? {
                    return Err(user_not_found(user).into());
                }
                tx.prepare_cached(
                    "INSERT INTO passwords (user_id, phc, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET
                         phc = excluded.phc,
                         updated_at = excluded.updated_at",
                )?
                .execute(params![user.b(), hash.as_phc(), us(audit.at)])?;
                forget_user_failures(tx, user)?;
                if revoke_grants {
                    revoke_everything_of(tx, user, us(audit.at))?;
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn get_password_hash(&self, user: UserId) -> Result<Option<PasswordHash>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT phc FROM passwords WHERE user_id = ?1")?
                .query_row([user.b()], |r| r.get::<_, String>(0))
                .optional()?
                .map(PasswordHash::from_phc))
        })
    }

    async fn record_login_attempt(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        success: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let source = source.map(|ip| ip.to_string());
        self.inner
            .write(|tx| {
                match (success, user) {
                    (true, Some(user)) => forget_user_failures(tx, user)?,
                    (true, None) => {}
                    (false, _) => {
                        // Only a stored user is referenced: a user deleted meanwhile
                        // would break the foreign key.
                        tx.prepare_cached(
                            "INSERT INTO login_failures (user_id, source, at)
                             VALUES ((SELECT id FROM users WHERE id = ?1), ?2, ?3)",
                        )?
                        .execute(params![
                            user.as_ref().map(Bytes::b),
                            source.as_deref(),
                            us(audit.at)
                        ])?;
                    }
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn login_failures(
        &self,
        user: Option<UserId>,
        source: Option<IpAddr>,
        since: Timestamp,
    ) -> Result<FailureCounts> {
        let source = source.map(|ip| ip.to_string());
        self.inner.read(|conn| {
            let mut counts = FailureCounts::default();
            if let Some(user) = user {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM login_failures WHERE user_id = ?1 AND at >= ?2",
                    )?
                    .query_row(params![user.b(), us(since)], |r| r.get(0))?;
                counts.user = failures(n);
            }
            if let Some(source) = &source {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM login_failures WHERE source = ?1 AND at >= ?2",
                    )?
                    .query_row(params![source, us(since)], |r| r.get(0))?;
                counts.source = failures(n);
            }
            Ok(counts)
        })
    }
}
