//! The store traits on [`SqliteStore`].

use async_trait::async_trait;
use authstore_core::backend::{
    AuditStore, AuthorizationSessionStore, ClientStore, CodeConsumption, ConsentStore, GrantStore,
    PatStore, RevokeOutcome, Rotation, RotationMode, TokenIssue,
};
use authstore_core::{
    AccessToken, AuditEvent, AuditEventId, AuditQuery, AuthorizationCode, AuthorizationSession,
    Backend, Client, ClientId, Consent, Error, Grant, GrantId, PatId, PersonalAccessToken,
    RefreshToken, RefreshTokenState, Result, Scopes, Subject, Timestamp, TokenHash,
};
use authstore_core::{GroupId, LinkedAccountId, LoginSessionId, UserId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::db::R;
use crate::rows::{
    self, audit_cols, client_cols, code_cols, consent_cols, grant_cols, pat_cols, session_cols,
};
use crate::{BACKEND, SqliteStore};

/// One token issue waiting for a group commit, and where its answer goes.
pub(crate) struct PendingIssue {
    pub(crate) issue: TokenIssue,
    pub(crate) audit: AuditEvent,
    reply: Option<tokio::sync::oneshot::Sender<Result<()>>>,
    receiver: Option<tokio::sync::oneshot::Receiver<Result<()>>>,
}

impl PendingIssue {
    pub(crate) fn new(issue: TokenIssue, audit: AuditEvent) -> Self {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        Self {
            issue,
            audit,
            reply: Some(reply),
            receiver: Some(receiver),
        }
    }

    /// The receiving end, taken once by the caller before the item is queued.
    pub(crate) fn take_receiver(&mut self) -> tokio::sync::oneshot::Receiver<Result<()>> {
        match self.receiver.take() {
            Some(r) => r,
            // Taken twice is a bug of this module; an already-closed channel makes the
            // caller see "no answer" rather than hang.
            None => tokio::sync::oneshot::channel().1,
        }
    }

    /// Sends the outcome (a caller that went away does not care).
    pub(crate) fn answer(mut self, r: Result<()>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(r);
        }
    }
}

/// One token issue inside a write transaction (or savepoint): the grant first when new,
/// then the live-grant check, the tokens and the audit event.
pub(crate) fn issue_one(tx: &Connection, issue: &TokenIssue, audit: &AuditEvent) -> R<()> {
    if let Some(g) = &issue.new_grant {
        same_grant(issue.grant_id, g.id)?;
        if !insert_grant_if_client_active(tx, g)? {
            return Err(Error::Inactive { kind: "grant" }.into());
        }
    }
    let Some(client) = live_grant_client(tx, issue.grant_id)? else {
        return Err(Error::Inactive { kind: "grant" }.into());
    };
    if let Some((hash, t)) = &issue.access {
        same_grant(issue.grant_id, t.grant_id)?;
        same_client(client, t.client_id)?;
        insert_access(tx, hash, t)?;
    }
    if let Some((hash, t)) = &issue.refresh {
        same_grant(issue.grant_id, t.grant_id)?;
        same_client(client, t.client_id)?;
        insert_refresh(tx, hash, t)?;
    }
    insert_audit(tx, audit)
}

/// Raw bytes of ids and hashes, as stored.
pub(crate) trait Bytes {
    fn b(&self) -> &[u8];
}

macro_rules! id_bytes {
    ($($t:ty),*) => {$(
        impl Bytes for $t {
            fn b(&self) -> &[u8] {
                self.as_uuid().as_bytes()
            }
        }
    )*};
}
id_bytes!(
    ClientId,
    GrantId,
    PatId,
    AuditEventId,
    UserId,
    GroupId,
    LoginSessionId,
    LinkedAccountId
);

impl Bytes for TokenHash {
    fn b(&self) -> &[u8] {
        self.as_bytes()
    }
}

pub(crate) fn us(t: Timestamp) -> i64 {
    t.as_unix_micros()
}

pub(crate) fn opt_us(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_unix_micros)
}

fn subj(s: Option<&Subject>) -> Option<&str> {
    s.map(Subject::as_str)
}

/// Writes `e` (in the caller's transaction).
pub(crate) fn insert_audit(conn: &Connection, e: &AuditEvent) -> R<()> {
    conn.prepare_cached(
        "INSERT INTO audit_events (id, at, kind, actor, subject, client_id, grant_id, ip, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        e.id.b(),
        us(e.at),
        e.kind.as_str(),
        e.actor.as_deref(),
        subj(e.subject.as_ref()),
        e.client_id.as_ref().map(Bytes::b),
        e.grant_id.as_ref().map(Bytes::b),
        e.ip.map(|ip| ip.to_string()),
        rows::enc_json(&e.details),
    ])?;
    Ok(())
}

