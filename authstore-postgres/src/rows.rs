//! Mapping between rows and domain types. Rows are never deserialized into domain types:
//! each column is read and validated explicitly, and a bad value is a permanent
//! [`Error::Backend`](authstore_core::Error::Backend), never a panic.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use authstore_core::backend::KEY_CHECK_LEN;
use authstore_core::{
    AccessToken, AuditEvent, AuditEventId, AuditKind, AuthContext, AuthorizationCode,
    AuthorizationSession, Ceremony, CeremonyKind, Client, ClientId, ClientType, Consent, Error,
    Grant, GrantId, GrantType, Group, GroupId, LinkedAccount, LinkedAccountId, LoginSession,
    LoginSessionId, OneTimePurpose, OneTimeToken, Passkey, PatId, PersonalAccessToken,
    PkceChallenge, PkceMethod, RedirectUri, RefreshToken, Result, Scopes, Sealed, SenderConstraint,
    Subject, Timestamp, TokenEndpointAuthMethod, TokenHash, TokenLifetimes, User, UserId,
};
use authstore_core::{KeyCheck, KeyRingKind};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::db::{Ts, bad, encode_err};

// ---- column lists (shared by SELECT and RETURNING; decoders read them by position) ----

/// Client columns, decoded by [`client`]: 15 columns.
macro_rules! client_cols {
    () => {
        "id, name, client_type, redirect_uris, grant_types, scopes, token_endpoint_auth_method, \
         access_token_ttl_us, refresh_token_ttl_us, refresh_idle_ttl_us, \
         authorization_code_ttl_us, metadata, created_at, updated_at, disabled"
    };
}
pub(crate) use client_cols;

/// Grant columns, decoded by [`grant`]: 7 columns.
macro_rules! grant_cols {
    () => {
        "id, client_id, subject, scope, auth, created_at, revoked_at"
    };
}
pub(crate) use grant_cols;

/// Authorization code columns, decoded by [`code`]: 11 columns.
macro_rules! code_cols {
    () => {
        "grant_id, client_id, subject, redirect_uri, scope, code_challenge, \
         code_challenge_method, nonce, issued_at, expires_at, consumed_at"
    };
}
pub(crate) use code_cols;

/// Personal access token columns, decoded by [`pat`]: 8 columns.
macro_rules! pat_cols {
    () => {
        "id, user_subject, name, scope, created_at, expires_at, last_used_at, revoked_at"
    };
}
pub(crate) use pat_cols;

/// Authorization session columns, decoded by [`session`]: 11 columns.
macro_rules! session_cols {
    () => {
        "client_id, redirect_uri, scope, state, code_challenge, code_challenge_method, nonce, \
         subject, created_at, expires_at, completed_at"
    };
}
pub(crate) use session_cols;

/// Consent columns, decoded by [`consent`]: 5 columns.
macro_rules! consent_cols {
    () => {
        "client_id, subject, scope, granted_at, updated_at"
    };
}
pub(crate) use consent_cols;

/// Audit columns, decoded by [`audit`]: 9 columns.
macro_rules! audit_cols {
    () => {
        "id, at, kind, actor, subject, client_id, grant_id, ip, details"
    };
}
pub(crate) use audit_cols;

/// User columns, decoded by [`user`]: 8 columns.
macro_rules! user_cols {
    () => {
        "id, username, email, email_verified, active, metadata, created_at, updated_at"
    };
}
pub(crate) use user_cols;

/// Group columns, decoded by [`group`]: 3 columns.
macro_rules! group_cols {
    () => {
        "id, name, created_at"
    };
}
pub(crate) use group_cols;

/// Login session columns, decoded by [`login_session`]: 9 columns.
macro_rules! login_session_cols {
    () => {
        "s.id, s.user_id, s.created_at, s.last_seen_at, s.idle_expires_at, s.expires_at, s.ip, \
         s.user_agent, s.revoked_at"
    };
}
pub(crate) use login_session_cols;

/// One-time token columns, decoded by [`one_time_token`]: 6 columns.
macro_rules! one_time_cols {
    () => {
        "user_id, purpose, email, issued_at, expires_at, consumed_at"
    };
}
pub(crate) use one_time_cols;

/// Passkey columns, decoded by [`passkey`]: 8 columns.
macro_rules! passkey_cols {
    () => {
        "credential_id, user_id, name, credential, counter, backup_state, created_at, \
         last_used_at"
    };
}
pub(crate) use passkey_cols;

