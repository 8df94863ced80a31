//! Mapping between rows and domain types. Rows are never deserialized into domain types:
//! each column is read and validated explicitly, and a bad value is a decode error, never a
//! panic.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use authstore_core::backend::KEY_CHECK_LEN;
use authstore_core::{
    AccessToken, AuditEvent, AuditEventId, AuditKind, AuthContext, AuthorizationCode,
    AuthorizationSession, Client, ClientId, ClientType, Consent, Error, Grant, GrantId, GrantType,
    PatId, PersonalAccessToken, PkceChallenge, PkceMethod, RedirectUri, RefreshToken, Result,
    Scopes, SenderConstraint, Subject, Timestamp, TokenEndpointAuthMethod, TokenHash,
    TokenLifetimes,
};
use authstore_core::{
    Ceremony, Group, GroupId, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId,
    OneTimeToken, Passkey, Sealed, TotpRecord, User, UserId,
};
use authstore_core::{KeyCheck, KeyRingKind};
use rusqlite::Row;
use rusqlite::types::ValueRef;

use crate::db::{bad, encode_err};

type Sql<T> = rusqlite::Result<T>;

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
        "id, user_id, created_at, last_seen_at, idle_expires_at, expires_at, ip, user_agent, \
         revoked_at"
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

/// TOTP columns, decoded by [`totp`]: 3 columns.
macro_rules! totp_cols {
    () => {
        "secret, last_step, created_at"
    };
}
pub(crate) use totp_cols;

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

fn uuid(row: &Row<'_>, i: usize) -> Sql<uuid::Uuid> {
    let b = row.get_ref(i)?.as_blob()?;
    uuid::Uuid::from_slice(b).map_err(|e| bad(i, e))
}

fn opt_uuid(row: &Row<'_>, i: usize) -> Sql<Option<uuid::Uuid>> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        _ => uuid(row, i).map(Some),
    }
}

pub(crate) fn client_id(row: &Row<'_>, i: usize) -> Sql<ClientId> {
    uuid(row, i).map(ClientId::from_uuid)
}

pub(crate) fn grant_id(row: &Row<'_>, i: usize) -> Sql<GrantId> {
    uuid(row, i).map(GrantId::from_uuid)
}

pub(crate) fn hash(row: &Row<'_>, i: usize) -> Sql<TokenHash> {
    let b = row.get_ref(i)?.as_blob()?;
    TokenHash::from_slice(b).map_err(|e| bad(i, e))
}

fn opt_hash(row: &Row<'_>, i: usize) -> Sql<Option<TokenHash>> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        _ => hash(row, i).map(Some),
    }
}

fn text<'r>(row: &'r Row<'_>, i: usize) -> Sql<&'r str> {
    Ok(row.get_ref(i)?.as_str()?)
}

fn opt_string(row: &Row<'_>, i: usize) -> Sql<Option<String>> {
    row.get(i)
}

pub(crate) fn ts(row: &Row<'_>, i: usize) -> Sql<Timestamp> {
    row.get::<_, i64>(i).map(Timestamp::from_unix_micros)
}

pub(crate) fn opt_ts(row: &Row<'_>, i: usize) -> Sql<Option<Timestamp>> {
    Ok(row
        .get::<_, Option<i64>>(i)?
        .map(Timestamp::from_unix_micros))
}

fn scopes(row: &Row<'_>, i: usize) -> Sql<Scopes> {
    Scopes::parse(text(row, i)?).map_err(|e| bad(i, e))
}

pub(crate) fn subject(row: &Row<'_>, i: usize) -> Sql<Subject> {
    Subject::new(row.get::<_, String>(i)?).map_err(|e| bad(i, e))
}

pub(crate) fn opt_subject(row: &Row<'_>, i: usize) -> Sql<Option<Subject>> {
    row.get::<_, Option<String>>(i)?
        .map(|s| Subject::new(s).map_err(|e| bad(i, e)))
        .transpose()
}

fn redirect_uri(row: &Row<'_>, i: usize) -> Sql<RedirectUri> {
    RedirectUri::new(row.get::<_, String>(i)?).map_err(|e| bad(i, e))
}