/// Inserts `g` if its client exists and is enabled; `false` (nothing written) otherwise.
fn insert_grant_if_client_active(conn: &Connection, g: &Grant) -> R<bool> {
    let auth = rows::enc_auth(&g.auth)?;
    let n = conn
        .prepare_cached(
            "INSERT INTO grants (id, client_id, subject, scope, auth, created_at, revoked_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
             WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?2 AND disabled = 0)",
        )?
        .execute(params![
            g.id.b(),
            g.client_id.b(),
            subj(g.subject.as_ref()),
            g.scope.to_string(),
            auth,
            us(g.created_at),
            opt_us(g.revoked_at),
        ])?;
    Ok(n == 1)
}

/// The client of the grant if the grant exists, is unrevoked and its client enabled.
fn live_grant_client(conn: &Connection, id: GrantId) -> R<Option<ClientId>> {
    Ok(conn
        .prepare_cached(
            // A correlated subquery, not a JOIN: with the JOIN, SQLite re-prepared this
            // statement on every execution (about 80k instructions per issued token,
            // measured with callgrind).
            "SELECT g.client_id FROM grants AS g
             WHERE g.id = ?1 AND g.revoked_at IS NULL
               AND (SELECT c.disabled = 0 FROM clients AS c WHERE c.id = g.client_id)",
        )?
        .query_row([id.b()], |r| rows::client_id(r, 0))
        .optional()?)
}

fn same_client(expected: ClientId, got: ClientId) -> R<()> {
    if expected != got {
        return Err(Error::invalid(
            "client_id",
            "the tokens must belong to the client of their grant",
        )
        .into());
    }
    Ok(())
}

/// Fills what an event is about from the record it concerns, where the caller left it
/// unset (the caller may know only a hash).
fn describe(
    mut e: AuditEvent,
    grant: GrantId,
    client: ClientId,
    subject: Option<Subject>,
) -> AuditEvent {
    e.grant_id.get_or_insert(grant);
    e.client_id.get_or_insert(client);
    if e.subject.is_none() {
        e.subject = subject;
    }
    e
}

fn insert_access(conn: &Connection, hash: &TokenHash, t: &AccessToken) -> R<()> {
    let (cnf_kind, cnf_value) = rows::enc_cnf(t.cnf.as_ref());
    conn.prepare_cached(
        "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
             issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        hash.b(),
        t.grant_id.b(),
        t.client_id.b(),
        subj(t.subject.as_ref()),
        t.scope.to_string(),
        rows::enc_audience(&t.audience)?,
        us(t.issued_at),
        us(t.expires_at),
        opt_us(t.revoked_at),
        cnf_kind,
        cnf_value,
        rows::enc_auth(&t.auth)?,
        rows::enc_json(&t.claims),
    ])?;
    Ok(())
}

fn insert_refresh(conn: &Connection, hash: &TokenHash, t: &RefreshToken) -> R<()> {
    let (cnf_kind, cnf_value) = rows::enc_cnf(t.cnf.as_ref());
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
             expires_at, idle_expires_at, rotated_at, successor, reuse_count, revoked_at,
             cnf_kind, cnf_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        hash.b(),
        t.grant_id.b(),
        t.client_id.b(),
        subj(t.subject.as_ref()),
        t.scope.to_string(),
        us(t.issued_at),
        us(t.expires_at),
        us(t.idle_expires_at),
        opt_us(t.rotated_at),
        t.successor.as_ref().map(Bytes::b),
        i64::from(t.reuse_count),
        opt_us(t.revoked_at),
        cnf_kind,
        cnf_value,
    ])?;
    Ok(())
}

fn same_grant(expected: GrantId, got: GrantId) -> R<()> {
    if expected != got {
        return Err(Error::invalid(
            "grant_id",
            "the tokens must belong to the grant they are issued into",
        )
        .into());
    }
    Ok(())
}

/// Encoded client columns (everything but id, secret and created_at).
struct ClientEnc {
    redirect_uris: String,
    grant_types: String,
    scopes: String,
    lifetimes: [Option<i64>; 4],
    metadata: String,
}

