//! The conformance cases. Each takes a fresh [`Harness`] and panics on a violation.
//!
//! Time is a [`ManualClock`]: no case sleeps.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::{CleanupOptions, CodeConsumption, RevokeOutcome, RotationMode};
use authstore_core::{
    AuditKind, AuditQuery, Authstore, Client, ClientSecret, ClientUpdate, CodeRedemption,
    CodeRequest, Config, Error, ForeignTokens, GrantType, IssuedTokens, ManualClock,
    NewAuthorizationSession, NewClient, NewPat, PkceChallenge, RedirectUri, RefreshRequest, Scopes,
    Subject, Timestamp, TokenKey, TokenKeyring, TokenOptions, TokenTypeHint, UserUpdate,
};

use crate::Harness;

/// 2026-01-01T00:00:00Z: every case starts here.
pub const START: Timestamp = Timestamp::from_unix_micros(1_767_225_600_000_000);
/// The redirect URI of the test web client.
pub const REDIRECT: &str = "https://app.example/cb";
/// RFC 7636 appendix B verifier.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

const SECOND: Duration = Duration::from_secs(1);
const MICRO: Duration = Duration::from_micros(1);

fn key(id: &str, byte: u8) -> TokenKey {
    TokenKey::from_bytes(id, [byte; 32]).expect("valid key")
}

/// A store on the harness's backend with the test key and a manual clock at [`START`]
/// (and cheap Argon2 parameters, so debug builds stay fast).
pub fn store(h: &Harness) -> (Authstore, ManualClock) {
    store_with(h, Config::default())
}

/// Argon2id parameters for tests: real Argon2id, tiny cost.
pub const TEST_PASSWORD_PARAMS: authstore_core::PasswordParams = authstore_core::PasswordParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// Like [`store`] with a configuration.
pub fn store_with(h: &Harness, config: Config) -> (Authstore, ManualClock) {
    let clock = ManualClock::new(START);
    let config = if config.password_params == authstore_core::PasswordParams::OWASP {
        Config {
            password_params: TEST_PASSWORD_PARAMS,
            danger_allow_weak_password_params: true,
            ..config
        }
    } else {
        config
    };
    let s = Authstore::new(h.backend.clone(), TokenKeyring::new(key("k1", 7)))
        .with_clock(Arc::new(clock.clone()))
        .with_config(config)
        .expect("valid config");
    (s, clock)
}

fn scopes(s: &str) -> Scopes {
    Scopes::parse(s).expect("valid scopes")
}

fn sub(s: &str) -> Subject {
    Subject::new(s).expect("valid subject")
}

/// A confidential client_credentials client.
pub async fn service_client(s: &Authstore, allowed: &str) -> (Client, ClientSecret) {
    let c = s
        .create_client(NewClient::confidential("service").scopes(scopes(allowed)))
        .await
        .expect("create client");
    (
        c.client,
        c.secret.expect("confidential clients get a secret"),
    )
}

/// A confidential web client with authorization_code + refresh_token.
pub async fn web_client(s: &Authstore, allowed: &str) -> (Client, ClientSecret) {
    let new = NewClient::confidential("web")
        .redirect_uri(RedirectUri::new(REDIRECT).expect("valid uri"))
        .scopes(scopes(allowed));
    let c = s.create_client(new).await.expect("create client");
    (c.client, c.secret.expect("secret"))
}

fn code_request(client: &Client, subject: &str, scope: &str) -> CodeRequest {
    CodeRequest {
        client_id: client.id,
        subject: sub(subject),
        redirect_uri: REDIRECT.to_owned(),
        scope: scopes(scope),
        code_challenge: Some(PkceChallenge::from_verifier(VERIFIER).expect("valid verifier")),
        nonce: Some("n-0S6_WzA2Mj".to_owned()),
        auth: Default::default(),
    }
}

fn redemption<'a>(code: &'a str, client: &Client, opts: &'a TokenOptions) -> CodeRedemption<'a> {
    CodeRedemption {
        code,
        client_id: client.id,
        redirect_uri: Some(REDIRECT),
        code_verifier: Some(VERIFIER),
        options: opts,
    }
}

/// Runs the authorization-code flow (with PKCE) to tokens.
pub async fn code_flow(s: &Authstore, client: &Client, subject: &str, scope: &str) -> IssuedTokens {
    let code = s
        .issue_code(code_request(client, subject, scope))
        .await
        .expect("issue code");
    let opts = TokenOptions::default();
    s.redeem_code(redemption(code.code.secret(), client, &opts))
        .await
        .expect("redeem code")
}

fn refresh_req<'a>(token: &'a str, client: &Client, opts: &'a TokenOptions) -> RefreshRequest<'a> {
    RefreshRequest {
        refresh_token: token,
        client_id: client.id,
        scope: None,
        options: opts,
    }
}

fn rt(t: &IssuedTokens) -> &str {
    t.refresh_token.as_ref().expect("a refresh token").secret()
}

async fn assert_inactive(s: &Authstore, access: &str) {
    match s.validate_access_token(access).await {
        Err(Error::Inactive { .. }) => {}
        other => panic!("expected the access token to be inactive, got {other:?}"),
    }
}

async fn audit_kinds(s: &Authstore) -> Vec<AuditKind> {
    s.audit_events(&AuditQuery {
        limit: Some(1000),
        ..Default::default()
    })
    .await
    .expect("audit query")
    .into_iter()
    .map(|e| e.kind)
    .collect()
}

// ----- clients -----------------------------------------------------------------------

/// Create, get, update, list, verify, rotate, disable, enable, delete; each audited.
pub async fn client_lifecycle(h: Harness) {
    let (s, clock) = store(&h);
    let (c, secret) = service_client(&s, "read write").await;
    assert!(secret.secret().starts_with("cs_"));
    assert_eq!(s.client(c.id).await.unwrap(), c);
    assert_eq!(
        c.grant_types.iter().copied().collect::<Vec<_>>(),
        vec![GrantType::ClientCredentials]
    );

    // Verify: right secret, wrong secret, malformed, unknown client.
    assert_eq!(
        s.verify_client_secret(c.id, secret.secret())
            .await
            .unwrap()
            .id,
        c.id
    );
    let (_, other_secret) = service_client(&s, "read").await;
    assert!(matches!(
        s.verify_client_secret(c.id, other_secret.secret()).await,
        Err(Error::InvalidClient)
    ));
    assert!(matches!(
        s.verify_client_secret(c.id, "nope").await,
        Err(Error::InvalidClient)
    ));
    assert!(matches!(
        s.verify_client_secret(c.id, "").await,
        Err(Error::InvalidClient)
    ));
    let unknown = authstore_core::ClientId::new_at(START);
    assert!(matches!(
        s.verify_client_secret(unknown, secret.secret()).await,
        Err(Error::InvalidClient)
    ));

    // Update.
    clock.advance(SECOND);
    let up = s
        .update_client(
            c.id,
            ClientUpdate {
                name: Some("renamed".into()),
                scopes: Some(scopes("read")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(up.name, "renamed");
    assert_eq!(up.updated_at, START.saturating_add(SECOND));
    assert_eq!(s.client(c.id).await.unwrap(), up);

    // Rotate: old secret stops working at once.
    let new_secret = s.rotate_client_secret(c.id).await.unwrap();
    assert!(matches!(
        s.verify_client_secret(c.id, secret.secret()).await,
        Err(Error::InvalidClient)
    ));
    s.verify_client_secret(c.id, new_secret.secret())
        .await
        .unwrap();

    // Disable / enable.
    s.disable_client(c.id).await.unwrap();
    assert!(matches!(
        s.verify_client_secret(c.id, new_secret.secret()).await,
        Err(Error::InvalidClient)
    ));
    s.enable_client(c.id).await.unwrap();
    s.verify_client_secret(c.id, new_secret.secret())
        .await
        .unwrap();

    // List with pagination, ordered by id.
    for i in 0..5 {
        s.create_client(NewClient::confidential(format!("c{i}")))
            .await
            .unwrap();
    }
    let all = s.list_clients(None, 1000).await.unwrap();
    assert_eq!(all.len(), 7);
    let mut ids: Vec<_> = all.iter().map(|c| c.id).collect();
    let sorted = {
        let mut v = ids.clone();
        v.sort();
        v
    };
    assert_eq!(ids, sorted, "clients are listed in id order");
    let page1 = s.list_clients(None, 3).await.unwrap();
    let page2 = s.list_clients(Some(page1[2].id), 3).await.unwrap();
    let page3 = s.list_clients(Some(page2[2].id), 3).await.unwrap();
    assert_eq!((page1.len(), page2.len(), page3.len()), (3, 3, 1));
    let paged: Vec<_> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|c| c.id)
        .collect();
    ids.truncate(7);
    assert_eq!(paged, ids);
    assert!(matches!(
        s.list_clients(None, 0).await,
        Err(Error::InvalidInput { .. })
    ));

    // Delete.
    s.delete_client(c.id).await.unwrap();
    assert!(matches!(s.client(c.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        s.delete_client(c.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.verify_client_secret(c.id, new_secret.secret()).await,
        Err(Error::InvalidClient)
    ));

    let kinds = audit_kinds(&s).await;
    for k in [
        AuditKind::ClientCreated,
        AuditKind::ClientUpdated,
        AuditKind::ClientSecretRotated,
        AuditKind::ClientDisabled,
        AuditKind::ClientEnabled,
        AuditKind::ClientDeleted,
    ] {
        assert!(kinds.contains(&k), "missing audit event {k}");
    }
}

/// Invalid clients are refused with a clear error and nothing is written.
pub async fn client_validation(h: Harness) {
    let (s, _) = store(&h);
    let uri = RedirectUri::new(REDIRECT).unwrap();
    let bad = [
        NewClient::public("p", uri.clone()).grant_type(GrantType::ClientCredentials),
        NewClient::confidential("c").grant_type(GrantType::AuthorizationCode),
        NewClient::confidential(""),
        NewClient::confidential("nul\0name"),
        NewClient {
            metadata: serde_json::json!([1, 2]),
            ..NewClient::confidential("m")
        },
        NewClient {
            token_endpoint_auth_method: Some(authstore_core::TokenEndpointAuthMethod::None),
            ..NewClient::confidential("x")
        },
    ];
    for new in bad {
        let e = s.create_client(new).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
        assert!(!e.to_string().is_empty());
    }
    assert!(s.list_clients(None, 100).await.unwrap().is_empty());
    assert!(
        audit_kinds(&s).await.is_empty(),
        "a refused request writes no audit event"
    );

    // A public client has no secret and cannot get one.
    let p = s
        .create_client(NewClient::public("spa", uri))
        .await
        .unwrap();
    assert!(p.secret.is_none());
    assert!(matches!(
        s.rotate_client_secret(p.client.id).await,
        Err(Error::UnauthorizedClient { .. })
    ));
    assert!(matches!(
        s.verify_client_secret(p.client.id, "cs_x").await,
        Err(Error::InvalidClient)
    ));
    // An update that breaks the rules is refused and changes nothing.
    let before = s.client(p.client.id).await.unwrap();
    let e = s
        .update_client(
            p.client.id,
            ClientUpdate {
                grant_types: Some([GrantType::ClientCredentials].into_iter().collect()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }));
    assert_eq!(s.client(p.client.id).await.unwrap(), before);
}

// ----- client credentials and validation ---------------------------------------------

/// client_credentials: access token only, scope defaults and narrowing, validation.
pub async fn client_credentials(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = service_client(&s, "read write").await;
    let opts = TokenOptions::default();
    let t = s.issue_client_credentials(c.id, None, &opts).await.unwrap();
    assert!(
        t.refresh_token.is_none(),
        "no refresh token for client_credentials"
    );
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, Duration::from_secs(3600));
    assert!(t.access_token.secret().starts_with("at_"));
    let v = s
        .validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    assert_eq!(v.client_id, c.id);
    assert_eq!(v.subject, None);
    assert_eq!(v.scope, scopes("read write"));
    assert_eq!(v.grant_id, t.grant_id);

    let narrow = scopes("read");
    let t2 = s
        .issue_client_credentials(c.id, Some(&narrow), &opts)
        .await
        .unwrap();
    assert_eq!(
        s.validate_access_token(t2.access_token.secret())
            .await
            .unwrap()
            .scope,
        narrow
    );
    assert_ne!(t.grant_id, t2.grant_id);

    let too_wide = scopes("read admin");
    assert!(matches!(
        s.issue_client_credentials(c.id, Some(&too_wide), &opts)
            .await,
        Err(Error::InvalidScope { .. })
    ));

    // A web client may not use client_credentials.
    let (w, _) = web_client(&s, "read").await;
    assert!(matches!(
        s.issue_client_credentials(w.id, None, &opts).await,
        Err(Error::UnauthorizedClient { .. })
    ));

    // Token options are stored and returned.
    let opts = TokenOptions {
        audience: vec!["https://api.example".into()],
        cnf: Some(authstore_core::SenderConstraint::DpopJkt(
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
        )),
        claims: serde_json::json!({"tenant": "acme"}),
    };
    let t3 = s.issue_client_credentials(c.id, None, &opts).await.unwrap();
    assert_eq!(t3.token_type, "DPoP");
    let v3 = s
        .validate_access_token(t3.access_token.secret())
        .await
        .unwrap();
    assert_eq!(v3.audience, opts.audience);
    assert_eq!(v3.cnf, opts.cnf);
    assert_eq!(v3.claims, opts.claims);

    // With the record the token endpoint authenticated: the same checks, one read fewer.
    let plain = TokenOptions::default();
    let (c2, secret2) = service_client(&s, "read").await;
    let authed = s
        .verify_client_secret(c2.id, secret2.secret())
        .await
        .unwrap();
    let t4 = s
        .issue_client_credentials_for(&authed, None, &plain)
        .await
        .unwrap();
    let v4 = s
        .validate_access_token(t4.access_token.secret())
        .await
        .unwrap();
    assert_eq!((v4.client_id, v4.scope), (c2.id, scopes("read")));
    assert!(matches!(
        s.issue_client_credentials_for(&authed, Some(&scopes("read write")), &plain)
            .await,
        Err(Error::InvalidScope { .. })
    ));
    let web = s.client(w.id).await.unwrap();
    assert!(matches!(
        s.issue_client_credentials_for(&web, None, &plain).await,
        Err(Error::UnauthorizedClient { .. })
    ));
    // A record read before its client was disabled, or deleted, issues nothing: the write
    // checks the client itself.
    s.disable_client(c2.id).await.unwrap();
    let before = s.stats().await.unwrap();
    assert!(
        s.issue_client_credentials_for(&authed, None, &plain)
            .await
            .is_err()
    );
    assert_eq!(s.stats().await.unwrap(), before);
    s.delete_client(c2.id).await.unwrap();
    let before = s.stats().await.unwrap();
    assert!(
        s.issue_client_credentials_for(&authed, None, &plain)
            .await
            .is_err()
    );
    assert_eq!(s.stats().await.unwrap(), before);
}

/// Access tokens expire exactly at `expires_at`.
pub async fn access_token_expiry_boundary(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = service_client(&s, "read").await;
    let t = s
        .issue_client_credentials(c.id, None, &TokenOptions::default())
        .await
        .unwrap();
    clock.set(t.expires_at.saturating_sub(MICRO));
    s.validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    clock.set(t.expires_at);
    assert_inactive(&s, t.access_token.secret()).await;
}

/// A disabled client's tokens stop validating at once, and come back when enabled.
pub async fn disabled_client_tokens_inactive(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let t = code_flow(&s, &c, "alice", "read").await;
    s.disable_client(c.id).await.unwrap();
    assert_inactive(&s, t.access_token.secret()).await;
    let opts = TokenOptions::default();
    assert!(s.refresh(refresh_req(rt(&t), &c, &opts)).await.is_err());
    s.enable_client(c.id).await.unwrap();
    s.validate_access_token(t.access_token.secret())
        .await
        .unwrap();
}

// ----- authorization codes -----------------------------------------------------------

/// The authorization code flow with PKCE: code, tokens, validation, introspection.
pub async fn authorization_code_flow(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "openid profile email").await;
    let code = s
        .issue_code(code_request(&c, "alice", "openid profile"))
        .await
        .unwrap();
    assert!(code.code.secret().starts_with("ac_"));
    let opts = TokenOptions::default();
    let t = s
        .redeem_code(redemption(code.code.secret(), &c, &opts))
        .await
        .unwrap();
    assert_eq!(t.grant_id, code.grant_id);
    assert_eq!(t.scope, scopes("openid profile"));
    let v = s
        .validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    assert_eq!(v.subject, Some(sub("alice")));
    assert_eq!(v.client_id, c.id);
    let r = s.introspect_refresh_token(rt(&t)).await.unwrap();
    assert_eq!(r.grant_id, code.grant_id);
    assert_eq!(r.scope, scopes("openid profile"));
    let g = s.grant(code.grant_id).await.unwrap();
    assert_eq!(g.subject, Some(sub("alice")));
    assert!(g.revoked_at.is_none());

    // The request is checked before a code exists.
    let mut bad = code_request(&c, "alice", "openid");
    bad.redirect_uri = "https://app.example/cb/".into();
    assert!(matches!(
        s.issue_code(bad).await,
        Err(Error::InvalidInput {
            field: "redirect_uri",
            ..
        })
    ));
    assert!(matches!(
        s.issue_code(code_request(&c, "alice", "admin")).await,
        Err(Error::InvalidScope { .. })
    ));
    let pub_client = s
        .create_client(
            NewClient::public("spa", RedirectUri::new(REDIRECT).unwrap()).scopes(scopes("openid")),
        )
        .await
        .unwrap()
        .client;
    let mut no_pkce = code_request(&pub_client, "alice", "openid");
    no_pkce.code_challenge = None;
    assert!(matches!(
        s.issue_code(no_pkce).await,
        Err(Error::InvalidInput {
            field: "code_challenge",
            ..
        })
    ));
    // A public client with PKCE works.
    let pc = s
        .issue_code(code_request(&pub_client, "bob", "openid"))
        .await
        .unwrap();
    s.redeem_code(redemption(pc.code.secret(), &pub_client, &opts))
        .await
        .unwrap();
}

/// Wrong client, redirect URI or verifier burn the code and revoke its grant.
pub async fn code_binding_checks(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let (other, _) = web_client(&s, "read").await;
    let opts = TokenOptions::default();
    for case in 0..4 {
        let code = s
            .issue_code(code_request(&c, "alice", "read"))
            .await
            .unwrap();
        let good = redemption(code.code.secret(), &c, &opts);
        let bad = match case {
            0 => CodeRedemption {
                client_id: other.id,
                ..good
            },
            1 => CodeRedemption {
                redirect_uri: Some("https://app.example/other"),
                ..good
            },
            2 => CodeRedemption {
                code_verifier: Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                ..good
            },
            _ => CodeRedemption {
                code_verifier: None,
                ..good
            },
        };
        let e = s.redeem_code(bad).await.unwrap_err();
        assert!(matches!(e, Error::InvalidGrant { .. }), "{e:?}");
        assert!(
            s.grant(code.grant_id).await.unwrap().revoked_at.is_some(),
            "grant revoked after {e}"
        );
        // The code is burnt: a correct retry is a replay.
        assert!(matches!(
            s.redeem_code(good).await,
            Err(Error::CodeReplay { .. })
        ));
    }
    // PKCE downgrade: verifier sent for a code issued without a challenge.
    let mut req = code_request(&c, "alice", "read");
    req.code_challenge = None;
    let code = s.issue_code(req.clone()).await.unwrap();
    assert!(matches!(
        s.redeem_code(redemption(code.code.secret(), &c, &opts))
            .await,
        Err(Error::InvalidGrant { .. })
    ));
    // Without PKCE the redirect URI is required.
    let code = s.issue_code(req.clone()).await.unwrap();
    let r = CodeRedemption {
        redirect_uri: None,
        code_verifier: None,
        ..redemption(code.code.secret(), &c, &opts)
    };
    assert!(matches!(
        s.redeem_code(r).await,
        Err(Error::InvalidGrant { .. })
    ));
    // And with it, it works.
    let code = s.issue_code(req).await.unwrap();
    let r = CodeRedemption {
        code_verifier: None,
        ..redemption(code.code.secret(), &c, &opts)
    };
    s.redeem_code(r).await.unwrap();
}

/// A second redemption fails and revokes everything issued from the first.
pub async fn code_replay_revokes_grant(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let code = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let opts = TokenOptions::default();
    let t = s
        .redeem_code(redemption(code.code.secret(), &c, &opts))
        .await
        .unwrap();
    s.validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    let e = s
        .redeem_code(redemption(code.code.secret(), &c, &opts))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::CodeReplay { grant_id } if grant_id == code.grant_id),
        "{e:?}"
    );
    assert_inactive(&s, t.access_token.secret()).await;
    assert!(s.introspect_refresh_token(rt(&t)).await.is_err());
    assert!(s.refresh(refresh_req(rt(&t), &c, &opts)).await.is_err());
    assert!(
        audit_kinds(&s)
            .await
            .contains(&AuditKind::CodeReplayDetected)
    );
}