fn json(row: &Row<'_>, i: usize) -> Sql<serde_json::Value> {
    let s = text(row, i)?;
    if s == "{}" {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(s).map_err(|e| bad(i, e))
}

fn auth(row: &Row<'_>, i: usize) -> Sql<AuthContext> {
    let s = text(row, i)?;
    if s == "{}" {
        return Ok(AuthContext::default());
    }
    serde_json::from_str(s).map_err(|e| bad(i, e))
}

fn audience(row: &Row<'_>, i: usize) -> Sql<Vec<String>> {
    let s = text(row, i)?;
    if s == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(s).map_err(|e| bad(i, e))
}

fn pkce(row: &Row<'_>, challenge: usize, method: usize) -> Sql<Option<PkceChallenge>> {
    match (opt_string(row, challenge)?, row.get_ref(method)?) {
        (None, ValueRef::Null) => Ok(None),
        (Some(c), ValueRef::Text(m)) => {
            let m = std::str::from_utf8(m).map_err(|e| bad(method, e))?;
            let method_v = PkceMethod::from_str(m).map_err(|e| bad(method, e))?;
            Ok(Some(PkceChallenge {
                challenge: c,
                method: method_v,
            }))
        }
        _ => Err(bad(
            challenge,
            "PKCE challenge and method must both be set or both unset",
        )),
    }
}

fn cnf(row: &Row<'_>, kind: usize, value: usize) -> Sql<Option<SenderConstraint>> {
    match (opt_string(row, kind)?, opt_string(row, value)?) {
        (None, None) => Ok(None),
        (Some(k), Some(v)) => SenderConstraint::from_parts(&k, v)
            .map(Some)
            .map_err(|e| bad(kind, e)),
        _ => Err(bad(
            kind,
            "sender constraint kind and value must both be set or both unset",
        )),
    }
}

fn flag(row: &Row<'_>, i: usize) -> Sql<bool> {
    match row.get::<_, i64>(i)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(bad(i, format!("expected 0 or 1, got {other}"))),
    }
}

fn lifetime(row: &Row<'_>, i: usize) -> Sql<Option<Duration>> {
    row.get::<_, Option<i64>>(i)?
        .map(|us| {
            u64::try_from(us)
                .map(Duration::from_micros)
                .map_err(|e| bad(i, e))
        })
        .transpose()
}

fn parse<T: FromStr<Err = Error>>(row: &Row<'_>, i: usize) -> Sql<T> {
    T::from_str(text(row, i)?).map_err(|e| bad(i, e))
}

// ---- row decoders ----

/// A client from [`client_cols!`] starting at column 0.
pub(crate) fn client(row: &Row<'_>) -> Sql<Client> {
    let uris: Vec<String> = serde_json::from_str(text(row, 3)?).map_err(|e| bad(3, e))?;
    let redirect_uris = uris
        .into_iter()
        .map(RedirectUri::new)
        .collect::<Result<Vec<_>>>()
        .map_err(|e| bad(3, e))?;
    let gt = text(row, 4)?;
    let grant_types = if gt.is_empty() {
        BTreeSet::new()
    } else {
        gt.split(' ')
            .map(GrantType::from_str)
            .collect::<Result<BTreeSet<_>>>()
            .map_err(|e| bad(4, e))?
    };
    Ok(Client {
        id: client_id(row, 0)?,
        name: row.get(1)?,
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
        disabled: flag(row, 14)?,
    })
}

