//! The records bulk loads insert: the same domain records the façade would build (one
//! client, one subject, the client's scope), made in chunks so a load of 10 million tokens
//! never holds them all. Each backend's loader encodes them as its store does.

use std::ops::Range;
use std::time::Duration;

use authstore_core::{
    AccessToken, AuthContext, AuthorizationCode, ClientId, Grant, GrantId, RedirectUri,
    RefreshToken, Scopes, Subject, Timestamp, TokenKind,
};

use crate::tokens::token;

/// Rows per chunk (one transaction or one `COPY` per chunk and table).
pub(crate) const CHUNK: u64 = 50_000;

/// A refresh token family's absolute lifetime (the store's default).
pub(crate) const REFRESH_LIFE: Duration = Duration::from_secs(30 * 86_400);
/// A refresh token's idle lifetime (the store's default).
pub(crate) const REFRESH_IDLE: Duration = Duration::from_secs(14 * 86_400);

/// What every loaded record shares, and how token strings are made.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// The token key (raw hashing).
    pub(crate) key: [u8; 32],
    /// The seed token strings are derived from.
    pub(crate) seed: [u8; 32],
    /// The one client.
    pub(crate) client_id: ClientId,
    /// The one subject (a user id, as the server uses).
    pub(crate) subject: Subject,
    /// The client's scope.
    pub(crate) scope: Scopes,
    /// The client's redirect URI.
    pub(crate) redirect: RedirectUri,
}

impl Shape {
    /// A grant of the subject, made at `created`.
    pub(crate) fn grant(&self, created: Timestamp) -> Grant {
        Grant {
            id: GrantId::new_at(created),
            client_id: self.client_id,
            subject: Some(self.subject.clone()),
            scope: self.scope.clone(),
            auth: AuthContext::default(),
            created_at: created,
            revoked_at: None,
        }
    }

    /// An access token of `grant` as `issue_into`/`store_foreign_tokens` build it.
    pub(crate) fn access(
        &self,
        grant: GrantId,
        issued: Timestamp,
        expires: Timestamp,
    ) -> AccessToken {
        AccessToken {
            grant_id: grant,
            client_id: self.client_id,
            subject: Some(self.subject.clone()),
            scope: self.scope.clone(),
            audience: Vec::new(),
            issued_at: issued,
            expires_at: expires,
            revoked_at: None,
            cnf: None,
            auth: AuthContext::default(),
            claims: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// An authorization code of `grant` as `issue_code` builds it (no PKCE, no nonce).
    pub(crate) fn code(
        &self,
        grant: GrantId,
        issued: Timestamp,
        expires: Timestamp,
    ) -> AuthorizationCode {
        AuthorizationCode {
            grant_id: grant,
            client_id: self.client_id,
            subject: self.subject.clone(),
            redirect_uri: self.redirect.clone(),
            scope: self.scope.clone(),
            code_challenge: None,
            nonce: None,
            issued_at: issued,
            expires_at: expires,
            consumed_at: None,
        }
    }

    /// The first refresh token of `grant`, as `first_refresh_record` builds it.
    pub(crate) fn refresh(&self, grant: GrantId, issued: Timestamp) -> RefreshToken {
        let expires = issued.saturating_add(REFRESH_LIFE);
        RefreshToken {
            grant_id: grant,
            client_id: self.client_id,
            subject: Some(self.subject.clone()),
            scope: self.scope.clone(),
            issued_at: issued,
            expires_at: expires,
            idle_expires_at: issued.saturating_add(REFRESH_IDLE).min(expires),
            rotated_at: None,
            successor: None,
            reuse_count: 0,
            revoked_at: None,
            cnf: None,
        }
    }

    /// The token string of `kind` number `index`.
    pub(crate) fn token(&self, kind: TokenKind, index: u64) -> String {
        token(kind, &self.seed, index)
    }
}

/// One chunk of a load: grants, then records under their token strings.
#[derive(Debug, Default)]
pub(crate) struct Chunk<T> {
    /// Grants to insert first.
    pub(crate) grants: Vec<Grant>,
    /// Records with the token strings whose hashes key them.
    pub(crate) records: Vec<(String, T)>,
}

/// What to load: token numbers `range`, `per_grant` tokens sharing each grant.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// Token numbers (each makes one token string).
    pub(crate) range: Range<u64>,
    /// Tokens per grant (at least 1).
    pub(crate) per_grant: u64,
    /// Issue time (and grant creation time).
    pub(crate) issued: Timestamp,
    /// Expiry of access tokens and codes.
    pub(crate) expires: Timestamp,
}

impl Load {
    /// The load split into chunks of at most [`CHUNK`] tokens (aligned to whole grants).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = Load> + '_ {
        let per = self.per_grant.max(1);
        let step = (CHUNK / per).max(1) * per;
        let (start, end) = (self.range.start, self.range.end);
        (start..end).step_by(step as usize).map(move |s| Load {
            range: s..(s + step).min(end),
            ..self.clone()
        })
    }

