//! SQLite-specific checks of the account part (schema 3): query plans, cascades, and one
//! walk through the store methods (the conformance suite checks the contract in depth).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use authstore_core::backend::{AccountStore, CleanupOptions, IdentityStore, Maintenance};
use authstore_core::identity::SEALED_COLUMNS;
use authstore_core::{
    AuditContext, AuditEvent, AuditKind, Ceremony, CeremonyKind, Error, LinkedAccount,
    LinkedAccountId, LoginSession, LoginSessionId, OneTimePurpose, OneTimeToken, Passkey, Sealed,
    Timestamp, TokenHash, TotpRecord, User, UserId,
};
use authstore_sqlite::{SqliteOptions, SqliteStore};

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.saturating_add(Duration::from_secs(secs))
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::new(kind, T0, &AuditContext::default())
}

fn user(name: &str) -> User {
    User {
        id: UserId::new_at(T0),
        username: name.into(),
        email: None,
        email_verified: false,
        active: true,
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
    }
}

fn h(b: u8) -> TokenHash {
    TokenHash::from_bytes([b; 32])
}

fn session(user: UserId) -> LoginSession {
    LoginSession {
        id: LoginSessionId::new_at(T0),
        user,
        created_at: T0,
        last_seen_at: T0,
        idle_expires_at: at(100),
        expires_at: at(1000),
        ip: Some("192.0.2.1".parse().unwrap()),
        user_agent: Some("test".into()),
        revoked_at: None,
    }
}

fn sealed(b: u8) -> Sealed {
    // Stored as is: the store never opens it.
    Sealed::from_bytes(vec![1, 1, b'k', b, b, b])
}

async fn migrated(path: &Path) -> SqliteStore {
    let s = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test]