/// A grant from [`grant_cols!`] starting at column `o`.
pub(crate) fn grant(row: &Row<'_>, o: usize) -> Sql<Grant> {
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
pub(crate) fn code(row: &Row<'_>) -> Sql<AuthorizationCode> {
    Ok(AuthorizationCode {
        grant_id: grant_id(row, 0)?,
        client_id: client_id(row, 1)?,
        subject: subject(row, 2)?,
        redirect_uri: redirect_uri(row, 3)?,
        scope: scopes(row, 4)?,
        code_challenge: pkce(row, 5, 6)?,
        nonce: opt_string(row, 7)?,
        issued_at: ts(row, 8)?,
        expires_at: ts(row, 9)?,
        consumed_at: opt_ts(row, 10)?,
    })
}

/// An access token from columns `grant_id, client_id, subject, scope, audience, issued_at,
/// expires_at, revoked_at, cnf_kind, cnf_value, auth, claims` starting at column 0.
pub(crate) fn access_token(row: &Row<'_>) -> Sql<AccessToken> {
    Ok(AccessToken {
        grant_id: grant_id(row, 0)?,
        client_id: client_id(row, 1)?,
        subject: opt_subject(row, 2)?,
        scope: scopes(row, 3)?,
        audience: audience(row, 4)?,
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
pub(crate) fn refresh_token(row: &Row<'_>) -> Sql<RefreshToken> {
    let reuse: i64 = row.get(9)?;
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
        reuse_count: u32::try_from(reuse).map_err(|e| bad(9, e))?,
        revoked_at: opt_ts(row, 10)?,
        cnf: cnf(row, 11, 12)?,
    })
}

/// A PAT from [`pat_cols!`] starting at column 0.
pub(crate) fn pat(row: &Row<'_>) -> Sql<PersonalAccessToken> {
    Ok(PersonalAccessToken {
        id: PatId::from_uuid(uuid(row, 0)?),
        user: subject(row, 1)?,
        name: row.get(2)?,
        scope: scopes(row, 3)?,
        created_at: ts(row, 4)?,
        expires_at: opt_ts(row, 5)?,
        last_used_at: opt_ts(row, 6)?,
        revoked_at: opt_ts(row, 7)?,
    })
}

/// A session from [`session_cols!`] starting at column 0.
pub(crate) fn session(row: &Row<'_>) -> Sql<AuthorizationSession> {
    Ok(AuthorizationSession {
        client_id: client_id(row, 0)?,
        redirect_uri: redirect_uri(row, 1)?,
        scope: scopes(row, 2)?,
        state: opt_string(row, 3)?,
        code_challenge: pkce(row, 4, 5)?,
        nonce: opt_string(row, 6)?,
        subject: opt_subject(row, 7)?,
        created_at: ts(row, 8)?,
        expires_at: ts(row, 9)?,
        completed_at: opt_ts(row, 10)?,
    })
}

/// A consent from [`consent_cols!`] starting at column 0.
pub(crate) fn consent(row: &Row<'_>) -> Sql<Consent> {
    Ok(Consent {
        client_id: client_id(row, 0)?,
        subject: subject(row, 1)?,
        scope: scopes(row, 2)?,
        granted_at: ts(row, 3)?,
        updated_at: ts(row, 4)?,
    })
}

/// An audit event from [`audit_cols!`] starting at column 0.
pub(crate) fn audit(row: &Row<'_>) -> Sql<AuditEvent> {
    let ip = row
        .get::<_, Option<String>>(7)?
        .map(|s| IpAddr::from_str(&s).map_err(|e| bad(7, e)))
        .transpose()?;
    Ok(AuditEvent {
        id: AuditEventId::from_uuid(uuid(row, 0)?),
        at: ts(row, 1)?,
        kind: parse::<AuditKind>(row, 2)?,
        actor: opt_string(row, 3)?,
        subject: opt_subject(row, 4)?,
        client_id: opt_uuid(row, 5)?.map(ClientId::from_uuid),
        grant_id: opt_uuid(row, 6)?.map(GrantId::from_uuid),
        ip,
        details: json(row, 8)?,
    })
}

/// A user from [`user_cols!`] starting at column 0.
pub(crate) fn user(row: &Row<'_>) -> Sql<User> {
    Ok(User {
        id: UserId::from_uuid(uuid(row, 0)?),
        username: row.get(1)?,
        email: opt_string(row, 2)?,
        email_verified: flag(row, 3)?,
        active: flag(row, 4)?,
        metadata: json(row, 5)?,
        created_at: ts(row, 6)?,
        updated_at: ts(row, 7)?,
    })
}

/// A group from [`group_cols!`] starting at column 0.
pub(crate) fn group(row: &Row<'_>) -> Sql<Group> {
    Ok(Group {
        id: GroupId::from_uuid(uuid(row, 0)?),
        name: row.get(1)?,
        created_at: ts(row, 2)?,
    })
}

pub(crate) fn user_id(row: &Row<'_>, i: usize) -> Sql<UserId> {
    uuid(row, i).map(UserId::from_uuid)
}

fn ip(row: &Row<'_>, i: usize) -> Sql<Option<IpAddr>> {
    row.get::<_, Option<String>>(i)?
        .map(|s| IpAddr::from_str(&s).map_err(|e| bad(i, e)))
        .transpose()
}

fn blob(row: &Row<'_>, i: usize) -> Sql<Vec<u8>> {
    Ok(row.get_ref(i)?.as_blob()?.to_vec())
}

pub(crate) fn sealed(row: &Row<'_>, i: usize) -> Sql<Sealed> {
    blob(row, i).map(Sealed::from_bytes)
}

fn opt_sealed(row: &Row<'_>, i: usize) -> Sql<Option<Sealed>> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        _ => sealed(row, i).map(Some),
    }
}

/// A key check from `ring, key_id, key_check, recorded_at` starting at column 0.
pub(crate) fn key_check(row: &Row<'_>) -> Sql<KeyCheck> {
    let ring = text(row, 0)?;
    let ring =
        KeyRingKind::parse(ring).ok_or_else(|| bad(0, format!("unknown key ring {ring:?}")))?;
    let check = row.get_ref(2)?.as_blob()?;
    let check = <[u8; KEY_CHECK_LEN]>::try_from(check).map_err(|_| {
        bad(
            2,
            format!("a key check is {KEY_CHECK_LEN} bytes, got {}", check.len()),
        )
    })?;
    Ok(KeyCheck {
        ring,
        key_id: text(row, 1)?.to_owned(),
        check,
        recorded_at: ts(row, 3)?,
    })
}

/// A login session from [`login_session_cols!`] starting at column 0.
pub(crate) fn login_session(row: &Row<'_>) -> Sql<LoginSession> {
    Ok(LoginSession {
        id: LoginSessionId::from_uuid(uuid(row, 0)?),
        user: user_id(row, 1)?,
        created_at: ts(row, 2)?,
        last_seen_at: ts(row, 3)?,
        idle_expires_at: ts(row, 4)?,
        expires_at: ts(row, 5)?,
        ip: ip(row, 6)?,
        user_agent: opt_string(row, 7)?,
        revoked_at: opt_ts(row, 8)?,
    })
}

/// A one-time token from [`one_time_cols!`] starting at column 0.
pub(crate) fn one_time_token(row: &Row<'_>) -> Sql<OneTimeToken> {
    Ok(OneTimeToken {
        user: user_id(row, 0)?,
        purpose: parse(row, 1)?,
        email: opt_string(row, 2)?,
        issued_at: ts(row, 3)?,
        expires_at: ts(row, 4)?,
        consumed_at: opt_ts(row, 5)?,
    })
}

/// A TOTP enrolment from [`totp_cols!`] starting at column 0.
pub(crate) fn totp(row: &Row<'_>) -> Sql<TotpRecord> {
    Ok(TotpRecord {
        secret: sealed(row, 0)?,
        last_step: row.get(1)?,
        created_at: ts(row, 2)?,
    })
}

/// A passkey from [`passkey_cols!`] starting at column 0.
pub(crate) fn passkey(row: &Row<'_>) -> Sql<Passkey> {
    let counter: i64 = row.get(4)?;
    Ok(Passkey {
        credential_id: blob(row, 0)?,
        user: user_id(row, 1)?,
        name: row.get(2)?,
        credential: json(row, 3)?,
        counter: u32::try_from(counter).map_err(|e| bad(4, e))?,
        backup_state: flag(row, 5)?,
        created_at: ts(row, 6)?,
        last_used_at: opt_ts(row, 7)?,
    })
}

/// A ceremony from [`ceremony_cols!`] starting at column 0.
pub(crate) fn ceremony(row: &Row<'_>) -> Sql<Ceremony> {
    Ok(Ceremony {
        kind: parse(row, 0)?,
        user: opt_uuid(row, 1)?.map(UserId::from_uuid),
        state: json(row, 2)?,
        expires_at: ts(row, 3)?,
    })
}

/// A linked account from [`linked_cols!`] starting at column 0.
pub(crate) fn linked_account(row: &Row<'_>) -> Sql<LinkedAccount> {
    Ok(LinkedAccount {
        id: LinkedAccountId::from_uuid(uuid(row, 0)?),
        provider: row.get(1)?,
        provider_subject: row.get(2)?,
        user: user_id(row, 3)?,
        access_token: opt_sealed(row, 4)?,
        refresh_token: opt_sealed(row, 5)?,
        token_expires_at: opt_ts(row, 6)?,
        created_at: ts(row, 7)?,
        updated_at: ts(row, 8)?,
    })
}

// ---- encoders ----

/// JSON text of a value (objects as written; `{}` for an empty object).
pub(crate) fn enc_json(v: &serde_json::Value) -> String {
    v.to_string()
}

/// JSON text of an auth context; `{}` for the default one.
pub(crate) fn enc_auth(a: &AuthContext) -> Result<String> {
    if *a == AuthContext::default() {
        return Ok("{}".to_owned());
    }
    serde_json::to_string(a).map_err(encode_err)
}

/// JSON array of audiences.
pub(crate) fn enc_audience(a: &[String]) -> Result<String> {
    if a.is_empty() {
        return Ok("[]".to_owned());
    }
    serde_json::to_string(a).map_err(encode_err)
}

/// JSON array of redirect URIs.
pub(crate) fn enc_redirect_uris(u: &[RedirectUri]) -> Result<String> {
    serde_json::to_string(&u.iter().map(RedirectUri::as_str).collect::<Vec<_>>())
        .map_err(encode_err)
}

/// Space-separated grant types.
pub(crate) fn enc_grant_types(g: &BTreeSet<GrantType>) -> String {
    g.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(" ")
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
