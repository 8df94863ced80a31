//! SQLite-specific checks of the identity part: query plans, and one walk through the
//! store methods (the conformance suite checks the contract in depth).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use authstore_core::backend::{
    AuditStore, CleanupOptions, ClientStore, GrantStore, IdentityStore, Maintenance, PatStore,
    TokenIssue,
};
use authstore_core::identity::subject_of;
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuditQuery, AuthContext, Client, ClientId,
    ClientType, Error, Grant, GrantId, GrantType, Group, GroupId, PasswordHash, PatId,
    PersonalAccessToken, Scopes, Timestamp, TokenEndpointAuthMethod, TokenHash, TokenLifetimes,
    User, UserId,
};
use authstore_sqlite::{SqliteOptions, SqliteStore};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::new(kind, T0, &AuditContext::default())
}

fn user(name: &str, email: Option<&str>) -> User {
    User {
        id: UserId::new_at(T0),
        username: name.into(),
        email: email.map(Into::into),
        email_verified: false,
        active: true,
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
    }
}

fn client() -> Client {
    Client {
        id: ClientId::new_at(T0),
        name: "app".into(),
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

async fn migrated(path: &Path) -> SqliteStore {
    let s = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    s.migrate().await.unwrap();
    s
}

/// Issues a grant with one access token to `u` and a PAT; returns their hashes.
async fn hold_things(
    s: &SqliteStore,
    c: &Client,
    u: &User,
    seed: u8,
) -> (GrantId, TokenHash, TokenHash) {
    let grant = Grant {
        id: GrantId::new_at(T0),
        client_id: c.id,
        subject: Some(u.subject()),
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext::default(),
        created_at: T0,
        revoked_at: None,
    };
    let at_hash = TokenHash::from_bytes([seed; 32]);
    let access = AccessToken {
        grant_id: grant.id,
        client_id: c.id,
        subject: Some(u.subject()),
        scope: grant.scope.clone(),
        audience: vec![],
        issued_at: T0,
        expires_at: T0.saturating_add(Duration::from_secs(3600)),
        revoked_at: None,
        cnf: None,
        auth: AuthContext::default(),
        claims: serde_json::json!({}),
    };
    let issue = TokenIssue {
        new_grant: Some(grant.clone()),
        grant_id: grant.id,
        access: Some((at_hash, access)),
        refresh: None,
    };
    s.issue_tokens(&issue, event(AuditKind::TokensIssued))
        .await
        .unwrap();
    let pat_hash = TokenHash::from_bytes([seed.wrapping_add(1); 32]);
    let pat = PersonalAccessToken {
        id: PatId::new_at(T0),
        user: u.subject(),
        name: "ci".into(),
        scope: Scopes::parse("read").unwrap(),
        created_at: T0,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    s.insert_pat(&pat_hash, &pat, event(AuditKind::PatIssued))
        .await
        .unwrap();
    (grant.id, at_hash, pat_hash)
}

async fn events(s: &SqliteStore, kind: AuditKind) -> usize {
    let q = AuditQuery {
        kind: Some(kind),
        ..AuditQuery::default()
    };
    s.query_audit(&q).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let s = migrated(&dir.path().join("t.db")).await;
    let alice = user("Alice", Some("Alice@Example.org"));
    s.insert_user(&alice, event(AuditKind::UserCreated))
        .await
        .unwrap();
    for dup in [user("aLICE", None), user("bob", Some("alice@example.ORG"))] {
        let e = s
            .insert_user(&dup, event(AuditKind::UserCreated))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    }
    let bob = user("bob", None);
    s.insert_user(&bob, event(AuditKind::UserCreated))
        .await
        .unwrap();
    assert_eq!(s.get_user(alice.id).await.unwrap().as_ref(), Some(&alice));
    assert_eq!(
        s.find_user_by_username("alice")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(alice.id)
    );
    assert_eq!(
        s.find_user_by_email("alice@example.org")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(alice.id)
    );
    assert_eq!(events(&s, AuditKind::UserCreated).await, 2);

    // update_user never writes `active`.
    let mut changed = alice.clone();
    changed.active = false;
    changed.email = None;
    changed.metadata = serde_json::json!({"k": [1, 2]});
    s.update_user(&changed, event(AuditKind::UserUpdated))
        .await
        .unwrap();
    let got = s.get_user(alice.id).await.unwrap().unwrap();
    assert!(got.active);
    assert_eq!(got.email, None);
    assert_eq!(got.metadata, changed.metadata);
    let mut bad = bob.clone();
    bad.username = "ALICE".into();
    assert!(matches!(
        s.update_user(&bad, event(AuditKind::UserUpdated)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        s.update_user(&user("ghost", None), event(AuditKind::UserUpdated))
            .await,
        Err(Error::NotFound { .. })
    ));

    // Listing and search.
    let all = s.list_users(None, 10, None).await.unwrap();
    assert_eq!(
        all.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![alice.id, bob.id]
    );
    let after = s.list_users(Some(alice.id), 10, None).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(s.list_users(None, 10, Some("lic")).await.unwrap().len(), 1);
    assert_eq!(s.list_users(None, 10, Some("zzz")).await.unwrap().len(), 0);

    // Disabling revokes grants and PATs, once.
    let c = client();
    s.insert_client(&c, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let (grant, at_hash, pat_hash) = hold_things(&s, &c, &alice, 1).await;
    assert!(s.find_access_token(&at_hash, T0).await.unwrap().is_some());
    s.set_user_active(alice.id, false, event(AuditKind::UserDisabled))
        .await
        .unwrap();
    assert!(s.find_access_token(&at_hash, T0).await.unwrap().is_none());
    assert!(s.find_pat(&pat_hash, T0).await.unwrap().is_none());
    assert!(!s.get_user(alice.id).await.unwrap().unwrap().active);
    s.set_user_active(alice.id, false, event(AuditKind::UserDisabled))
        .await
        .unwrap();
    assert_eq!(events(&s, AuditKind::UserDisabled).await, 1);
    s.set_user_active(alice.id, true, event(AuditKind::UserEnabled))
        .await
        .unwrap();
    assert_eq!(events(&s, AuditKind::UserEnabled).await, 1);
    assert!(matches!(
        s.set_user_active(UserId::new_at(T0), true, event(AuditKind::UserEnabled))
            .await,
        Err(Error::NotFound { .. })
    ));

    // Login failures.
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    for _ in 0..2 {
        s.record_login_attempt(
            Some(alice.id),
            Some(ip),
            false,
            event(AuditKind::LoginFailed),
        )
        .await
        .unwrap();
    }
    s.record_login_attempt(None, Some(ip), false, event(AuditKind::LoginFailed))
        .await
        .unwrap();
    let counts = s
        .login_failures(Some(alice.id), Some(ip), T0)
        .await
        .unwrap();
    assert_eq!((counts.user, counts.source), (2, 3));
    let later = T0.saturating_add(Duration::from_secs(1));
    let counts = s
        .login_failures(Some(alice.id), Some(ip), later)
        .await
        .unwrap();
    assert_eq!((counts.user, counts.source), (0, 0));
    s.record_login_attempt(
        Some(alice.id),
        Some(ip),
        true,
        event(AuditKind::LoginSucceeded),
    )
    .await
    .unwrap();
    let counts = s
        .login_failures(Some(alice.id), Some(ip), T0)
        .await
        .unwrap();
    assert_eq!((counts.user, counts.source), (0, 3));
    assert_eq!(events(&s, AuditKind::LoginFailed).await, 3);

    // Passwords.
    s.record_login_attempt(Some(alice.id), None, false, event(AuditKind::LoginFailed))
        .await
        .unwrap();
    assert!(s.get_password_hash(alice.id).await.unwrap().is_none());
    let (_, at2, pat2) = hold_things(&s, &c, &alice, 3).await;
    for (phc, revoke) in [("$argon2id$v=19$a", false), ("$argon2id$v=19$b", true)] {
        s.set_password_hash(
            alice.id,
            &PasswordHash::from_phc(phc.into()),
            revoke,
            event(AuditKind::PasswordSet),
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_password_hash(alice.id)
                .await
                .unwrap()
                .unwrap()
                .as_phc(),
            phc
        );
        assert_eq!(
            s.find_access_token(&at2, T0).await.unwrap().is_none(),
            revoke
        );
        assert_eq!(s.find_pat(&pat2, T0).await.unwrap().is_none(), revoke);
    }
    assert_eq!(
        s.login_failures(Some(alice.id), None, T0)
            .await
            .unwrap()
            .user,
        0
    );
    assert!(matches!(
        s.set_password_hash(
            UserId::new_at(T0),
            &PasswordHash::from_phc("x".into()),
            false,
            event(AuditKind::PasswordSet)
        )
        .await,
        Err(Error::NotFound { .. })
    ));

    // Groups.
    let g = Group {
        id: GroupId::new_at(T0),
        name: "Admins".into(),
        created_at: T0,
    };
    let h = Group {
        id: GroupId::new_at(T0),
        name: "auditors".into(),
        created_at: T0,
    };
    s.insert_group(&g, event(AuditKind::GroupCreated))
        .await
        .unwrap();
    s.insert_group(&h, event(AuditKind::GroupCreated))
        .await
        .unwrap();
    let dup = Group {
        id: GroupId::new_at(T0),
        name: "ADMINS".into(),
        created_at: T0,
    };
    assert!(matches!(
        s.insert_group(&dup, event(AuditKind::GroupCreated)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        s.rename_group(h.id, "admins", event(AuditKind::GroupRenamed))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert!(
        s.add_group_member(h.id, alice.id, event(AuditKind::GroupMemberAdded))
            .await
            .unwrap()
    );
    assert!(
        s.add_group_member(g.id, alice.id, event(AuditKind::GroupMemberAdded))
            .await
            .unwrap()
    );
    assert!(
        !s.add_group_member(g.id, alice.id, event(AuditKind::GroupMemberAdded))
            .await
            .unwrap()
    );
    assert!(
        s.add_group_member(g.id, bob.id, event(AuditKind::GroupMemberAdded))
            .await
            .unwrap()
    );
    assert!(matches!(
        s.add_group_member(g.id, UserId::new_at(T0), event(AuditKind::GroupMemberAdded))
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(events(&s, AuditKind::GroupMemberAdded).await, 3);
    let names: Vec<_> = s
        .user_groups(alice.id)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, vec!["Admins", "auditors"]);
    let members: Vec<_> = s
        .group_members(g.id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(members, vec![alice.id, bob.id]);
    assert!(
        s.remove_group_member(g.id, bob.id, event(AuditKind::GroupMemberRemoved))
            .await
            .unwrap()
    );
    assert!(
        !s.remove_group_member(g.id, bob.id, event(AuditKind::GroupMemberRemoved))
            .await
            .unwrap()
    );
    s.rename_group(g.id, "Root", event(AuditKind::GroupRenamed))
        .await
        .unwrap();
    assert_eq!(s.get_group(g.id).await.unwrap().unwrap().name, "Root");
    assert!(
        s.delete_group(h.id, event(AuditKind::GroupDeleted))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_group(h.id, event(AuditKind::GroupDeleted))
            .await
            .unwrap()
    );

    // Erasure.
    s.record_login_attempt(Some(alice.id), None, false, event(AuditKind::LoginFailed))
        .await
        .unwrap();
    assert!(
        s.delete_user(alice.id, event(AuditKind::UserDeleted))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_user(alice.id, event(AuditKind::UserDeleted))
            .await
            .unwrap()
    );
    assert_eq!(events(&s, AuditKind::UserDeleted).await, 1);
    assert!(s.get_user(alice.id).await.unwrap().is_none());
    assert!(s.get_grant(grant).await.unwrap().is_none());
    assert!(s.list_pats(&subject_of(alice.id)).await.unwrap().is_empty());
    assert!(s.get_password_hash(alice.id).await.unwrap().is_none());
    assert!(s.group_members(g.id).await.unwrap().is_empty());
    assert_eq!(
        s.login_failures(Some(alice.id), None, T0)
            .await
            .unwrap()
            .user,
        0
    );
    assert!(s.get_user(bob.id).await.unwrap().is_some());

    // Cleanup removes the old failures no longer linked to a user (2 + 1 with the address,
    // 1 forgotten by the password change), last.
    let opts = CleanupOptions {
        retention: Duration::from_secs(60),
        ..CleanupOptions::default()
    };
    let report = s
        .cleanup(&opts, T0.saturating_add(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(report.login_failures, 4);
    assert_eq!(
        s.login_failures(None, Some(ip), T0).await.unwrap().source,
        0
    );
}

#[test]
fn identity_statements_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    drop(rt.block_on(migrated(&path)));
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (sql, n) in [
        (
            "SELECT count(*) FROM login_failures WHERE user_id = ?1 AND at >= ?2",
            2,
        ),
        (
            "SELECT count(*) FROM login_failures WHERE source = ?1 AND at >= ?2",
            2,
        ),
        ("DELETE FROM login_failures WHERE user_id = ?1", 1),
        (
            "UPDATE login_failures SET user_id = NULL WHERE user_id = ?1",
            1,
        ),
        ("DELETE FROM grants WHERE subject = ?1", 1),
        (
            "DELETE FROM personal_access_tokens WHERE user_subject = ?1",
            1,
        ),
        ("DELETE FROM consents WHERE subject = ?1", 1),
        ("DELETE FROM authorization_sessions WHERE subject = ?1", 1),
        (
            "UPDATE personal_access_tokens SET revoked_at = ?2
             WHERE user_subject = ?1 AND revoked_at IS NULL",
            2,
        ),
        (
            "SELECT g.id FROM group_members AS m JOIN groups AS g ON g.id = m.group_id
             WHERE m.user_id = ?1 ORDER BY g.name_key",
            1,
        ),
        (
            "SELECT u.id FROM group_members AS m JOIN users AS u ON u.id = m.user_id
             WHERE m.group_id = ?1 ORDER BY m.user_id",
            1,
        ),
    ] {
        let params: Vec<i64> = vec![0; n];
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN")),
            "{sql}\n{plan:#?}"
        );
    }
}