/// 64 tasks race to consume one code: exactly one wins (backend CAS and façade); a later
/// replay revokes the grant.
pub async fn code_race_exactly_one_wins(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;

    // The backend's compare-and-set.
    let code = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let hash = TokenKeyring::new(key("k1", 7)).hash(code.code.secret());
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let b = h.backend.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let ev = authstore_core::AuditEvent::new(
                AuditKind::CodeRedeemed,
                START,
                &Default::default(),
            );
            b.consume_code(&hash, ev).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            CodeConsumption::Consumed(code) => {
                won += 1;
                assert_eq!(code.consumed_at, Some(START));
            }
            CodeConsumption::AlreadyConsumed { grant_id } => assert_eq!(grant_id, code.grant_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one consumer wins");

    // Through the façade.
    let code = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let secret: Arc<str> = code.code.secret().into();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = s.clone();
        let secret = secret.clone();
        let barrier = barrier.clone();
        let cid = c.id;
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let opts = TokenOptions::default();
            let r = CodeRedemption {
                code: &secret,
                client_id: cid,
                redirect_uri: Some(REDIRECT),
                code_verifier: Some(VERIFIER),
                options: &opts,
            };
            s.redeem_code(r).await
        }));
    }
    let mut replays = 0;
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Err(Error::CodeReplay { grant_id }) => {
                assert_eq!(grant_id, code.grant_id);
                replays += 1;
            }
            // The one consumer either got tokens, or found its grant already revoked by a
            // replaying racer before it could store them.
            other => winners.push(other),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one redeemer consumed the code: {winners:?}"
    );
    assert_eq!(replays, 63);
    assert!(
        s.grant(code.grant_id).await.unwrap().revoked_at.is_some(),
        "racing replays revoked the grant"
    );
    if let Some(Ok(t)) = winners.pop() {
        assert_inactive(&s, t.access_token.secret()).await;
    }
    let opts = TokenOptions::default();
    assert!(matches!(
        s.redeem_code(redemption(&secret, &c, &opts)).await,
        Err(Error::CodeReplay { .. })
    ));
}

/// Codes expire exactly at `expires_at` (60 s by default).
pub async fn code_expiry_boundary(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let opts = TokenOptions::default();
    let a = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let b = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    assert_eq!(a.expires_at, START.saturating_add(Duration::from_secs(60)));
    clock.set(a.expires_at.saturating_sub(MICRO));
    s.redeem_code(redemption(a.code.secret(), &c, &opts))
        .await
        .unwrap();
    clock.set(b.expires_at);
    assert!(matches!(
        s.redeem_code(redemption(b.code.secret(), &c, &opts)).await,
        Err(Error::Inactive { .. })
    ));
}

// ----- refresh -----------------------------------------------------------------------

/// Rotation issues a new pair and links the old token; reuse after it revokes the family.
pub async fn refresh_rotation_and_reuse(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read write").await;
    let t0 = code_flow(&s, &c, "alice", "read write").await;
    let opts = TokenOptions::default();
    clock.advance(SECOND);
    let t1 = s.refresh(refresh_req(rt(&t0), &c, &opts)).await.unwrap();
    assert!(!t1.within_grace);
    assert_eq!(t1.grant_id, t0.grant_id);
    assert_ne!(rt(&t1), rt(&t0));
    s.validate_access_token(t1.access_token.secret())
        .await
        .unwrap();
    // The rotated token is no longer introspectable as active; the successor is.
    assert!(s.introspect_refresh_token(rt(&t0)).await.is_err());
    let r1 = s.introspect_refresh_token(rt(&t1)).await.unwrap();
    assert_eq!(r1.issued_at, START.saturating_add(SECOND));
    let state = h
        .backend
        .find_refresh_token(&TokenKeyring::new(key("k1", 7)).hash(rt(&t0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.token.rotated_at, Some(START.saturating_add(SECOND)));
    assert_eq!(
        state.token.successor,
        Some(TokenKeyring::new(key("k1", 7)).hash(rt(&t1)))
    );

    // Reuse (grace 0): the family dies.
    clock.advance(SECOND);
    let e = s
        .refresh(refresh_req(rt(&t0), &c, &opts))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::RefreshReuse { grant_id } if grant_id == t0.grant_id),
        "{e:?}"
    );
    assert_inactive(&s, t1.access_token.secret()).await;
    assert_inactive(&s, t0.access_token.secret()).await;
    assert!(s.refresh(refresh_req(rt(&t1), &c, &opts)).await.is_err());
    assert!(
        audit_kinds(&s)
            .await
            .contains(&AuditKind::RefreshReuseDetected)
    );
}

/// 64 tasks race to rotate one refresh token with grace 0: exactly one wins; reuse
/// afterwards revokes the family.
pub async fn refresh_race_grace_zero(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;

    // Backend compare-and-set.
    let t = code_flow(&s, &c, "alice", "read").await;
    let ring = TokenKeyring::new(key("k1", 7));
    let presented = ring.hash(rt(&t));
    let state = h
        .backend
        .find_refresh_token(&presented)
        .await
        .unwrap()
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let b = h.backend.clone();
        let barrier = barrier.clone();
        let mut refresh = state.token.clone();
        refresh.issued_at = START;
        let access = s
            .validate_access_token(t.access_token.secret())
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let rot = authstore_core::backend::Rotation {
                presented,
                mode: RotationMode::First,
                refresh: (authstore_core::TokenHash::from_bytes([i; 32]), refresh),
                access: (
                    authstore_core::TokenHash::from_bytes([i.wrapping_add(100); 32]),
                    access,
                ),
            };
            barrier.wait().await;
            let ev = authstore_core::AuditEvent::new(
                AuditKind::RefreshRotated,
                START,
                &Default::default(),
            );
            b.rotate_refresh_token(&rot, ev).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one rotation wins the compare-and-set");

    // Through the façade.
    let t = code_flow(&s, &c, "bob", "read").await;
    let token: Arc<str> = rt(&t).into();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = s.clone();
        let token = token.clone();
        let barrier = barrier.clone();
        let cid = c.id;
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let opts = TokenOptions::default();
            s.refresh(RefreshRequest {
                refresh_token: &token,
                client_id: cid,
                scope: None,
                options: &opts,
            })
            .await
        }));
    }
    let mut ok = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(t) => ok.push(t),
            Err(Error::RefreshReuse { grant_id }) => assert_eq!(grant_id, t.grant_id),
            // Racers that arrive after another racer revoked the family find it dead.
            Err(Error::Inactive { .. }) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one refresh wins");
    // Concurrent losers were reuse: the family is revoked, the winner's tokens included.
    assert!(s.grant(t.grant_id).await.unwrap().revoked_at.is_some());
    assert_inactive(&s, ok[0].access_token.secret()).await;
    let opts = TokenOptions::default();
    assert!(s.refresh(refresh_req(&token, &c, &opts)).await.is_err());
}

/// Within the grace period a concurrent refresh gets a valid answer; after it, reuse
/// revokes the family.
pub async fn refresh_grace_period(h: Harness) {
    let cfg = Config {
        refresh_grace: Duration::from_secs(10),
        refresh_grace_max_reuses: 100,
        ..Config::default()
    };
    let (s, clock) = store_with(&h, cfg);
    let (c, _) = web_client(&s, "read").await;
    let opts = TokenOptions::default();
    let t0 = code_flow(&s, &c, "alice", "read").await;
    let t1 = s.refresh(refresh_req(rt(&t0), &c, &opts)).await.unwrap();
    clock.advance(Duration::from_secs(10));
    // Exactly at the end of the grace period: still a valid answer.
    let t2 = s.refresh(refresh_req(rt(&t0), &c, &opts)).await.unwrap();
    assert!(t2.within_grace);
    s.validate_access_token(t1.access_token.secret())
        .await
        .unwrap();
    s.validate_access_token(t2.access_token.secret())
        .await
        .unwrap();
    s.introspect_refresh_token(rt(&t2)).await.unwrap();
    let ring = TokenKeyring::new(key("k1", 7));
    let st = h
        .backend
        .find_refresh_token(&ring.hash(rt(&t0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.token.reuse_count, 1);
    assert_eq!(
        st.token.successor,
        Some(ring.hash(rt(&t1))),
        "the first successor stays linked"
    );
    assert!(
        audit_kinds(&s)
            .await
            .contains(&AuditKind::RefreshGraceReuse)
    );

    // 64 racers within the grace period all get valid answers.
    let t3 = code_flow(&s, &c, "bob", "read").await;
    let token: Arc<str> = rt(&t3).into();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = s.clone();
        let token = token.clone();
        let cid = c.id;
        tasks.push(tokio::spawn(async move {
            let opts = TokenOptions::default();
            s.refresh(RefreshRequest {
                refresh_token: &token,
                client_id: cid,
                scope: None,
                options: &opts,
            })
            .await
        }));
    }
    let mut graced = 0;
    for task in tasks {
        let t = task
            .await
            .unwrap()
            .expect("every racer within grace gets tokens");
        graced += usize::from(t.within_grace);
    }
    assert_eq!(graced, 63, "one rotation, 63 grace answers");

    // Past the grace period: reuse, family revoked.
    clock.advance(Duration::from_secs(10) + MICRO);
    assert!(matches!(
        s.refresh(refresh_req(rt(&t0), &c, &opts)).await,
        Err(Error::RefreshReuse { .. })
    ));
    assert_inactive(&s, t2.access_token.secret()).await;
    // By default one rotated token gets at most 3 grace answers; the 4th reuse revokes.
    let (bounded, _) = store_with(
        &h,
        Config {
            refresh_grace: Duration::from_secs(10),
            ..Config::default()
        },
    );
    let f = code_flow(&bounded, &c, "carol", "read").await;
    bounded
        .refresh(refresh_req(rt(&f), &c, &opts))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(
            bounded
                .refresh(refresh_req(rt(&f), &c, &opts))
                .await
                .unwrap()
                .within_grace
        );
    }
    assert!(matches!(
        bounded.refresh(refresh_req(rt(&f), &c, &opts)).await,
        Err(Error::RefreshReuse { .. })
    ));
    assert!(
        bounded
            .grant(f.grant_id)
            .await
            .unwrap()
            .revoked_at
            .is_some()
    );
    // A grace period over the maximum is refused.
    let too_long = Config {
        refresh_grace: Duration::from_secs(3600),
        ..Config::default()
    };
    assert!(matches!(
        Authstore::new(h.backend.clone(), TokenKeyring::new(key("k1", 7))).with_config(too_long),
        Err(Error::Config { .. })
    ));
}

/// Refresh can narrow the access token's scope, never widen it; the family keeps its scope
/// and absolute expiry, the idle expiry restarts.
pub async fn refresh_scope_and_expiry(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read write").await;
    let opts = TokenOptions::default();
    let t0 = code_flow(&s, &c, "alice", "read write").await;
    let first = s.introspect_refresh_token(rt(&t0)).await.unwrap();
    assert_eq!(
        first.expires_at,
        START.saturating_add(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(
        first.idle_expires_at,
        START.saturating_add(Duration::from_secs(14 * 86_400))
    );

    let narrow = scopes("read");
    clock.advance(Duration::from_secs(86_400));
    let t1 = s
        .refresh(RefreshRequest {
            scope: Some(&narrow),
            ..refresh_req(rt(&t0), &c, &opts)
        })
        .await
        .unwrap();
    assert_eq!(t1.scope, narrow);
    assert_eq!(
        s.validate_access_token(t1.access_token.secret())
            .await
            .unwrap()
            .scope,
        narrow
    );
    let second = s.introspect_refresh_token(rt(&t1)).await.unwrap();
    assert_eq!(
        second.scope,
        scopes("read write"),
        "the family keeps its scope"
    );
    assert_eq!(
        second.expires_at, first.expires_at,
        "rotation never extends the absolute expiry"
    );
    assert_eq!(
        second.idle_expires_at,
        START.saturating_add(Duration::from_secs(15 * 86_400))
    );

    let wide = scopes("read admin");
    let e = s
        .refresh(RefreshRequest {
            scope: Some(&wide),
            ..refresh_req(rt(&t1), &c, &opts)
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidScope { .. }), "{e:?}");
    // A refused request changed nothing: the token still rotates.
    let (other, _) = web_client(&s, "read write").await;
    let e = s
        .refresh(refresh_req(rt(&t1), &other, &opts))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidGrant { .. }), "{e:?}");

    // Idle expiry, exactly at the boundary.
    clock.set(second.idle_expires_at.saturating_sub(MICRO));
    let t2 = s.refresh(refresh_req(rt(&t1), &c, &opts)).await.unwrap();
    let third = s.introspect_refresh_token(rt(&t2)).await.unwrap();
    clock.set(third.idle_expires_at);
    assert!(matches!(
        s.refresh(refresh_req(rt(&t2), &c, &opts)).await,
        Err(Error::Inactive { .. })
    ));
    assert!(s.introspect_refresh_token(rt(&t2)).await.is_err());
}

