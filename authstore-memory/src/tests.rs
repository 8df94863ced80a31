//! Unit tests of the trickiest parts, through the backend traits with hand-built records.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::{
    AuditStore, CleanupOptions, ClientStore, CodeConsumption, GrantStore, Maintenance,
    RevokeOutcome, Rotation, RotationMode, TokenIssue,
};
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuditQuery, AuthContext, AuthorizationCode,
    Client, ClientId, ClientType, Error, Grant, GrantId, GrantType, RedirectUri, RefreshToken,
    Scopes, Subject, Timestamp, TokenEndpointAuthMethod, TokenHash, TokenLifetimes,
};

use crate::MemoryStore;

const SEC: i64 = 1_000_000;
const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000 * SEC);

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(T0.as_unix_micros() + secs * SEC)
}

fn h(n: u8) -> TokenHash {
    let mut b = [0u8; 32];
    b[0] = n;
    b[31] = n;
    TokenHash::from_bytes(b)
}

fn ev(kind: AuditKind, secs: i64) -> AuditEvent {
    AuditEvent::new(kind, at(secs), &AuditContext::default())
}

fn subject() -> Subject {
    Subject::new("alice").unwrap()
}

fn client() -> Client {
    Client {
        id: ClientId::new_at(T0),
        name: "app".into(),
        client_type: ClientType::Confidential,
        redirect_uris: vec![RedirectUri::new("https://app.example/cb").unwrap()],
        grant_types: BTreeSet::from([GrantType::AuthorizationCode, GrantType::RefreshToken]),
        scopes: Scopes::parse("read write").unwrap(),
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        lifetimes: TokenLifetimes::default(),
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
        disabled: false,
    }
}

fn grant(c: &Client) -> Grant {
    Grant {
        id: GrantId::new_at(T0),
        client_id: c.id,
        subject: Some(subject()),
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext::default(),
        created_at: T0,
        revoked_at: None,
    }
}

fn code(g: &Grant, expires: i64) -> AuthorizationCode {
    AuthorizationCode {
        grant_id: g.id,
        client_id: g.client_id,
        subject: subject(),
        redirect_uri: RedirectUri::new("https://app.example/cb").unwrap(),
        scope: g.scope.clone(),
        code_challenge: None,
        nonce: None,
        issued_at: T0,
        expires_at: at(expires),
        consumed_at: None,
    }
}

fn access(g: &Grant, issued: i64, expires: i64) -> AccessToken {
    AccessToken {
        grant_id: g.id,
        client_id: g.client_id,
        subject: g.subject.clone(),
        scope: g.scope.clone(),
        audience: vec![],
        issued_at: at(issued),
        expires_at: at(expires),
        revoked_at: None,
        cnf: None,
        auth: AuthContext::default(),
        claims: serde_json::json!({}),
    }
}

fn refresh(g: &Grant, issued: i64, expires: i64) -> RefreshToken {
    RefreshToken {
        grant_id: g.id,
        client_id: g.client_id,
        subject: g.subject.clone(),
        scope: g.scope.clone(),
        issued_at: at(issued),
        expires_at: at(expires),
        idle_expires_at: at(expires),
        rotated_at: None,
        successor: None,
        reuse_count: 0,
        revoked_at: None,
        cnf: None,
    }
}