impl ClientEnc {
    fn new(c: &Client) -> Result<Self> {
        Ok(Self {
            redirect_uris: rows::enc_redirect_uris(&c.redirect_uris)?,
            grant_types: rows::enc_grant_types(&c.grant_types),
            scopes: c.scopes.to_string(),
            lifetimes: [
                rows::enc_lifetime("lifetimes.access_token", c.lifetimes.access_token)?,
                rows::enc_lifetime("lifetimes.refresh_token", c.lifetimes.refresh_token)?,
                rows::enc_lifetime("lifetimes.refresh_idle", c.lifetimes.refresh_idle)?,
                rows::enc_lifetime(
                    "lifetimes.authorization_code",
                    c.lifetimes.authorization_code,
                )?,
            ],
            metadata: rows::enc_json(&c.metadata),
        })
    }
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn insert_client(
        &self,
        client: &Client,
        secret_hash: Option<&TokenHash>,
        audit: AuditEvent,
    ) -> Result<()> {
        let enc = ClientEnc::new(client)?;
        self.inner
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO clients (id, name, client_type, secret_hash, redirect_uris,
                     grant_types, scopes, token_endpoint_auth_method, access_token_ttl_us,
                     refresh_token_ttl_us, refresh_idle_ttl_us, authorization_code_ttl_us,
                     metadata, created_at, updated_at, disabled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )?
                .execute(params![
                    client.id.b(),
                    client.name,
                    client.client_type.as_str(),
                    secret_hash.map(Bytes::b),
                    enc.redirect_uris,
                    enc.grant_types,
                    enc.scopes,
                    client.token_endpoint_auth_method.as_str(),
                    enc.lifetimes[0],
                    enc.lifetimes[1],
                    enc.lifetimes[2],
                    enc.lifetimes[3],
                    enc.metadata,
                    us(client.created_at),
                    us(client.updated_at),
                    client.disabled,
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn get_client(&self, id: ClientId) -> Result<Option<Client>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    client_cols!(),
                    " FROM clients WHERE id = ?1"
                ))?
                .query_row([id.b()], rows::client)
                .optional()?)
        })
    }

    async fn get_client_with_secret(
        &self,
        id: ClientId,
    ) -> Result<Option<(Client, Option<TokenHash>)>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    client_cols!(),
                    ", secret_hash FROM clients WHERE id = ?1"
                ))?
                .query_row([id.b()], |row| {
                    let secret = match row.get_ref(15)? {
                        rusqlite::types::ValueRef::Null => None,
                        _ => Some(rows::hash(row, 15)?),
                    };
                    Ok((rows::client(row)?, secret))
                })
                .optional()?)
        })
    }

    async fn update_client(&self, client: &Client, audit: AuditEvent) -> Result<()> {
        let enc = ClientEnc::new(client)?;
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE clients SET name = ?2, client_type = ?3, redirect_uris = ?4,
                         grant_types = ?5, scopes = ?6, token_endpoint_auth_method = ?7,
                         access_token_ttl_us = ?8, refresh_token_ttl_us = ?9,
                         refresh_idle_ttl_us = ?10, authorization_code_ttl_us = ?11,
                         metadata = ?12, updated_at = ?13
                     WHERE id = ?1",
                    )?
                    .execute(params![
                        client.id.b(),
                        client.name,
                        client.client_type.as_str(),
                        enc.redirect_uris,
                        enc.grant_types,
                        enc.scopes,
                        client.token_endpoint_auth_method.as_str(),
                        enc.lifetimes[0],
                        enc.lifetimes[1],
                        enc.lifetimes[2],
                        enc.lifetimes[3],
                        enc.metadata,
                        us(client.updated_at),
                    ])?;
                if n == 0 {
                    return Err(Error::not_found(format!("client {}", client.id)).into());
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn set_client_disabled(
        &self,
        id: ClientId,
        disabled: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE clients SET disabled = ?2, updated_at = ?3
                     WHERE id = ?1 AND disabled <> ?2",
                    )?
                    .execute(params![id.b(), disabled, us(audit.at)])?;
                if n == 0 {
                    let exists = tx
                        .prepare_cached("SELECT 1 FROM clients WHERE id = ?1")?
                        .exists([id.b()])?;
                    if !exists {
                        return Err(Error::not_found(format!("client {id}")).into());
                    }
                    return Ok(());
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn list_clients(&self, after: Option<ClientId>, limit: u32) -> Result<Vec<Client>> {
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                let limit = i64::from(limit);
                let out = match after {
                    Some(after) => conn
                        .prepare_cached(concat!(
                            "SELECT ",
                            client_cols!(),
                            " FROM clients WHERE id > ?1 ORDER BY id LIMIT ?2"
                        ))?
                        .query_map(params![after.b(), limit], rows::client)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                    None => conn
                        .prepare_cached(concat!(
                            "SELECT ",
                            client_cols!(),
                            " FROM clients ORDER BY id LIMIT ?1"
                        ))?
                        .query_map([limit], rows::client)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                };
                Ok(out)
            })
        })
        .await
    }

    async fn delete_client(&self, id: ClientId, audit: AuditEvent) -> Result<bool> {
        // The cascade may be large: off the async worker.
        self.blocking_write(move |inner, gate| {
            inner.write_gated(gate, |tx| {
                let n = tx
                    .prepare_cached("DELETE FROM clients WHERE id = ?1")?
                    .execute([id.b()])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
        })
        .await
    }

    async fn set_client_secret_hash(
        &self,
        id: ClientId,
        secret_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE clients SET secret_hash = ?2, updated_at = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id.b(), secret_hash.b(), us(audit.at)])?;
                if n == 0 {
                    return Err(Error::not_found(format!("client {id}")).into());
                }
                insert_audit(tx, &audit)
            })
            .await
    }
}