/// The rotation compare-and-set itself refuses a disabled client or an expired token; a
/// sender-constrained family needs the same binding; an update built from a stale read
/// never re-enables a disabled client.
pub async fn rotation_and_disable_guards(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let t = code_flow(&s, &c, "alice", "read").await;
    let ring = TokenKeyring::new(key("k1", 7));
    let presented = ring.hash(rt(&t));
    let state = h
        .backend
        .find_refresh_token(&presented)
        .await
        .unwrap()
        .unwrap();
    let access = s
        .validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    let rot = |n: u8| authstore_core::backend::Rotation {
        presented,
        mode: RotationMode::First,
        refresh: (
            authstore_core::TokenHash::from_bytes([n; 32]),
            state.token.clone(),
        ),
        access: (
            authstore_core::TokenHash::from_bytes([n.wrapping_add(1); 32]),
            access.clone(),
        ),
    };
    let ev =
        |at| authstore_core::AuditEvent::new(AuditKind::RefreshRotated, at, &Default::default());

    // Stale update after a disable: still disabled.
    let stale = s.client(c.id).await.unwrap();
    s.disable_client(c.id).await.unwrap();
    h.backend
        .update_client(
            &stale,
            authstore_core::AuditEvent::new(AuditKind::ClientUpdated, START, &Default::default()),
        )
        .await
        .unwrap();
    assert!(
        s.client(c.id).await.unwrap().disabled,
        "an update never re-enables"
    );
    assert!(
        !h.backend
            .rotate_refresh_token(&rot(1), ev(START))
            .await
            .unwrap(),
        "disabled client"
    );
    s.enable_client(c.id).await.unwrap();
    // Expired (idle) at the CAS time.
    let late = state.token.idle_expires_at;
    assert!(
        !h.backend
            .rotate_refresh_token(&rot(3), ev(late))
            .await
            .unwrap(),
        "expired token"
    );
    assert!(
        h.backend
            .rotate_refresh_token(&rot(5), ev(START))
            .await
            .unwrap()
    );
    let _ = clock;

    // Sender constraint: a DPoP-bound family needs the same thumbprint.
    let jkt = authstore_core::SenderConstraint::DpopJkt(
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
    );
    let other = authstore_core::SenderConstraint::DpopJkt(
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
    );
    let bound = TokenOptions {
        cnf: Some(jkt.clone()),
        ..Default::default()
    };
    let code = s.issue_code(code_request(&c, "bob", "read")).await.unwrap();
    let t = s
        .redeem_code(redemption(code.code.secret(), &c, &bound))
        .await
        .unwrap();
    assert_eq!(t.token_type, "DPoP");
    let none = TokenOptions::default();
    let wrong = TokenOptions {
        cnf: Some(other),
        ..Default::default()
    };
    for opts in [&none, &wrong] {
        let e = s.refresh(refresh_req(rt(&t), &c, opts)).await.unwrap_err();
        assert!(matches!(e, Error::InvalidGrant { .. }), "{e:?}");
    }
    let t2 = s.refresh(refresh_req(rt(&t), &c, &bound)).await.unwrap();
    assert_eq!(
        s.validate_access_token(t2.access_token.secret())
            .await
            .unwrap()
            .cnf,
        Some(jkt)
    );
}

// ----- revocation --------------------------------------------------------------------

/// RFC 7009: access and refresh tokens, unknown tokens, other clients' tokens.
pub async fn revocation_rfc7009(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let (other, _) = web_client(&s, "read").await;
    let opts = TokenOptions::default();

    let t = code_flow(&s, &c, "alice", "read").await;
    // Another client may not revoke it.
    assert_eq!(
        s.revoke_token(t.access_token.secret(), None, Some(other.id))
            .await
            .unwrap(),
        RevokeOutcome::WrongClient
    );
    s.validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    // Its own client may; the hint is only a hint.
    let out = s
        .revoke_token(
            t.access_token.secret(),
            Some(TokenTypeHint::RefreshToken),
            Some(c.id),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        RevokeOutcome::Revoked {
            grant_id: t.grant_id
        }
    );
    assert_inactive(&s, t.access_token.secret()).await;
    // Revoking an access token leaves the refresh token alone.
    let t1 = s.refresh(refresh_req(rt(&t), &c, &opts)).await.unwrap();
    s.validate_access_token(t1.access_token.secret())
        .await
        .unwrap();
    // Revoking the refresh token revokes the grant's access tokens too.
    assert_eq!(
        s.revoke_token(rt(&t1), None, Some(c.id)).await.unwrap(),
        RevokeOutcome::Revoked {
            grant_id: t.grant_id
        }
    );
    assert_inactive(&s, t1.access_token.secret()).await;
    assert!(s.grant(t.grant_id).await.unwrap().revoked_at.is_some());
    // Revoking twice is fine.
    assert!(matches!(
        s.revoke_token(rt(&t1), None, Some(c.id)).await.unwrap(),
        RevokeOutcome::Revoked { .. }
    ));
    // Unknown but well-formed tokens.
    let (c2, _) = service_client(&s, "x").await;
    let fresh = s
        .issue_client_credentials(c2.id, None, &opts)
        .await
        .unwrap();
    s.revoke_token(fresh.access_token.secret(), None, None)
        .await
        .unwrap();
    let never = authstore_core::TokenFormat::new()
        .mint(authstore_core::TokenKind::AccessToken)
        .unwrap();
    assert_eq!(
        s.revoke_token(&never, None, None).await.unwrap(),
        RevokeOutcome::NotFound
    );
    // A foreign string is unknown here (RFC 7009: 200); a malformed one is a typed error.
    assert_eq!(
        s.revoke_token("some-foreign-token", None, None)
            .await
            .unwrap(),
        RevokeOutcome::NotFound
    );
    assert!(matches!(
        s.revoke_token("a\0b", None, None).await,
        Err(Error::MalformedToken { .. })
    ));
    let kinds = audit_kinds(&s).await;
    assert!(kinds.contains(&AuditKind::AccessTokenRevoked));
    assert!(kinds.contains(&AuditKind::RefreshTokenRevoked));
}

/// Revoke by grant, by client, by subject: each hits exactly its own.
pub async fn revoke_by_grant_client_subject(h: Harness) {
    let (s, _) = store(&h);
    let (a, _) = web_client(&s, "read").await;
    let (b, _) = web_client(&s, "read").await;
    let a_alice = code_flow(&s, &a, "alice", "read").await;
    let a_bob = code_flow(&s, &a, "bob", "read").await;
    let b_alice = code_flow(&s, &b, "alice", "read").await;
    let b_bob = code_flow(&s, &b, "bob", "read").await;
    let b_carol = code_flow(&s, &b, "carol", "read").await;

    s.revoke_grant(b_carol.grant_id).await.unwrap();
    assert_inactive(&s, b_carol.access_token.secret()).await;
    assert!(matches!(
        s.revoke_grant(authstore_core::GrantId::new_at(START)).await,
        Err(Error::NotFound { .. })
    ));

    assert_eq!(s.revoke_subject_grants(&sub("alice")).await.unwrap(), 2);
    assert_inactive(&s, a_alice.access_token.secret()).await;
    assert_inactive(&s, b_alice.access_token.secret()).await;
    s.validate_access_token(a_bob.access_token.secret())
        .await
        .unwrap();
    s.validate_access_token(b_bob.access_token.secret())
        .await
        .unwrap();

    assert_eq!(
        s.revoke_client_grants(b.id).await.unwrap(),
        1,
        "only b/bob was still live"
    );
    assert_inactive(&s, b_bob.access_token.secret()).await;
    s.validate_access_token(a_bob.access_token.secret())
        .await
        .unwrap();
    assert_eq!(s.revoke_client_grants(b.id).await.unwrap(), 0);
    let kinds = audit_kinds(&s).await;
    assert!(kinds.contains(&AuditKind::SubjectGrantsRevoked));
    assert!(kinds.contains(&AuditKind::ClientGrantsRevoked));
    assert!(kinds.contains(&AuditKind::GrantRevoked));
}