/// Ceremony columns, decoded by [`ceremony`]: 4 columns.
macro_rules! ceremony_cols {
    () => {
        "kind, user_id, state, expires_at"
    };
}
pub(crate) use ceremony_cols;

/// Linked account columns, decoded by [`linked_account`]: 9 columns.
macro_rules! linked_cols {
    () => {
        "id, provider, provider_subject, user_id, access_token, refresh_token, \
         token_expires_at, created_at, updated_at"
    };
}
pub(crate) use linked_cols;

// ---- column readers ----

/// Column `i`, or a decode error naming it.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(|e| bad(&col_name(row, i), e))
}

fn col_name(row: &Row, i: usize) -> String {
    row.columns()
        .get(i)
        .map_or_else(|| format!("column {i}"), |c| c.name().to_owned())
}

pub(crate) fn client_id(row: &Row, i: usize) -> Result<ClientId> {
    get::<uuid::Uuid>(row, i).map(ClientId::from_uuid)
}

pub(crate) fn grant_id(row: &Row, i: usize) -> Result<GrantId> {
    get::<uuid::Uuid>(row, i).map(GrantId::from_uuid)
}

pub(crate) fn opt_hash(row: &Row, i: usize) -> Result<Option<TokenHash>> {
    get::<Option<&[u8]>>(row, i)?
        .map(|b| TokenHash::from_slice(b).map_err(|e| bad(&col_name(row, i), e)))
        .transpose()
}

/// A key check from `ring, key_id, key_check, recorded_at` starting at column 0.
pub(crate) fn key_check(row: &Row) -> Result<KeyCheck> {
    let ring: &str = get(row, 0)?;
    let ring = KeyRingKind::parse(ring)
        .ok_or_else(|| bad(&col_name(row, 0), format!("unknown key ring {ring:?}")))?;
    let check: &[u8] = get(row, 2)?;
    let check = <[u8; KEY_CHECK_LEN]>::try_from(check).map_err(|_| {
        bad(
            &col_name(row, 2),
            format!("a key check is {KEY_CHECK_LEN} bytes, got {}", check.len()),
        )
    })?;
    Ok(KeyCheck {
        ring,
        key_id: get(row, 1)?,
        check,
        recorded_at: ts(row, 3)?,
    })
}

pub(crate) fn ts(row: &Row, i: usize) -> Result<Timestamp> {
    get::<Ts>(row, i).map(|t| t.0)
}

pub(crate) fn opt_ts(row: &Row, i: usize) -> Result<Option<Timestamp>> {
    Ok(get::<Option<Ts>>(row, i)?.map(|t| t.0))
}

fn scopes(row: &Row, i: usize) -> Result<Scopes> {
    Scopes::parse(get(row, i)?).map_err(|e| bad(&col_name(row, i), e))
}

pub(crate) fn subject(row: &Row, i: usize) -> Result<Subject> {
    Subject::new(get::<String>(row, i)?).map_err(|e| bad(&col_name(row, i), e))
}

pub(crate) fn opt_subject(row: &Row, i: usize) -> Result<Option<Subject>> {
    get::<Option<String>>(row, i)?
        .map(|s| Subject::new(s).map_err(|e| bad(&col_name(row, i), e)))
        .transpose()
}

fn redirect_uri(row: &Row, i: usize) -> Result<RedirectUri> {
    RedirectUri::new(get::<String>(row, i)?).map_err(|e| bad(&col_name(row, i), e))
}

fn json(row: &Row, i: usize) -> Result<serde_json::Value> {
    get(row, i)
}

fn auth(row: &Row, i: usize) -> Result<AuthContext> {
    let v: serde_json::Value = get(row, i)?;
    serde_json::from_value(v).map_err(|e| bad(&col_name(row, i), e))
}

fn pkce(row: &Row, challenge: usize, method: usize) -> Result<Option<PkceChallenge>> {
    match (
        get::<Option<String>>(row, challenge)?,
        get::<Option<&str>>(row, method)?,
    ) {
        (None, None) => Ok(None),
        (Some(c), Some(m)) => Ok(Some(PkceChallenge {
            challenge: c,
            method: PkceMethod::from_str(m).map_err(|e| bad(&col_name(row, method), e))?,
        })),
        _ => Err(bad(
            &col_name(row, challenge),
            "PKCE challenge and method must both be set or both unset",
        )),
    }
}