/// The statements of a single-token revocation (RFC 7009) on one token table.
struct Revocation {
    /// Finds the token's grant, client and subject.
    find: &'static str,
    /// Marks it revoked.
    revoke: &'static str,
    /// Whether the token's whole grant goes too (refresh tokens, RFC 7009 §2.1).
    whole_grant: bool,
}

const ACCESS_REVOCATION: Revocation = Revocation {
    find: "SELECT grant_id, client_id, subject FROM access_tokens WHERE hash = ?1",
    revoke: "UPDATE access_tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
    whole_grant: false,
};

const REFRESH_REVOCATION: Revocation = Revocation {
    find: "SELECT grant_id, client_id, subject FROM refresh_tokens WHERE hash = ?1",
    revoke: "UPDATE refresh_tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
    whole_grant: true,
};

impl SqliteStore {
    /// Revokes one token: checks its owner, marks it revoked and, for refresh tokens, its
    /// grant; writes the event only if something changed.
    async fn revoke_one(
        &self,
        r: &Revocation,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        self.inner
            .write(|tx| {
                let found = tx
                    .prepare_cached(r.find)?
                    .query_row([hash.b()], |row| {
                        Ok((
                            rows::grant_id(row, 0)?,
                            rows::client_id(row, 1)?,
                            rows::opt_subject(row, 2)?,
                        ))
                    })
                    .optional()?;
                let Some((grant_id, owner, subject)) = found else {
                    return Ok(RevokeOutcome::NotFound);
                };
                if client.is_some_and(|c| c != owner) {
                    return Ok(RevokeOutcome::WrongClient);
                }
                let audit = describe(audit, grant_id, owner, subject);
                let now = us(audit.at);
                let mut changed = tx
                    .prepare_cached(r.revoke)?
                    .execute(params![hash.b(), now])?;
                if r.whole_grant {
                    changed += revoke_grant_stmt(tx, grant_id, now)?;
                }
                if changed > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(RevokeOutcome::Revoked { grant_id })
            })
            .await
    }
}

