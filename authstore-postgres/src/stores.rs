//! The store traits on [`PostgresStore`].

use async_trait::async_trait;
use authstore_core::backend::{
    AuditStore, AuthorizationSessionStore, ClientStore, CodeConsumption, ConsentStore, GrantStore,
    PatStore, RevokeOutcome, Rotation, RotationMode, TokenIssue,
};
use authstore_core::{
    AccessToken, AuditEvent, AuditQuery, AuthContext, AuthorizationCode, AuthorizationSession,
    Backend, Client, ClientId, Consent, Error, Grant, GrantId, PatId, PersonalAccessToken,
    RefreshToken, RefreshTokenState, Result, Scopes, Subject, Timestamp, TokenHash,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::db::{Db, Ts, json_no_nul, no_nul, no_nul_opt, opt_ts, ts};
use crate::rows::{
    self, audit_cols, client_cols, code_cols, consent_cols, grant_cols, pat_cols, session_cols,
};
use crate::{BACKEND, Inner, PostgresStore};

/// One statement parameter.
pub(crate) type P<'a> = &'a (dyn ToSql + Sync);

/// Runs `sql` (prepared once per connection) and returns the rows it changed.
pub(crate) async fn exec<C: GenericClient>(c: &C, sql: &str, p: &[P<'_>]) -> Result<u64> {
    let st = c.prepare_cached(sql).await.db()?;
    c.execute(&st, p).await.db()
}

/// Runs `sql` (prepared once per connection) and returns its row, if any.
pub(crate) async fn opt<C: GenericClient>(c: &C, sql: &str, p: &[P<'_>]) -> Result<Option<Row>> {
    let st = c.prepare_cached(sql).await.db()?;
    c.query_opt(&st, p).await.db()
}

/// Runs `sql` (prepared once per connection) and returns its rows.
pub(crate) async fn all<C: GenericClient>(c: &C, sql: &str, p: &[P<'_>]) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await.db()?;
    c.query(&st, p).await.db()
}

pub(crate) fn subj(s: Option<&Subject>) -> Option<&str> {
    s.map(Subject::as_str)
}

pub(crate) fn check_auth(a: &AuthContext) -> Result<()> {
    no_nul_opt("acr", a.acr.as_deref())?;
    a.amr.iter().try_for_each(|m| no_nul("amr", m))
}

/// Writes `e` (in the caller's transaction).
pub(crate) async fn insert_audit<C: GenericClient>(c: &C, e: &AuditEvent) -> Result<()> {
    no_nul_opt("actor", e.actor.as_deref())?;
    json_no_nul("details", &e.details)?;
    exec(
        c,
        "INSERT INTO audit_events (id, at, kind, actor, subject, client_id, grant_id, ip, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            e.id.as_uuid(),
            &ts(e.at),
            &e.kind.as_str(),
            &e.actor.as_deref(),
            &subj(e.subject.as_ref()),
            &e.client_id.as_ref().map(ClientId::as_uuid),
            &e.grant_id.as_ref().map(GrantId::as_uuid),
            &e.ip,
            &e.details,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts `g` if its client exists and is enabled; `false` (nothing written) otherwise.
async fn insert_grant_if_client_active<C: GenericClient>(c: &C, g: &Grant) -> Result<bool> {
    check_auth(&g.auth)?;
    let auth = rows::enc_auth(&g.auth)?;
    let n = exec(
        c,
        "INSERT INTO grants (id, client_id, subject, scope, auth, created_at, revoked_at)
         SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::jsonb, $6::timestamptz,
                $7::timestamptz
         WHERE EXISTS (SELECT 1 FROM clients WHERE id = $2::uuid AND NOT disabled)",
        &[
            g.id.as_uuid(),
            g.client_id.as_uuid(),
            &subj(g.subject.as_ref()),
            &g.scope.to_string(),
            &auth,
            &ts(g.created_at),
            &opt_ts(g.revoked_at),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// The client of the grant if the grant exists, is unrevoked and its client enabled. Takes
/// a `FOR KEY SHARE` lock on the grant, so cleanup cannot delete it before the caller's
/// transaction ends (cleanup skips locked grants).
async fn live_grant_client<C: GenericClient>(c: &C, id: GrantId) -> Result<Option<ClientId>> {
    opt(
        c,
        "SELECT g.client_id FROM grants AS g JOIN clients AS c ON c.id = g.client_id
         WHERE g.id = $1 AND g.revoked_at IS NULL AND NOT c.disabled
         FOR KEY SHARE OF g",
        &[id.as_uuid()],
    )
    .await?
    .map(|r| rows::client_id(&r, 0))
    .transpose()
}

pub(crate) fn same_client(expected: ClientId, got: ClientId) -> Result<()> {
    if expected != got {
        return Err(Error::invalid(
            "client_id",
            "the tokens must belong to the client of their grant",
        ));
    }
    Ok(())
}

pub(crate) fn same_grant(expected: GrantId, got: GrantId) -> Result<()> {
    if expected != got {
        return Err(Error::invalid(
            "grant_id",
            "the tokens must belong to the grant they are issued into",
        ));
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

pub(crate) fn check_access(t: &AccessToken) -> Result<()> {
    t.audience.iter().try_for_each(|a| no_nul("audience", a))?;
    check_auth(&t.auth)?;
    json_no_nul("claims", &t.claims)?;
    if let Some(c) = &t.cnf {
        no_nul("cnf", c.value())?;
    }
    Ok(())
}

async fn insert_access<C: GenericClient>(c: &C, hash: &TokenHash, t: &AccessToken) -> Result<()> {
    check_access(t)?;
    let (cnf_kind, cnf_value) = rows::enc_cnf(t.cnf.as_ref());
    exec(
        c,
        "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
             issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &hash.as_bytes().as_slice(),
            t.grant_id.as_uuid(),
            t.client_id.as_uuid(),
            &subj(t.subject.as_ref()),
            &t.scope.to_string(),
            &t.audience,
            &ts(t.issued_at),
            &ts(t.expires_at),
            &opt_ts(t.revoked_at),
            &cnf_kind,
            &cnf_value,
            &rows::enc_auth(&t.auth)?,
            &t.claims,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_refresh<C: GenericClient>(c: &C, hash: &TokenHash, t: &RefreshToken) -> Result<()> {
    if let Some(c) = &t.cnf {
        no_nul("cnf", c.value())?;
    }
    let reuse =
        i32::try_from(t.reuse_count).map_err(|_| Error::invalid("reuse_count", "too large"))?;
    let (cnf_kind, cnf_value) = rows::enc_cnf(t.cnf.as_ref());
    exec(
        c,
        "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
             expires_at, idle_expires_at, rotated_at, successor, reuse_count, revoked_at,
             cnf_kind, cnf_value)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &hash.as_bytes().as_slice(),
            t.grant_id.as_uuid(),
            t.client_id.as_uuid(),
            &subj(t.subject.as_ref()),
            &t.scope.to_string(),
            &ts(t.issued_at),
            &ts(t.expires_at),
            &ts(t.idle_expires_at),
            &opt_ts(t.rotated_at),
            &t.successor.as_ref().map(|h| h.as_bytes().as_slice()),
            &reuse,
            &opt_ts(t.revoked_at),
            &cnf_kind,
            &cnf_value,
        ],
    )
    .await?;
    Ok(())
}

/// Encoded client columns (everything but id, secret and created_at).
struct ClientEnc<'a> {
    redirect_uris: Vec<&'a str>,
    grant_types: Vec<&'static str>,
    scopes: String,
    lifetimes: [Option<i64>; 4],
}

impl<'a> ClientEnc<'a> {
    fn new(c: &'a Client) -> Result<Self> {
        no_nul("client name", &c.name)?;
        json_no_nul("metadata", &c.metadata)?;
        Ok(Self {
            redirect_uris: rows::enc_redirect_uris(&c.redirect_uris),
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
        })
    }
}

#[async_trait]
impl ClientStore for PostgresStore {
    async fn insert_client(
        &self,
        client: &Client,
        secret_hash: Option<&TokenHash>,
        audit: AuditEvent,
    ) -> Result<()> {
        let enc = ClientEnc::new(client)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        exec(
            &tx,
            "INSERT INTO clients (id, name, client_type, secret_hash, redirect_uris,
                 grant_types, scopes, token_endpoint_auth_method, access_token_ttl_us,
                 refresh_token_ttl_us, refresh_idle_ttl_us, authorization_code_ttl_us,
                 metadata, created_at, updated_at, disabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                client.id.as_uuid(),
                &client.name,
                &client.client_type.as_str(),
                &secret_hash.map(|h| h.as_bytes().as_slice()),
                &enc.redirect_uris,
                &enc.grant_types,
                &enc.scopes,
                &client.token_endpoint_auth_method.as_str(),
                &enc.lifetimes[0],
                &enc.lifetimes[1],
                &enc.lifetimes[2],
                &enc.lifetimes[3],
                &client.metadata,
                &ts(client.created_at),
                &ts(client.updated_at),
                &client.disabled,
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn get_client(&self, id: ClientId) -> Result<Option<Client>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!("SELECT ", client_cols!(), " FROM clients WHERE id = $1"),
            &[id.as_uuid()],
        )
        .await?
        .map(|r| rows::client(&r))
        .transpose()
    }

    async fn get_client_with_secret(
        &self,
        id: ClientId,
    ) -> Result<Option<(Client, Option<TokenHash>)>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                client_cols!(),
                ", secret_hash FROM clients WHERE id = $1"
            ),
            &[id.as_uuid()],
        )
        .await?
        .map(|r| Ok((rows::client(&r)?, rows::opt_hash(&r, 15)?)))
        .transpose()
    }

    async fn update_client(&self, client: &Client, audit: AuditEvent) -> Result<()> {
        let enc = ClientEnc::new(client)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE clients SET name = $2, client_type = $3, redirect_uris = $4,
                 grant_types = $5, scopes = $6, token_endpoint_auth_method = $7,
                 access_token_ttl_us = $8, refresh_token_ttl_us = $9,
                 refresh_idle_ttl_us = $10, authorization_code_ttl_us = $11,
                 metadata = $12, updated_at = $13
             WHERE id = $1",
            &[
                client.id.as_uuid(),
                &client.name,
                &client.client_type.as_str(),
                &enc.redirect_uris,
                &enc.grant_types,
                &enc.scopes,
                &client.token_endpoint_auth_method.as_str(),
                &enc.lifetimes[0],
                &enc.lifetimes[1],
                &enc.lifetimes[2],
                &enc.lifetimes[3],
                &client.metadata,
                &ts(client.updated_at),
            ],
        )
        .await?;
        if n == 0 {
            return Err(Error::not_found(format!("client {}", client.id)));
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn set_client_disabled(
        &self,
        id: ClientId,
        disabled: bool,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE clients SET disabled = $2, updated_at = $3
             WHERE id = $1 AND disabled <> $2",
            &[id.as_uuid(), &disabled, &ts(audit.at)],
        )
        .await?;
        if n == 0 {
            let exists = opt(&tx, "SELECT 1 FROM clients WHERE id = $1", &[id.as_uuid()])
                .await?
                .is_some();
            if !exists {
                return Err(Error::not_found(format!("client {id}")));
            }
            return tx.commit().await.db();
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn list_clients(&self, after: Option<ClientId>, limit: u32) -> Result<Vec<Client>> {
        let conn = self.inner.conn().await?;
        let limit = i64::from(limit);
        let found = match after {
            Some(after) => {
                all(
                    &conn,
                    concat!(
                        "SELECT ",
                        client_cols!(),
                        " FROM clients WHERE id > $1 ORDER BY id LIMIT $2"
                    ),
                    &[after.as_uuid(), &limit],
                )
                .await?
            }
            None => {
                all(
                    &conn,
                    concat!(
                        "SELECT ",
                        client_cols!(),
                        " FROM clients ORDER BY id LIMIT $1"
                    ),
                    &[&limit],
                )
                .await?
            }
        };
        found.iter().map(rows::client).collect()
    }

    async fn delete_client(&self, id: ClientId, audit: AuditEvent) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // Grants first: issuers hold `FOR KEY SHARE` on a grant (their tokens' foreign key),
        // and inserting a new grant takes `KEY SHARE` on its client. Deleting the client
        // first would lock it and then wait on the grants inside the cascade: a lock cycle
        // (deadlock) with issuance into that client. Taking the grant locks first makes us
        // wait for the issuers instead. (Since schema 5 tokens reference only their grant.)
        exec(
            &tx,
            "DELETE FROM grants WHERE client_id = $1",
            &[id.as_uuid()],
        )
        .await?;
        let n = exec(&tx, "DELETE FROM clients WHERE id = $1", &[id.as_uuid()]).await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn set_client_secret_hash(
        &self,
        id: ClientId,
        secret_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE clients SET secret_hash = $2, updated_at = $3 WHERE id = $1",
            &[
                id.as_uuid(),
                &secret_hash.as_bytes().as_slice(),
                &ts(audit.at),
            ],
        )
        .await?;
        if n == 0 {
            return Err(Error::not_found(format!("client {id}")));
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }
}

/// `(grant_id, client_id)` of a `RETURNING grant_id, client_id`.
fn owner(r: &Row) -> Result<(GrantId, ClientId)> {
    Ok((rows::grant_id(r, 0)?, rows::client_id(r, 1)?))
}

/// `(grant_id, client_id, subject)` of a token row.
fn owner_subject(r: &Row) -> Result<(GrantId, ClientId, Option<Subject>)> {
    Ok((
        rows::grant_id(r, 0)?,
        rows::client_id(r, 1)?,
        rows::opt_subject(r, 2)?,
    ))
}

async fn revoke_grant_stmt<C: GenericClient>(c: &C, id: GrantId, now: Timestamp) -> Result<u64> {
    exec(
        c,
        "UPDATE grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[id.as_uuid(), &ts(now)],
    )
    .await
}

/// [`GrantStore::issue_tokens`] for one call, in its own transaction: the path every
/// call takes without batching, and the fallback of the batcher.
pub(crate) async fn issue_one(inner: &Inner, issue: &TokenIssue, audit: &AuditEvent) -> Result<()> {
    if let Some(g) = &issue.new_grant {
        same_grant(issue.grant_id, g.id)?;
    }
    if let Some((_, t)) = &issue.access {
        same_grant(issue.grant_id, t.grant_id)?;
        check_access(t)?;
    }
    if let Some((_, t)) = &issue.refresh {
        same_grant(issue.grant_id, t.grant_id)?;
    }
    let mut conn = inner.conn().await?;
    let tx = conn.transaction().await.db()?;
    if let Some(g) = &issue.new_grant {
        if !insert_grant_if_client_active(&tx, g).await? {
            return Err(Error::Inactive { kind: "grant" });
        }
    }
    let Some(client) = live_grant_client(&tx, issue.grant_id).await? else {
        return Err(Error::Inactive { kind: "grant" });
    };
    if let Some((hash, t)) = &issue.access {
        same_client(client, t.client_id)?;
        insert_access(&tx, hash, t).await?;
    }
    if let Some((hash, t)) = &issue.refresh {
        same_client(client, t.client_id)?;
        insert_refresh(&tx, hash, t).await?;
    }
    insert_audit(&tx, audit).await?;
    tx.commit().await.db()
}

impl PostgresStore {
    async fn issue_code_impl(
        &self,
        grant: &Grant,
        code_hash: &TokenHash,
        code: &AuthorizationCode,
        audit: AuditEvent,
    ) -> Result<()> {
        same_grant(grant.id, code.grant_id)?;
        same_client(grant.client_id, code.client_id)?;
        no_nul_opt("nonce", code.nonce.as_deref())?;
        let (challenge, method) = rows::enc_pkce(code.code_challenge.as_ref());
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        if grant.revoked_at.is_some() || !insert_grant_if_client_active(&tx, grant).await? {
            return Err(Error::Inactive { kind: "grant" });
        }
        exec(
            &tx,
            "INSERT INTO authorization_codes (hash, grant_id, client_id, subject, redirect_uri,
                 scope, code_challenge, code_challenge_method, nonce, issued_at, expires_at,
                 consumed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &code_hash.as_bytes().as_slice(),
                code.grant_id.as_uuid(),
                code.client_id.as_uuid(),
                &code.subject.as_str(),
                &code.redirect_uri.as_str(),
                &code.scope.to_string(),
                &challenge,
                &method,
                &code.nonce.as_deref(),
                &ts(code.issued_at),
                &ts(code.expires_at),
                &opt_ts(code.consumed_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
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
    find: "SELECT grant_id, client_id, subject FROM access_tokens WHERE hash = $1",
    revoke: "UPDATE access_tokens SET revoked_at = $2 WHERE hash = $1 AND revoked_at IS NULL",
    whole_grant: false,
};

const REFRESH_REVOCATION: Revocation = Revocation {
    find: "SELECT grant_id, client_id, subject FROM refresh_tokens WHERE hash = $1",
    revoke: "UPDATE refresh_tokens SET revoked_at = $2 WHERE hash = $1 AND revoked_at IS NULL",
    whole_grant: true,
};

impl PostgresStore {
    /// Revokes one token: checks its owner, marks it revoked and, for refresh tokens, its
    /// grant; writes the event only if something changed.
    async fn revoke_one(
        &self,
        r: &Revocation,
        hash: &TokenHash,
        client: Option<ClientId>,
        audit: AuditEvent,
    ) -> Result<RevokeOutcome> {
        let hash = hash.as_bytes().as_slice();
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let Some(found) = opt(&tx, r.find, &[&hash]).await? else {
            return Ok(RevokeOutcome::NotFound);
        };
        let (grant_id, owner, subject) = owner_subject(&found)?;
        if client.is_some_and(|c| c != owner) {
            return Ok(RevokeOutcome::WrongClient);
        }
        let audit = describe(audit, grant_id, owner, subject);
        let mut changed = exec(&tx, r.revoke, &[&hash, &ts(audit.at)]).await?;
        if r.whole_grant {
            changed += revoke_grant_stmt(&tx, grant_id, audit.at).await?;
        }
        if changed > 0 {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(RevokeOutcome::Revoked { grant_id })
    }
}

#[async_trait]
impl GrantStore for PostgresStore {
    async fn issue_code(
        &self,
        grant: &Grant,
        code_hash: &TokenHash,
        code: &AuthorizationCode,
        audit: AuditEvent,
    ) -> Result<()> {
        crate::db::fk_as_inactive(self.issue_code_impl(grant, code_hash, code, audit).await)
    }

    async fn consume_code(
        &self,
        code_hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<CodeConsumption> {
        let hash = code_hash.as_bytes().as_slice();
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // Concurrent callers queue on the row lock; each re-checks the condition on the
        // row the previous one committed, so exactly one sees `consumed_at IS NULL`.
        let consumed = opt(
            &tx,
            concat!(
                "UPDATE authorization_codes AS k SET consumed_at = $2
                 WHERE k.hash = $1 AND k.consumed_at IS NULL AND k.expires_at > $2
                   AND EXISTS (SELECT 1 FROM grants AS g
                               WHERE g.id = k.grant_id AND g.revoked_at IS NULL)
                   AND EXISTS (SELECT 1 FROM clients AS c
                               WHERE c.id = k.client_id AND NOT c.disabled)
                 RETURNING ",
                code_cols!()
            ),
            &[&hash, &ts(audit.at)],
        )
        .await?;
        if let Some(row) = consumed {
            let code = rows::code(&row)?;
            // The caller knows only the code: the event gets what it belongs to.
            let audit = describe(
                audit,
                code.grant_id,
                code.client_id,
                Some(code.subject.clone()),
            );
            insert_audit(&tx, &audit).await?;
            tx.commit().await.db()?;
            return Ok(CodeConsumption::Consumed(code));
        }
        let seen = opt(
            &tx,
            "SELECT grant_id, consumed_at IS NOT NULL FROM authorization_codes WHERE hash = $1",
            &[&hash],
        )
        .await?;
        tx.commit().await.db()?;
        Ok(match seen {
            Some(r) if rows::get::<bool>(&r, 1)? => CodeConsumption::AlreadyConsumed {
                grant_id: rows::grant_id(&r, 0)?,
            },
            _ => CodeConsumption::Inactive,
        })
    }

    async fn issue_tokens(&self, issue: &TokenIssue, audit: AuditEvent) -> Result<()> {
        let audit = match &self.batcher {
            Some(b) if crate::batch::batchable(issue, &audit) => {
                match b.submit(issue, audit).await {
                    crate::batch::Submitted::Done(r) => return r,
                    crate::batch::Submitted::Alone(audit) => audit,
                }
            }
            _ => audit,
        };
        crate::db::fk_as_inactive(issue_one(&self.inner, issue, &audit).await)
    }

    async fn get_grant(&self, id: GrantId) -> Result<Option<Grant>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!("SELECT ", grant_cols!(), " FROM grants WHERE id = $1"),
            &[id.as_uuid()],
        )
        .await?
        .map(|r| rows::grant(&r, 0))
        .transpose()
    }

    async fn find_access_token(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AccessToken>> {
        // The hot path: one statement, three primary-key probes, no write, no lock.
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            "SELECT a.grant_id, a.client_id, a.subject, a.scope, a.audience, a.issued_at,
                    a.expires_at, a.revoked_at, a.cnf_kind, a.cnf_value, a.auth, a.claims
             FROM access_tokens AS a
             JOIN grants AS g ON g.id = a.grant_id
             JOIN clients AS c ON c.id = a.client_id
             WHERE a.hash = $1 AND a.expires_at > $2 AND a.revoked_at IS NULL
               AND g.revoked_at IS NULL AND NOT c.disabled",
            &[&hash.as_bytes().as_slice(), &ts(now)],
        )
        .await?
        .map(|r| rows::access_token(&r))
        .transpose()
    }

    async fn find_refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenState>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            "SELECT r.grant_id, r.client_id, r.subject, r.scope, r.issued_at,
                    r.expires_at, r.idle_expires_at, r.rotated_at, r.successor,
                    r.reuse_count, r.revoked_at, r.cnf_kind, r.cnf_value,
                    g.id, g.client_id, g.subject, g.scope, g.auth, g.created_at,
                    g.revoked_at, c.disabled
             FROM refresh_tokens AS r
             JOIN grants AS g ON g.id = r.grant_id
             JOIN clients AS c ON c.id = r.client_id
             WHERE r.hash = $1",
            &[&hash.as_bytes().as_slice()],
        )
        .await?
        .map(|r| {
            Ok(RefreshTokenState {
                token: rows::refresh_token(&r)?,
                grant: rows::grant(&r, 13)?,
                client_disabled: rows::get(&r, 20)?,
            })
        })
        .transpose()
    }

    async fn rotate_refresh_token(&self, rotation: &Rotation, audit: AuditEvent) -> Result<bool> {
        let (new_hash, new_refresh) = &rotation.refresh;
        let (access_hash, access) = &rotation.access;
        check_access(access)?;
        let presented = rotation.presented.as_bytes().as_slice();
        let now = ts(audit.at);
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let row = match rotation.mode {
            RotationMode::First => {
                opt(
                    &tx,
                    "UPDATE refresh_tokens AS r SET rotated_at = $2, successor = $3
                     WHERE r.hash = $1 AND r.rotated_at IS NULL AND r.revoked_at IS NULL
                       AND r.expires_at > $2 AND r.idle_expires_at > $2
                       AND EXISTS (SELECT 1 FROM grants AS g
                                   WHERE g.id = r.grant_id AND g.revoked_at IS NULL)
                       AND EXISTS (SELECT 1 FROM clients AS c
                                   WHERE c.id = r.client_id AND NOT c.disabled)
                     RETURNING r.grant_id, r.client_id",
                    &[&presented, &now, &new_hash.as_bytes().as_slice()],
                )
                .await?
            }
            RotationMode::Grace {
                rotated_since,
                max_reuses,
            } => {
                let max = i32::try_from(max_reuses).unwrap_or(i32::MAX);
                opt(
                    &tx,
                    "UPDATE refresh_tokens AS r SET reuse_count = r.reuse_count + 1
                     WHERE r.hash = $1 AND r.rotated_at IS NOT NULL AND r.rotated_at >= $3
                       AND r.reuse_count < $4 AND r.revoked_at IS NULL
                       AND r.expires_at > $2 AND r.idle_expires_at > $2
                       AND EXISTS (SELECT 1 FROM grants AS g
                                   WHERE g.id = r.grant_id AND g.revoked_at IS NULL)
                       AND EXISTS (SELECT 1 FROM clients AS c
                                   WHERE c.id = r.client_id AND NOT c.disabled)
                     RETURNING r.grant_id, r.client_id",
                    &[&presented, &now, &ts(rotated_since), &max],
                )
                .await?
            }
        };
        let Some(row) = row else {
            tx.commit().await.db()?;
            return Ok(false);
        };
        let (grant, client) = owner(&row)?;
        same_grant(grant, new_refresh.grant_id)?;
        same_grant(grant, access.grant_id)?;
        same_client(client, new_refresh.client_id)?;
        same_client(client, access.client_id)?;
        insert_refresh(&tx, new_hash, new_refresh).await?;
        insert_access(&tx, access_hash, access).await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
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
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        if revoke_grant_stmt(&tx, id, audit.at).await? > 0 {
            insert_audit(&tx, &audit).await?;
            tx.commit().await.db()?;
            return Ok(true);
        }
        let exists = opt(&tx, "SELECT 1 FROM grants WHERE id = $1", &[id.as_uuid()])
            .await?
            .is_some();
        tx.commit().await.db()?;
        Ok(exists)
    }

    async fn revoke_grants_by_client(&self, client: ClientId, audit: AuditEvent) -> Result<u64> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE grants SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
            &[client.as_uuid(), &ts(audit.at)],
        )
        .await?;
        if n > 0 {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(n)
    }

    async fn revoke_grants_by_subject(&self, subject: &Subject, audit: AuditEvent) -> Result<u64> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE grants SET revoked_at = $2 WHERE subject = $1 AND revoked_at IS NULL",
            &[&subject.as_str(), &ts(audit.at)],
        )
        .await?;
        if n > 0 {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(n)
    }
}

#[async_trait]
impl PatStore for PostgresStore {
    async fn insert_pat(
        &self,
        hash: &TokenHash,
        pat: &PersonalAccessToken,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul("name", &pat.name)?;
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        exec(
            &tx,
            "INSERT INTO personal_access_tokens (id, hash, user_subject, name, scope,
                 created_at, expires_at, last_used_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                pat.id.as_uuid(),
                &hash.as_bytes().as_slice(),
                &pat.user.as_str(),
                &pat.name,
                &pat.scope.to_string(),
                &ts(pat.created_at),
                &opt_ts(pat.expires_at),
                &opt_ts(pat.last_used_at),
                &opt_ts(pat.revoked_at),
            ],
        )
        .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn find_pat(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<PersonalAccessToken>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                pat_cols!(),
                " FROM personal_access_tokens
                 WHERE hash = $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > $2)"
            ),
            &[&hash.as_bytes().as_slice(), &ts(now)],
        )
        .await?
        .map(|r| rows::pat(&r))
        .transpose()
    }

    async fn list_pats(&self, user: &Subject) -> Result<Vec<PersonalAccessToken>> {
        let conn = self.inner.conn().await?;
        all(
            &conn,
            concat!(
                "SELECT ",
                pat_cols!(),
                " FROM personal_access_tokens WHERE user_subject = $1 ORDER BY id"
            ),
            &[&user.as_str()],
        )
        .await?
        .iter()
        .map(rows::pat)
        .collect()
    }

    async fn revoke_pat(
        &self,
        id: PatId,
        user: Option<&Subject>,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let owner = opt(
            &tx,
            "SELECT user_subject FROM personal_access_tokens WHERE id = $1",
            &[id.as_uuid()],
        )
        .await?;
        let Some(owner) = owner else {
            return Ok(false);
        };
        let owner = rows::subject(&owner, 0)?;
        if user.is_some_and(|u| *u != owner) {
            return Ok(false);
        }
        let n = exec(
            &tx,
            "UPDATE personal_access_tokens SET revoked_at = $2
             WHERE id = $1 AND revoked_at IS NULL",
            &[id.as_uuid(), &ts(audit.at)],
        )
        .await?;
        if n > 0 {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn record_pat_usage(&self, usage: &[(PatId, Timestamp)]) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = usage.iter().map(|(id, _)| *id.as_uuid()).collect();
        let times: Vec<Ts> = usage.iter().map(|(_, t)| ts(*t)).collect();
        let conn = self.inner.conn().await?;
        // One statement for the whole batch; the latest time per id wins.
        exec(
            &conn,
            "UPDATE personal_access_tokens AS p SET last_used_at = u.at
             FROM (SELECT id, max(at) AS at
                   FROM unnest($1::uuid[], $2::timestamptz[]) AS t (id, at)
                   GROUP BY id) AS u
             WHERE p.id = u.id AND (p.last_used_at IS NULL OR p.last_used_at < u.at)",
            &[&ids, &times],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AuthorizationSessionStore for PostgresStore {
    async fn insert_authorization_session(
        &self,
        hash: &TokenHash,
        session: &AuthorizationSession,
        audit: AuditEvent,
    ) -> Result<()> {
        no_nul_opt("state", session.state.as_deref())?;
        no_nul_opt("nonce", session.nonce.as_deref())?;
        let (challenge, method) = rows::enc_pkce(session.code_challenge.as_ref());
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "INSERT INTO authorization_sessions (hash, client_id, redirect_uri, scope,
                 state, code_challenge, code_challenge_method, nonce, subject,
                 created_at, expires_at, completed_at)
             SELECT $1::bytea, $2::uuid, $3::text, $4::text, $5::text, $6::text, $7::text,
                    $8::text, $9::text, $10::timestamptz, $11::timestamptz, $12::timestamptz
             WHERE EXISTS (SELECT 1 FROM clients WHERE id = $2::uuid)",
            &[
                &hash.as_bytes().as_slice(),
                session.client_id.as_uuid(),
                &session.redirect_uri.as_str(),
                &session.scope.to_string(),
                &session.state.as_deref(),
                &challenge,
                &method,
                &session.nonce.as_deref(),
                &subj(session.subject.as_ref()),
                &ts(session.created_at),
                &ts(session.expires_at),
                &opt_ts(session.completed_at),
            ],
        )
        .await?;
        if n == 0 {
            return Err(Error::not_found(format!("client {}", session.client_id)));
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()
    }

    async fn find_authorization_session(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<AuthorizationSession>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                session_cols!(),
                " FROM authorization_sessions
                 WHERE hash = $1 AND expires_at > $2 AND completed_at IS NULL"
            ),
            &[&hash.as_bytes().as_slice(), &ts(now)],
        )
        .await?
        .map(|r| rows::session(&r))
        .transpose()
    }

    async fn set_authorization_session_subject(
        &self,
        hash: &TokenHash,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        let hash = hash.as_bytes().as_slice();
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE authorization_sessions SET subject = $2
             WHERE hash = $1 AND expires_at > $3 AND completed_at IS NULL
               AND subject IS NULL",
            &[&hash, &subject.as_str(), &ts(audit.at)],
        )
        .await?;
        if n == 0 {
            // Already attached to the same subject: true, but nothing changed, no event.
            let same = opt(
                &tx,
                "SELECT 1 FROM authorization_sessions
                 WHERE hash = $1 AND expires_at > $3 AND completed_at IS NULL
                   AND subject = $2",
                &[&hash, &subject.as_str(), &ts(audit.at)],
            )
            .await?
            .is_some();
            tx.commit().await.db()?;
            return Ok(same);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn complete_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<Option<AuthorizationSession>> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let done = opt(
            &tx,
            concat!(
                "UPDATE authorization_sessions SET completed_at = $2
                 WHERE hash = $1 AND expires_at > $2 AND completed_at IS NULL
                   AND subject IS NOT NULL
                 RETURNING ",
                session_cols!()
            ),
            &[&hash.as_bytes().as_slice(), &ts(audit.at)],
        )
        .await?
        .map(|r| rows::session(&r))
        .transpose()?;
        if done.is_some() {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(done)
    }

    async fn expire_authorization_session(
        &self,
        hash: &TokenHash,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let n = exec(
            &tx,
            "UPDATE authorization_sessions SET expires_at = $2
             WHERE hash = $1 AND expires_at > $2 AND completed_at IS NULL",
            &[&hash.as_bytes().as_slice(), &ts(audit.at)],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(true)
    }
}

#[async_trait]
impl ConsentStore for PostgresStore {
    async fn merge_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        scope: &Scopes,
        audit: AuditEvent,
    ) -> Result<Consent> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        // The union is computed by the upsert itself, on the row as locked by
        // ON CONFLICT, so concurrent merges never lose each other's scopes.
        let row = opt(
            &tx,
            concat!(
                "INSERT INTO consents AS k (client_id, subject, scope, granted_at, updated_at)
                 SELECT $1::uuid, $2::text, $3::text, $4::timestamptz, $4::timestamptz
                 WHERE EXISTS (SELECT 1 FROM clients WHERE id = $1::uuid)
                 ON CONFLICT (client_id, subject) DO UPDATE SET
                     scope = coalesce(
                         (SELECT string_agg(DISTINCT s, ' ')
                          FROM unnest(string_to_array(k.scope || ' ' || excluded.scope, ' ')) AS s
                          WHERE s <> ''),
                         ''),
                     updated_at = excluded.updated_at
                 RETURNING ",
                consent_cols!()
            ),
            &[
                client.as_uuid(),
                &subject.as_str(),
                &scope.to_string(),
                &ts(audit.at),
            ],
        )
        .await?;
        let Some(row) = row else {
            return Err(Error::not_found(format!("client {client}")));
        };
        let merged = rows::consent(&row)?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await.db()?;
        Ok(merged)
    }

    async fn get_consent(&self, client: ClientId, subject: &Subject) -> Result<Option<Consent>> {
        let conn = self.inner.conn().await?;
        opt(
            &conn,
            concat!(
                "SELECT ",
                consent_cols!(),
                " FROM consents WHERE client_id = $1 AND subject = $2"
            ),
            &[client.as_uuid(), &subject.as_str()],
        )
        .await?
        .map(|r| rows::consent(&r))
        .transpose()
    }

    async fn delete_consent(
        &self,
        client: ClientId,
        subject: &Subject,
        audit: AuditEvent,
    ) -> Result<bool> {
        let mut conn = self.inner.conn().await?;
        let tx = conn.transaction().await.db()?;
        let deleted = exec(
            &tx,
            "DELETE FROM consents WHERE client_id = $1 AND subject = $2",
            &[client.as_uuid(), &subject.as_str()],
        )
        .await?;
        let revoked = exec(
            &tx,
            "UPDATE grants SET revoked_at = $3
             WHERE client_id = $1 AND subject = $2 AND revoked_at IS NULL",
            &[client.as_uuid(), &subject.as_str(), &ts(audit.at)],
        )
        .await?;
        if deleted + revoked > 0 {
            insert_audit(&tx, &audit).await?;
        }
        tx.commit().await.db()?;
        Ok(deleted > 0)
    }
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = i64::from(query.effective_limit()?);
        let kind = query.kind.map(|k| k.as_str());
        let subject = query.subject.as_ref().map(Subject::as_str);
        let client = query.client_id.as_ref().map(ClientId::as_uuid);
        let since = query.since.map(ts);
        let until = query.until.map(ts);
        let after = query.after.as_ref().map(|a| *a.as_uuid());
        let mut sql = String::from(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_events WHERE true"
        ));
        let mut conds: Vec<&str> = Vec::new();
        let mut params: Vec<P<'_>> = Vec::new();
        if let Some(k) = &kind {
            conds.push("kind =");
            params.push(k);
        }
        if let Some(s) = &subject {
            conds.push("subject =");
            params.push(s);
        }
        if let Some(c) = &client {
            conds.push("client_id =");
            params.push(c);
        }
        if let Some(t) = &since {
            conds.push("at >=");
            params.push(t);
        }
        if let Some(t) = &until {
            conds.push("at <");
            params.push(t);
        }
        if let Some(a) = &after {
            conds.push("id >");
            params.push(a);
        }
        for (i, cond) in conds.iter().enumerate() {
            sql.push_str(&format!(" AND {cond} ${}", i + 1));
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", params.len()));
        let conn = self.inner.conn().await?;
        all(&conn, &sql, &params)
            .await?
            .iter()
            .map(rows::audit)
            .collect()
    }
}

impl Backend for PostgresStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }
}