/// Deleting a client deletes what belongs to it.
pub async fn cascade_on_client_delete(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let (keep, _) = web_client(&s, "read").await;
    let t = code_flow(&s, &c, "alice", "read").await;
    let kept = code_flow(&s, &keep, "alice", "read").await;
    let pending = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    s.record_consent(c.id, &sub("alice"), &scopes("read"))
        .await
        .unwrap();
    let (_, handle) = s
        .create_authorization_session(NewAuthorizationSession {
            client_id: c.id,
            redirect_uri: REDIRECT.into(),
            scope: scopes("read"),
            state: None,
            code_challenge: Some(PkceChallenge::from_verifier(VERIFIER).unwrap()),
            nonce: None,
        })
        .await
        .unwrap();

    s.delete_client(c.id).await.unwrap();
    assert_inactive(&s, t.access_token.secret()).await;
    assert!(matches!(
        s.grant(t.grant_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.grant(pending.grant_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(s.consent(c.id, &sub("alice")).await.unwrap().is_none());
    assert!(s.authorization_session(handle.secret()).await.is_err());
    assert!(s.introspect_refresh_token(rt(&t)).await.is_err());
    let st = s.stats().await.unwrap();
    assert_eq!(st.clients, 1);
    assert_eq!(st.grants.active + st.grants.revoked, 1);
    assert_eq!(st.access_tokens.active, 1);
    assert_eq!(st.refresh_tokens.active, 1);
    assert_eq!(
        st.authorization_codes.active + st.authorization_codes.used,
        1
    );
    assert_eq!(st.consents, 0);
    assert_eq!(st.authorization_sessions.active, 0);
    s.validate_access_token(kept.access_token.secret())
        .await
        .unwrap();
    // Audit events outlive the client.
    let q = AuditQuery {
        client_id: Some(c.id),
        ..Default::default()
    };
    assert!(
        s.audit_events(&q)
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == AuditKind::ClientDeleted)
    );
}

// ----- personal access tokens, sessions, consents ------------------------------------

/// PATs: issue, validate, last-used batched, list, revoke, expiry.
pub async fn personal_access_tokens(h: Harness) {
    let (s, clock) = store(&h);
    let alice = sub("alice");
    let p = s
        .issue_pat(NewPat {
            user: alice.clone(),
            name: "ci".into(),
            scope: scopes("repo"),
            expires_in: Some(Duration::from_secs(3600)),
        })
        .await
        .unwrap();
    assert!(p.secret.secret().starts_with("pat_"));
    let forever = s
        .issue_pat(NewPat {
            user: alice.clone(),
            name: "laptop".into(),
            scope: scopes("read"),
            expires_in: None,
        })
        .await
        .unwrap();
    clock.advance(SECOND);
    assert_eq!(
        s.validate_pat(p.secret.secret()).await.unwrap().id,
        p.pat.id
    );
    // Validation does not write: last_used_at is still unset until a flush.
    let listed = s.list_pats(&alice).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| p.last_used_at.is_none()));
    assert_eq!(s.flush_pat_usage().await.unwrap(), 1);
    assert_eq!(s.flush_pat_usage().await.unwrap(), 0);
    let listed = s.list_pats(&alice).await.unwrap();
    let used = listed.iter().find(|x| x.id == p.pat.id).unwrap();
    assert_eq!(used.last_used_at, Some(START.saturating_add(SECOND)));

    // Expiry boundary.
    clock.set(p.pat.expires_at.unwrap().saturating_sub(MICRO));
    s.validate_pat(p.secret.secret()).await.unwrap();
    clock.set(p.pat.expires_at.unwrap());
    assert!(matches!(
        s.validate_pat(p.secret.secret()).await,
        Err(Error::Inactive { .. })
    ));
    s.validate_pat(forever.secret.secret()).await.unwrap();

    // Revoke: only its owner (when named).
    assert!(matches!(
        s.revoke_pat(forever.pat.id, Some(&sub("mallory"))).await,
        Err(Error::NotFound { .. })
    ));
    s.validate_pat(forever.secret.secret()).await.unwrap();
    s.revoke_pat(forever.pat.id, Some(&alice)).await.unwrap();
    assert!(matches!(
        s.validate_pat(forever.secret.secret()).await,
        Err(Error::Inactive { .. })
    ));
    assert!(s.list_pats(&sub("bob")).await.unwrap().is_empty());
    // A PAT is not an access token and vice versa.
    assert!(matches!(
        s.validate_access_token(forever.secret.secret()).await,
        Err(Error::MalformedToken { .. })
    ));
    let kinds = audit_kinds(&s).await;
    assert!(kinds.contains(&AuditKind::PatIssued) && kinds.contains(&AuditKind::PatRevoked));
}

/// Authorization sessions: create, get, attach subject, complete exactly once, expire.
pub async fn authorization_sessions(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "openid").await;
    let new = NewAuthorizationSession {
        client_id: c.id,
        redirect_uri: REDIRECT.into(),
        scope: scopes("openid"),
        state: Some("xyz".into()),
        code_challenge: Some(PkceChallenge::from_verifier(VERIFIER).unwrap()),
        nonce: None,
    };
    let (sess, handle) = s.create_authorization_session(new.clone()).await.unwrap();
    assert!(handle.secret().starts_with("as_"));
    assert_eq!(
        sess.expires_at,
        START.saturating_add(Duration::from_secs(600))
    );
    assert_eq!(
        s.authorization_session(handle.secret()).await.unwrap(),
        sess
    );
    // Not completable before a subject is attached.
    assert!(
        s.complete_authorization_session(handle.secret())
            .await
            .is_err()
    );
    s.attach_subject(handle.secret(), &sub("alice"))
        .await
        .unwrap();
    s.attach_subject(handle.secret(), &sub("alice"))
        .await
        .unwrap();
    assert!(
        s.attach_subject(handle.secret(), &sub("mallory"))
            .await
            .is_err(),
        "the subject cannot change"
    );
    assert_eq!(
        s.authorization_session(handle.secret())
            .await
            .unwrap()
            .subject,
        Some(sub("alice"))
    );

    // 16 racers complete it: exactly one wins.
    let handle_s: Arc<str> = handle.secret().into();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        let h = handle_s.clone();
        tasks.push(tokio::spawn(async move {
            s.complete_authorization_session(&h).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        if let Ok(done) = t.await.unwrap() {
            won += 1;
            assert_eq!(done.completed_at, Some(START));
            assert_eq!(done.state.as_deref(), Some("xyz"));
        }
    }
    assert_eq!(won, 1);
    assert!(s.authorization_session(handle.secret()).await.is_err());

    // Expire early; expiry boundary.
    let (_, h2) = s.create_authorization_session(new.clone()).await.unwrap();
    s.expire_authorization_session(h2.secret()).await.unwrap();
    assert!(s.authorization_session(h2.secret()).await.is_err());
    assert!(s.expire_authorization_session(h2.secret()).await.is_err());
    let (s3, h3) = s.create_authorization_session(new.clone()).await.unwrap();
    clock.set(s3.expires_at.saturating_sub(MICRO));
    s.authorization_session(h3.secret()).await.unwrap();
    clock.set(s3.expires_at);
    assert!(s.authorization_session(h3.secret()).await.is_err());
    assert!(s.attach_subject(h3.secret(), &sub("alice")).await.is_err());

    // Bad requests fail before anything is stored.
    let bad = NewAuthorizationSession {
        redirect_uri: "https://evil.example/cb".into(),
        ..new.clone()
    };
    assert!(matches!(
        s.create_authorization_session(bad).await,
        Err(Error::InvalidInput { .. })
    ));
    let bad = NewAuthorizationSession {
        state: Some("a\0b".into()),
        ..new
    };
    assert!(matches!(
        s.create_authorization_session(bad).await,
        Err(Error::InvalidInput { .. })
    ));
    let kinds = audit_kinds(&s).await;
    for k in [
        AuditKind::AuthorizationSessionCreated,
        AuditKind::AuthorizationSessionSubject,
        AuditKind::AuthorizationSessionCompleted,
        AuditKind::AuthorizationSessionExpired,
    ] {
        assert!(kinds.contains(&k), "missing {k}");
    }
}

/// Consents accumulate; revoking one revokes that client's grants for that subject only.
pub async fn consents(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read write email").await;
    let alice = sub("alice");
    assert!(s.consent(c.id, &alice).await.unwrap().is_none());
    let first = s
        .record_consent(c.id, &alice, &scopes("read"))
        .await
        .unwrap();
    clock.advance(SECOND);
    let second = s
        .record_consent(c.id, &alice, &scopes("write"))
        .await
        .unwrap();
    assert_eq!(second.scope, scopes("read write"));
    assert_eq!(second.granted_at, first.granted_at);
    assert_eq!(second.updated_at, START.saturating_add(SECOND));
    assert_eq!(s.consent(c.id, &alice).await.unwrap().unwrap(), second);
    assert!(matches!(
        s.record_consent(c.id, &alice, &scopes("admin")).await,
        Err(Error::InvalidScope { .. })
    ));

    let t_alice = code_flow(&s, &c, "alice", "read").await;
    let t_bob = code_flow(&s, &c, "bob", "read").await;
    assert!(s.revoke_consent(c.id, &alice).await.unwrap());
    assert!(s.consent(c.id, &alice).await.unwrap().is_none());
    assert_inactive(&s, t_alice.access_token.secret()).await;
    s.validate_access_token(t_bob.access_token.secret())
        .await
        .unwrap();
    assert!(!s.revoke_consent(c.id, &alice).await.unwrap());
}

// ----- audit -------------------------------------------------------------------------

/// Audit queries filter by kind, subject, client and time, and page by id.
pub async fn audit_queries(h: Harness) {
    let (s, clock) = store(&h);
    let (a, _) = web_client(&s, "read").await;
    clock.advance(SECOND);
    let (b, _) = service_client(&s, "read").await;
    clock.advance(SECOND);
    let t = code_flow(&s, &a, "alice", "read").await;
    clock.advance(SECOND);
    s.issue_client_credentials(b.id, None, &TokenOptions::default())
        .await
        .unwrap();

    let all = s
        .audit_events(&AuditQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(all.len() >= 5);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    let created = s
        .audit_events(&AuditQuery {
            kind: Some(AuditKind::ClientCreated),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.len(), 2);
    let for_alice = s
        .audit_events(&AuditQuery {
            subject: Some(sub("alice")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!for_alice.is_empty());
    assert!(for_alice.iter().all(|e| e.subject == Some(sub("alice"))));
    let redeemed: Vec<_> = for_alice
        .iter()
        .filter(|e| e.kind == AuditKind::CodeRedeemed)
        .collect();
    assert_eq!(
        redeemed.len(),
        1,
        "code redemption is audited with its subject"
    );
    assert_eq!(
        redeemed[0].grant_id,
        Some(t.grant_id),
        "the backend fills the grant of a consumed code"
    );
    assert_eq!(redeemed[0].client_id, Some(a.id));
    let for_b = s
        .audit_events(&AuditQuery {
            client_id: Some(b.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(for_b.iter().all(|e| e.client_id == Some(b.id)));
    assert!(for_b.iter().any(|e| e.kind == AuditKind::TokensIssued));
    let window = AuditQuery {
        since: Some(START.saturating_add(SECOND)),
        until: Some(START.saturating_add(Duration::from_secs(2))),
        ..Default::default()
    };
    let w = s.audit_events(&window).await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].kind, AuditKind::ClientCreated);
    assert_eq!(w[0].client_id, Some(b.id));

    // Paging.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .audit_events(&AuditQuery {
                after,
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        seen.extend(page);
    }
    assert_eq!(seen, all);
    assert!(matches!(
        s.audit_events(&AuditQuery {
            limit: Some(0),
            ..Default::default()
        })
        .await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        s.audit_events(&AuditQuery {
            limit: Some(5000),
            ..Default::default()
        })
        .await,
        Err(Error::InvalidInput { .. })
    ));

    // The audit context is recorded.
    let ctx = authstore_core::AuditContext {
        actor: Some("admin:root".into()),
        ip: Some("127.0.0.1".parse().unwrap()),
    };
    s.with_audit_context(ctx.clone())
        .revoke_grant(t.grant_id)
        .await
        .unwrap();
    let ev = s
        .audit_events(&AuditQuery {
            kind: Some(AuditKind::GrantRevoked),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ev[0].actor, ctx.actor);
    assert_eq!(ev[0].ip, ctx.ip);
    assert_eq!(ev[0].grant_id, Some(t.grant_id));
}

// ----- maintenance -------------------------------------------------------------------

/// Cleanup removes dead rows past retention and never anything a live token depends on.
pub async fn cleanup_keeps_live_data(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let (svc, _) = service_client(&s, "read").await;
    let opts = TokenOptions::default();
    let live = code_flow(&s, &c, "alice", "read").await; // access 1 h, refresh 30 d
    let rotated_from = code_flow(&s, &c, "bob", "read").await;
    let rotated_to = s
        .refresh(refresh_req(rt(&rotated_from), &c, &opts))
        .await
        .unwrap();
    let revoked = code_flow(&s, &c, "carol", "read").await;
    s.revoke_grant(revoked.grant_id).await.unwrap();
    let cc = s
        .issue_client_credentials(svc.id, None, &opts)
        .await
        .unwrap();
    let _unused_code = s
        .issue_code(code_request(&c, "dave", "read"))
        .await
        .unwrap();
    let pat = s
        .issue_pat(NewPat {
            user: sub("alice"),
            name: "short".into(),
            scope: scopes("read"),
            expires_in: Some(SECOND),
        })
        .await
        .unwrap();

    // Nothing is past retention yet.
    let r = s.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(r.total(), 0, "{r:?}");

    // Two days later: access tokens (1 h), codes (60 s), the PAT (1 s), the revoked grant
    // are a day past retention; refresh tokens (30 d) are alive.
    clock.advance(Duration::from_secs(2 * 86_400 + 1));
    let r = s.cleanup(&CleanupOptions::default()).await.unwrap();
    // In order: codes, access tokens, refresh tokens, PATs, sessions, grants.
    assert_eq!(r.authorization_codes, 4, "{r:?}"); // alice, bob, carol, dave: all expired
    assert_eq!(r.access_tokens, 5, "{r:?}"); // alice, bob x2, carol, client_credentials
    assert_eq!(r.refresh_tokens, 0, "{r:?}"); // carol's goes with her grant, uncounted
    assert_eq!(r.personal_access_tokens, 1, "{r:?}");
    assert_eq!(r.grants, 3, "{r:?}"); // carol (revoked), client_credentials and dave (empty)
    assert!(!r.incomplete);
    drop(pat);

    // The live family still works: its refresh token (and grant) were kept.
    let renewed = s.refresh(refresh_req(rt(&live), &c, &opts)).await.unwrap();
    s.validate_access_token(renewed.access_token.secret())
        .await
        .unwrap();
    // The rotated token was kept for reuse detection: replaying it still revokes the family.
    assert!(matches!(
        s.refresh(refresh_req(rt(&rotated_from), &c, &opts)).await,
        Err(Error::RefreshReuse { .. })
    ));
    assert_inactive(&s, rotated_to.access_token.secret()).await;
    assert!(matches!(
        s.grant(revoked.grant_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.grant(cc.grant_id).await,
        Err(Error::NotFound { .. })
    ));
    s.grant(live.grant_id).await.unwrap();

    // A second run finds nothing more.
    assert_eq!(
        s.cleanup(&CleanupOptions::default()).await.unwrap().total(),
        0
    );

    // Long after everything expired, the rest goes too.
    clock.advance(Duration::from_secs(60 * 86_400));
    let r = s.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(r.refresh_tokens >= 3, "{r:?}");
    let st = s.stats().await.unwrap();
    assert_eq!(st.refresh_tokens, Default::default(), "{st:?}");
    assert_eq!(st.access_tokens, Default::default(), "{st:?}");
    assert_eq!(st.grants, Default::default(), "{st:?}");
    assert_eq!(st.clients, 2, "cleanup never deletes clients");
    assert!(matches!(
        s.cleanup(&CleanupOptions {
            batch_size: 0,
            ..Default::default()
        })
        .await,
        Err(Error::InvalidInput { .. })
    ));
}

/// Cleanup in small batches, two at once: together they delete each row once.
pub async fn cleanup_batches_and_concurrency(h: Harness) {
    let (s, clock) = store(&h);
    let (svc, _) = service_client(&s, "read").await;
    let opts = TokenOptions::default();
    for _ in 0..120 {
        s.issue_client_credentials(svc.id, None, &opts)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(3 * 86_400));
    let options = CleanupOptions {
        batch_size: 7,
        max_batches: 3,
        ..Default::default()
    };
    // An exhausted time budget starts no batch: nothing deleted, reported incomplete.
    let no_time = CleanupOptions {
        time_budget: Some(Duration::ZERO),
        ..options
    };
    let r = s.cleanup(&no_time).await.unwrap();
    assert_eq!(r.total(), 0, "{r:?}");
    assert!(r.incomplete);
    let r = s.cleanup(&options).await.unwrap();
    assert_eq!(r.access_tokens, 21, "bounded: 3 batches of 7");
    assert!(r.incomplete);
    let options = CleanupOptions {
        batch_size: 10,
        max_batches: 1000,
        ..Default::default()
    };
    let (a, b) = tokio::join!(s.cleanup(&options), s.cleanup(&options));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.access_tokens + b.access_tokens, 99);
    assert_eq!(
        a.grants + b.grants,
        99,
        "the first run removed 21 emptied grants"
    );
    assert!(!a.incomplete && !b.incomplete);
    assert_eq!(s.stats().await.unwrap().access_tokens, Default::default());
}

/// Everything one preview and its store look like, to show the preview changed nothing.
async fn preview_snapshot(
    s: &Authstore,
    h: &Harness,
) -> (
    authstore_core::backend::Stats,
    Vec<authstore_core::AuditEvent>,
) {
    let mut stats = s.stats().await.unwrap();
    if h.backend.backend_name() == "postgres" {
        // The server's own upkeep (autovacuum) may resize relations at any moment.
        stats.database_bytes = None;
    }
    let audit = s
        .audit_events(&AuditQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    (stats, audit)
}

/// An empty grant revoked recently is kept for the retention window like any other revoked
/// row (its revocation stays visible), then goes; the preview agrees at each step.
pub async fn cleanup_keeps_recently_revoked_empty_grants(h: Harness) {
    let (s, clock) = store(&h);
    let (svc, _) = service_client(&s, "read").await;
    let t = s
        .issue_client_credentials(svc.id, None, &TokenOptions::default())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3 * 86_400));
    // The token is long dead; the grant is old. Revoke it now: revoked after the cutoff.
    s.revoke_grant(t.grant_id).await.unwrap();
    let unbounded = CleanupOptions {
        time_budget: None,
        ..Default::default()
    };
    let preview = s.cleanup_preview(&unbounded).await.unwrap();
    let r = s.cleanup(&unbounded).await.unwrap();
    assert_eq!(preview, r);
    assert_eq!(r.access_tokens, 1, "{r:?}");
    assert_eq!(
        r.grants, 0,
        "a grant revoked within the retention window stays: {r:?}"
    );
    assert!(s.grant(t.grant_id).await.unwrap().revoked_at.is_some());
    clock.advance(Duration::from_secs(2 * 86_400));
    let preview = s.cleanup_preview(&unbounded).await.unwrap();
    let r = s.cleanup(&unbounded).await.unwrap();
    assert_eq!(preview, r);
    assert_eq!(r.grants, 1, "{r:?}");
    assert!(s.grant(t.grant_id).await.is_err());
}

/// `cleanup_preview` (cleanup --dry-run) reports exactly what an unbounded cleanup run
/// right after deletes, by the same counting convention, and changes nothing.
pub async fn cleanup_preview_matches_cleanup(h: Harness) {
    use authstore_core::OneTimePurpose::{MagicLink, PasswordReset};
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let (svc, _) = service_client(&s, "read").await;
    let opts = TokenOptions::default();

    // At START: what will be past retention two days later, and what will not.
    let live = code_flow(&s, &c, "alice", "read").await; // refresh 30 d: keeps its grant
    let rotated_from = code_flow(&s, &c, "bob", "read").await;
    s.refresh(refresh_req(rt(&rotated_from), &c, &opts))
        .await
        .unwrap(); // the rotated token stays: reuse detection needs it
    let revoked = code_flow(&s, &c, "carol", "read").await;
    s.revoke_grant(revoked.grant_id).await.unwrap(); // its refresh token goes uncounted
    let cc = s
        .issue_client_credentials(svc.id, None, &opts)
        .await
        .unwrap(); // access token only: the grant is empty once it goes
    s.issue_code(code_request(&c, "dave", "read"))
        .await
        .unwrap(); // an unused code: likewise
    // Old grants something live still refers to: a code, an access token.
    let three_days = Some(Duration::from_secs(3 * 86_400));
    let mut slow_web = NewClient::confidential("slow web")
        .redirect_uri(RedirectUri::new(REDIRECT).unwrap())
        .scopes(scopes("read"));
    slow_web.lifetimes.authorization_code = three_days;
    let slow_web = s.create_client(slow_web).await.unwrap().client;
    let live_code = s
        .issue_code(code_request(&slow_web, "ivy", "read"))
        .await
        .unwrap();
    let mut slow_svc = NewClient::confidential("slow service").scopes(scopes("read"));
    slow_svc.lifetimes.access_token = three_days;
    let slow_svc = s.create_client(slow_svc).await.unwrap().client;
    let live_access = s
        .issue_client_credentials(slow_svc.id, None, &opts)
        .await
        .unwrap();
    let pat = |name: &str, expires_in: Option<Duration>| NewPat {
        user: sub("alice"),
        name: name.into(),
        scope: scopes("read"),
        expires_in,
    };
    s.issue_pat(pat("short", Some(SECOND))).await.unwrap();
    s.issue_pat(pat("forever", None)).await.unwrap();
    let revoked_pat = s.issue_pat(pat("revoked", None)).await.unwrap();
    s.revoke_pat(revoked_pat.pat.id, None).await.unwrap();
    let session = |state: &str| NewAuthorizationSession {
        client_id: c.id,
        redirect_uri: REDIRECT.into(),
        scope: scopes("read"),
        state: Some(state.into()),
        code_challenge: Some(PkceChallenge::from_verifier(VERIFIER).unwrap()),
        nonce: None,
    };
    let (_, completed) = s.create_authorization_session(session("a")).await.unwrap();
    s.attach_subject(completed.secret(), &sub("alice"))
        .await
        .unwrap();
    s.complete_authorization_session(completed.secret())
        .await
        .unwrap();
    s.create_authorization_session(session("b")).await.unwrap(); // expires in 10 min
    let u = person(&s, "olga").await;
    s.set_password(u.id, &pw("olga's long password"), false)
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(s.login("olga", &pw("a wrong guess"), None).await.is_err());
    }
    s.create_login_session(u.id, None, None).await.unwrap(); // idle for a day
    let (ended, _) = s.create_login_session(u.id, None, None).await.unwrap();
    s.revoke_login_session(ended.id, Some(u.id)).await.unwrap();
    s.issue_one_time_token(u.id, PasswordReset).await.unwrap(); // superseded by the next
    let (_, reset) = s.issue_one_time_token(u.id, PasswordReset).await.unwrap();
    s.consume_one_time_token(reset.secret(), PasswordReset)
        .await
        .unwrap();
    s.issue_one_time_token(u.id, MagicLink).await.unwrap(); // expires in 15 min
    let ceremony_state = serde_json::json!({"rs": {"challenge": "abc"}});
    s.start_ceremony(
        authstore_core::CeremonyKind::Authentication,
        None,
        ceremony_state.clone(),
    )
    .await
    .unwrap();

    // Two days later (a day past retention), more that is recent: none of it goes.
    clock.advance(Duration::from_secs(2 * 86_400 + 1));
    let fresh = code_flow(&s, &c, "gina", "read").await;
    let recently_revoked = code_flow(&s, &c, "hank", "read").await;
    s.revoke_grant(recently_revoked.grant_id).await.unwrap();
    s.issue_pat(pat("new", Some(SECOND))).await.unwrap();
    s.create_authorization_session(session("c")).await.unwrap();
    let (recent, _) = s.create_login_session(u.id, None, None).await.unwrap();
    s.revoke_login_session(recent.id, Some(u.id)).await.unwrap();
    s.create_login_session(u.id, None, None).await.unwrap();
    s.issue_one_time_token(u.id, PasswordReset).await.unwrap();
    assert!(
        s.login("olga", &pw("another wrong one"), None)
            .await
            .is_err()
    );
    s.start_ceremony(
        authstore_core::CeremonyKind::Registration,
        Some(u.id),
        ceremony_state,
    )
    .await
    .unwrap();

    // The preview changes nothing, and says the same twice; bounds are ignored.
    let before = preview_snapshot(&s, &h).await;
    let preview = s.cleanup_preview(&CleanupOptions::default()).await.unwrap();
    assert_eq!(preview_snapshot(&s, &h).await, before, "the preview wrote");
    let tiny = CleanupOptions {
        batch_size: 1,
        max_batches: 1,
        time_budget: Some(Duration::ZERO),
        ..CleanupOptions::default()
    };
    assert_eq!(s.cleanup_preview(&tiny).await.unwrap(), preview);
    // Only retention matters: with a longer one nothing is old enough yet.
    let long = CleanupOptions {
        retention: Duration::from_secs(3 * 86_400),
        ..CleanupOptions::default()
    };
    assert_eq!(s.cleanup_preview(&long).await.unwrap(), Default::default());

    // What cleanup's rules say, counted as cleanup counts.
    let expected = authstore_core::backend::CleanupReport {
        authorization_codes: 4,    // alice, bob, carol, dave
        access_tokens: 5,          // alice, bob x2, carol, client_credentials
        refresh_tokens: 0,         // carol's goes with her grant, uncounted; the rest live
        grants: 3,                 // carol (revoked), client_credentials and dave (emptied)
        personal_access_tokens: 2, // "short" (expired) and "revoked"
        authorization_sessions: 2, // the completed and the expired one
        // Two failed logins, two rows each: the attempt against the user, the failure
        // against the source.
        login_failures: 4,
        login_sessions: 2,  // idle-expired and revoked
        one_time_tokens: 3, // superseded, used, expired
        ceremonies: 1,
        incomplete: false,
    };
    assert_eq!(preview, expected);

    // An unbounded cleanup (in many small batches) right after deletes exactly that.
    let unbounded = CleanupOptions {
        batch_size: 2,
        max_batches: 100_000,
        time_budget: None,
        ..CleanupOptions::default()
    };
    let report = s.cleanup(&unbounded).await.unwrap();
    assert_eq!(report, preview);

    // After it, a preview finds nothing; what was kept is still there.
    assert_eq!(
        s.cleanup_preview(&CleanupOptions::default()).await.unwrap(),
        Default::default()
    );
    assert_eq!(
        s.cleanup(&CleanupOptions::default()).await.unwrap(),
        Default::default()
    );
    s.grant(live.grant_id).await.unwrap();
    s.grant(live_code.grant_id).await.unwrap();
    s.grant(live_access.grant_id).await.unwrap();
    s.grant(rotated_from.grant_id).await.unwrap();
    s.grant(fresh.grant_id).await.unwrap();
    s.grant(recently_revoked.grant_id).await.unwrap();
    for gone in [revoked.grant_id, cc.grant_id] {
        assert!(matches!(s.grant(gone).await, Err(Error::NotFound { .. })));
    }
    assert!(matches!(
        s.refresh(refresh_req(rt(&rotated_from), &c, &opts)).await,
        Err(Error::RefreshReuse { .. })
    ));
}

/// Stats count per kind: active, expired, revoked, used.
pub async fn stats_counts(h: Harness) {
    let (s, clock) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let opts = TokenOptions::default();
    let a = code_flow(&s, &c, "alice", "read").await;
    let b = code_flow(&s, &c, "bob", "read").await;
    s.refresh(refresh_req(rt(&b), &c, &opts)).await.unwrap();
    let d = code_flow(&s, &c, "dan", "read").await;
    s.revoke_grant(d.grant_id).await.unwrap();
    s.issue_code(code_request(&c, "erin", "read"))
        .await
        .unwrap();
    let _ = a;
    let st = s.stats().await.unwrap();
    assert_eq!(st.clients, 1);
    assert_eq!(st.grants.active, 3);
    assert_eq!(st.grants.revoked, 1);
    assert_eq!(st.access_tokens.active, 3);
    assert_eq!(st.access_tokens.revoked, 1);
    assert_eq!(st.refresh_tokens.active, 2);
    assert_eq!(st.refresh_tokens.used, 1, "rotated");
    assert_eq!(st.refresh_tokens.revoked, 1);
    assert_eq!(
        st.authorization_codes.used, 2,
        "consumed codes of live grants"
    );
    assert_eq!(st.authorization_codes.revoked, 1);
    assert_eq!(st.authorization_codes.active, 1);
    assert!(st.audit_events > 0);
    clock.advance(Duration::from_secs(2 * 3600));
    let st = s.stats().await.unwrap();
    assert_eq!(st.access_tokens.expired, 3);
    assert_eq!(st.access_tokens.active, 0);
    assert_eq!(st.authorization_codes.expired, 1);
}

// ----- bad input, secrets, keys ------------------------------------------------------

/// Malformed tokens, invalid scopes and URIs, unknown ids: a typed error, no panic,
/// nothing written.
pub async fn bad_input_changes_nothing(h: Harness) {
    let (s, _) = store(&h);
    let (c, secret) = web_client(&s, "read").await;
    let t = code_flow(&s, &c, "alice", "read").await;
    let before_stats = s.stats().await.unwrap();
    let before_audit = audit_kinds(&s).await.len();

    let at = t.access_token.secret();
    let mut bad_checksum = at.to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == '0' { '1' } else { '0' });
    let huge = "x".repeat(5000);
    let malformed = [
        "",
        "a\0b",
        huge.as_str(),
        bad_checksum.as_str(),
        &at[..at.len() - 1],
        rt(&t),          // right format, wrong kind
        secret.secret(), // a client secret is not an access token
        "at_short",
        "zz_0000000000000000000000000000000000000000000000000",
        "foreign-token-string", // foreign tokens are off by default
    ];
    for m in malformed {
        let e = s.validate_access_token(m).await.unwrap_err();
        assert!(matches!(e, Error::MalformedToken { .. }), "{m:?}: {e:?}");
        assert!(!e.to_string().contains(at), "an error never echoes a token");
    }
    let e = s
        .refresh(refresh_req(at, &c, &TokenOptions::default()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::MalformedToken { .. }));
    let opts = TokenOptions::default();
    for code in ["", "ac_\0", huge.as_str(), at] {
        assert!(matches!(
            s.redeem_code(redemption(code, &c, &opts)).await,
            Err(Error::MalformedToken { .. })
        ));
    }
    assert!(matches!(
        s.validate_pat("pat_nope").await,
        Err(Error::MalformedToken { .. })
    ));
    assert!(matches!(
        s.authorization_session("").await,
        Err(Error::MalformedToken { .. })
    ));
    // Unknown but well-formed.
    let unknown = authstore_core::TokenFormat::new()
        .mint(authstore_core::TokenKind::AccessToken)
        .unwrap();
    assert!(matches!(
        s.validate_access_token(&unknown).await,
        Err(Error::Inactive { .. })
    ));
    // Invalid scopes and URIs.
    for bad in ["a  b", " a", "a\"b", "\u{e9}", "a\0"] {
        assert!(Scopes::parse(bad).is_err());
    }
    for bad in [
        "",
        "/relative",
        "https://a.example/#f",
        "javascript:alert(1)",
        "https://a.example/\0",
    ] {
        assert!(RedirectUri::new(bad).is_err(), "{bad:?}");
    }
    assert!(
        Subject::new("").is_err()
            && Subject::new("a\0").is_err()
            && Subject::new("x".repeat(256)).is_err()
    );
    // Unknown ids.
    let unknown_client = authstore_core::ClientId::new_at(START);
    assert!(matches!(
        s.client(unknown_client).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.update_client(unknown_client, ClientUpdate::default())
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.disable_client(unknown_client).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.rotate_client_secret(unknown_client).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.issue_client_credentials(unknown_client, None, &opts)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.issue_code(code_request(
            &Client {
                id: unknown_client,
                ..c.clone()
            },
            "a",
            "read"
        ))
        .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.revoke_pat(authstore_core::PatId::new_at(START), None)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        "not-a-uuid".parse::<authstore_core::ClientId>(),
        Err(Error::InvalidInput { .. })
    ));
    // Bad token options.
    let bad_opts = TokenOptions {
        claims: serde_json::json!("str"),
        ..Default::default()
    };
    assert!(s.redeem_code(redemption(at, &c, &bad_opts)).await.is_err());
    let big = TokenOptions {
        claims: serde_json::json!({"x": "y".repeat(5000)}),
        ..Default::default()
    };
    assert!(matches!(
        s.issue_client_credentials(c.id, None, &big).await,
        Err(Error::InvalidInput { .. })
    ));

    assert_eq!(
        s.stats().await.unwrap(),
        before_stats,
        "bad input wrote nothing"
    );
    assert_eq!(
        audit_kinds(&s).await.len(),
        before_audit,
        "bad input wrote no audit event"
    );
    s.validate_access_token(at).await.unwrap();
}

/// `Debug` of every type holding a secret, and every error, shows none; no audit event
/// holds one.
pub async fn secrets_never_shown(h: Harness) {
    let (s, _) = store(&h);
    let created = s
        .create_client(
            NewClient::confidential("web")
                .redirect_uri(RedirectUri::new(REDIRECT).unwrap())
                .scopes(scopes("read"))
                .grant_type(GrantType::AuthorizationCode)
                .grant_type(GrantType::RefreshToken),
        )
        .await
        .unwrap();
    let client_secret = created.secret.as_ref().unwrap().secret().to_owned();
    let c = created.client.clone();
    let code = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let code_s = code.code.secret().to_owned();
    let opts = TokenOptions::default();
    let t = s.redeem_code(redemption(&code_s, &c, &opts)).await.unwrap();
    let pat = s
        .issue_pat(NewPat {
            user: sub("alice"),
            name: "p".into(),
            scope: scopes("read"),
            expires_in: None,
        })
        .await
        .unwrap();
    let (_, handle) = s
        .create_authorization_session(NewAuthorizationSession {
            client_id: c.id,
            redirect_uri: REDIRECT.into(),
            scope: scopes("read"),
            state: None,
            code_challenge: Some(PkceChallenge::from_verifier(VERIFIER).unwrap()),
            nonce: None,
        })
        .await
        .unwrap();
    let replay = s
        .redeem_code(redemption(&code_s, &c, &opts))
        .await
        .unwrap_err();
    let secrets = [
        client_secret.clone(),
        code_s.clone(),
        t.access_token.secret().to_owned(),
        rt(&t).to_owned(),
        pat.secret.secret().to_owned(),
        handle.secret().to_owned(),
    ];
    let shown = [
        format!("{:?}", redemption(&code_s, &c, &opts)),
        format!(
            "{:?}",
            CodeRedemption {
                code_verifier: Some(VERIFIER),
                ..redemption(&code_s, &c, &opts)
            }
        ),
        format!("{:?}", refresh_req(rt(&t), &c, &opts)),
        format!(
            "{:?}",
            ForeignTokens {
                access_token: t.access_token.secret(),
                refresh_token: Some(rt(&t)),
                expires_in: None,
                client_id: c.id,
                subject: None,
                scope: None,
            }
        ),
        format!("{created:?}"),
        format!("{code:?}"),
        format!("{t:?}"),
        format!("{pat:?}"),
        format!("{handle:?}"),
        format!("{s:?}"),
        format!("{:?}", h.backend),
        format!("{replay:?} {replay}"),
        format!(
            "{:?}",
            s.audit_events(&AuditQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap()
        ),
        serde_json::to_string(
            &s.audit_events(&AuditQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap(),
        )
        .unwrap(),
        format!("{:?}", TokenKeyring::new(key("k1", 7))),
    ];
    for text in &shown {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into: {text}"
            );
            // Not even the random body without its prefix.
            let body = &secret[secret.find('_').unwrap() + 1..];
            assert!(!text.contains(body), "a secret body leaked into: {text}");
        }
    }
    assert!(format!("{t:?}").contains("[redacted]"));
    assert!(
        !shown[1].contains(VERIFIER),
        "the PKCE verifier is redacted"
    );
    let hex = TokenKey::from_bytes("k", [0xab; 32]).unwrap();
    assert!(!format!("{hex:?}").contains("abab"));
}

/// After a key rotation, tokens and client secrets hashed under the old key still work;
/// new ones are hashed under the new key only.
pub async fn token_key_rotation(h: Harness) {
    let (old, clock) = store(&h);
    let (c, secret) = web_client(&old, "read").await;
    let t = code_flow(&old, &c, "alice", "read").await;
    let rotated = Authstore::new(
        h.backend.clone(),
        TokenKeyring::with_older(key("k2", 9), vec![key("k1", 7)]).unwrap(),
    )
    .with_clock(Arc::new(clock.clone()));
    rotated
        .validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    rotated
        .verify_client_secret(c.id, secret.secret())
        .await
        .unwrap();
    let t2 = rotated
        .refresh(refresh_req(rt(&t), &c, &TokenOptions::default()))
        .await
        .unwrap();
    // New tokens are under k2 only: the old ring cannot find them.
    rotated
        .validate_access_token(t2.access_token.secret())
        .await
        .unwrap();
    assert_inactive(&old, t2.access_token.secret()).await;
    // Reuse detection works across the rotation.
    assert!(matches!(
        rotated
            .refresh(refresh_req(rt(&t), &c, &TokenOptions::default()))
            .await,
        Err(Error::RefreshReuse { .. })
    ));
    // Once k1 is dropped, its tokens are gone.
    let (c2, s2) = service_client(&old, "read").await;
    let only_new = Authstore::new(h.backend.clone(), TokenKeyring::new(key("k2", 9)))
        .with_clock(Arc::new(clock));
    assert!(matches!(
        only_new.verify_client_secret(c2.id, s2.secret()).await,
        Err(Error::InvalidClient)
    ));
}

/// Key checks ([`Authstore::verify_keys`]): a database records the keys it is used with and
/// refuses, changing nothing, a key ring that is not the one it was used with.
pub async fn key_checks(h: Harness) {
    use authstore_core::backend::KeyCheck;
    use authstore_core::{KeyRingKind, SealingKey, SealingKeyring};

    let clock = ManualClock::new(START);
    let open = |token: TokenKeyring, seal: Option<SealingKeyring>| {
        let s = Authstore::new(h.backend.clone(), token).with_clock(Arc::new(clock.clone()));
        match seal {
            Some(k) => s.with_sealing_keys(k),
            None => s,
        }
    };
    let check = |ring, id: &str, key: [u8; 16], at| KeyCheck {
        ring,
        key_id: id.to_owned(),
        check: key,
        recorded_at: at,
    };
    let (k1, k2) = (key("k1", 7), key("k2", 9));
    let s1 = SealingKey::from_bytes("s1", [3; 32]).unwrap();

    // A fresh database records both rings, ordered by ring name then id.
    let first = open(
        TokenKeyring::new(k1.clone()),
        Some(SealingKeyring::new(s1.clone())),
    );
    let v = first.verify_keys().await.unwrap();
    let t1 = check(KeyRingKind::Token, "k1", k1.key_check(), START);
    let c1 = check(KeyRingKind::Sealing, "s1", s1.key_check(), START);
    assert_eq!(v.recorded, [t1.clone(), c1.clone()]);
    assert!(v.matched.is_empty());
    assert_eq!(
        h.backend.key_checks().await.unwrap(),
        [c1.clone(), t1.clone()]
    );
    assert_eq!(first.key_checks().await.unwrap(), [c1.clone(), t1.clone()]);

    // The same keys again, later: nothing new, the first-seen time kept.
    clock.advance(SECOND * 60);
    let v = first.verify_keys().await.unwrap();
    assert!(v.recorded.is_empty());
    assert_eq!(v.matched, [t1.clone(), c1.clone()]);
    let unchanged = [c1.clone(), t1.clone()];

    // Every refusal below leaves the recorded checks as they were.
    let refused = |e: &Error| {
        assert!(!e.is_temporary(), "{e:?}");
        let shown = format!("{e} {e:?}");
        for hex in [k1.to_hex(), k2.to_hex(), s1.to_hex()] {
            assert!(!shown.contains(hex.as_str()), "no key material in {shown}");
        }
    };

    // Another token key under a known id.
    let e = open(TokenKeyring::new(key("k1", 8)), None)
        .verify_keys()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::KeyMismatch { ring: KeyRingKind::Token, key_id } if key_id == "k1"),
        "{e:?}"
    );
    assert_eq!(e.code(), "AS0022");
    assert!(
        e.to_string().contains("\"k1\""),
        "the message names the key: {e}"
    );
    refused(&e);
    assert_eq!(h.backend.key_checks().await.unwrap(), unchanged);

    // ... also when the wrong key is an older one next to a new active key.
    let e = open(
        TokenKeyring::with_older(k2.clone(), vec![key("k1", 8)]).unwrap(),
        None,
    )
    .verify_keys()
    .await
    .unwrap_err();
    assert!(matches!(e, Error::KeyMismatch { .. }), "{e:?}");
    assert_eq!(h.backend.key_checks().await.unwrap(), unchanged);

    // Only ids the database never saw: none of these keys was ever used with it.
    let e = open(TokenKeyring::new(k2.clone()), None)
        .verify_keys()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::KeysUnknown { ring: KeyRingKind::Token, configured, known }
            if configured == &["k2"] && known == &["k1"]),
        "{e:?}"
    );
    assert_eq!(e.code(), "AS0023");
    refused(&e);
    assert_eq!(h.backend.key_checks().await.unwrap(), unchanged);

    // The sealing ring is checked like the token ring, once the token ring passed.
    let e = open(TokenKeyring::new(k1.clone()), Some(sealing("s1", 4)))
        .verify_keys()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::KeyMismatch { ring: KeyRingKind::Sealing, key_id } if key_id == "s1"),
        "{e:?}"
    );
    refused(&e);
    let e = open(TokenKeyring::new(k1.clone()), Some(sealing("s2", 3)))
        .verify_keys()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::KeysUnknown {
                ring: KeyRingKind::Sealing,
                ..
            }
        ),
        "{e:?}"
    );
    // Wrong token ring and right sealing ring: refused, and the sealing key is not recorded
    // on the way.
    assert!(
        open(TokenKeyring::new(k2.clone()), Some(sealing("s9", 1)))
            .verify_keys()
            .await
            .is_err()
    );
    assert_eq!(h.backend.key_checks().await.unwrap(), unchanged);

    // A store without a sealing ring does not look at the sealing checks.
    let v = open(TokenKeyring::new(k1.clone()), None)
        .verify_keys()
        .await
        .unwrap();
    assert_eq!((v.matched, v.recorded.len()), (vec![t1.clone()], 0));

    // Rotation: a new active key next to the old one is recorded...
    clock.advance(SECOND);
    let rotated = open(
        TokenKeyring::with_older(k2.clone(), vec![k1.clone()]).unwrap(),
        Some(SealingKeyring::new(s1.clone())),
    );
    let v = rotated.verify_keys().await.unwrap();
    let t2 = check(
        KeyRingKind::Token,
        "k2",
        k2.key_check(),
        START.saturating_add(SECOND * 61),
    );
    assert_eq!(v.recorded, std::slice::from_ref(&t2));
    assert_eq!(v.matched, [t1.clone(), c1.clone()]);
    let after_rotation = [c1.clone(), t1.clone(), t2.clone()];
    assert_eq!(h.backend.key_checks().await.unwrap(), after_rotation);
    // ... after which the new key alone is fine, and so is a node not rotated yet.
    for ring in [TokenKeyring::new(k2.clone()), TokenKeyring::new(k1.clone())] {
        let v = open(ring, None).verify_keys().await.unwrap();
        assert!(v.recorded.is_empty());
        assert_eq!(v.matched.len(), 1);
    }
    // An id, once recorded, names its key for good.
    assert!(matches!(
        open(TokenKeyring::new(key("k2", 1)), None)
            .verify_keys()
            .await,
        Err(Error::KeyMismatch { .. })
    ));
    assert_eq!(h.backend.key_checks().await.unwrap(), after_rotation);

    // The backend's compare-and-set: a stale view writes nothing; a (ring, id) stored
    // already, or twice in one call, is a conflict that writes nothing either.
    let x = check(KeyRingKind::Token, "x", [1; 16], START);
    assert!(
        !h.backend
            .add_key_checks(&unchanged, std::slice::from_ref(&x))
            .await
            .unwrap()
    );
    for new in [
        vec![x.clone(), check(KeyRingKind::Token, "k1", [2; 16], START)],
        vec![x.clone(), x.clone()],
    ] {
        assert!(
            matches!(
                h.backend.add_key_checks(&after_rotation, &new).await,
                Err(Error::Conflict { .. })
            ),
            "{new:?}"
        );
    }
    assert_eq!(h.backend.key_checks().await.unwrap(), after_rotation);

    // Eight nodes rotating to the same new key at once: recorded once, all succeed.
    let k3 = key("k3", 11);
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = open(
            TokenKeyring::with_older(k3.clone(), vec![k2.clone()]).unwrap(),
            None,
        );
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            s.verify_keys().await
        }));
    }
    let mut recorded = 0;
    for t in tasks {
        recorded += t.await.unwrap().unwrap().recorded.len();
    }
    assert_eq!(recorded, 1, "exactly one node recorded the new key");
    // Two nodes bringing different keys under one new id at once: exactly one wins.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for byte in [12, 13] {
        let s = open(
            TokenKeyring::with_older(key("k4", byte), vec![k3.clone()]).unwrap(),
            None,
        );
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            s.verify_keys().await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(Error::KeyMismatch { key_id, .. }) if key_id == "k4")),
        "{outcomes:?}"
    );
    let ids: Vec<String> = h
        .backend
        .key_checks()
        .await
        .unwrap()
        .into_iter()
        .map(|c| format!("{}/{}", c.ring, c.key_id))
        .collect();
    assert_eq!(
        ids,
        ["sealing/s1", "token/k1", "token/k2", "token/k3", "token/k4"]
    );
    // Recording keys is not an audited change.
    assert!(audit_kinds(&first).await.is_empty());
}