fn cnf(row: &Row, kind: usize, value: usize) -> Result<Option<SenderConstraint>> {
    match (
        get::<Option<&str>>(row, kind)?,
        get::<Option<String>>(row, value)?,
    ) {
        (None, None) => Ok(None),
        (Some(k), Some(v)) => SenderConstraint::from_parts(k, v)
            .map(Some)
            .map_err(|e| bad(&col_name(row, kind), e)),
        _ => Err(bad(
            &col_name(row, kind),
            "sender constraint kind and value must both be set or both unset",
        )),
    }
}

fn lifetime(row: &Row, i: usize) -> Result<Option<Duration>> {
    get::<Option<i64>>(row, i)?
        .map(|us| {
            u64::try_from(us)
                .map(Duration::from_micros)
                .map_err(|e| bad(&col_name(row, i), e))
        })
        .transpose()
}

fn parse<T: FromStr<Err = Error>>(row: &Row, i: usize) -> Result<T> {
    T::from_str(get(row, i)?).map_err(|e| bad(&col_name(row, i), e))
}

// ---- row decoders ----

/// A client from [`client_cols!`] starting at column 0.
pub(crate) fn client(row: &Row) -> Result<Client> {
    let redirect_uris = get::<Vec<String>>(row, 3)?
        .into_iter()
        .map(RedirectUri::new)
        .collect::<Result<Vec<_>>>()
        .map_err(|e| bad("redirect_uris", e))?;
    let grant_types = get::<Vec<&str>>(row, 4)?
        .into_iter()
        .map(GrantType::from_str)
        .collect::<Result<BTreeSet<_>>>()
        .map_err(|e| bad("grant_types", e))?;
    Ok(Client {
        id: client_id(row, 0)?,
        name: get(row, 1)?,
        client_type: parse::<ClientType>(row, 2)?,
        redirect_uris,
        grant_types,
        scopes: scopes(row, 5)?,
        token_endpoint_auth_method: parse::<TokenEndpointAuthMethod>(row, 6)?,
        lifetimes: TokenLifetimes {
            access_token: lifetime(row, 7)?,
            refresh_token: lifetime(row, 8)?,
            refresh_idle: lifetime(row, 9)?,
            authorization_code: lifetime(row, 10)?,
        },
        metadata: json(row, 11)?,
        created_at: ts(row, 12)?,
        updated_at: ts(row, 13)?,
        disabled: get(row, 14)?,
    })
}

/// A grant from [`grant_cols!`] starting at column `o`.
pub(crate) fn grant(row: &Row, o: usize) -> Result<Grant> {
    Ok(Grant {
        id: grant_id(row, o)?,
        client_id: client_id(row, o + 1)?,
        subject: opt_subject(row, o + 2)?,
        scope: scopes(row, o + 3)?,
        auth: auth(row, o + 4)?,
        created_at: ts(row, o + 5)?,
        revoked_at: opt_ts(row, o + 6)?,
    })
}

/// A code from [`code_cols!`] starting at column 0.
pub(crate) fn code(row: &Row) -> Result<AuthorizationCode> {
    Ok(AuthorizationCode {
        grant_id: grant_id(row, 0)?,
        client_id: client_id(row, 1)?,
        subject: subject(row, 2)?,
        redirect_uri: redirect_uri(row, 3)?,
        scope: scopes(row, 4)?,
        code_challenge: pkce(row, 5, 6)?,
        nonce: get(row, 7)?,
        issued_at: ts(row, 8)?,
        expires_at: ts(row, 9)?,
        consumed_at: opt_ts(row, 10)?,
    })
}

/// An access token from columns `grant_id, client_id, subject, scope, audience, issued_at,
/// expires_at, revoked_at, cnf_kind, cnf_value, auth, claims` starting at column 0.
pub(crate) fn access_token(row: &Row) -> Result<AccessToken> {
    Ok(AccessToken {
        grant_id: grant_id(row, 0)?,
        client_id: client_id(row, 1)?,
        subject: opt_subject(row, 2)?,
        scope: scopes(row, 3)?,
        audience: get(row, 4)?,
        issued_at: ts(row, 5)?,
        expires_at: ts(row, 6)?,
        revoked_at: opt_ts(row, 7)?,
        cnf: cnf(row, 8, 9)?,
        auth: auth(row, 10)?,
        claims: json(row, 11)?,
    })
}