async fn accounts_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let s = migrated(&dir.path().join("t.db")).await;
    let u = user("alice");
    s.insert_user(&u, event(AuditKind::UserCreated))
        .await
        .unwrap();
    let ghost = UserId::new_at(T0);

    // Login sessions.
    let ls = session(u.id);
    assert!(matches!(
        s.insert_login_session(
            &h(1),
            &session(ghost),
            event(AuditKind::LoginSessionCreated)
        )
        .await,
        Err(Error::NotFound { .. })
    ));
    s.insert_login_session(&h(1), &ls, event(AuditKind::LoginSessionCreated))
        .await
        .unwrap();
    assert!(matches!(
        s.insert_login_session(&h(1), &session(u.id), event(AuditKind::LoginSessionCreated))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        s.find_login_session(&h(1), T0).await.unwrap(),
        Some(ls.clone())
    );
    assert!(
        s.find_login_session(&h(1), at(100))
            .await
            .unwrap()
            .is_none()
    );
    s.touch_login_sessions(&[(ls.id, at(50), at(150)), (ls.id, at(10), at(20))])
        .await
        .unwrap();
    let found = s.find_login_session(&h(1), at(100)).await.unwrap().unwrap();
    assert_eq!(
        (found.last_seen_at, found.idle_expires_at),
        (at(50), at(150))
    );
    s.touch_login_sessions(&[(ls.id, at(60), at(5000))])
        .await
        .unwrap();
    let listed = s.list_login_sessions(u.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].idle_expires_at, at(1000), "never past expires_at");
    // A disabled user's sessions are revoked.
    s.set_user_active(u.id, false, event(AuditKind::UserDisabled))
        .await
        .unwrap();
    assert!(s.find_login_session(&h(1), T0).await.unwrap().is_none());
    assert!(
        !s.revoke_login_session(ls.id, None, event(AuditKind::LoginSessionRevoked))
            .await
            .unwrap(),
        "already revoked"
    );
    s.set_user_active(u.id, true, event(AuditKind::UserEnabled))
        .await
        .unwrap();
    let mut ls2 = session(u.id);
    ls2.id = LoginSessionId::new_at(T0);
    s.insert_login_session(&h(2), &ls2, event(AuditKind::LoginSessionCreated))
        .await
        .unwrap();
    assert!(
        !s.revoke_login_session(ls2.id, Some(ghost), event(AuditKind::LoginSessionRevoked))
            .await
            .unwrap()
    );
    assert_eq!(
        s.revoke_user_login_sessions(u.id, event(AuditKind::LoginSessionsRevoked))
            .await
            .unwrap(),
        1
    );

    // One-time tokens: a new one supersedes the old; single use.
    let ott = OneTimeToken {
        user: u.id,
        purpose: OneTimePurpose::PasswordReset,
        email: None,
        issued_at: T0,
        expires_at: at(600),
        consumed_at: None,
    };
    s.insert_one_time_token(&h(3), &ott, event(AuditKind::OneTimeTokenIssued))
        .await
        .unwrap();
    s.insert_one_time_token(&h(4), &ott, event(AuditKind::OneTimeTokenIssued))
        .await
        .unwrap();
    let used = event(AuditKind::OneTimeTokenUsed);
    assert!(
        s.consume_one_time_token(&h(3), OneTimePurpose::PasswordReset, used.clone())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.consume_one_time_token(&h(4), OneTimePurpose::MagicLink, used.clone())
            .await
            .unwrap()
            .is_none()
    );
    let got = s
        .consume_one_time_token(&h(4), OneTimePurpose::PasswordReset, used.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.consumed_at, Some(T0));
    assert!(
        s.consume_one_time_token(&h(4), OneTimePurpose::PasswordReset, used)
            .await
            .unwrap()
            .is_none()
    );

    // TOTP and recovery codes.
    let totp = TotpRecord {
        secret: sealed(1),
        last_step: None,
        created_at: T0,
    };
    s.set_totp(u.id, &totp, event(AuditKind::TotpEnrolled))
        .await
        .unwrap();
    assert!(
        s.use_totp_step(u.id, 10, event(AuditKind::TotpUsed))
            .await
            .unwrap()
    );
    assert!(
        !s.use_totp_step(u.id, 10, event(AuditKind::TotpUsed))
            .await
            .unwrap()
    );
    assert!(
        !s.use_totp_step(u.id, 9, event(AuditKind::TotpUsed))
            .await
            .unwrap()
    );
    assert_eq!(s.get_totp(u.id).await.unwrap().unwrap().last_step, Some(10));
    s.set_totp(u.id, &totp, event(AuditKind::TotpEnrolled))
        .await
        .unwrap();
    assert_eq!(s.get_totp(u.id).await.unwrap(), Some(totp.clone()));
    s.replace_recovery_codes(
        u.id,
        &[h(5), h(6), h(6)],
        event(AuditKind::RecoveryCodesGenerated),
    )
    .await
    .unwrap();
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 2);
    assert!(
        s.use_recovery_code(u.id, &h(5), event(AuditKind::RecoveryCodeUsed))
            .await
            .unwrap()
    );
    assert!(
        !s.use_recovery_code(u.id, &h(5), event(AuditKind::RecoveryCodeUsed))
            .await
            .unwrap()
    );
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 1);

    // Passkeys and ceremonies.
    let pk = Passkey {
        credential_id: vec![9, 9, 9],
        user: u.id,
        name: "laptop".into(),
        credential: serde_json::json!({"cred": [1, 2, 3]}),
        counter: 1,
        backup_state: false,
        created_at: T0,
        last_used_at: None,
    };
    s.insert_passkey(&pk, event(AuditKind::PasskeyRegistered))
        .await
        .unwrap();
    assert!(matches!(
        s.insert_passkey(&pk, event(AuditKind::PasskeyRegistered))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert!(
        s.update_passkey_use(
            &pk.credential_id,
            7,
            true,
            None,
            event(AuditKind::PasskeyUsed)
        )
        .await
        .unwrap()
    );
    let found = s.find_passkey(&pk.credential_id).await.unwrap().unwrap();
    assert_eq!(
        (found.counter, found.backup_state, found.last_used_at),
        (7, true, Some(T0))
    );
    assert_eq!(found.credential, pk.credential);
    assert!(
        s.rename_passkey(
            u.id,
            &pk.credential_id,
            "phone",
            event(AuditKind::PasskeyRenamed)
        )
        .await
        .unwrap()
    );
    assert!(
        !s.rename_passkey(
            ghost,
            &pk.credential_id,
            "x",
            event(AuditKind::PasskeyRenamed)
        )
        .await
        .unwrap()
    );
    assert_eq!(s.list_passkeys(u.id).await.unwrap()[0].name, "phone");
    let c = Ceremony {
        kind: CeremonyKind::Registration,
        user: Some(u.id),
        state: serde_json::json!({"challenge": "x"}),
        expires_at: at(60),
    };
    s.insert_ceremony(&h(7), &c).await.unwrap();
    s.insert_ceremony(&h(8), &c).await.unwrap();
    assert_eq!(s.take_ceremony(&h(7), T0).await.unwrap(), Some(c.clone()));
    assert!(s.take_ceremony(&h(7), T0).await.unwrap().is_none());
    assert!(
        s.take_ceremony(&h(8), at(60)).await.unwrap().is_none(),
        "expired"
    );
    assert!(
        s.take_ceremony(&h(8), T0).await.unwrap().is_none(),
        "removed when expired"
    );

    // Linked accounts and reseal.
    let la = LinkedAccount {
        id: LinkedAccountId::new_at(T0),
        provider: "github".into(),
        provider_subject: "42".into(),
        user: u.id,
        access_token: Some(sealed(2)),
        refresh_token: None,
        token_expires_at: None,
        created_at: T0,
        updated_at: T0,
    };
    s.insert_linked_account(&la, event(AuditKind::AccountLinked))
        .await
        .unwrap();
    let mut dup = la.clone();
    dup.id = LinkedAccountId::new_at(T0);
    assert!(matches!(
        s.insert_linked_account(&dup, event(AuditKind::AccountLinked))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        s.find_linked_account("github", "42").await.unwrap(),
        Some(la.clone())
    );
    let mut values = Vec::new();
    for (table, column) in SEALED_COLUMNS {
        values.extend(s.sealed_values(table, column, None, 10).await.unwrap());
    }
    assert_eq!(values.len(), 2, "nulls skipped");
    for (at_ref, old) in &values {
        assert!(
            s.sealed_values(at_ref.table, at_ref.column, Some(&at_ref.row), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.replace_sealed(at_ref, old, &sealed(3)).await.unwrap());
        assert!(!s.replace_sealed(at_ref, old, &sealed(4)).await.unwrap());
    }
    assert!(matches!(
        s.sealed_values("users", "username", None, 10).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(
        s.update_linked_tokens(
            la.id,
            None,
            Some(&sealed(5)),
            Some(at(9)),
            event(AuditKind::LinkedTokensUpdated)
        )
        .await
        .unwrap()
    );
    let got = s.list_linked_accounts(u.id).await.unwrap();
    assert_eq!(
        (got[0].access_token.clone(), got[0].refresh_token.clone()),
        (None, Some(sealed(5)))
    );
    assert!(
        !s.delete_linked_account(la.id, Some(ghost), event(AuditKind::AccountUnlinked))
            .await
            .unwrap()
    );

    // Cleanup deletes the dead ones, counted in their own fields.
    let opts = CleanupOptions {
        retention: Duration::ZERO,
        ..CleanupOptions::default()
    };
    let report = s.cleanup(&opts, at(2000)).await.unwrap();
    assert_eq!(report.login_sessions, 2);
    assert_eq!(report.one_time_tokens, 2);
    assert_eq!(report.ceremonies, 0);

    // Erasing the user erases everything else by cascade.
    s.insert_ceremony(&h(9), &c).await.unwrap();
    s.insert_login_session(&h(1), &ls, event(AuditKind::LoginSessionCreated))
        .await
        .unwrap();
    assert!(
        s.delete_user(u.id, event(AuditKind::UserDeleted))
            .await
            .unwrap()
    );
    assert!(s.get_totp(u.id).await.unwrap().is_none());
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 0);
    assert!(s.find_passkey(&pk.credential_id).await.unwrap().is_none());
    assert!(
        s.find_linked_account("github", "42")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.list_login_sessions(u.id).await.unwrap().is_empty());
    assert!(s.take_ceremony(&h(9), T0).await.unwrap().is_none());
}

#[test]
fn account_statements_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    drop(rt.block_on(migrated(&path)));
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (sql, n) in [
        (
            "SELECT s.id FROM login_sessions AS s WHERE s.hash = ?1 AND s.expires_at > ?2
               AND (SELECT u.active = 1 FROM users AS u WHERE u.id = s.user_id)",
            2,
        ),
        (
            "UPDATE login_sessions SET last_seen_at = ?2 WHERE id = ?1",
            2,
        ),
        (
            "SELECT id FROM login_sessions WHERE user_id = ?1 ORDER BY id",
            1,
        ),
        (
            "UPDATE login_sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            2,
        ),
        (
            "UPDATE one_time_tokens SET consumed_at = ?3
             WHERE user_id = ?1 AND purpose = ?2 AND consumed_at IS NULL",
            3,
        ),
        (
            "SELECT credential_id FROM passkeys WHERE user_id = ?1
             ORDER BY created_at, credential_id",
            1,
        ),
        (
            "SELECT id FROM linked_accounts WHERE user_id = ?1 ORDER BY id",
            1,
        ),
        (
            "SELECT id FROM linked_accounts WHERE provider = ?1 AND provider_subject = ?2",
            2,
        ),
        (
            "SELECT id, access_token FROM linked_accounts
             WHERE id > ?1 AND access_token IS NOT NULL ORDER BY id LIMIT ?2",
            2,
        ),
        (
            "SELECT user_id, secret FROM totp WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
            2,
        ),
        // Cascades from users.
        ("DELETE FROM ceremonies WHERE user_id = ?1", 1),
        ("DELETE FROM one_time_tokens WHERE user_id = ?1", 1),
        ("DELETE FROM recovery_codes WHERE user_id = ?1", 1),
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
        assert!(
            !plan.iter().any(|l| l.contains("TEMP B-TREE")),
            "{sql}\n{plan:#?}"
        );
    }
}