/// Tokens minted elsewhere can be stored, validated and revoked when enabled.
pub async fn foreign_tokens(h: Harness) {
    let (strict, _) = store(&h);
    let (c, _) = service_client(&strict, "read write").await;
    let ft = ForeignTokens {
        access_token: "eyJhbGciOiJSUzI1NiJ9.payload.signature",
        refresh_token: Some("opaque-refresh-from-elsewhere"),
        expires_in: Some(Duration::from_secs(300)),
        client_id: c.id,
        subject: None,
        scope: None,
    };
    assert!(matches!(
        strict.store_foreign_tokens(ft).await,
        Err(Error::Config { .. })
    ));
    let (s, clock) = store_with(
        &h,
        Config {
            accept_foreign_tokens: true,
            ..Config::default()
        },
    );
    let grant = s.store_foreign_tokens(ft).await.unwrap();
    let v = s.validate_access_token(ft.access_token).await.unwrap();
    assert_eq!(v.grant_id, grant);
    assert_eq!(v.scope, scopes("read write"));
    assert!(matches!(
        strict.validate_access_token(ft.access_token).await,
        Err(Error::MalformedToken { .. })
    ));
    // Foreign strings still obey the format rules.
    assert!(matches!(
        s.validate_access_token("a\0b").await,
        Err(Error::MalformedToken { .. })
    ));
    // Revocation with a hint.
    assert!(matches!(
        s.revoke_token(
            "opaque-refresh-from-elsewhere",
            Some(TokenTypeHint::RefreshToken),
            Some(c.id)
        )
        .await
        .unwrap(),
        RevokeOutcome::Revoked { .. }
    ));
    assert_inactive(&s, ft.access_token).await;
    // Expiry from expires_in.
    let ft2 = ForeignTokens {
        access_token: "another-foreign",
        refresh_token: None,
        ..ft
    };
    s.store_foreign_tokens(ft2).await.unwrap();
    clock.advance(Duration::from_secs(300));
    assert_inactive(&s, "another-foreign").await;
    // Storing the same token twice is a conflict, not a silent overwrite.
    let e = s.store_foreign_tokens(ft2).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
}

