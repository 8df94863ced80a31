//! Group commit of token issuance: concurrent `issue_tokens` calls share transactions, and
//! every call gets exactly the answer it would get alone (each runs under its own
//! savepoint).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::{AuditStore, ClientStore, GrantStore, Maintenance, TokenIssue};
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuditQuery, AuthContext, Client, ClientId,
    ClientType, Error, Grant, GrantId, GrantType, Scopes, Subject, Timestamp,
    TokenEndpointAuthMethod, TokenHash, TokenLifetimes,
};
use authstore_sqlite::{SqliteOptions, SqliteStore};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

fn event() -> AuditEvent {
    AuditEvent::new(AuditKind::TokensIssued, T0, &AuditContext::default())
}

fn client() -> Client {
    Client {
        id: ClientId::new_at(T0),
        name: "svc".into(),
        client_type: ClientType::Confidential,
        redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: Scopes::parse("read").unwrap(),
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        lifetimes: TokenLifetimes::default(),
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
        disabled: false,
    }
}

fn hash(n: u32) -> TokenHash {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&n.to_le_bytes());
    h[31] = 0xCD;
    TokenHash::from_bytes(h)
}

fn issue(client: ClientId, n: u32, grant: Option<GrantId>) -> TokenIssue {
    let g = Grant {
        id: grant.unwrap_or_else(|| GrantId::new_at(T0)),
        client_id: client,
        subject: Some(Subject::new("alice").unwrap()),
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext::default(),
        created_at: T0,
        revoked_at: None,
    };
    let access = AccessToken {
        grant_id: g.id,
        client_id: client,
        subject: g.subject.clone(),
        scope: g.scope.clone(),
        audience: vec![],
        issued_at: T0,
        expires_at: T0.saturating_add(Duration::from_secs(600)),
        revoked_at: None,
        cnf: None,
        auth: AuthContext::default(),
        claims: serde_json::json!({}),
    };
    TokenIssue {
        // `grant: Some(id)` names an existing (here: missing) grant instead of a new one.
        new_grant: grant.is_none().then(|| g.clone()),
        grant_id: g.id,
        access: Some((hash(n), access)),
        refresh: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_share_commits_and_keep_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gc.db");
    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    store.migrate().await.unwrap();
    let c = client();
    store.insert_client(&c, None, event()).await.unwrap();

    // Another connection holds SQLite's write lock: the first caller to take the writer
    // waits on it (busy timeout) while every other call queues behind it, so the queued
    // ones are committed together afterwards.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut calls = Vec::new();
    for n in 0..40u32 {
        let s = Arc::clone(&store);
        let cid = c.id;
        calls.push(tokio::spawn(async move {
            let t = match n % 10 {
                // Into a grant that does not exist: refused alone, as the single path does.
                7 => issue(cid, n, Some(GrantId::new_at(T0))),
                // The same token hash as call 1: whichever commits second conflicts.
                9 => issue(cid, 1, None),
                _ => issue(cid, n, None),
            };
            (n, s.issue_tokens(&t, event()).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);

    let mut ok = 0;
    let mut dup_outcomes = Vec::new();
    for call in calls {
        let (n, r) = call.await.unwrap();
        match n % 10 {
            7 => assert!(matches!(r, Err(Error::Inactive { .. })), "{n}: {r:?}"),
            9 => dup_outcomes.push(r),
            _ if n == 1 => dup_outcomes.push(r),
            _ => {
                assert!(r.is_ok(), "{n}: {r:?}");
                ok += 1;
            }
        }
    }
    // Hash 1 was offered five times (call 1 and calls 9, 19, 29, 39): stored exactly once.
    let stored = dup_outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 1, "{dup_outcomes:?}");
    assert!(
        dup_outcomes
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::Conflict { .. })),
        "{dup_outcomes:?}"
    );
    // Every successful call's token is there; refused calls left nothing (their grants,
    // tokens and audit events were rolled back with their savepoints).
    for n in (0..40u32).filter(|n| n % 10 != 7 && n % 10 != 9 && *n != 1) {
        assert!(
            store
                .find_access_token(&hash(n), T0)
                .await
                .unwrap()
                .is_some(),
            "token {n}"
        );
    }
    assert!(
        store
            .find_access_token(&hash(7), T0)
            .await
            .unwrap()
            .is_none()
    );
    let issued = store
        .query_audit(&AuditQuery {
            kind: Some(AuditKind::TokensIssued),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .len();
    // The client was inserted with the same kind of event: one more.
    assert_eq!(
        issued,
        ok + stored + 1,
        "audit events of stored issues only"
    );
}