/// A store with one client and one grant holding access token `h(1)` and refresh `h(2)`.
async fn store_with_tokens(access_expires: i64, refresh_expires: i64) -> (MemoryStore, Grant) {
    let s = MemoryStore::new();
    let c = client();
    s.insert_client(&c, Some(&h(99)), ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    let g = grant(&c);
    let issue = TokenIssue {
        new_grant: Some(g.clone()),
        grant_id: g.id,
        access: Some((h(1), access(&g, 0, access_expires))),
        refresh: Some((h(2), refresh(&g, 0, refresh_expires))),
    };
    s.issue_tokens(&issue, ev(AuditKind::TokensIssued, 0))
        .await
        .unwrap();
    (s, g)
}

async fn kinds(s: &MemoryStore) -> Vec<AuditKind> {
    s.query_audit(&AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn code_is_consumed_exactly_once() {
    let s = MemoryStore::new();
    let c = client();
    s.insert_client(&c, None, ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    let g = grant(&c);
    // Ids order events only to the millisecond: keep the events apart.
    s.issue_code(&g, &h(1), &code(&g, 60), ev(AuditKind::CodeIssued, 1))
        .await
        .unwrap();

    let first = s
        .consume_code(&h(1), ev(AuditKind::CodeRedeemed, 10))
        .await
        .unwrap();
    match first {
        CodeConsumption::Consumed(c) => assert_eq!(c.consumed_at, Some(at(10))),
        other => panic!("expected Consumed, got {other:?}"),
    }
    let again = s
        .consume_code(&h(1), ev(AuditKind::CodeRedeemed, 11))
        .await
        .unwrap();
    assert_eq!(again, CodeConsumption::AlreadyConsumed { grant_id: g.id });
    // A replay after expiry is still a replay.
    let late = s
        .consume_code(&h(1), ev(AuditKind::CodeRedeemed, 100))
        .await
        .unwrap();
    assert_eq!(late, CodeConsumption::AlreadyConsumed { grant_id: g.id });
    assert_eq!(
        s.consume_code(&h(7), ev(AuditKind::CodeRedeemed, 10))
            .await
            .unwrap(),
        CodeConsumption::Inactive
    );
    // Only the winning redemption was logged.
    assert_eq!(
        kinds(&s).await,
        [
            AuditKind::ClientCreated,
            AuditKind::CodeIssued,
            AuditKind::CodeRedeemed
        ]
    );
}

#[tokio::test]
async fn expired_or_revoked_codes_are_inactive_and_untouched() {
    let s = MemoryStore::new();
    let c = client();
    s.insert_client(&c, None, ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    let g = grant(&c);
    s.issue_code(&g, &h(1), &code(&g, 60), ev(AuditKind::CodeIssued, 0))
        .await
        .unwrap();
    // expires_at <= now is expired.
    let r = s
        .consume_code(&h(1), ev(AuditKind::CodeRedeemed, 60))
        .await
        .unwrap();
    assert_eq!(r, CodeConsumption::Inactive);
    // Still unconsumed: the grant's revocation makes it inactive too.
    s.revoke_grant(g.id, ev(AuditKind::GrantRevoked, 1))
        .await
        .unwrap();
    let r = s
        .consume_code(&h(1), ev(AuditKind::CodeRedeemed, 2))
        .await
        .unwrap();
    assert_eq!(r, CodeConsumption::Inactive);
    // A disabled client's code cannot be issued.
    let mut c2 = client();
    c2.id = ClientId::new_at(at(1));
    c2.disabled = true;
    s.insert_client(&c2, None, ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    let g2 = Grant {
        id: GrantId::new_at(at(1)),
        ..grant(&c2)
    };
    let err = s
        .issue_code(&g2, &h(2), &code(&g2, 60), ev(AuditKind::CodeIssued, 0))
        .await;
    assert!(
        matches!(err, Err(Error::Inactive { kind: "grant" })),
        "{err:?}"
    );
    assert!(s.get_grant(g2.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redeemers_have_one_winner() {
    let s = Arc::new(MemoryStore::new());
    let c = client();
    s.insert_client(&c, None, ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    let g = grant(&c);
    s.issue_code(&g, &h(1), &code(&g, 60), ev(AuditKind::CodeIssued, 0))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.consume_code(&h(1), ev(AuditKind::CodeRedeemed, 5)).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CodeConsumption::Consumed(_) => won += 1,
            CodeConsumption::AlreadyConsumed { grant_id } => assert_eq!(grant_id, g.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

fn rotation(g: &Grant, presented: TokenHash, mode: RotationMode, n: u8, now: i64) -> Rotation {
    Rotation {
        presented,
        mode,
        refresh: (h(n), refresh(g, now, 10_000)),
        access: (h(n + 100), access(g, now, now + 60)),
    }
}

#[tokio::test]
async fn first_rotation_is_a_compare_and_set() {
    let (s, g) = store_with_tokens(60, 1000).await;
    let r = rotation(&g, h(2), RotationMode::First, 3, 10);
    assert!(
        s.rotate_refresh_token(&r, ev(AuditKind::RefreshRotated, 10))
            .await
            .unwrap()
    );
    let old = s.find_refresh_token(&h(2)).await.unwrap().unwrap().token;
    assert_eq!(
        (old.rotated_at, old.successor, old.reuse_count),
        (Some(at(10)), Some(h(3)), 0)
    );
    assert!(s.find_refresh_token(&h(3)).await.unwrap().is_some());
    assert!(
        s.find_access_token(&h(103), at(11))
            .await
            .unwrap()
            .is_some()
    );

    // The loser of a race changes nothing and logs nothing.
    let r2 = rotation(&g, h(2), RotationMode::First, 4, 10);
    assert!(
        !s.rotate_refresh_token(&r2, ev(AuditKind::RefreshRotated, 10))
            .await
            .unwrap()
    );
    assert!(s.find_refresh_token(&h(4)).await.unwrap().is_none());
    assert!(
        s.find_access_token(&h(104), at(11))
            .await
            .unwrap()
            .is_none()
    );
    let rotated = kinds(&s)
        .await
        .into_iter()
        .filter(|k| *k == AuditKind::RefreshRotated)
        .count();
    assert_eq!(rotated, 1);

    // Unknown presented token: false.
    let r3 = rotation(&g, h(50), RotationMode::First, 5, 10);
    assert!(
        !s.rotate_refresh_token(&r3, ev(AuditKind::RefreshRotated, 10))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn grace_rotation_needs_a_recent_rotation() {
    let (s, g) = store_with_tokens(60, 1000).await;
    // Not rotated yet: grace reuse fails.
    let grace = |since| RotationMode::Grace {
        rotated_since: at(since),
        max_reuses: 3,
    };
    let r = rotation(&g, h(2), grace(0), 3, 10);
    assert!(
        !s.rotate_refresh_token(&r, ev(AuditKind::RefreshGraceReuse, 10))
            .await
            .unwrap()
    );

    let r = rotation(&g, h(2), RotationMode::First, 3, 10);
    assert!(
        s.rotate_refresh_token(&r, ev(AuditKind::RefreshRotated, 10))
            .await
            .unwrap()
    );

    // rotated_at (10) >= rotated_since (10): within grace.
    let r = rotation(&g, h(2), grace(10), 4, 12);
    assert!(
        s.rotate_refresh_token(&r, ev(AuditKind::RefreshGraceReuse, 12))
            .await
            .unwrap()
    );
    let old = s.find_refresh_token(&h(2)).await.unwrap().unwrap().token;
    assert_eq!(
        (old.rotated_at, old.successor, old.reuse_count),
        (Some(at(10)), Some(h(3)), 1)
    );
    assert!(s.find_refresh_token(&h(4)).await.unwrap().is_some());

    // rotated_at (10) < rotated_since (11): past the grace period.
    let r = rotation(&g, h(2), grace(11), 5, 13);
    assert!(
        !s.rotate_refresh_token(&r, ev(AuditKind::RefreshGraceReuse, 13))
            .await
            .unwrap()
    );
    assert_eq!(
        s.find_refresh_token(&h(2))
            .await
            .unwrap()
            .unwrap()
            .token
            .reuse_count,
        1
    );
    assert!(s.find_refresh_token(&h(5)).await.unwrap().is_none());

    // A revoked grant fails the compare-and-set in either mode.
    s.revoke_grant(g.id, ev(AuditKind::GrantRevoked, 14))
        .await
        .unwrap();
    let r = rotation(&g, h(3), RotationMode::First, 6, 15);
    assert!(
        !s.rotate_refresh_token(&r, ev(AuditKind::RefreshRotated, 15))
            .await
            .unwrap()
    );
    let r = rotation(&g, h(2), grace(0), 7, 15);
    assert!(
        !s.rotate_refresh_token(&r, ev(AuditKind::RefreshGraceReuse, 15))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn cleanup_keeps_a_live_grants_refresh_token() {
    // Access token expires at 60, refresh token at 10 000.
    let (s, g) = store_with_tokens(60, 10_000).await;
    let opts = CleanupOptions {
        retention: Duration::from_secs(100),
        ..CleanupOptions::default()
    };

    // At 150 the access token is dead for 90 s: less than the retention, nothing goes.
    assert_eq!(s.cleanup(&opts, at(150)).await.unwrap().total(), 0);

    // At 200 it has been dead for 140 s: it goes; the refresh token and grant stay.
    let r = s.cleanup(&opts, at(200)).await.unwrap();
    assert_eq!(
        (r.access_tokens, r.refresh_tokens, r.grants, r.incomplete),
        (1, 0, 0, false)
    );
    assert!(s.get_grant(g.id).await.unwrap().is_some());
    let rt = s.find_refresh_token(&h(2)).await.unwrap().unwrap();
    assert!(rt.grant.revoked_at.is_none());

    // A rotated refresh token stays until its own expiry + retention.
    let rot = rotation(&g, h(2), RotationMode::First, 3, 300);
    assert!(
        s.rotate_refresh_token(&rot, ev(AuditKind::RefreshRotated, 300))
            .await
            .unwrap()
    );
    let r = s.cleanup(&opts, at(5_000)).await.unwrap();
    assert_eq!((r.access_tokens, r.refresh_tokens, r.grants), (1, 0, 0));
    assert!(s.find_refresh_token(&h(2)).await.unwrap().is_some());

    // Past every expiry + retention: tokens go, then the empty grant in the same run.
    let r = s.cleanup(&opts, at(20_000)).await.unwrap();
    assert_eq!((r.access_tokens, r.refresh_tokens, r.grants), (0, 2, 1));
    assert!(s.get_grant(g.id).await.unwrap().is_none());
    // Audit events stay.
    assert!(s.query_audit(&AuditQuery::default()).await.unwrap().len() >= 3);
}

#[tokio::test]
async fn cleanup_deletes_revoked_grants_whole_and_reports_incomplete() {
    let (s, g) = store_with_tokens(10_000, 10_000).await;
    s.revoke_grant(g.id, ev(AuditKind::GrantRevoked, 10))
        .await
        .unwrap();
    let day = CleanupOptions::default();
    // Revoked at 10; the grant waits out the retention.
    assert_eq!(s.cleanup(&day, at(1000)).await.unwrap().total(), 0);
    // Tokens are not revoked themselves and not expired: only the grant counts; its tokens
    // go with it.
    let r = s.cleanup(&day, at(10 + 86_400)).await.unwrap();
    assert_eq!((r.access_tokens, r.refresh_tokens, r.grants), (0, 0, 1));
    assert!(s.find_refresh_token(&h(2)).await.unwrap().is_none());
    let st = s.stats(at(0)).await.unwrap();
    assert_eq!(
        (
            st.access_tokens.active,
            st.refresh_tokens.active,
            st.grants.active
        ),
        (0, 0, 0)
    );

    // Batches: 5 dead codes, 2 per batch, at most 2 batches.
    let c = client();
    let s = MemoryStore::new();
    s.insert_client(&c, None, ev(AuditKind::ClientCreated, 0))
        .await
        .unwrap();
    for i in 0..5u8 {
        let g = Grant {
            id: GrantId::new_at(at(i64::from(i))),
            ..grant(&c)
        };
        s.issue_code(&g, &h(i), &code(&g, 1), ev(AuditKind::CodeIssued, 0))
            .await
            .unwrap();
    }
    let opts = CleanupOptions {
        retention: Duration::ZERO,
        batch_size: 2,
        max_batches: 2,
        time_budget: None,
    };
    let r = s.cleanup(&opts, at(10)).await.unwrap();
    assert_eq!(
        (r.authorization_codes, r.grants, r.incomplete),
        (4, 4, true)
    );
    let r = s.cleanup(&opts, at(10)).await.unwrap();
    assert_eq!(
        (r.authorization_codes, r.grants, r.incomplete),
        (1, 1, false)
    );
    assert_eq!(s.stats(at(10)).await.unwrap().grants.active, 0);
    let bad = CleanupOptions {
        batch_size: 0,
        ..opts
    };
    assert!(s.cleanup(&bad, at(10)).await.is_err());
}

#[tokio::test]
async fn hot_path_checks_expiry_revocation_grant_and_client() {
    let (s, g) = store_with_tokens(60, 1000).await;
    assert!(s.find_access_token(&h(1), at(59)).await.unwrap().is_some());
    assert!(s.find_access_token(&h(1), at(60)).await.unwrap().is_none());
    assert!(s.find_access_token(&h(2), at(1)).await.unwrap().is_none());

    let stale = s.get_client(g.client_id).await.unwrap().unwrap();
    s.set_client_disabled(g.client_id, true, ev(AuditKind::ClientDisabled, 1))
        .await
        .unwrap();
    // An update built from a read before the disable does not re-enable the client.
    s.update_client(&stale, ev(AuditKind::ClientUpdated, 1))
        .await
        .unwrap();
    assert!(s.find_access_token(&h(1), at(1)).await.unwrap().is_none());
    assert!(
        s.find_refresh_token(&h(2))
            .await
            .unwrap()
            .unwrap()
            .client_disabled
    );
    s.set_client_disabled(g.client_id, false, ev(AuditKind::ClientEnabled, 2))
        .await
        .unwrap();
    assert!(s.find_access_token(&h(1), at(2)).await.unwrap().is_some());

    // Revoking the refresh token revokes the grant: the access token stops at once.
    let other = ClientId::new_at(at(3));
    let hash = h(2);
    let wrong = s.revoke_refresh_token(&hash, Some(other), ev(AuditKind::RefreshTokenRevoked, 3));
    assert_eq!(wrong.await.unwrap(), RevokeOutcome::WrongClient);
    assert!(s.find_access_token(&h(1), at(3)).await.unwrap().is_some());
    let out = s.revoke_refresh_token(
        &hash,
        Some(g.client_id),
        ev(AuditKind::RefreshTokenRevoked, 3),
    );
    let out = out.await.unwrap();
    assert!(matches!(
        out,
        RevokeOutcome::Revoked { grant_id } if grant_id == g.id
    ));
    assert!(s.find_access_token(&h(1), at(3)).await.unwrap().is_none());
    // Issuing into the revoked grant fails and stores nothing.
    let issue = TokenIssue {
        new_grant: None,
        grant_id: g.id,
        access: Some((h(9), access(&g, 4, 60))),
        refresh: None,
    };
    let err = s.issue_tokens(&issue, ev(AuditKind::TokensIssued, 4)).await;
    assert!(
        matches!(err, Err(Error::Inactive { kind: "grant" })),
        "{err:?}"
    );
    assert_eq!(s.stats(at(4)).await.unwrap().access_tokens.revoked, 1);
}

#[tokio::test]
async fn deleting_a_client_cascades_but_keeps_audit() {
    let (s, g) = store_with_tokens(60, 1000).await;
    assert!(
        s.delete_client(g.client_id, ev(AuditKind::ClientDeleted, 5))
            .await
            .unwrap()
    );
    assert!(s.get_grant(g.id).await.unwrap().is_none());
    assert!(s.find_refresh_token(&h(2)).await.unwrap().is_none());
    let st = s.stats(at(5)).await.unwrap();
    assert_eq!(
        (st.clients, st.access_tokens.active, st.audit_events),
        (0, 0, 3)
    );
    assert!(
        !s.delete_client(g.client_id, ev(AuditKind::ClientDeleted, 6))
            .await
            .unwrap()
    );
    assert_eq!(s.stats(at(6)).await.unwrap().audit_events, 3);
}

fn user(name: &str, email: Option<&str>, secs: i64) -> authstore_core::User {
    authstore_core::User {
        id: authstore_core::UserId::new_at(at(secs)),
        username: name.into(),
        email: email.map(Into::into),
        email_verified: false,
        active: true,
        metadata: serde_json::json!({}),
        created_at: at(secs),
        updated_at: at(secs),
    }
}

#[tokio::test]
async fn identity_keys_disable_erase_and_failures() {
    use authstore_core::backend::{IdentityStore, PatStore};
    use authstore_core::identity::subject_of;
    use authstore_core::{Group, GroupId, PasswordHash, PatId, PersonalAccessToken};
    use std::net::IpAddr;

    let (s, g0) = store_with_tokens(100, 100).await;
    let u = user("Alice", Some("Alice@Example.com"), 0);
    s.insert_user(&u, ev(AuditKind::UserCreated, 0))
        .await
        .unwrap();
    // Case-folded uniqueness, never an overwrite.
    let dup = user("ALICE", None, 1);
    assert!(matches!(
        s.insert_user(&dup, ev(AuditKind::UserCreated, 1)).await,
        Err(Error::Conflict { .. })
    ));
    let dup = user("bob", Some("alice@example.COM"), 1);
    assert!(matches!(
        s.insert_user(&dup, ev(AuditKind::UserCreated, 1)).await,
        Err(Error::Conflict { .. })
    ));
    let bob = user("bob", None, 2);
    s.insert_user(&bob, ev(AuditKind::UserCreated, 2))
        .await
        .unwrap();
    assert_eq!(
        s.find_user_by_username("alice").await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(
        s.find_user_by_email("alice@example.com").await.unwrap(),
        Some(u.clone())
    );
    let listed = s.list_users(None, 10, Some("example")).await.unwrap();
    assert_eq!(listed, vec![u.clone()]);
    assert_eq!(
        s.list_users(Some(u.id), 10, None).await.unwrap(),
        vec![bob.clone()]
    );

    // update_user never writes `active`, renames re-index.
    let mut upd = u.clone();
    upd.username = "alice2".into();
    upd.active = false;
    s.update_user(&upd, ev(AuditKind::UserUpdated, 3))
        .await
        .unwrap();
    let got = s.get_user(u.id).await.unwrap().unwrap();
    assert!(got.active);
    assert_eq!(got.username, "alice2");
    assert!(s.find_user_by_username("alice").await.unwrap().is_none());
    let mut clash = bob.clone();
    clash.username = "Alice2".into();
    assert!(matches!(
        s.update_user(&clash, ev(AuditKind::UserUpdated, 3)).await,
        Err(Error::Conflict { .. })
    ));

    // Groups.
    let grp = Group {
        id: GroupId::new_at(T0),
        name: "Ops".into(),
        created_at: T0,
    };
    s.insert_group(&grp, ev(AuditKind::GroupCreated, 4))
        .await
        .unwrap();
    assert!(
        s.add_group_member(grp.id, u.id, ev(AuditKind::GroupMemberAdded, 4))
            .await
            .unwrap()
    );
    assert!(
        !s.add_group_member(grp.id, u.id, ev(AuditKind::GroupMemberAdded, 4))
            .await
            .unwrap()
    );
    assert!(matches!(
        s.add_group_member(
            GroupId::new_at(T0),
            u.id,
            ev(AuditKind::GroupMemberAdded, 4)
        )
        .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.user_groups(u.id).await.unwrap(), vec![grp.clone()]);
    assert_eq!(s.group_members(grp.id).await.unwrap().len(), 1);

    // Disabling revokes the user's grants and PATs in the same change.
    let c = s.get_client(g0.client_id).await.unwrap().unwrap();
    let mut g = grant(&c);
    g.id = GrantId::new_at(at(5));
    g.subject = Some(subject_of(u.id));
    let issue = TokenIssue {
        new_grant: Some(g.clone()),
        grant_id: g.id,
        access: Some((h(10), {
            let mut a = access(&g, 5, 100);
            a.subject = g.subject.clone();
            a
        })),
        refresh: None,
    };
    s.issue_tokens(&issue, ev(AuditKind::TokensIssued, 5))
        .await
        .unwrap();
    let pat = PersonalAccessToken {
        id: PatId::new_at(at(5)),
        user: subject_of(u.id),
        name: "ci".into(),
        scope: Scopes::parse("read").unwrap(),
        created_at: at(5),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    s.insert_pat(&h(11), &pat, ev(AuditKind::PatIssued, 5))
        .await
        .unwrap();
    let n = kinds(&s).await.len();
    s.set_user_active(u.id, true, ev(AuditKind::UserEnabled, 6))
        .await
        .unwrap();
    assert_eq!(kinds(&s).await.len(), n, "no event when unchanged");
    s.set_user_active(u.id, false, ev(AuditKind::UserDisabled, 6))
        .await
        .unwrap();
    assert!(s.find_access_token(&h(10), at(6)).await.unwrap().is_none());
    assert!(s.find_pat(&h(11), at(6)).await.unwrap().is_none());
    assert!(s.find_access_token(&h(1), at(6)).await.unwrap().is_some());

    // Failures: per user and per source; a success forgets the user's, not the address's.
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    for t in 10..13 {
        s.record_login_attempt(Some(u.id), Some(ip), false, ev(AuditKind::LoginFailed, t))
            .await
            .unwrap();
    }
    s.record_login_attempt(None, Some(ip), false, ev(AuditKind::LoginFailed, 13))
        .await
        .unwrap();
    let f = s
        .login_failures(Some(u.id), Some(ip), at(11))
        .await
        .unwrap();
    assert_eq!((f.user, f.source), (2, 3));
    s.record_login_attempt(
        Some(u.id),
        Some(ip),
        true,
        ev(AuditKind::LoginSucceeded, 14),
    )
    .await
    .unwrap();
    let f = s.login_failures(Some(u.id), Some(ip), at(0)).await.unwrap();
    assert_eq!((f.user, f.source), (0, 4), "the address keeps its count");
    s.record_login_attempt(Some(u.id), None, false, ev(AuditKind::LoginFailed, 15))
        .await
        .unwrap();
    let hash = PasswordHash::from_phc("$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into());
    s.set_password_hash(u.id, &hash, false, ev(AuditKind::PasswordSet, 16))
        .await
        .unwrap();
    assert_eq!(s.get_password_hash(u.id).await.unwrap(), Some(hash));
    assert_eq!(
        s.login_failures(Some(u.id), None, at(0))
            .await
            .unwrap()
            .user,
        0
    );

    // Erasure takes everything of the user's along; the audit log stays.
    s.record_login_attempt(Some(u.id), None, false, ev(AuditKind::LoginFailed, 17))
        .await
        .unwrap();
    assert!(
        s.delete_user(u.id, ev(AuditKind::UserDeleted, 18))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_user(u.id, ev(AuditKind::UserDeleted, 18))
            .await
            .unwrap()
    );
    assert!(s.get_grant(g.id).await.unwrap().is_none());
    assert!(s.list_pats(&subject_of(u.id)).await.unwrap().is_empty());
    assert!(s.group_members(grp.id).await.unwrap().is_empty());
    assert!(s.get_password_hash(u.id).await.unwrap().is_none());
    assert!(
        s.find_user_by_email("alice@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_grant(g0.id).await.unwrap().is_some());

    // Cleanup counts the failure rows at or before the cutoff.
    let r = s
        .cleanup(
            &CleanupOptions {
                retention: Duration::ZERO,
                ..Default::default()
            },
            at(13),
        )
        .await
        .unwrap();
    assert_eq!(r.login_failures, 4);
    assert_eq!(
        s.login_failures(None, Some(ip), at(0))
            .await
            .unwrap()
            .source,
        0
    );
}

#[tokio::test]
async fn accounts_sessions_tokens_ceremonies_reseal_and_erasure() {
    use authstore_core::backend::{AccountStore, IdentityStore};
    use authstore_core::identity::SealedRef;
    use authstore_core::{
        Ceremony, CeremonyKind, LinkedAccount, LinkedAccountId, LoginSession, LoginSessionId,
        OneTimePurpose, OneTimeToken, Sealed, TotpRecord,
    };

    let s = MemoryStore::new();
    let u = user("hana", None, 0);
    s.insert_user(&u, ev(AuditKind::UserCreated, 0))
        .await
        .unwrap();
    let e = || ev(AuditKind::UserUpdated, 1);

    // Login sessions: touch forward only and never past the absolute end.
    let sess = LoginSession {
        id: LoginSessionId::new_at(at(1)),
        user: u.id,
        created_at: at(1),
        last_seen_at: at(1),
        idle_expires_at: at(10),
        expires_at: at(100),
        ip: None,
        user_agent: None,
        revoked_at: None,
    };
    s.insert_login_session(&h(1), &sess, e()).await.unwrap();
    assert!(matches!(
        s.insert_login_session(&h(1), &sess, e()).await,
        Err(Error::Conflict { .. })
    ));
    assert!(s.find_login_session(&h(1), at(10)).await.unwrap().is_none());
    s.touch_login_sessions(&[(sess.id, at(5), at(500)), (sess.id, at(2), at(3))])
        .await
        .unwrap();
    let got = s.find_login_session(&h(1), at(99)).await.unwrap().unwrap();
    assert_eq!((got.last_seen_at, got.idle_expires_at), (at(5), at(100)));
    // Disabling ends it at once.
    s.set_user_active(u.id, false, e()).await.unwrap();
    s.set_user_active(u.id, true, e()).await.unwrap();
    assert!(s.find_login_session(&h(1), at(2)).await.unwrap().is_none());
    assert_eq!(s.revoke_user_login_sessions(u.id, e()).await.unwrap(), 0);

    // One-time tokens: a newer one supersedes, consumption is single use.
    let tok = |issued| OneTimeToken {
        user: u.id,
        purpose: OneTimePurpose::PasswordReset,
        email: None,
        issued_at: at(issued),
        expires_at: at(issued + 60),
        consumed_at: None,
    };
    s.insert_one_time_token(&h(2), &tok(1), e()).await.unwrap();
    s.insert_one_time_token(&h(3), &tok(2), e()).await.unwrap();
    let p = OneTimePurpose::PasswordReset;
    assert!(
        s.consume_one_time_token(&h(2), p, e())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.consume_one_time_token(&h(3), OneTimePurpose::MagicLink, e())
            .await
            .unwrap()
            .is_none()
    );
    let used = s
        .consume_one_time_token(&h(3), p, e())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.consumed_at, Some(at(1)));
    assert_eq!(used.user, u.id);
    assert!(
        s.consume_one_time_token(&h(3), p, e())
            .await
            .unwrap()
            .is_none()
    );

    // TOTP steps and recovery codes are compare-and-sets.
    let sealed = |b: u8| Sealed::from_bytes(vec![b; 8]);
    let totp = TotpRecord {
        secret: sealed(1),
        last_step: Some(9),
        created_at: at(1),
    };
    s.set_totp(u.id, &totp, e()).await.unwrap();
    assert!(s.use_totp_step(u.id, 5, e()).await.unwrap());
    assert!(!s.use_totp_step(u.id, 5, e()).await.unwrap());
    assert!(s.use_totp_step(u.id, 6, e()).await.unwrap());
    s.replace_recovery_codes(u.id, &[h(4), h(5)], e())
        .await
        .unwrap();
    assert!(s.use_recovery_code(u.id, &h(4), e()).await.unwrap());
    assert!(!s.use_recovery_code(u.id, &h(4), e()).await.unwrap());
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 1);

    // Ceremonies: single use; an expired one goes too.
    let cer = Ceremony {
        kind: CeremonyKind::Authentication,
        user: None,
        state: serde_json::json!({}),
        expires_at: at(10),
    };
    s.insert_ceremony(&h(6), &cer).await.unwrap();
    s.insert_ceremony(&h(7), &cer).await.unwrap();
    assert_eq!(
        s.take_ceremony(&h(6), at(9)).await.unwrap(),
        Some(cer.clone())
    );
    assert!(s.take_ceremony(&h(6), at(9)).await.unwrap().is_none());
    assert!(s.take_ceremony(&h(7), at(10)).await.unwrap().is_none());
    s.insert_ceremony(&h(7), &cer).await.unwrap();

    // Reseal walks by row id bytes after the cursor, skipping nulls; replace is a CAS.
    let link = |n: i64, access: Option<Sealed>| LinkedAccount {
        id: LinkedAccountId::new_at(at(n)),
        provider: "github".into(),
        provider_subject: format!("gh{n}"),
        user: u.id,
        access_token: access,
        refresh_token: None,
        token_expires_at: None,
        created_at: at(n),
        updated_at: at(n),
    };
    let (l1, l2, l3) = (
        link(1, Some(sealed(2))),
        link(2, None),
        link(3, Some(sealed(3))),
    );
    for l in [&l1, &l2, &l3] {
        s.insert_linked_account(l, e()).await.unwrap();
    }
    // (provider, provider subject) is unique.
    let dup = LinkedAccount {
        id: LinkedAccountId::new_at(at(4)),
        ..l2.clone()
    };
    assert!(matches!(
        s.insert_linked_account(&dup, e()).await,
        Err(Error::Conflict { .. })
    ));
    let page = s
        .sealed_values("linked_accounts", "access_token", None, 1)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0.row, l1.id.as_uuid().as_bytes().to_vec());
    let rest = s
        .sealed_values("linked_accounts", "access_token", Some(&page[0].0.row), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1, sealed(3));
    assert!(
        s.replace_sealed(&rest[0].0, &sealed(3), &sealed(4))
            .await
            .unwrap()
    );
    assert!(
        !s.replace_sealed(&rest[0].0, &sealed(3), &sealed(5))
            .await
            .unwrap()
    );
    let t = s.sealed_values("totp", "secret", None, 10).await.unwrap();
    let r = SealedRef {
        table: "totp",
        column: "secret",
        row: u.id.as_uuid().as_bytes().to_vec(),
    };
    assert_eq!(t, vec![(r, sealed(1))]);
    assert!(matches!(
        s.sealed_values("users", "secret", None, 10).await,
        Err(Error::InvalidInput { .. })
    ));

    // Cleanup: the revoked session, both one-time tokens, the expired ceremony.
    let r = s
        .cleanup(&CleanupOptions::default(), at(1000 + 86_400))
        .await
        .unwrap();
    assert_eq!(
        (r.login_sessions, r.one_time_tokens, r.ceremonies),
        (1, 2, 1)
    );

    // Erasure takes every account record along.
    s.insert_ceremony(
        &h(8),
        &Ceremony {
            user: Some(u.id),
            ..cer
        },
    )
    .await
    .unwrap();
    assert!(s.delete_user(u.id, e()).await.unwrap());
    assert!(s.get_totp(u.id).await.unwrap().is_none());
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 0);
    assert!(s.list_linked_accounts(u.id).await.unwrap().is_empty());
    assert!(
        s.find_linked_account("github", "gh1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.take_ceremony(&h(8), at(1)).await.unwrap().is_none());
    let st = s.read();
    assert!(st.linked_by_key.is_empty() && st.ceremonies.is_empty() && st.one_time.is_empty());
}