#[async_trait]
impl GrantStore for SqliteStore {
    async fn issue_code(
        &self,
        grant: &Grant,
        code_hash: &TokenHash,
        code: &AuthorizationCode,
        audit: AuditEvent,
    ) -> Result<()> {
        let (challenge, method) = rows::enc_pkce(code.code_challenge.as_ref());
        self.inner
            .write(|tx| {
                same_grant(grant.id, code.grant_id)?;
                same_client(grant.client_id, code.client_id)?;
                if grant.revoked_at.is_some() || !insert_grant_if_client_active(tx, grant)? {
                    return Err(Error::Inactive { kind: "grant" }.into());
                }
                tx.prepare_cached(
                "INSERT INTO authorization_codes (hash, grant_id, client_id, subject, redirect_uri,
                     scope, code_challenge, code_challenge_method, nonce, issued_at, expires_at,
                     consumed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                code_hash.b(),
                code.grant_id.b(),
                code.client_id.b(),
                code.subject.as_str(),
                code.redirect_uri.as_str(),
                code.scope.to_string(),
                challenge,
                method,
                code.nonce.as_deref(),
                us(code.issued_at),
                us(code.expires_at),
                opt_us(code.consumed_at),
            ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn consume_code(
        &self,
        code_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<CodeConsumption> {
        let now = us(audit.at);
        self.inner
            .write(|tx| {
                let consumed = tx
                    .prepare_cached(concat!(
                        "UPDATE authorization_codes SET consumed_at = ?2
                     WHERE hash = ?1 AND consumed_at IS NULL AND expires_at > ?2
                       AND (SELECT g.revoked_at IS NULL FROM grants AS g
                            WHERE g.id = authorization_codes.grant_id)
                       AND (SELECT c.disabled = 0 FROM clients AS c
                            WHERE c.id = authorization_codes.client_id)
                     RETURNING ",
                        code_cols!()
                    ))?
                    .query_row(params![code_hash.b(), now], rows::code)
                    .optional()?;
                if let Some(code) = consumed {
                    // The caller knows only the code: the event gets what it belongs to.
                    let audit = describe(
                        audit,
                        code.grant_id,
                        code.client_id,
                        Some(code.subject.clone()),
                    );
                    insert_audit(tx, &audit)?;
                    return Ok(CodeConsumption::Consumed(code));
                }
                let seen = tx
                    .prepare_cached(
                        "SELECT grant_id, consumed_at IS NOT NULL FROM authorization_codes
                     WHERE hash = ?1",
                    )?
                    .query_row([code_hash.b()], |r| {
                        Ok((rows::grant_id(r, 0)?, r.get::<_, bool>(1)?))
                    })
                    .optional()?;
                Ok(match seen {
                    Some((grant_id, true)) => CodeConsumption::AlreadyConsumed { grant_id },
                    _ => CodeConsumption::Inactive,
                })
            })
            .await
    }

    async fn issue_tokens(&self, issue: &TokenIssue, audit: AuditEvent) -> Result<()> {
        self.inner
            .issue_queued(PendingIssue::new(issue.clone(), audit))
            .await
    }

    async fn get_grant(&self, id: GrantId) -> Result<Option<Grant>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    grant_cols!(),
                    " FROM grants WHERE id = ?1"
                ))?
                .query_row([id.b()], |r| rows::grant(r, 0))
                .optional()?)
        })
    }

    async fn find_access_token(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AccessToken>> {
        // The hot path: one statement, no write. The grant and client checks are correlated
        // scalar subqueries (NULL, so false, when the row is missing): measured ~7x faster
        // than the equivalent inner joins on this SQLite (233 k/s vs 33 k/s, 300k tokens),
        // within 10% of the bare primary-key lookup.
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT a.grant_id, a.client_id, a.subject, a.scope, a.audience, a.issued_at,
                            a.expires_at, a.revoked_at, a.cnf_kind, a.cnf_value, a.auth, a.claims
                     FROM access_tokens AS a
                     WHERE a.hash = ?1 AND a.expires_at > ?2 AND a.revoked_at IS NULL
                       AND (SELECT g.revoked_at IS NULL FROM grants AS g
                            WHERE g.id = a.grant_id)
                       AND (SELECT c.disabled = 0 FROM clients AS c WHERE c.id = a.client_id)",
                )?
                .query_row(params![hash.b(), us(now)], rows::access_token)
                .optional()?)
        })
    }

    async fn find_refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenState>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT r.grant_id, r.client_id, r.subject, r.scope, r.issued_at,
                            r.expires_at, r.idle_expires_at, r.rotated_at, r.successor,
                            r.reuse_count, r.revoked_at, r.cnf_kind, r.cnf_value,
                            g.id, g.client_id, g.subject, g.scope, g.auth, g.created_at,
                            g.revoked_at, c.disabled
                     FROM refresh_tokens AS r
                     JOIN grants AS g ON g.id = r.grant_id
                     JOIN clients AS c ON c.id = r.client_id
                     WHERE r.hash = ?1",
                )?
                .query_row([hash.b()], |r| {
                    Ok(RefreshTokenState {
                        token: rows::refresh_token(r)?,
                        grant: rows::grant(r, 13)?,
                        client_disabled: r.get::<_, i64>(20)? != 0,
                    })
                })
                .optional()?)
        })
    }

    async fn rotate_refresh_token(&self, rotation: &Rotation, audit: AuditEvent) -> Result<bool> {
        let now = us(audit.at);
        let (new_hash, new_refresh) = &rotation.refresh;
        let (access_hash, access) = &rotation.access;
        self.inner
            .write(|tx| {
                let grant = match rotation.mode {
                    RotationMode::First => tx
                        .prepare_cached(
                            "UPDATE refresh_tokens SET rotated_at = ?2, successor = ?3
                         WHERE hash = ?1 AND rotated_at IS NULL AND revoked_at IS NULL
                           AND expires_at > ?2 AND idle_expires_at > ?2
                           AND (SELECT g.revoked_at IS NULL FROM grants AS g
                                WHERE g.id = refresh_tokens.grant_id)
                           AND (SELECT c.disabled = 0 FROM clients AS c
                                WHERE c.id = refresh_tokens.client_id)
                         RETURNING grant_id, client_id",
                        )?
                        .query_row(params![rotation.presented.b(), now, new_hash.b()], owner)
                        .optional()?,
                    RotationMode::Grace {
                        rotated_since,
                        max_reuses,
                    } => tx
                        .prepare_cached(
                            "UPDATE refresh_tokens SET reuse_count = reuse_count + 1
                         WHERE hash = ?1 AND rotated_at IS NOT NULL AND rotated_at >= ?3
                           AND reuse_count < ?4 AND revoked_at IS NULL
                           AND expires_at > ?2 AND idle_expires_at > ?2
                           AND (SELECT g.revoked_at IS NULL FROM grants AS g
                                WHERE g.id = refresh_tokens.grant_id)
                           AND (SELECT c.disabled = 0 FROM clients AS c
                                WHERE c.id = refresh_tokens.client_id)
                         RETURNING grant_id, client_id",
                        )?
                        .query_row(
                            params![rotation.presented.b(), now, us(rotated_since), max_reuses],
                            owner,
                        )
                        .optional()?,
                };
                let Some((grant, client)) = grant else {
                    return Ok(false);
                };
                same_grant(grant, new_refresh.grant_id)?;
                same_grant(grant, access.grant_id)?;
                same_client(client, new_refresh.client_id)?;
                same_client(client, access.client_id)?;
                insert_refresh(tx, new_hash, new_refresh)?;
                insert_access(tx, access_hash, access)?;
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn revoke_access_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        self.revoke_one(&ACCESS_REVOCATION, hash, client, audit)
            .await
    }

    async fn revoke_refresh_token(
        &self,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        self.revoke_one(&REFRESH_REVOCATION, hash, client, audit)
            .await
    }

    async fn revoke_grant(&self, id: GrantId, audit: AuditEvent) -> Result<bool> {
        self.inner
            .write(|tx| {
                if revoke_grant_stmt(tx, id, us(audit.at))? > 0 {
                    insert_audit(tx, &audit)?;
                    return Ok(true);
                }
                Ok(tx
                    .prepare_cached("SELECT 1 FROM grants WHERE id = ?1")?
                    .query_row([id.b()], |_| Ok(()))
                    .optional()?
                    .is_some())
            })
            .await
    }

    async fn revoke_grants_by_client(&self, client: ClientId, audit: AuditEvent) -> Result<u64> {
        // One set-based statement, possibly over many rows: off the async worker.
        self.blocking_write(move |inner, gate| {
            inner.write_gated(gate, |tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE grants SET revoked_at = ?2 WHERE client_id = ?1 AND revoked_at IS NULL",
                    )?
                    .execute(params![client.b(), us(audit.at)])?;
                if n > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(n as u64)
            })
        })
        .await
    }

    async fn revoke_grants_by_subject(&self, subject: &Subject, audit: AuditEvent) -> Result<u64> {
        self.inner
            .write(|tx| {
                let n = tx
                .prepare_cached(
                    "UPDATE grants SET revoked_at = ?2 WHERE subject = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![subject.as_str(), us(audit.at)])?;
                if n > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(n as u64)
            })
            .await
    }
}