/// A refresh token from columns `grant_id, client_id, subject, scope, issued_at, expires_at,
/// idle_expires_at, rotated_at, successor, reuse_count, revoked_at, cnf_kind, cnf_value`
/// starting at column 0.
pub(crate) fn refresh_token(row: &Row) -> Result<RefreshToken> {
    let reuse: i32 = get(row, 9)?;
    Ok(RefreshToken {
        grant_id: grant_id(row, 0)?,
        client_id: client_id(row, 1)?,
        subject: opt_subject(row, 2)?,
        scope: scopes(row, 3)?,
        issued_at: ts(row, 4)?,
        expires_at: ts(row, 5)?,
        idle_expires_at: ts(row, 6)?,
        rotated_at: opt_ts(row, 7)?,
        successor: opt_hash(row, 8)?,
        reuse_count: u32::try_from(reuse).map_err(|e| bad("reuse_count", e))?,
        revoked_at: opt_ts(row, 10)?,
        cnf: cnf(row, 11, 12)?,
    })
}

/// A PAT from [`pat_cols!`] starting at column 0.
pub(crate) fn pat(row: &Row) -> Result<PersonalAccessToken> {
    Ok(PersonalAccessToken {
        id: PatId::from_uuid(get(row, 0)?),
        user: subject(row, 1)?,
        name: get(row, 2)?,
        scope: scopes(row, 3)?,
        created_at: ts(row, 4)?,
        expires_at: opt_ts(row, 5)?,
        last_used_at: opt_ts(row, 6)?,
        revoked_at: opt_ts(row, 7)?,
    })
}

/// A session from [`session_cols!`] starting at column 0.
pub(crate) fn session(row: &Row) -> Result<AuthorizationSession> {
    Ok(AuthorizationSession {
        client_id: client_id(row, 0)?,
        redirect_uri: redirect_uri(row, 1)?,
        scope: scopes(row, 2)?,
        state: get(row, 3)?,
        code_challenge: pkce(row, 4, 5)?,
        nonce: get(row, 6)?,
        subject: opt_subject(row, 7)?,
        created_at: ts(row, 8)?,
        expires_at: ts(row, 9)?,
        completed_at: opt_ts(row, 10)?,
    })
}

/// A consent from [`consent_cols!`] starting at column 0.
pub(crate) fn consent(row: &Row) -> Result<Consent> {
    Ok(Consent {
        client_id: client_id(row, 0)?,
        subject: subject(row, 1)?,
        scope: scopes(row, 2)?,
        granted_at: ts(row, 3)?,
        updated_at: ts(row, 4)?,
    })
}

/// An audit event from [`audit_cols!`] starting at column 0.
pub(crate) fn audit(row: &Row) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: AuditEventId::from_uuid(get(row, 0)?),
        at: ts(row, 1)?,
        kind: parse::<AuditKind>(row, 2)?,
        actor: get(row, 3)?,
        subject: opt_subject(row, 4)?,
        client_id: get::<Option<uuid::Uuid>>(row, 5)?.map(ClientId::from_uuid),
        grant_id: get::<Option<uuid::Uuid>>(row, 6)?.map(GrantId::from_uuid),
        ip: get::<Option<IpAddr>>(row, 7)?,
        details: json(row, 8)?,
    })
}

/// A user from [`user_cols!`] starting at column `o`.
pub(crate) fn user(row: &Row, o: usize) -> Result<User> {
    Ok(User {
        id: UserId::from_uuid(get(row, o)?),
        username: get(row, o + 1)?,
        email: get(row, o + 2)?,
        email_verified: get(row, o + 3)?,
        active: get(row, o + 4)?,
        metadata: json(row, o + 5)?,
        created_at: ts(row, o + 6)?,
        updated_at: ts(row, o + 7)?,
    })
}

/// A group from [`group_cols!`] starting at column `o`.
pub(crate) fn group(row: &Row, o: usize) -> Result<Group> {
    Ok(Group {
        id: GroupId::from_uuid(get(row, o)?),
        name: get(row, o + 1)?,
        created_at: ts(row, o + 2)?,
    })
}