    /// Access tokens of this (chunk of a) load.
    pub(crate) fn access(&self, shape: &Shape) -> Chunk<AccessToken> {
        self.build(shape, |g| {
            (
                TokenKind::AccessToken,
                Rec::Access(shape.access(g, self.issued, self.expires)),
            )
        })
        .map(|r| match r {
            Rec::Access(a) => Some(a),
            _ => None,
        })
    }

    /// Authorization codes of this load.
    pub(crate) fn codes(&self, shape: &Shape) -> Chunk<AuthorizationCode> {
        self.build(shape, |g| {
            (
                TokenKind::AuthorizationCode,
                Rec::Code(shape.code(g, self.issued, self.expires)),
            )
        })
        .map(|r| match r {
            Rec::Code(c) => Some(c),
            _ => None,
        })
    }

    /// Refresh tokens of this load.
    pub(crate) fn refresh(&self, shape: &Shape) -> Chunk<RefreshToken> {
        self.build(shape, |g| {
            (
                TokenKind::RefreshToken,
                Rec::Refresh(shape.refresh(g, self.issued)),
            )
        })
        .map(|r| match r {
            Rec::Refresh(t) => Some(t),
            _ => None,
        })
    }

    fn build(&self, shape: &Shape, make: impl Fn(GrantId) -> (TokenKind, Rec)) -> Chunk<Rec> {
        let per = self.per_grant.max(1);
        let n = self.range.end.saturating_sub(self.range.start);
        let mut out = Chunk {
            grants: Vec::with_capacity(n.div_ceil(per) as usize),
            records: Vec::with_capacity(n as usize),
        };
        for (i, index) in self.range.clone().enumerate() {
            if i as u64 % per == 0 {
                out.grants.push(shape.grant(self.issued));
            }
            let Some(g) = out.grants.last().map(|g| g.id) else {
                continue;
            };
            let (kind, rec) = make(g);
            out.records.push((shape.token(kind, index), rec));
        }
        out
    }
}

enum Rec {
    Access(AccessToken),
    Code(AuthorizationCode),
    Refresh(RefreshToken),
}

impl Chunk<Rec> {
    fn map<T>(self, f: impl Fn(Rec) -> Option<T>) -> Chunk<T> {
        Chunk {
            grants: self.grants,
            records: self
                .records
                .into_iter()
                .filter_map(|(s, r)| f(r).map(|t| (s, t)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            key: [1; 32],
            seed: [2; 32],
            client_id: ClientId::new_at(Timestamp::from_unix_micros(1)),
            subject: Subject::new("u").unwrap(),
            scope: Scopes::parse("read").unwrap(),
            redirect: RedirectUri::new("https://x.example/cb").unwrap(),
        }
    }

    #[test]
    fn chunks_cover_the_range_in_whole_grants() {
        let t = Timestamp::from_unix_micros(1_000_000);
        let load = Load {
            range: 10..(10 + 2 * CHUNK + 7),
            per_grant: 4,
            issued: t,
            expires: t,
        };
        let chunks: Vec<Load> = load.chunks().collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].range.start, 10);
        assert_eq!(chunks[2].range.end, 10 + 2 * CHUNK + 7);
        let c = chunks[2].access(&shape());
        assert_eq!(c.records.len(), 7);
        assert_eq!(c.grants.len(), 2);
        assert_eq!(c.records[4].1.grant_id, c.grants[1].id);
        assert_eq!(
            c.records[0].0,
            shape().token(TokenKind::AccessToken, chunks[2].range.start)
        );
    }
}