/// `(grant_id, client_id)` of a `RETURNING grant_id, client_id`.
fn owner(r: &rusqlite::Row<'_>) -> rusqlite::Result<(GrantId, ClientId)> {
    Ok((rows::grant_id(r, 0)?, rows::client_id(r, 1)?))
}

fn revoke_grant_stmt(conn: &Connection, id: GrantId, now: i64) -> R<usize> {
    Ok(conn
        .prepare_cached("UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
        .execute(params![id.b(), now])?)
}

#[async_trait]
impl PatStore for SqliteStore {
    async fn insert_pat(
        &self,
        hash: &TokenHash,
        pat: &PersonalAccessToken,
        audit: AuditEvent,
    ) -> Result<()> {
        self.inner
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO personal_access_tokens (id, hash, user_subject, name, scope,
                     created_at, expires_at, last_used_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    pat.id.b(),
                    hash.b(),
                    pat.user.as_str(),
                    pat.name,
                    pat.scope.to_string(),
                    us(pat.created_at),
                    opt_us(pat.expires_at),
                    opt_us(pat.last_used_at),
                    opt_us(pat.revoked_at),
                ])?;
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn find_pat(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<PersonalAccessToken>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    pat_cols!(),
                    " FROM personal_access_tokens
                     WHERE hash = ?1 AND revoked_at IS NULL
                       AND (expires_at IS NULL OR expires_at > ?2)"
                ))?
                .query_row(params![hash.b(), us(now)], rows::pat)
                .optional()?)
        })
    }

    async fn list_pats(&self, user: &Subject) -> Result<Vec<PersonalAccessToken>> {
        let user = user.clone();
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(concat!(
                        "SELECT ",
                        pat_cols!(),
                        " FROM personal_access_tokens WHERE user_subject = ?1 ORDER BY id"
                    ))?
                    .query_map([user.as_str()], rows::pat)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }

    async fn revoke_pat(
        &self,
        id: PatId,
        user: Option<&Subject>,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let owner = tx
                    .prepare_cached(
                        "SELECT user_subject FROM personal_access_tokens WHERE id = ?1",
                    )?
                    .query_row([id.b()], |r| rows::subject(r, 0))
                    .optional()?;
                let Some(owner) = owner else { return Ok(false) };
                if user.is_some_and(|u| *u != owner) {
                    return Ok(false);
                }
                let n = tx
                    .prepare_cached(
                        "UPDATE personal_access_tokens SET revoked_at = ?2
                     WHERE id = ?1 AND revoked_at IS NULL",
                    )?
                    .execute(params![id.b(), us(audit.at)])?;
                if n > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(true)
            })
            .await
    }

    async fn record_pat_usage(&self, usage: &[(PatId, Timestamp)]) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        if usage.len() <= PAT_USAGE_CHUNK {
            // A short flush: one transaction, inline.
            return self
                .inner
                .write(|tx| record_pat_usage_chunk(tx, usage))
                .await;
        }
        // A long one: on a blocking thread, in bounded transactions, taking the writer gate
        // per chunk so other writers interleave.
        let usage = usage.to_vec();
        self.blocking(move |inner| {
            for chunk in usage.chunks(PAT_USAGE_CHUNK) {
                let gate = inner.gate_blocking()?;
                inner.write_gated(&gate, |tx| record_pat_usage_chunk(tx, chunk))?;
            }
            Ok(())
        })
        .await
    }
}