// ----- files -------------------------------------------------------------------------

/// Issues 1,000 of each secret and scans the backend's files (database, WAL) for them:
/// none may appear in clear.
pub async fn no_secret_bytes_in_files(h: Harness) {
    assert!(
        !h.files.is_empty(),
        "this case is for backends that keep files"
    );
    let (s, _) = store(&h);
    let opts = TokenOptions::default();
    let mut secrets: Vec<String> = Vec::new();
    let (c, _) = web_client(&s, "read").await;
    for i in 0..1000 {
        let created = s
            .create_client(NewClient::confidential(format!("c{i}")).scopes(scopes("read")))
            .await
            .unwrap();
        secrets.push(created.secret.unwrap().secret().to_owned());
        let code = s
            .issue_code(code_request(&c, "alice", "read"))
            .await
            .unwrap();
        secrets.push(code.code.secret().to_owned());
        let t = s
            .redeem_code(redemption(code.code.secret(), &c, &opts))
            .await
            .unwrap();
        secrets.push(t.access_token.secret().to_owned());
        secrets.push(rt(&t).to_owned());
    }
    let mut bytes = Vec::new();
    for f in &h.files {
        if let Ok(b) = std::fs::read(f) {
            bytes.extend_from_slice(&b);
            bytes.push(0);
        }
    }
    assert!(
        bytes.len() > 100_000,
        "the files hold the data ({} bytes)",
        bytes.len()
    );
    // Look for the random bodies: 12-byte windows would be found by any in-clear copy.
    let mut needles: HashSet<&[u8]> = HashSet::new();
    for secret in &secrets {
        let body = &secret.as_bytes()[secret.rfind('_').unwrap() + 1..];
        needles.insert(&body[..12]);
        needles.insert(&body[body.len() - 12..]);
    }
    let found = bytes.windows(12).filter(|w| needles.contains(w)).count();
    assert_eq!(found, 0, "secret bytes found in clear in {:?}", h.files);
    // Prefixes prove the scan would see text if it were there.
    assert!(
        bytes
            .windows(REDIRECT.len())
            .any(|w| w == REDIRECT.as_bytes()),
        "sanity: stored text is visible to the scan"
    );
}

// ----- logs --------------------------------------------------------------------------

#[derive(Clone)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a global subscriber at TRACE level that captures every log
/// line of every test in this binary.
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Capture(buf.clone());
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(sub)
            .expect("no other global subscriber in the suite");
        buf
    })
    .clone()
}

/// Every flow, including the ones that log warnings (replay, reuse), logs no secret.
pub async fn no_secret_in_logs(h: Harness) {
    let logs = captured_logs();
    let (s, _) = store(&h);
    let (c, secret) = web_client(&s, "read").await;
    let opts = TokenOptions::default();
    let code = s
        .issue_code(code_request(&c, "alice", "read"))
        .await
        .unwrap();
    let t = s
        .redeem_code(redemption(code.code.secret(), &c, &opts))
        .await
        .unwrap();
    let t1 = s.refresh(refresh_req(rt(&t), &c, &opts)).await.unwrap();
    let _ = s.refresh(refresh_req(rt(&t), &c, &opts)).await.unwrap_err();
    let _ = s
        .redeem_code(redemption(code.code.secret(), &c, &opts))
        .await
        .unwrap_err();
    let _ = s.validate_access_token(t1.access_token.secret()).await;
    let _ = s.verify_client_secret(c.id, secret.secret()).await;
    s.revoke_token(rt(&t1), None, Some(c.id)).await.unwrap();
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        text.contains("replay"),
        "the capture works: the replay warning is there"
    );
    assert!(
        text.contains("reuse"),
        "the capture works: the reuse warning is there"
    );
    for secret in [
        secret.secret(),
        code.code.secret(),
        t.access_token.secret(),
        rt(&t),
        t1.access_token.secret(),
        rt(&t1),
    ] {
        let body = &secret[secret.rfind('_').unwrap() + 1..];
        assert!(!text.contains(body), "a secret reached the logs");
    }
}

// ----- identity: users, groups, passwords, logins ------------------------------------

fn pw(s: &str) -> authstore_core::Password {
    authstore_core::Password::new(s.to_owned())
}