/// A login session from [`login_session_cols!`] at column 0.
pub(crate) fn login_session(row: &Row) -> Result<LoginSession> {
    Ok(LoginSession {
        id: LoginSessionId::from_uuid(get(row, 0)?),
        user: UserId::from_uuid(get(row, 1)?),
        created_at: ts(row, 2)?,
        last_seen_at: ts(row, 3)?,
        idle_expires_at: ts(row, 4)?,
        expires_at: ts(row, 5)?,
        ip: get::<Option<IpAddr>>(row, 6)?,
        user_agent: get(row, 7)?,
        revoked_at: opt_ts(row, 8)?,
    })
}

/// A one-time token from [`one_time_cols!`] at column 0.
pub(crate) fn one_time_token(row: &Row) -> Result<OneTimeToken> {
    Ok(OneTimeToken {
        user: UserId::from_uuid(get(row, 0)?),
        purpose: parse::<OneTimePurpose>(row, 1)?,
        email: get(row, 2)?,
        issued_at: ts(row, 3)?,
        expires_at: ts(row, 4)?,
        consumed_at: opt_ts(row, 5)?,
    })
}

/// A passkey from [`passkey_cols!`] at column 0.
pub(crate) fn passkey(row: &Row) -> Result<Passkey> {
    let counter: i64 = get(row, 4)?;
    Ok(Passkey {
        credential_id: get(row, 0)?,
        user: UserId::from_uuid(get(row, 1)?),
        name: get(row, 2)?,
        credential: json(row, 3)?,
        counter: u32::try_from(counter).map_err(|e| bad(&col_name(row, 4), e))?,
        backup_state: get(row, 5)?,
        created_at: ts(row, 6)?,
        last_used_at: opt_ts(row, 7)?,
    })
}

/// A ceremony from [`ceremony_cols!`] at column 0.
pub(crate) fn ceremony(row: &Row) -> Result<Ceremony> {
    Ok(Ceremony {
        kind: parse::<CeremonyKind>(row, 0)?,
        user: get::<Option<uuid::Uuid>>(row, 1)?.map(UserId::from_uuid),
        state: json(row, 2)?,
        expires_at: ts(row, 3)?,
    })
}

/// A linked account from [`linked_cols!`] at column 0.
pub(crate) fn linked_account(row: &Row) -> Result<LinkedAccount> {
    Ok(LinkedAccount {
        id: LinkedAccountId::from_uuid(get(row, 0)?),
        provider: get(row, 1)?,
        provider_subject: get(row, 2)?,
        user: UserId::from_uuid(get(row, 3)?),
        access_token: get::<Option<Vec<u8>>>(row, 4)?.map(Sealed::from_bytes),
        refresh_token: get::<Option<Vec<u8>>>(row, 5)?.map(Sealed::from_bytes),
        token_expires_at: opt_ts(row, 6)?,
        created_at: ts(row, 7)?,
        updated_at: ts(row, 8)?,
    })
}

// ---- encoders ----

/// An auth context as a JSON object.
pub(crate) fn enc_auth(a: &AuthContext) -> Result<serde_json::Value> {
    serde_json::to_value(a).map_err(encode_err)
}

/// Redirect URIs as text.
pub(crate) fn enc_redirect_uris(u: &[RedirectUri]) -> Vec<&str> {
    u.iter().map(RedirectUri::as_str).collect()
}

/// Grant types as text.
pub(crate) fn enc_grant_types(g: &BTreeSet<GrantType>) -> Vec<&'static str> {
    g.iter().map(|g| g.as_str()).collect()
}

/// A lifetime in microseconds.
pub(crate) fn enc_lifetime(field: &'static str, d: Option<Duration>) -> Result<Option<i64>> {
    d.map(|d| {
        i64::try_from(d.as_micros()).map_err(|_| Error::invalid(field, "lifetime is too long"))
    })
    .transpose()
}

/// Sender constraint as (kind, value).
pub(crate) fn enc_cnf(c: Option<&SenderConstraint>) -> (Option<&'static str>, Option<&str>) {
    match c {
        Some(c) => (Some(c.kind()), Some(c.value())),
        None => (None, None),
    }
}

/// PKCE as (challenge, method).
pub(crate) fn enc_pkce(p: Option<&PkceChallenge>) -> (Option<&str>, Option<&'static str>) {
    match p {
        Some(p) => (Some(p.challenge.as_str()), Some(p.method.as_str())),
        None => (None, None),
    }
}