/// The most PAT usage updates in one transaction; a longer flush runs off the async worker.
const PAT_USAGE_CHUNK: usize = 500;

fn record_pat_usage_chunk(tx: &Connection, usage: &[(PatId, Timestamp)]) -> R<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE personal_access_tokens SET last_used_at = ?2
         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
    )?;
    for (id, at) in usage {
        stmt.execute(params![id.b(), us(*at)])?;
    }
    Ok(())
}

#[async_trait]
impl AuthorizationSessionStore for SqliteStore {
    async fn insert_authorization_session(
        &self,
        hash: &TokenHash,
        session: &AuthorizationSession,
        audit: AuditEvent,
    ) -> Result<()> {
        let (challenge, method) = rows::enc_pkce(session.code_challenge.as_ref());
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "INSERT INTO authorization_sessions (hash, client_id, redirect_uri, scope,
                         state, code_challenge, code_challenge_method, nonce, subject,
                         created_at, expires_at, completed_at)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12
                     WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?2)",
                    )?
                    .execute(params![
                        hash.b(),
                        session.client_id.b(),
                        session.redirect_uri.as_str(),
                        session.scope.to_string(),
                        session.state.as_deref(),
                        challenge,
                        method,
                        session.nonce.as_deref(),
                        subj(session.subject.as_ref()),
                        us(session.created_at),
                        us(session.expires_at),
                        opt_us(session.completed_at),
                    ])?;
                if n == 0 {
                    return Err(Error::not_found(format!("client {}", session.client_id)).into());
                }
                insert_audit(tx, &audit)
            })
            .await
    }

    async fn find_authorization_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AuthorizationSession>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM authorization_sessions
                     WHERE hash = ?1 AND expires_at > ?2 AND completed_at IS NULL"
                ))?
                .query_row(params![hash.b(), us(now)], rows::session)
                .optional()?)
        })
    }

    async fn set_authorization_session_subject(
        &self,
        hash: &TokenHash,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE authorization_sessions SET subject = ?2
                     WHERE hash = ?1 AND expires_at > ?3 AND completed_at IS NULL
                       AND subject IS NULL",
                    )?
                    .execute(params![hash.b(), subject.as_str(), us(audit.at)])?;
                if n == 0 {
                    // Already attached to the same subject: true, but nothing changed, no event.
                    let same = tx
                        .prepare_cached(
                            "SELECT 1 FROM authorization_sessions
                         WHERE hash = ?1 AND expires_at > ?3 AND completed_at IS NULL
                           AND subject = ?2",
                        )?
                        .exists(params![hash.b(), subject.as_str(), us(audit.at)])?;
                    return Ok(same);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }

    async fn complete_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<Option<AuthorizationSession>> {
        self.inner
            .write(|tx| {
                let done = tx
                    .prepare_cached(concat!(
                        "UPDATE authorization_sessions SET completed_at = ?2
                     WHERE hash = ?1 AND expires_at > ?2 AND completed_at IS NULL
                       AND subject IS NOT NULL
                     RETURNING ",
                        session_cols!()
                    ))?
                    .query_row(params![hash.b(), us(audit.at)], rows::session)
                    .optional()?;
                if done.is_some() {
                    insert_audit(tx, &audit)?;
                }
                Ok(done)
            })
            .await
    }

    async fn expire_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE authorization_sessions SET expires_at = ?2
                     WHERE hash = ?1 AND expires_at > ?2 AND completed_at IS NULL",
                    )?
                    .execute(params![hash.b(), us(audit.at)])?;
                if n == 0 {
                    return Ok(false);
                }
                insert_audit(tx, &audit)?;
                Ok(true)
            })
            .await
    }
}