/// Users: case-insensitive unique username and email, lookups, updates, listing, search,
/// bad input changing nothing.
pub async fn users(h: Harness) {
    let (s, clock) = store(&h);
    let alice = s
        .create_user(authstore_core::NewUser::new("Alice").email("Alice@Example.com"))
        .await
        .unwrap();
    assert!(alice.active && !alice.email_verified);
    assert_eq!(alice.subject().as_str(), alice.id.to_string());
    for dup in [
        authstore_core::NewUser::new("alice"),
        authstore_core::NewUser::new("other").email("alice@example.COM"),
    ] {
        let e = s.create_user(dup).await.unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    }
    assert_eq!(s.user_by_username("ALICE").await.unwrap().id, alice.id);
    assert_eq!(
        s.user_by_email("alice@EXAMPLE.com").await.unwrap().id,
        alice.id
    );
    assert!(matches!(
        s.user_by_username("nobody").await,
        Err(Error::NotFound { .. })
    ));
    for bad in ["", "has space", "tab\there", "nul\0", &"x".repeat(65)] {
        assert!(
            matches!(
                s.create_user(authstore_core::NewUser::new(bad)).await,
                Err(Error::InvalidInput { .. })
            ),
            "{bad:?}"
        );
    }
    for bad in [
        "not-an-email",
        "a@b",
        "two@@example.com",
        "sp ace@example.com",
    ] {
        let e = s
            .create_user(authstore_core::NewUser::new("u1").email(bad))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{bad:?}: {e:?}");
    }

    // Update: a new email is unverified; verified can be set; conflicts refused.
    clock.advance(SECOND);
    let v = s
        .update_user(
            alice.id,
            UserUpdate {
                email_verified: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(v.email_verified);
    let v = s
        .update_user(
            alice.id,
            UserUpdate {
                email: Some(Some("alice@new.example".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!v.email_verified, "a new email must be verified again");
    assert_eq!(v.updated_at, START.saturating_add(SECOND));
    let bob = s
        .create_user(authstore_core::NewUser::new("bob").email("bob@example.com"))
        .await
        .unwrap();
    let e = s
        .update_user(
            bob.id,
            UserUpdate {
                username: Some("ALICE".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert_eq!(
        s.user(bob.id).await.unwrap().username,
        "bob",
        "a refused update changes nothing"
    );
    // The old email is free again, the new one is taken.
    s.create_user(authstore_core::NewUser::new("carol").email("ALICE@example.com"))
        .await
        .unwrap();

    // List, page, search.
    for i in 0..5 {
        s.create_user(authstore_core::NewUser::new(format!("user{i}")))
            .await
            .unwrap();
    }
    let all = s.list_users(None, 1000, None).await.unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let p1 = s.list_users(None, 5, None).await.unwrap();
    let p2 = s.list_users(Some(p1[4].id), 5, None).await.unwrap();
    assert_eq!(p1.len() + p2.len(), 8);
    let found = s.list_users(None, 100, Some("USER")).await.unwrap();
    assert_eq!(found.len(), 5);
    let by_mail = s.list_users(None, 100, Some("new.example")).await.unwrap();
    assert_eq!(
        by_mail.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![alice.id]
    );
    let kinds = audit_kinds(&s).await;
    assert!(kinds.contains(&AuditKind::UserCreated) && kinds.contains(&AuditKind::UserUpdated));
}

/// Disabling a user revokes what they hold at once; deleting one erases everything they
/// own (grants and tokens, PATs, consents, memberships).
pub async fn user_disable_and_erasure(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let u = s
        .create_user(authstore_core::NewUser::new("dave"))
        .await
        .unwrap();
    let other = s
        .create_user(authstore_core::NewUser::new("erin"))
        .await
        .unwrap();
    let sub_u = u.subject();
    let t = code_flow(&s, &c, sub_u.as_str(), "read").await;
    let t_other = code_flow(&s, &c, other.subject().as_str(), "read").await;
    let pat = s
        .issue_pat(NewPat {
            user: sub_u.clone(),
            name: "cli".into(),
            scope: scopes("read"),
            expires_in: None,
        })
        .await
        .unwrap();
    s.record_consent(c.id, &sub_u, &scopes("read"))
        .await
        .unwrap();
    let g = s.create_group("admins").await.unwrap();
    s.add_group_member(g.id, u.id).await.unwrap();
    s.set_password(u.id, &pw("correct horse battery"), false)
        .await
        .unwrap();

    s.disable_user(u.id).await.unwrap();
    assert!(!s.user(u.id).await.unwrap().active);
    assert_inactive(&s, t.access_token.secret()).await;
    assert!(matches!(
        s.validate_pat(pat.secret.secret()).await,
        Err(Error::Inactive { .. })
    ));
    assert!(matches!(
        s.login("dave", &pw("correct horse battery"), None).await,
        Err(Error::InvalidCredentials)
    ));
    s.validate_access_token(t_other.access_token.secret())
        .await
        .unwrap();
    s.enable_user(u.id).await.unwrap();
    assert_inactive(&s, t.access_token.secret()).await;
    s.login("dave", &pw("correct horse battery"), None)
        .await
        .unwrap();

    let t2 = code_flow(&s, &c, sub_u.as_str(), "read").await;
    s.delete_user(u.id).await.unwrap();
    assert!(matches!(s.user(u.id).await, Err(Error::NotFound { .. })));
    assert!(
        matches!(s.grant(t.grant_id).await, Err(Error::NotFound { .. })),
        "grants are erased, not just revoked"
    );
    assert!(matches!(
        s.grant(t2.grant_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(s.list_pats(&sub_u).await.unwrap().is_empty());
    assert!(s.consent(c.id, &sub_u).await.unwrap().is_none());
    assert!(s.group_members(g.id).await.unwrap().is_empty());
    assert!(matches!(
        s.login("dave", &pw("correct horse battery"), None).await,
        Err(Error::InvalidCredentials)
    ));
    assert!(matches!(
        s.delete_user(u.id).await,
        Err(Error::NotFound { .. })
    ));
    s.validate_access_token(t_other.access_token.secret())
        .await
        .unwrap();
    let q = AuditQuery {
        subject: Some(sub_u.clone()),
        kind: Some(AuditKind::UserDeleted),
        ..Default::default()
    };
    assert_eq!(
        s.audit_events(&q).await.unwrap().len(),
        1,
        "the audit log keeps the erased user's id"
    );
    let kinds = audit_kinds(&s).await;
    assert!(kinds.contains(&AuditKind::UserDisabled) && kinds.contains(&AuditKind::UserEnabled));
}

/// Groups: unique names, rename, membership both ways, delete.
pub async fn groups(h: Harness) {
    let (s, _) = store(&h);
    let a = s
        .create_user(authstore_core::NewUser::new("ann"))
        .await
        .unwrap();
    let b = s
        .create_user(authstore_core::NewUser::new("ben"))
        .await
        .unwrap();
    let ops = s.create_group("Ops").await.unwrap();
    let dev = s.create_group("dev").await.unwrap();
    assert!(matches!(
        s.create_group("OPS").await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        s.create_group("").await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(s.add_group_member(ops.id, a.id).await.unwrap());
    assert!(
        !s.add_group_member(ops.id, a.id).await.unwrap(),
        "already a member"
    );
    assert!(s.add_group_member(ops.id, b.id).await.unwrap());
    assert!(s.add_group_member(dev.id, a.id).await.unwrap());
    let missing = authstore_core::UserId::new_at(START);
    assert!(matches!(
        s.add_group_member(ops.id, missing).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        s.user_groups(a.id)
            .await
            .unwrap()
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        vec!["dev", "Ops"]
    );
    assert_eq!(
        s.group_members(ops.id)
            .await
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        vec![a.id, b.id]
    );
    assert!(s.remove_group_member(ops.id, b.id).await.unwrap());
    assert!(!s.remove_group_member(ops.id, b.id).await.unwrap());
    let renamed = s.rename_group(dev.id, "Developers").await.unwrap();
    assert_eq!(renamed.name, "Developers");
    assert!(matches!(
        s.rename_group(dev.id, "ops").await,
        Err(Error::Conflict { .. })
    ));
    s.delete_group(ops.id).await.unwrap();
    assert!(matches!(s.group(ops.id).await, Err(Error::NotFound { .. })));
    assert_eq!(s.user_groups(a.id).await.unwrap().len(), 1);
    let kinds = audit_kinds(&s).await;
    for k in [
        AuditKind::GroupCreated,
        AuditKind::GroupRenamed,
        AuditKind::GroupDeleted,
        AuditKind::GroupMemberAdded,
        AuditKind::GroupMemberRemoved,
    ] {
        assert!(kinds.contains(&k), "missing {k}");
    }
}

/// Passwords and logins: by username or email, one answer for every failure, rehash on new
/// parameters, a password change that logs out everywhere, every attempt audited without
/// the password.
pub async fn passwords_and_logins(h: Harness) {
    let (s, _) = store(&h);
    let (c, _) = web_client(&s, "read").await;
    let u = s
        .create_user(authstore_core::NewUser::new("Fay").email("fay@example.com"))
        .await
        .unwrap();
    assert!(matches!(
        s.login("fay", &pw("no password yet"), None).await,
        Err(Error::InvalidCredentials)
    ));
    assert!(matches!(
        s.set_password(u.id, &pw("short"), false).await,
        Err(Error::InvalidInput { .. })
    ));
    s.set_password(u.id, &pw("tr0ub4dor&3 long"), false)
        .await
        .unwrap();
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        s.login("FAY", &pw("tr0ub4dor&3 long"), Some(ip))
            .await
            .unwrap()
            .id,
        u.id
    );
    assert_eq!(
        s.login("Fay@Example.com", &pw("tr0ub4dor&3 long"), None)
            .await
            .unwrap()
            .id,
        u.id
    );
    for (who, pass) in [
        ("fay", "wrong password!"),
        ("nobody", "tr0ub4dor&3 long"),
        ("", "x"),
        ("a\0b", "tr0ub4dor&3 long"),
    ] {
        assert!(
            matches!(
                s.login(who, &pw(pass), None).await,
                Err(Error::InvalidCredentials)
            ),
            "{who:?}"
        );
    }
    let stored = h.backend.get_password_hash(u.id).await.unwrap().unwrap();
    assert!(
        stored.as_phc().starts_with("$argon2id$"),
        "only an Argon2id PHC string is stored"
    );
    // Every login runs exactly one real Argon2id verification, whether the user exists, the
    // password is wrong or the user has no password: the unknown-user path costs what a
    // wrong password costs (a property, not a timing).
    s.create_user(authstore_core::NewUser::new("nopass"))
        .await
        .unwrap();
    for (who, pass) in [
        ("fay", "wrong password!"),
        ("nobody", "whatever-pass"),
        ("nopass", "whatever-pass"),
        ("fay", "tr0ub4dor&3 long"),
    ] {
        let before = s.password_verifications().await.unwrap();
        let _ = s.login(who, &pw(pass), None).await;
        assert_eq!(
            s.password_verifications().await.unwrap() - before,
            1,
            "{who}"
        );
    }

    // New parameters: the next successful login re-hashes.
    let stronger = Config {
        password_params: authstore_core::PasswordParams {
            memory_kib: 128,
            ..TEST_PASSWORD_PARAMS
        },
        danger_allow_weak_password_params: true,
        ..Config::default()
    };
    let (s2, _) = store_with(&h, stronger);
    s2.login("fay", &pw("tr0ub4dor&3 long"), None)
        .await
        .unwrap();
    let rehashed = h.backend.get_password_hash(u.id).await.unwrap().unwrap();
    assert!(rehashed.as_phc().contains("m=128,"), "{rehashed:?}");
    s.login("fay", &pw("tr0ub4dor&3 long"), None).await.unwrap();

    // A password change can log out everywhere.
    let t = code_flow(&s, &c, u.subject().as_str(), "read").await;
    s.set_password(u.id, &pw("a new long password"), false)
        .await
        .unwrap();
    s.validate_access_token(t.access_token.secret())
        .await
        .unwrap();
    s.set_password(u.id, &pw("another long password"), true)
        .await
        .unwrap();
    assert_inactive(&s, t.access_token.secret()).await;
    assert!(matches!(
        s.login("fay", &pw("a new long password"), None).await,
        Err(Error::InvalidCredentials)
    ));
    s.login("fay", &pw("another long password"), None)
        .await
        .unwrap();

    let events = s
        .audit_events(&AuditQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let text = format!("{events:?} {}", serde_json::to_string(&events).unwrap());
    for secret in [
        "tr0ub4dor",
        "a new long password",
        "another long password",
        "wrong password!",
    ] {
        assert!(!text.contains(secret), "a password reached the audit log");
    }
    let ok = events
        .iter()
        .filter(|e| e.kind == AuditKind::LoginSucceeded)
        .count();
    let failed = events
        .iter()
        .filter(|e| e.kind == AuditKind::LoginFailed)
        .count();
    assert!(ok >= 5 && failed >= 6, "ok {ok}, failed {failed}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == AuditKind::LoginSucceeded && e.ip == Some(ip))
    );
    assert!(events.iter().any(|e| e.kind == AuditKind::PasswordSet));
}

/// Failed logins lock a user, and a source address, for the window; a success clears the
/// user's count; cleanup forgets old failures.
pub async fn login_lockout(h: Harness) {
    let (s, clock) = store(&h);
    let u = s
        .create_user(authstore_core::NewUser::new("gus"))
        .await
        .unwrap();
    s.set_password(u.id, &pw("the right password"), false)
        .await
        .unwrap();
    let ip1: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    for _ in 0..4 {
        assert!(matches!(
            s.login("gus", &pw("wrong one here"), Some(ip1)).await,
            Err(Error::InvalidCredentials)
        ));
    }
    // A success before the limit clears the count.
    s.login("gus", &pw("the right password"), Some(ip1))
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(
            s.login("gus", &pw("wrong one here"), None).await,
            Err(Error::InvalidCredentials)
        ));
    }
    let e = s
        .login("gus", &pw("the right password"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooManyAttempts { .. }), "{e:?}");
    assert!(audit_kinds(&s).await.contains(&AuditKind::LoginLocked));
    // After the window, the right password works again.
    clock.advance(Duration::from_secs(16 * 60));
    s.login("gus", &pw("the right password"), None)
        .await
        .unwrap();

    // Concurrent guesses count against each other: of 32 racing wrong passwords at most 5
    // reach the password check, the rest are refused.
    let racer = s
        .create_user(authstore_core::NewUser::new("rita"))
        .await
        .unwrap();
    s.set_password(racer.id, &pw("rita's right one"), false)
        .await
        .unwrap();
    let before = s.password_verifications().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.login("rita", &pw("a wrong guess"), None).await
        }));
    }
    let (mut wrong, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(Error::InvalidCredentials) => wrong += 1,
            Err(Error::TooManyAttempts { .. }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let checked = s.password_verifications().await.unwrap() - before;
    assert!(
        wrong <= 5 && checked <= 5,
        "{wrong} wrong answers, {checked} checks, {refused} refused"
    );
    assert_eq!(wrong + refused, 32);

    // Per source: many users failing from one address lock that address only.
    let cfg = Config {
        login: authstore_core::LoginPolicy {
            max_user_failures: 100,
            max_source_failures: 3,
            window: Duration::from_secs(60),
        },
        ..Config::default()
    };
    let (s2, _) = store_with(&h, cfg);
    let bad: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let good: std::net::IpAddr = "127.0.0.10".parse().unwrap();
    for name in ["x1", "x2", "x3"] {
        assert!(matches!(
            s2.login(name, &pw("whatever pass"), Some(bad)).await,
            Err(Error::InvalidCredentials)
        ));
    }
    assert!(matches!(
        s2.login("gus", &pw("the right password"), Some(bad)).await,
        Err(Error::TooManyAttempts { .. })
    ));
    s2.login("gus", &pw("the right password"), Some(good))
        .await
        .unwrap();
    let counts = h
        .backend
        .login_failures(None, Some(bad), START)
        .await
        .unwrap();
    // gus's success from `good` reset gus's count, not the address's.
    assert_eq!(counts.source, 4, "{counts:?}");

    // Cleanup forgets failures past retention.
    clock.advance(Duration::from_secs(3 * 86_400));
    let r = s.cleanup(&CleanupOptions::default()).await.unwrap();
    // Every attempt on a known user leaves an attempt row, every failure a source row:
    // 21 on the first store's clock, 5 on the second's, and rita's 32 attempts plus her
    // wrong answers, all past retention.
    assert_eq!(r.login_failures, 26 + 32 + wrong as u64, "{r:?}");
    assert_eq!(
        h.backend
            .login_failures(Some(u.id), Some(bad), START)
            .await
            .unwrap(),
        Default::default()
    );
}

/// No password (nor its Argon2 output in clear text form other than the PHC string) in
/// the backend's files.
pub async fn no_password_in_files(h: Harness) {
    assert!(
        !h.files.is_empty(),
        "this case is for backends that keep files"
    );
    let (s, _) = store(&h);
    let mut passwords = Vec::new();
    for i in 0..50 {
        let u = s
            .create_user(authstore_core::NewUser::new(format!("p{i}")))
            .await
            .unwrap();
        let p = format!("Secret-Passphrase-{i:04}-xyzzy");
        s.set_password(u.id, &pw(&p), false).await.unwrap();
        s.login(&format!("p{i}"), &pw(&p), None).await.unwrap();
        let _ = s
            .login(&format!("p{i}"), &pw(&format!("{p}-wrong")), None)
            .await;
        passwords.push(p);
    }
    let mut bytes = Vec::new();
    for f in &h.files {
        if let Ok(b) = std::fs::read(f) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(
        bytes.windows(3).any(|w| w == b"p49"),
        "sanity: stored text is visible to the scan"
    );
    for p in &passwords {
        assert!(
            !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
            "a password is in the files"
        );
    }
    assert!(
        !bytes.windows(17).any(|w| w == b"Secret-Passphrase"),
        "no password fragment in the files"
    );
}

// ----- identity: sessions, one-time tokens, TOTP, recovery codes, passkeys, links -------

fn sealing(id: &str, byte: u8) -> authstore_core::SealingKeyring {
    authstore_core::SealingKeyring::new(
        authstore_core::SealingKey::from_bytes(id, [byte; 32]).unwrap(),
    )
}

async fn person(s: &Authstore, name: &str) -> authstore_core::User {
    s.create_user(authstore_core::NewUser::new(name).email(format!("{name}@example.com")))
        .await
        .unwrap()
}

/// Login sessions: idle and absolute expiry, batched use extending the idle window, list,
/// revoke one or all, a disabled user's sessions dead at once.
pub async fn login_sessions(h: Harness) {
    let (s, clock) = store(&h);
    let u = person(&s, "hana").await;
    let ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let (sess, handle) = s
        .create_login_session(u.id, Some(ip), Some("Firefox/140"))
        .await
        .unwrap();
    assert!(handle.secret().starts_with("ls_"));
    assert_eq!(
        sess.idle_expires_at,
        START.saturating_add(Duration::from_secs(86_400))
    );
    assert_eq!(
        sess.expires_at,
        START.saturating_add(Duration::from_secs(14 * 86_400))
    );
    assert_eq!(
        s.validate_login_session(handle.secret()).await.unwrap().id,
        sess.id
    );
    // Idle expiry, exactly at the boundary, without use.
    clock.set(sess.idle_expires_at.saturating_sub(MICRO));
    s.validate_login_session(handle.secret()).await.unwrap();
    assert_eq!(s.flush_login_session_usage().await.unwrap(), 1);
    // Use moved the idle window forward.
    clock.set(sess.idle_expires_at.saturating_add(SECOND));
    s.validate_login_session(handle.secret()).await.unwrap();
    let listed = s.list_login_sessions(u.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ip, Some(ip));
    assert_eq!(listed[0].user_agent.as_deref(), Some("Firefox/140"));
    assert!(listed[0].last_seen_at > START);
    // Absolute expiry never moves.
    let (s2, h2) = s.create_login_session(u.id, None, None).await.unwrap();
    clock.set(s2.expires_at);
    assert!(matches!(
        s.validate_login_session(h2.secret()).await,
        Err(Error::Inactive { .. })
    ));
    clock.set(START.saturating_add(Duration::from_secs(86_400)));
    // Revoke one (only its owner), revoke all.
    let other = person(&s, "ivan").await;
    assert!(matches!(
        s.revoke_login_session(sess.id, Some(other.id)).await,
        Err(Error::NotFound { .. })
    ));
    s.revoke_login_session(sess.id, Some(u.id)).await.unwrap();
    assert!(s.validate_login_session(handle.secret()).await.is_err());
    let (_, a) = s.create_login_session(u.id, None, None).await.unwrap();
    let (_, b) = s.create_login_session(u.id, None, None).await.unwrap();
    // s2 (live again now that the clock is back before its end), a and b.
    assert_eq!(s.revoke_all_login_sessions(u.id).await.unwrap(), 3);
    assert!(
        s.validate_login_session(a.secret()).await.is_err()
            && s.validate_login_session(b.secret()).await.is_err()
    );
    // A disabled user's sessions are dead at once; a password change can end them too.
    let (_, c) = s.create_login_session(u.id, None, None).await.unwrap();
    s.disable_user(u.id).await.unwrap();
    assert!(s.validate_login_session(c.secret()).await.is_err());
    assert!(s.create_login_session(u.id, None, None).await.is_err());
    s.enable_user(u.id).await.unwrap();
    assert!(
        s.validate_login_session(c.secret()).await.is_err(),
        "enabling does not bring sessions back"
    );
    let (_, d) = s.create_login_session(u.id, None, None).await.unwrap();
    s.set_password(u.id, &pw("a long new password"), true)
        .await
        .unwrap();
    assert!(s.validate_login_session(d.secret()).await.is_err());
    assert!(matches!(
        s.validate_login_session("ls_garbage").await,
        Err(Error::MalformedToken { .. })
    ));
    let kinds = audit_kinds(&s).await;
    assert!(
        kinds.contains(&AuditKind::LoginSessionCreated)
            && kinds.contains(&AuditKind::LoginSessionsRevoked)
    );
}

/// One-time tokens: a new one supersedes the old, consumed exactly once under a race,
/// purpose and expiry enforced, email verification marks the email verified.
pub async fn one_time_tokens(h: Harness) {
    let (s, clock) = store(&h);
    let u = person(&s, "jo").await;
    let (_, old) = s
        .issue_one_time_token(u.id, authstore_core::OneTimePurpose::PasswordReset)
        .await
        .unwrap();
    let (t, new) = s
        .issue_one_time_token(u.id, authstore_core::OneTimePurpose::PasswordReset)
        .await
        .unwrap();
    assert!(new.secret().starts_with("ot_"));
    assert_eq!(
        t.expires_at,
        START.saturating_add(Duration::from_secs(3600))
    );
    assert!(
        matches!(
            s.consume_one_time_token(old.secret(), authstore_core::OneTimePurpose::PasswordReset)
                .await,
            Err(Error::Inactive { .. })
        ),
        "a newer token supersedes the older"
    );
    // A magic link of the same user is independent.
    let (_, magic) = s
        .issue_one_time_token(u.id, authstore_core::OneTimePurpose::MagicLink)
        .await
        .unwrap();
    // Wrong purpose: refused, and not used up.
    assert!(
        s.consume_one_time_token(new.secret(), authstore_core::OneTimePurpose::MagicLink)
            .await
            .is_err()
    );
    // 32 racers: exactly one wins.
    let token: Arc<str> = new.secret().into();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = s.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            s.consume_one_time_token(&token, authstore_core::OneTimePurpose::PasswordReset)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one consumer wins");
    s.consume_one_time_token(magic.secret(), authstore_core::OneTimePurpose::MagicLink)
        .await
        .unwrap();
    // Expiry boundary.
    let (t, link) = s
        .issue_one_time_token(u.id, authstore_core::OneTimePurpose::MagicLink)
        .await
        .unwrap();
    clock.set(t.expires_at);
    assert!(
        s.consume_one_time_token(link.secret(), authstore_core::OneTimePurpose::MagicLink)
            .await
            .is_err()
    );
    // Email verification proves the current address.
    let (t, verify) = s
        .issue_one_time_token(u.id, authstore_core::OneTimePurpose::EmailVerification)
        .await
        .unwrap();
    assert_eq!(t.email.as_deref(), Some("jo@example.com"));
    assert!(!s.user(u.id).await.unwrap().email_verified);
    s.consume_one_time_token(
        verify.secret(),
        authstore_core::OneTimePurpose::EmailVerification,
    )
    .await
    .unwrap();
    // Outstanding tokens die with a disable (and stay dead after enabling) and with a
    // password change that logs out everywhere.
    use authstore_core::OneTimePurpose::PasswordReset;
    let (_, reset) = s.issue_one_time_token(u.id, PasswordReset).await.unwrap();
    s.disable_user(u.id).await.unwrap();
    s.enable_user(u.id).await.unwrap();
    assert!(
        s.consume_one_time_token(reset.secret(), PasswordReset)
            .await
            .is_err()
    );
    let (_, reset) = s.issue_one_time_token(u.id, PasswordReset).await.unwrap();
    s.set_password(u.id, &pw("a brand new password"), true)
        .await
        .unwrap();
    assert!(
        s.consume_one_time_token(reset.secret(), PasswordReset)
            .await
            .is_err()
    );
    let (_, reset) = s.issue_one_time_token(u.id, PasswordReset).await.unwrap();
    s.set_password(u.id, &pw("another new password"), false)
        .await
        .unwrap();
    s.consume_one_time_token(reset.secret(), PasswordReset)
        .await
        .unwrap();
    assert!(s.user(u.id).await.unwrap().email_verified);
    let kinds = audit_kinds(&s).await;
    assert!(
        kinds.contains(&AuditKind::OneTimeTokenIssued)
            && kinds.contains(&AuditKind::OneTimeTokenUsed)
    );
}

/// TOTP: sealed secret, codes accepted once (no replay), clock drift of one step; recovery
/// codes each usable once.
pub async fn totp_and_recovery_codes(h: Harness) {
    let (s, clock) = store(&h);
    let s = s.with_sealing_keys(sealing("s1", 5));
    let u = person(&s, "kim").await;
    let secret = s.enroll_totp(u.id).await.unwrap();
    let bytes = authstore_core::totp::base32_decode(secret.secret()).unwrap();
    assert_eq!(bytes.len(), 20);
    let uri = Authstore::totp_uri("authstore", "kim@example.com", &secret);
    assert!(uri.starts_with("otpauth://totp/authstore:kim%40example.com?secret="));
    let step = authstore_core::totp::step_at(START.as_unix_seconds());
    let now_code = authstore_core::totp::code(&bytes, step);
    assert!(s.verify_totp(u.id, &now_code).await.unwrap());
    assert!(
        !s.verify_totp(u.id, &now_code).await.unwrap(),
        "a code is accepted once"
    );
    assert!(
        !s.verify_totp(u.id, &authstore_core::totp::code(&bytes, step - 1))
            .await
            .unwrap(),
        "an earlier step is a replay"
    );
    assert!(
        s.verify_totp(u.id, &authstore_core::totp::code(&bytes, step + 1))
            .await
            .unwrap(),
        "one step of drift"
    );
    clock.advance(Duration::from_secs(90));
    let later = authstore_core::totp::code(&bytes, step + 3);
    assert!(!s.verify_totp(u.id, "000000x").await.unwrap());
    assert!(s.verify_totp(u.id, &later).await.unwrap());
    // The secret is sealed: a store without the key cannot use it.
    let (plain, _) = store(&h);
    assert!(matches!(
        plain.verify_totp(u.id, &later).await,
        Err(Error::Config { .. })
    ));
    let wrong_key = s.clone().with_sealing_keys(sealing("s2", 6));
    assert!(matches!(
        wrong_key.verify_totp(u.id, &later).await,
        Err(Error::SealingKeyUnknown { .. })
    ));
    s.disable_totp(u.id).await.unwrap();
    assert!(!s.verify_totp(u.id, &later).await.unwrap());

    let codes = s.generate_recovery_codes(u.id).await.unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 10);
    assert!(s.use_recovery_code(u.id, codes[0].secret()).await.unwrap());
    assert!(
        !s.use_recovery_code(u.id, codes[0].secret()).await.unwrap(),
        "each code once"
    );
    let relaxed = codes[1].secret().replace('-', "").to_lowercase();
    assert!(
        s.use_recovery_code(u.id, &relaxed).await.unwrap(),
        "case and dashes do not matter"
    );
    assert!(!s.use_recovery_code(u.id, "nope").await.unwrap());
    let other = person(&s, "lee").await;
    assert!(
        !s.use_recovery_code(other.id, codes[2].secret())
            .await
            .unwrap(),
        "codes are per user"
    );
    assert_eq!(s.unused_recovery_codes(u.id).await.unwrap(), 8);
    let fresh = s.generate_recovery_codes(u.id).await.unwrap();
    // Five wrong second factors in the window since the last one that passed (a passed
    // factor completes a login and clears the count) lock second factors like passwords.
    for _ in 0..4 {
        assert!(!s.use_recovery_code(u.id, "nope").await.unwrap());
    }
    assert!(matches!(
        s.use_recovery_code(u.id, codes[2].secret()).await,
        Err(Error::TooManyAttempts { .. })
    ));
    clock.advance(Duration::from_secs(16 * 60));
    assert!(
        !s.use_recovery_code(u.id, codes[2].secret()).await.unwrap(),
        "new codes replace the old"
    );
    assert!(s.use_recovery_code(u.id, fresh[0].secret()).await.unwrap());
    let shown = format!("{codes:?} {secret:?}");
    assert!(!shown.contains(codes[3].secret()) && !shown.contains(secret.secret()));
}

/// With TOTP enrolled, a right password does not clear the user's failures: only a passed
/// second factor does. Retyping the password cannot reset the second factor's lockout.
pub async fn second_factor_lockout_survives_the_password(h: Harness) {
    let (s, clock) = store(&h);
    let s = s.with_sealing_keys(sealing("s1", 5));
    let u = person(&s, "mfa").await;
    s.set_password(
        u.id,
        &authstore_core::Password::new("correct horse battery".into()),
        false,
    )
    .await
    .unwrap();
    let secret = s.enroll_totp(u.id).await.unwrap();
    let pw = authstore_core::Password::new("correct horse battery".into());
    assert_eq!(s.config().login.max_user_failures, 5);
    // Each round: the right password (its attempt row stays counted: the login is not
    // complete), then a wrong code. Two failures a round: the third round's code is refused.
    for round in 1..=3 {
        s.login("mfa", &pw, None).await.unwrap();
        let r = s.verify_totp(u.id, "000000").await;
        if round < 3 {
            assert!(!r.unwrap(), "round {round}");
        } else {
            assert!(
                matches!(r, Err(Error::TooManyAttempts { .. })),
                "retyping the password reset the second factor's failures: {r:?}"
            );
        }
    }
    // After the window, a password and a right code complete the login and clear the count.
    clock.advance(s.config().login.window + Duration::from_secs(1));
    s.login("mfa", &pw, None).await.unwrap();
    let bytes = authstore_core::totp::base32_decode(secret.secret()).unwrap();
    let code = authstore_core::totp::code(
        &bytes,
        authstore_core::totp::step_at(s.now().as_unix_seconds()),
    );
    assert!(s.verify_totp(u.id, &code).await.unwrap());
    let counts = s
        .backend()
        .login_failures(
            Some(u.id),
            None,
            s.now().saturating_sub(s.config().login.window),
        )
        .await
        .unwrap();
    assert_eq!(
        counts.user, 0,
        "a passed second factor clears the user's failures"
    );
    // Without a second factor, a password success clears them at once, as before.
    let plain = person(&s, "plain").await;
    s.set_password(plain.id, &pw, false).await.unwrap();
    assert!(
        s.login(
            "plain",
            &authstore_core::Password::new("wrong one here".into()),
            None
        )
        .await
        .is_err()
    );
    s.login("plain", &pw, None).await.unwrap();
    let counts = s
        .backend()
        .login_failures(
            Some(plain.id),
            None,
            s.now().saturating_sub(s.config().login.window),
        )
        .await
        .unwrap();
    assert_eq!(counts.user, 0);
}

/// Passkeys: unique credential ids, list, rename, use, delete; ceremony state single use.
pub async fn passkeys_and_ceremonies(h: Harness) {
    let (s, clock) = store(&h);
    let u = person(&s, "max").await;
    let other = person(&s, "nia").await;
    let cred =
        serde_json::json!({"cred": {"cred_id": "AQID", "cred": {"type_": "ES256"}, "counter": 0}});
    let new = authstore_core::NewPasskey {
        credential_id: vec![1, 2, 3],
        user: u.id,
        name: "YubiKey".into(),
        credential: cred.clone(),
        counter: 0,
        backup_state: false,
    };
    let p = s.register_passkey(new.clone()).await.unwrap();
    assert_eq!(p.credential, cred);
    let dup = authstore_core::NewPasskey {
        user: other.id,
        ..new.clone()
    };
    assert!(
        matches!(s.register_passkey(dup).await, Err(Error::Conflict { .. })),
        "credential ids are unique across users"
    );
    s.register_passkey(authstore_core::NewPasskey {
        credential_id: vec![9; 64],
        name: "Phone".into(),
        ..new.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.list_passkeys(u.id).await.unwrap().len(), 2);
    assert!(s.list_passkeys(other.id).await.unwrap().is_empty());
    assert!(matches!(
        s.rename_passkey(other.id, &[1, 2, 3], "mine").await,
        Err(Error::NotFound { .. })
    ));
    s.rename_passkey(u.id, &[1, 2, 3], "Blue key")
        .await
        .unwrap();
    clock.advance(SECOND);
    let updated = serde_json::json!({"cred": {"cred_id": "AQID", "counter": 7}});
    s.record_passkey_use(&[1, 2, 3], 7, true, Some(&updated))
        .await
        .unwrap();
    let got = s.passkey(&[1, 2, 3]).await.unwrap();
    assert_eq!(
        (got.name.as_str(), got.counter, got.backup_state),
        ("Blue key", 7, true)
    );
    assert_eq!(got.credential, updated);
    assert_eq!(got.last_used_at, Some(START.saturating_add(SECOND)));
    // A use reporting a lower counter (a concurrent older use) never moves it backwards.
    s.record_passkey_use(&[1, 2, 3], 3, true, None)
        .await
        .unwrap();
    assert_eq!(s.passkey(&[1, 2, 3]).await.unwrap().counter, 7);
    assert!(matches!(
        s.delete_passkey(other.id, &[1, 2, 3]).await,
        Err(Error::NotFound { .. })
    ));
    s.delete_passkey(u.id, &[1, 2, 3]).await.unwrap();
    assert!(matches!(
        s.passkey(&[1, 2, 3]).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        s.register_passkey(authstore_core::NewPasskey {
            credential_id: vec![],
            ..new.clone()
        })
        .await
        .is_err()
    );

    // Ceremonies: single use under a race, kind and expiry enforced.
    let state = serde_json::json!({"rs": {"challenge": "xyz"}});
    let handle = s
        .start_ceremony(
            authstore_core::CeremonyKind::Registration,
            Some(u.id),
            state.clone(),
        )
        .await
        .unwrap();
    assert!(handle.secret().starts_with("wc_"));
    let hs: Arc<str> = handle.secret().into();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        let hs = hs.clone();
        tasks.push(tokio::spawn(async move {
            s.finish_ceremony(&hs, authstore_core::CeremonyKind::Registration)
                .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await.unwrap() {
            won.push(c);
        }
    }
    assert_eq!(won.len(), 1);
    assert_eq!(won[0].state, state);
    assert_eq!(won[0].user, Some(u.id));
    let wrong = s
        .start_ceremony(
            authstore_core::CeremonyKind::Authentication,
            None,
            state.clone(),
        )
        .await
        .unwrap();
    assert!(
        s.finish_ceremony(wrong.secret(), authstore_core::CeremonyKind::Registration)
            .await
            .is_err()
    );
    let late = s
        .start_ceremony(authstore_core::CeremonyKind::Authentication, None, state)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(300));
    assert!(
        s.finish_ceremony(late.secret(), authstore_core::CeremonyKind::Authentication)
            .await
            .is_err()
    );
}

/// Linked accounts: unique (provider, subject), provider tokens sealed and bound to their
/// row and column, reseal under a new key, erasure with the user.
pub async fn linked_accounts_and_reseal(h: Harness) {
    let (s, _) = store(&h);
    let s = s.with_sealing_keys(sealing("s1", 5));
    let u = person(&s, "ola").await;
    let v = person(&s, "pia").await;
    let at = authstore_core::ProviderToken::new("gho_provider_access_token_1".into());
    let rt = authstore_core::ProviderToken::new("ghr_provider_refresh_token_1".into());
    let a = s
        .link_account(u.id, "github", "12345", Some(&at), Some(&rt), Some(START))
        .await
        .unwrap();
    assert!(matches!(
        s.link_account(v.id, "github", "12345", None, None, None)
            .await,
        Err(Error::Conflict { .. })
    ));
    let b = s
        .link_account(
            v.id,
            "github",
            "777",
            Some(&authstore_core::ProviderToken::new("gho_other".into())),
            None,
            None,
        )
        .await
        .unwrap();
    let found = s.linked_account("github", "12345").await.unwrap();
    assert_eq!(found.user, u.id);
    let (oa, or) = s.provider_tokens(&found).unwrap();
    assert_eq!(oa.unwrap().secret(), at.secret());
    assert_eq!(or.unwrap().secret(), rt.secret());
    assert!(!format!("{found:?}").contains("gho_provider"));
    // A sealed value copied to another row fails to open.
    let row_b = authstore_core::identity::SealedRef {
        table: "linked_accounts",
        column: "access_token",
        row: b.id.as_uuid().as_bytes().to_vec(),
    };
    let b_sealed = s
        .linked_account("github", "777")
        .await
        .unwrap()
        .access_token
        .unwrap();
    assert!(
        h.backend
            .replace_sealed(&row_b, &b_sealed, a.access_token.as_ref().unwrap())
            .await
            .unwrap()
    );
    let moved = s.linked_account("github", "777").await.unwrap();
    assert!(matches!(
        s.provider_tokens(&moved),
        Err(Error::SealedValueInvalid { .. })
    ));
    // Updating tokens.
    let new_at = authstore_core::ProviderToken::new("gho_provider_access_token_2".into());
    s.update_provider_tokens(&found, Some(&new_at), None, None)
        .await
        .unwrap();
    let again = s.linked_account("github", "12345").await.unwrap();
    let (oa, or) = s.provider_tokens(&again).unwrap();
    assert_eq!(oa.unwrap().secret(), new_at.secret());
    assert!(or.is_none());
    s.enroll_totp(u.id).await.unwrap();

    // Reseal under a new active key; the old key can then go.
    let rotated = s.clone().with_sealing_keys(
        authstore_core::SealingKeyring::with_older(
            authstore_core::SealingKey::from_bytes("s2", [6; 32]).unwrap(),
            vec![authstore_core::SealingKey::from_bytes("s1", [5; 32]).unwrap()],
        )
        .unwrap(),
    );
    let r = rotated.reseal(2).await.unwrap();
    // a's access token and u's TOTP secret; b's moved value does not open and is skipped.
    assert_eq!((r.resealed, r.unreadable), (2, 1), "{r:?}");
    let only_new = s.clone().with_sealing_keys(sealing("s2", 6));
    let a2 = only_new.linked_account("github", "12345").await.unwrap();
    assert_eq!(a2.access_token.as_ref().unwrap().key_id(), Some("s2"));
    assert_eq!(
        only_new.provider_tokens(&a2).unwrap().0.unwrap().secret(),
        new_at.secret()
    );
    assert_eq!(
        rotated.reseal(100).await.unwrap().resealed,
        0,
        "nothing left"
    );

    // Unlink (owner only), and erasure with the user.
    assert!(matches!(
        s.unlink_account(b.id, Some(u.id)).await,
        Err(Error::NotFound { .. })
    ));
    s.unlink_account(b.id, Some(v.id)).await.unwrap();
    let (_, sess) = s.create_login_session(u.id, None, None).await.unwrap();
    s.register_passkey(authstore_core::NewPasskey {
        credential_id: vec![4, 4],
        user: u.id,
        name: "k".into(),
        credential: serde_json::json!({}),
        counter: 0,
        backup_state: false,
    })
    .await
    .unwrap();
    s.generate_recovery_codes(u.id).await.unwrap();
    s.delete_user(u.id).await.unwrap();
    assert!(matches!(
        s.linked_account("github", "12345").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.passkey(&[4, 4]).await,
        Err(Error::NotFound { .. })
    ));
    assert!(s.validate_login_session(sess.secret()).await.is_err());
    assert!(h.backend.get_totp(u.id).await.unwrap().is_none());
    assert_eq!(h.backend.unused_recovery_codes(u.id).await.unwrap(), 0);
}

/// No TOTP secret, provider token, session handle, one-time token or recovery code in the
/// backend's files in clear.
pub async fn no_identity_secrets_in_files(h: Harness) {
    assert!(
        !h.files.is_empty(),
        "this case is for backends that keep files"
    );
    let (s, _) = store(&h);
    let s = s.with_sealing_keys(sealing("s1", 5));
    let mut secrets: Vec<String> = Vec::new();
    for i in 0..30 {
        let u = person(&s, &format!("f{i}")).await;
        secrets.push(s.enroll_totp(u.id).await.unwrap().secret().to_owned());
        let tok = format!("gho_ProviderAccessToken{i:04}xyzzyplugh");
        s.link_account(
            u.id,
            "github",
            &format!("{i}"),
            Some(&authstore_core::ProviderToken::new(tok.clone())),
            None,
            None,
        )
        .await
        .unwrap();
        secrets.push(tok);
        secrets.push(
            s.create_login_session(u.id, None, None)
                .await
                .unwrap()
                .1
                .secret()
                .to_owned(),
        );
        secrets.push(
            s.issue_one_time_token(u.id, authstore_core::OneTimePurpose::MagicLink)
                .await
                .unwrap()
                .1
                .secret()
                .to_owned(),
        );
        for c in s.generate_recovery_codes(u.id).await.unwrap() {
            secrets.push(c.secret().to_owned());
        }
    }
    let mut bytes = Vec::new();
    for f in &h.files {
        if let Ok(b) = std::fs::read(f) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(
        bytes.windows(6).any(|w| w == b"github"),
        "sanity: stored text is visible to the scan"
    );
    for secret in &secrets {
        let needle = &secret.as_bytes()[secret.len().saturating_sub(10)..];
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "a secret is in the files in clear"
        );
    }
}