#[async_trait]
impl ConsentStore for SqliteStore {
    async fn merge_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        scope: &Scopes,
        audit: AuditEvent,
    ) -> Result<Consent> {
        self.inner
            .write(|tx| {
                let old = tx
                    .prepare_cached(concat!(
                        "SELECT ",
                        consent_cols!(),
                        " FROM consents WHERE client_id = ?1 AND subject = ?2"
                    ))?
                    .query_row(params![client.b(), subject.as_str()], rows::consent)
                    .optional()?;
                let merged = match old {
                    Some(old) => Consent {
                        scope: old.scope.union(scope),
                        updated_at: audit.at,
                        ..old
                    },
                    None => Consent {
                        client_id: client,
                        subject: subject.clone(),
                        scope: scope.clone(),
                        granted_at: audit.at,
                        updated_at: audit.at,
                    },
                };
                let n = tx
                    .prepare_cached(
                        "INSERT INTO consents (client_id, subject, scope, granted_at, updated_at)
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?1)
                     ON CONFLICT (client_id, subject) DO UPDATE SET
                         scope = excluded.scope,
                         updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        client.b(),
                        subject.as_str(),
                        merged.scope.to_string(),
                        us(merged.granted_at),
                        us(merged.updated_at),
                    ])?;
                if n == 0 {
                    return Err(Error::not_found(format!("client {client}")).into());
                }
                insert_audit(tx, &audit)?;
                Ok(merged)
            })
            .await
    }

    async fn get_consent(&self, client: ClientId, subject: &Subject) -> Result<Option<Consent>> {
        self.inner.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    consent_cols!(),
                    " FROM consents WHERE client_id = ?1 AND subject = ?2"
                ))?
                .query_row(params![client.b(), subject.as_str()], rows::consent)
                .optional()?)
        })
    }

    async fn delete_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        self.inner
            .write(|tx| {
                let deleted = tx
                    .prepare_cached("DELETE FROM consents WHERE client_id = ?1 AND subject = ?2")?
                    .execute(params![client.b(), subject.as_str()])?;
                let revoked = tx
                    .prepare_cached(
                        "UPDATE grants SET revoked_at = ?3
                     WHERE client_id = ?1 AND subject = ?2 AND revoked_at IS NULL",
                    )?
                    .execute(params![client.b(), subject.as_str(), us(audit.at)])?;
                if deleted + revoked > 0 {
                    insert_audit(tx, &audit)?;
                }
                Ok(deleted > 0)
            })
            .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = query.effective_limit()?;
        let mut sql = String::from(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_events WHERE 1 = 1"
        ));
        let mut values: Vec<Value> = Vec::new();
        let mut filter = |cond: &str, v: Value| {
            values.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", values.len()));
        };
        if let Some(k) = query.kind {
            filter("kind =", Value::Text(k.as_str().to_owned()));
        }
        if let Some(s) = &query.subject {
            filter("subject =", Value::Text(s.as_str().to_owned()));
        }
        if let Some(c) = &query.client_id {
            filter("client_id =", Value::Blob(c.b().to_vec()));
        }
        if let Some(t) = query.since {
            filter("at >=", Value::Integer(us(t)));
        }
        if let Some(t) = query.until {
            filter("at <", Value::Integer(us(t)));
        }
        if let Some(a) = &query.after {
            filter("id >", Value::Blob(a.b().to_vec()));
        }
        values.push(Value::Integer(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", values.len()));
        self.blocking(move |inner| {
            inner.read_long(|conn| {
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_map(params_from_iter(values.iter()), rows::audit)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
    }
}

impl Backend for SqliteStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }
}
