//! Group commit of token issuance (`PostgresOptions::batch_issuance`): concurrent calls are
//! grouped, and every call in a batch gets exactly the answer it would get alone; a batch's
//! statements and its COMMIT are pipelined, and a second batch runs while the first commits.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use authstore_core::backend::{ClientStore, GrantStore, Maintenance, TokenIssue};
use authstore_core::{
    AccessToken, AuditContext, AuditEvent, AuditKind, AuthContext, Authstore, Backend, Client,
    ClientId, ClientType, Error, Grant, GrantId, GrantType, NewClient, RefreshToken, Scopes,
    SenderConstraint, Subject, Timestamp, TokenEndpointAuthMethod, TokenHash, TokenKey,
    TokenKeyring, TokenLifetimes, TokenOptions,
};
use authstore_postgres::{PostgresOptions, PostgresStore};
use tokio::sync::Barrier;

const T0: Timestamp = Timestamp::from_unix_micros(1_800_000_000_123_457);

async fn migrated_with(options: PostgresOptions) -> (Arc<PostgresStore>, common::DropSchema) {
    let schema = common::fresh_schema().await;
    let store = PostgresStore::connect(
        &common::url(),
        PostgresOptions {
            schema: Some(schema.clone()),
            ..options
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), common::DropSchema(schema))
}

async fn migrated() -> (Arc<PostgresStore>, common::DropSchema) {
    migrated_with(common::options("unused")).await
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::new(kind, T0, &AuditContext::default())
}

fn client(name: &str) -> Client {
    Client {
        id: ClientId::new_at(T0),
        name: name.into(),
        client_type: ClientType::Confidential,
        redirect_uris: vec![],
        grant_types: [GrantType::ClientCredentials].into(),
        scopes: Scopes::parse("read write").unwrap(),
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        lifetimes: TokenLifetimes::default(),
        metadata: serde_json::json!({}),
        created_at: T0,
        updated_at: T0,
        disabled: false,
    }
}

fn grant(client: ClientId) -> Grant {
    Grant {
        id: GrantId::new_at(T0),
        client_id: client,
        subject: Some(Subject::new("alice").unwrap()),
        scope: Scopes::parse("read").unwrap(),
        auth: AuthContext {
            acr: Some("urn:x".into()),
            amr: vec!["pwd".into(), "otp".into()],
            mfa_verified: true,
        },
        created_at: T0,
        revoked_at: None,
    }
}

fn hash(n: u32) -> TokenHash {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&n.to_le_bytes());
    h[31] = 0xAB;
    TokenHash::from_bytes(h)
}

fn access(g: &Grant, client: ClientId) -> AccessToken {
    AccessToken {
        grant_id: g.id,
        client_id: client,
        subject: g.subject.clone(),
        scope: g.scope.clone(),
        // Order matters and must survive the multi-row insert.
        audience: vec!["zeta".into(), "alpha".into(), "mid".into()],
        issued_at: T0,
        expires_at: T0.saturating_add(Duration::from_secs(600)),
        revoked_at: None,
        cnf: Some(SenderConstraint::DpopJkt(
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into(),
        )),
        auth: g.auth.clone(),
        claims: serde_json::json!({"tenant": "t1", "n": [1, 2]}),
    }
}

fn refresh(g: &Grant, client: ClientId) -> RefreshToken {
    RefreshToken {
        grant_id: g.id,
        client_id: client,
        subject: g.subject.clone(),
        scope: g.scope.clone(),
        issued_at: T0,
        expires_at: T0.saturating_add(Duration::from_secs(86_400)),
        idle_expires_at: T0.saturating_add(Duration::from_secs(3_600)),
        rotated_at: None,
        successor: None,
        reuse_count: 0,
        revoked_at: None,
        cnf: None,
    }
}

/// Tokens into an existing grant (`new_grant: None`), access token of `client`.
fn into_existing(g: &Grant, client: ClientId, n: u32, with_refresh: bool) -> TokenIssue {
    TokenIssue {
        new_grant: None,
        grant_id: g.id,
        access: Some((hash(n), access(g, client))),
        refresh: with_refresh.then(|| (hash(n + 1_000_000), refresh(g, client))),
    }
}

/// A new grant of `client` with its tokens.
fn with_new_grant(client: ClientId, n: u32, with_refresh: bool) -> TokenIssue {
    let g = grant(client);
    TokenIssue {
        new_grant: Some(g.clone()),
        ..into_existing(&g, client, n, with_refresh)
    }
}

fn keyring() -> TokenKeyring {
    TokenKeyring::new(TokenKey::from_bytes("k1", [7; 32]).unwrap())
}

/// An open transaction holding `LOCK audit_events IN EXCLUSIVE MODE` in `schema`: the
/// batcher's current batch cannot commit until it ends, so later calls queue and form
/// the next batch, deterministically.
async fn hold_audit_table(schema: &str) -> tokio_postgres::Client {
    let admin = common::admin().await;
    admin
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.audit_events IN EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    admin
}

/// Polls until `f` holds (at most 20 s).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts a call that occupies the batcher (a batch of one, stuck on the audit table
/// lock held by the returned connection) and waits until the batcher has taken it.
async fn occupy_batcher(
    store: &Arc<PostgresStore>,
    schema: &str,
    client: ClientId,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<authstore_core::Result<()>>,
) {
    let lock = hold_audit_table(schema).await;
    let before = store.issuance_stats().batches;
    let s = Arc::clone(store);
    // A fresh hash each time: a test may occupy the batcher more than once.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(900_000);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let blocker = tokio::spawn(async move {
        s.issue_tokens(
            &with_new_grant(client, n, false),
            event(AuditKind::TokensIssued),
        )
        .await
    });
    until("the batcher to take the blocking call", || {
        store.issuance_stats().batches == before + 1
    })
    .await;
    (lock, blocker)
}

/// Fires `issues` at once (behind a barrier) while the batcher is occupied, waits until
/// all are queued, lets the batcher go and returns each call's outcome, in order.
async fn one_batch(
    store: &Arc<PostgresStore>,
    schema: &str,
    client: ClientId,
    issues: Vec<(TokenIssue, AuditEvent)>,
) -> Vec<authstore_core::Result<()>> {
    let (lock, blocker) = occupy_batcher(store, schema, client).await;
    let before = store.issuance_stats();
    let n = issues.len();
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = issues
        .into_iter()
        .map(|(issue, audit)| {
            let s = Arc::clone(store);
            let b = Arc::clone(&barrier);
            tokio::spawn(async move {
                b.wait().await;
                s.issue_tokens(&issue, audit).await
            })
        })
        .collect();
    until("every call to queue", || store.issuance_stats().queued == n).await;
    lock.batch_execute("COMMIT").await.unwrap();
    blocker.await.unwrap().unwrap();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    let after = store.issuance_stats();
    assert_eq!(
        after.batches,
        before.batches + 1,
        "the queued calls were written as one batch: {after:?}"
    );
    assert_eq!(after.requests, before.requests + n as u64);
    out
}

/// A short name for an outcome, to compare batched and single calls.
fn outcome(r: &authstore_core::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(Error::Inactive { kind }) => format!("inactive {kind}"),
        Err(Error::InvalidInput { field, .. }) => format!("invalid {field}"),
        Err(Error::Conflict { what }) => format!("conflict {what}"),
        Err(e) => format!("other {e:?}"),
    }
}

async fn audit_ids_present(schema: &str, ids: &[uuid::Uuid]) -> usize {
    let n: i64 = common::admin()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {schema}.audit_events WHERE id = ANY($1)"),
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    usize::try_from(n).unwrap()
}

/// A migrated store whose connections carry `application_name = app`, so a test can watch
/// them in `pg_stat_activity`.
async fn migrated_as(app: &str) -> (Arc<PostgresStore>, common::DropSchema) {
    let schema = common::fresh_schema().await;
    let url = format!("{}?application_name={app}", common::url());
    let store = PostgresStore::connect(&url, common::options(&schema))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), common::DropSchema(schema))
}

/// A unique application name for [`migrated_as`].
fn app_name(what: &str) -> String {
    format!("{what}_{}", uuid::Uuid::now_v7().simple())
}

/// Connections of `app` in the state `state` (a `LIKE` pattern) and, if given, waiting on a
/// lock.
async fn sessions(app: &str, state: &str, waiting_on_lock: bool) -> i64 {
    common::admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND state LIKE $2
               AND (NOT $3 OR wait_event_type = 'Lock')",
            &[&app, &state, &waiting_on_lock],
        )
        .await
        .unwrap()
        .get(0)
}

/// Spawns one `issue_tokens` call per issue, each with its own event.
fn spawn_calls(
    store: &Arc<PostgresStore>,
    issues: &[TokenIssue],
) -> Vec<tokio::task::JoinHandle<authstore_core::Result<()>>> {
    issues
        .iter()
        .map(|i| {
            let s = Arc::clone(store);
            let i = i.clone();
            tokio::spawn(async move { s.issue_tokens(&i, event(AuditKind::TokensIssued)).await })
        })
        .collect()
}

/// Awaits every call (at most 20 s each).
async fn answers(
    calls: Vec<tokio::task::JoinHandle<authstore_core::Result<()>>>,
) -> Vec<authstore_core::Result<()>> {
    let mut out = Vec::new();
    for c in calls {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), c)
                .await
                .expect("the call answers")
                .unwrap(),
        );
    }
    out
}

/// Whether the access token of `issue` is stored exactly (and its refresh token, if any).
async fn stored(store: &PostgresStore, issue: &TokenIssue) -> bool {
    let (h, t) = issue.access.as_ref().unwrap();
    let access = store.find_access_token(h, T0).await.unwrap();
    let refresh = match &issue.refresh {
        Some((h, t)) => store
            .find_refresh_token(h)
            .await
            .unwrap()
            .map(|st| &st.token == t),
        None => Some(true),
    };
    match (access, refresh) {
        (Some(a), Some(true)) => {
            assert_eq!(&a, t, "stored exactly");
            true
        }
        (None, None | Some(true)) => false,
        (a, r) => panic!("half stored: access {a:?}, refresh matches {r:?}"),
    }
}

/// What the batcher relies on, pinned: PostgreSQL answers the COMMIT of a transaction it
/// aborted by rolling back, and tokio-postgres reports that COMMIT as a success, also when
/// it is pipelined behind the failing statement. So a batch is committed only when every
/// one of its statements succeeded, never because its COMMIT did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_of_an_aborted_transaction_reports_no_error() {
    let schema = common::fresh_schema().await;
    let _guard = common::DropSchema(schema.clone());
    let c = common::admin().await;
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.t (k int PRIMARY KEY); INSERT INTO {schema}.t VALUES (1)"
    ))
    .await
    .unwrap();
    let insert = c
        .prepare(&format!("INSERT INTO {schema}.t VALUES ($1)"))
        .await
        .unwrap();
    let rows = || async {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {schema}.t"), &[])
            .await
            .unwrap()
            .get(0);
        n
    };

    // One after the other.
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(&insert, &[&2]).await.unwrap();
    assert!(c.execute(&insert, &[&1]).await.is_err(), "duplicate key");
    c.batch_execute("COMMIT")
        .await
        .expect("the COMMIT of an aborted transaction is not an error");
    assert_eq!(
        rows().await,
        1,
        "rolled back: the row before the failure is gone"
    );

    // Pipelined, as the batcher sends them: nothing waits for an answer before the COMMIT.
    let (begin, ok, dup, after, commit) = tokio::join!(
        c.batch_execute("BEGIN"),
        c.execute(&insert, &[&3]),
        c.execute(&insert, &[&1]),
        c.execute(&insert, &[&4]),
        c.batch_execute("COMMIT"),
    );
    begin.unwrap();
    ok.unwrap();
    assert_eq!(
        dup.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(
        after.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION),
        "the statements after a failure are refused"
    );
    commit.expect("the pipelined COMMIT of an aborted transaction is not an error either");
    assert_eq!(
        rows().await,
        1,
        "nothing of the pipelined transaction was written"
    );
    // The connection is out of the transaction.
    c.execute(&insert, &[&5]).await.unwrap();
    assert_eq!(rows().await, 2);
}

/// The last insert of a batch (its audit events) fails on the server after the access and
/// refresh tokens were inserted, with the COMMIT already on its way: nothing of the batch is
/// written, no connection is left in a transaction, every call gets its single-call answer
/// (each ran again alone) and the counters say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_last_insert_before_the_pipelined_commit_writes_nothing() {
    let app = app_name("lastins");
    let (store, schema) = migrated_as(&app).await;
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let existing = grant(on.id);
    let taken = event(AuditKind::TokensIssued);
    // Stored alone, with the event whose id a call of the batch reuses.
    store
        .issue_tokens(
            &TokenIssue {
                new_grant: Some(existing.clone()),
                grant_id: existing.id,
                access: None,
                refresh: None,
            },
            taken.clone(),
        )
        .await
        .unwrap();
    let issues = [
        with_new_grant(on.id, 50, true),
        with_new_grant(on.id, 51, true),
        into_existing(&existing, on.id, 52, true),
        with_new_grant(on.id, 53, false),
    ];
    let events: Vec<AuditEvent> = (0..issues.len())
        .map(|i| {
            if i == 1 {
                taken.clone()
            } else {
                event(AuditKind::TokensIssued)
            }
        })
        .collect();
    let before = store.issuance_stats();
    let got = one_batch(
        &store,
        &schema.0,
        on.id,
        issues.iter().cloned().zip(events.iter().cloned()).collect(),
    )
    .await;
    assert_eq!(
        got.iter().map(outcome).collect::<Vec<_>>(),
        ["ok", "conflict audit event", "ok", "ok"],
        "the calls that succeeded ran again alone: had the batch been written, they would \
         conflict with their own tokens"
    );
    let after = store.issuance_stats();
    assert_eq!(after.fallbacks, before.fallbacks + 1);
    // The blocker of one_batch, then the batch.
    assert_eq!(after.batches, before.batches + 2);
    assert_eq!(after.requests, before.requests + 1 + issues.len() as u64);
    assert_eq!(after.queued, 0);
    for (n, (issue, r)) in issues.iter().zip(&got).enumerate() {
        assert_eq!(stored(&store, issue).await, r.is_ok(), "call {n}");
        if let Some(g) = &issue.new_grant {
            assert_eq!(
                store.get_grant(g.id).await.unwrap().is_some(),
                r.is_ok(),
                "call {n}: its grant exists exactly when it succeeded"
            );
        }
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
    // Three new events, and the reused id once (from the first call).
    assert_eq!(audit_ids_present(&schema.0, &ids).await, 4);
    assert_eq!(
        sessions(&app, "idle in transaction%", false).await,
        0,
        "no connection was left inside a transaction"
    );
    // And the batcher goes on: a later batch is written normally.
    let more = [
        with_new_grant(on.id, 54, true),
        with_new_grant(on.id, 55, true),
    ];
    let got = one_batch(
        &store,
        &schema.0,
        on.id,
        more.iter()
            .map(|i| (i.clone(), event(AuditKind::TokensIssued)))
            .collect(),
    )
    .await;
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    for i in &more {
        assert!(stored(&store, i).await);
    }
    assert_eq!(store.issuance_stats().fallbacks, after.fallbacks);
}

/// Two batches in flight: the first waits in its second round trip (its COMMIT already
/// sent) for a token hash another transaction is inserting, while holding `FOR KEY SHARE`
/// on an existing grant; meanwhile the next calls, into the same grant and into new ones,
/// are batched, written and committed. Then the other transaction rolls back and the first
/// batch commits too. Every answer is the single-call one and the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_batch_commits_while_the_first_waits_for_its_commit() {
    let app = app_name("twofly");
    let (store, schema) = migrated_as(&app).await;
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let shared = grant(on.id);
    let template = TokenIssue {
        new_grant: Some(shared.clone()),
        ..into_existing(&shared, on.id, 59, false)
    };
    store
        .issue_tokens(&template, event(AuditKind::TokensIssued))
        .await
        .unwrap();
    // Another transaction inserts, without committing, an access token with the hash of a
    // call of the first batch: that batch's access-token insert waits for it (a row wait,
    // under the batch's lock timeout).
    let other = common::admin().await;
    other.batch_execute("BEGIN").await.unwrap();
    other
        .execute(
            &format!(
                "CREATE TEMP TABLE copy ON COMMIT DROP AS
                 SELECT * FROM {}.access_tokens WHERE hash = $1",
                schema.0
            ),
            &[&template.access.as_ref().unwrap().0.as_bytes().as_slice()],
        )
        .await
        .unwrap();
    let contested = into_existing(&shared, on.id, 60, true);
    other
        .execute(
            "UPDATE copy SET hash = $1",
            &[&contested.access.as_ref().unwrap().0.as_bytes().as_slice()],
        )
        .await
        .unwrap();
    other
        .batch_execute(&format!(
            "INSERT INTO {}.access_tokens SELECT * FROM copy",
            schema.0
        ))
        .await
        .unwrap();
    let before = store.issuance_stats();

    // The first batch, queued behind a blocker so that it forms one batch.
    let (lock_audit, blocker) = occupy_batcher(&store, &schema.0, on.id).await;
    let first = [
        contested,
        with_new_grant(on.id, 61, true),
        into_existing(&shared, on.id, 62, true),
        with_new_grant(on.id, 63, false),
    ];
    let first_calls = spawn_calls(&store, &first);
    until("the first batch to queue", || {
        store.issuance_stats().queued == first.len()
    })
    .await;
    lock_audit.batch_execute("COMMIT").await.unwrap();
    blocker.await.unwrap().unwrap();
    let admin = common::admin().await;
    let mut waiting = 0;
    for _ in 0..2000 {
        waiting = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'
                   AND query LIKE 'INSERT INTO access_tokens%'",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        waiting, 1,
        "the first batch waits at its access-token insert"
    );
    assert_eq!(store.issuance_stats().batches, before.batches + 2);

    // The second batch (or batches), into the same grant and new ones.
    let second = [
        into_existing(&shared, on.id, 70, true),
        with_new_grant(on.id, 71, false),
        into_existing(&shared, on.id, 72, false),
        with_new_grant(on.id, 73, true),
    ];
    let second_answers = answers(spawn_calls(&store, &second)).await;
    assert!(
        second_answers.iter().all(Result::is_ok),
        "{second_answers:?}"
    );
    for i in &second {
        assert!(
            stored(&store, i).await,
            "committed while the first batch waits"
        );
    }
    assert!(
        first_calls.iter().all(|c| !c.is_finished()),
        "the first batch is still waiting"
    );
    for i in &first {
        assert!(!stored(&store, i).await, "not committed yet");
    }
    assert_eq!(
        store.issuance_stats().fallbacks,
        before.fallbacks,
        "the first batch is still in flight (it did not time out)"
    );

    other.batch_execute("ROLLBACK").await.unwrap();
    let first_answers = answers(first_calls).await;
    assert!(first_answers.iter().all(Result::is_ok), "{first_answers:?}");
    for i in &first {
        assert!(stored(&store, i).await);
    }
    let after = store.issuance_stats();
    assert_eq!(
        after.fallbacks, before.fallbacks,
        "no batch ran its calls alone"
    );
    assert_eq!(
        after.requests,
        before.requests + 1 + (first.len() + second.len()) as u64
    );
    let second_batches = after.batches - before.batches - 2;
    assert!(
        (1..=second.len() as u64).contains(&second_batches),
        "{after:?}"
    );
    assert_eq!(after.queued, 0);
    assert_eq!(sessions(&app, "idle in transaction%", false).await, 0);
}

/// A batch waits at most a second on a row lock (here a grant locked `FOR UPDATE`, as a
/// deletion would): then its calls run alone, so those that do not need the locked row
/// finish at once, and those that do wait for it, as single calls do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stuck_on_a_row_lock_runs_its_calls_alone() {
    let (store, schema) = migrated().await;
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let locked = grant(on.id);
    store
        .issue_tokens(
            &TokenIssue {
                new_grant: Some(locked.clone()),
                grant_id: locked.id,
                access: None,
                refresh: None,
            },
            event(AuditKind::TokensIssued),
        )
        .await
        .unwrap();
    let before = store.issuance_stats();
    let (lock_audit, blocker) = occupy_batcher(&store, &schema.0, on.id).await;
    let row_lock = common::admin().await;
    row_lock
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {}.grants WHERE id = '{}' FOR UPDATE",
            schema.0,
            locked.id.as_uuid()
        ))
        .await
        .unwrap();
    let free = [
        with_new_grant(on.id, 80, true),
        with_new_grant(on.id, 81, false),
    ];
    let needs_lock = [
        into_existing(&locked, on.id, 82, true),
        into_existing(&locked, on.id, 83, false),
    ];
    let free_calls = spawn_calls(&store, &free);
    let locked_calls = spawn_calls(&store, &needs_lock);
    until("the calls to queue", || store.issuance_stats().queued == 4).await;
    lock_audit.batch_execute("COMMIT").await.unwrap();
    blocker.await.unwrap().unwrap();
    let free_answers = answers(free_calls).await;
    assert!(free_answers.iter().all(Result::is_ok), "{free_answers:?}");
    for i in &free {
        assert!(stored(&store, i).await);
    }
    let mid = store.issuance_stats();
    assert_eq!(mid.fallbacks, before.fallbacks + 1, "the batch gave up");
    assert!(
        locked_calls.iter().all(|c| !c.is_finished()),
        "the calls into the locked grant wait for it, alone"
    );
    row_lock.batch_execute("COMMIT").await.unwrap();
    let locked_answers = answers(locked_calls).await;
    assert!(
        locked_answers.iter().all(Result::is_ok),
        "{locked_answers:?}"
    );
    for i in &needs_lock {
        assert!(stored(&store, i).await);
    }
    let after = store.issuance_stats();
    assert_eq!(
        after.batches,
        before.batches + 2,
        "the blocker, then one batch"
    );
    assert_eq!(after.requests, before.requests + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_issuances_are_grouped_and_all_stored() {
    let (store, schema) = migrated().await;
    assert!(store.options().batch_issuance, "on by default");
    let s = Authstore::new(Arc::clone(&store) as Arc<dyn Backend>, keyring());
    let c = s
        .create_client(NewClient::confidential("svc").scopes(Scopes::parse("read").unwrap()))
        .await
        .unwrap()
        .client;
    let before = store.issuance_stats();
    assert!(before.enabled);
    const N: usize = 200;
    let barrier = Arc::new(Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let s = s.clone();
            let b = Arc::clone(&barrier);
            tokio::spawn(async move {
                b.wait().await;
                s.issue_client_credentials(c.id, None, &TokenOptions::default())
                    .await
            })
        })
        .collect();
    let mut issued = Vec::new();
    for t in tasks {
        issued.push(t.await.unwrap().unwrap());
    }
    for t in &issued {
        let at = s
            .validate_access_token(t.access_token.secret())
            .await
            .unwrap();
        assert_eq!(at.grant_id, t.grant_id);
        assert!(store.get_grant(t.grant_id).await.unwrap().is_some());
    }
    let events: i64 = common::admin()
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.audit_events WHERE kind = 'tokens.issued'",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, N as i64, "one event per call");
    let after = store.issuance_stats();
    assert_eq!(after.requests - before.requests, N as u64);
    assert!(
        after.batches - before.batches < N as u64,
        "calls were grouped: {after:?}"
    );
    assert_eq!(after.fallbacks, 0);
    assert_eq!(after.queued, 0);
}

/// The mixed batch: valid calls into an existing and a new grant, and every way a call can
/// be refused after reaching the database. Each answer must equal the single path's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_of_a_mixed_batch_gets_its_own_answer() {
    let (store, schema) = migrated().await;
    let (single, schema2) = migrated_with(PostgresOptions {
        batch_issuance: false,
        ..common::options("unused")
    })
    .await;
    assert!(!single.issuance_stats().enabled);

    // The same world in both stores.
    let mut cases = Vec::new();
    for (i, s) in [&store, &single].into_iter().enumerate() {
        let on = client("on");
        let off = Client {
            disabled: true,
            ..client("off")
        };
        for c in [&on, &off] {
            s.insert_client(c, None, event(AuditKind::ClientCreated))
                .await
                .unwrap();
        }
        let live = grant(on.id);
        let revoked = grant(on.id);
        for (k, g) in [&live, &revoked].into_iter().enumerate() {
            s.issue_tokens(
                &TokenIssue {
                    new_grant: Some(g.clone()),
                    grant_id: g.id,
                    access: None,
                    refresh: None,
                },
                event(AuditKind::TokensIssued),
            )
            .await
            .unwrap_or_else(|e| panic!("store {i} grant {k}: {e:?}"));
        }
        s.revoke_grant(revoked.id, event(AuditKind::GrantRevoked))
            .await
            .unwrap();
        let missing = grant(on.id);
        let issues = vec![
            // 0: into a live grant, access and refresh: stored.
            into_existing(&live, on.id, 1, true),
            // 1: into a revoked grant: Inactive.
            into_existing(&revoked, on.id, 2, false),
            // 2: a new grant of a disabled client: Inactive.
            with_new_grant(off.id, 3, true),
            // 3: into a live grant, but the token names another client: InvalidInput.
            into_existing(&live, off.id, 4, false),
            // 4: a new grant of an enabled client, access and refresh: stored.
            with_new_grant(on.id, 5, true),
            // 5: into a grant that does not exist: Inactive.
            into_existing(&missing, on.id, 6, false),
            // 6: into the live grant again, in the same batch: stored.
            into_existing(&live, on.id, 7, false),
        ];
        cases.push((on, issues));
    }

    let mut answers = Vec::new();
    for (k, s) in [&store, &single].into_iter().enumerate() {
        let (on, issues) = &cases[k];
        let with_events: Vec<(TokenIssue, AuditEvent)> = issues
            .iter()
            .map(|i| (i.clone(), event(AuditKind::TokensIssued)))
            .collect();
        let ids: Vec<uuid::Uuid> = with_events.iter().map(|(_, e)| *e.id.as_uuid()).collect();
        let got = if k == 0 {
            let before = s.issuance_stats().fallbacks;
            let got = one_batch(s, &schema.0, on.id, with_events).await;
            assert_eq!(
                s.issuance_stats().fallbacks,
                before,
                "refusals are answered inside the batch, without a fallback"
            );
            got
        } else {
            let mut got = Vec::new();
            for (i, e) in with_events {
                got.push(s.issue_tokens(&i, e).await);
            }
            got
        };
        let names: Vec<String> = got.iter().map(outcome).collect();
        // What was written: exactly the tokens and events of the calls that succeeded.
        for (n, (issue, r)) in issues.iter().zip(&got).enumerate() {
            let (h, t) = issue.access.as_ref().unwrap();
            let found = s.find_access_token(h, T0).await.unwrap();
            if r.is_ok() {
                assert_eq!(found.as_ref(), Some(t), "call {n}: stored exactly");
                if let Some((h, t)) = &issue.refresh {
                    let st = s.find_refresh_token(h).await.unwrap().unwrap();
                    assert_eq!(&st.token, t, "call {n}: refresh stored exactly");
                }
                if let Some(g) = &issue.new_grant {
                    assert_eq!(s.get_grant(g.id).await.unwrap().as_ref(), Some(g));
                }
            } else {
                assert!(found.is_none(), "call {n}: nothing stored");
                if let Some((h, _)) = &issue.refresh {
                    assert!(s.find_refresh_token(h).await.unwrap().is_none());
                }
                if let Some(g) = &issue.new_grant {
                    assert!(s.get_grant(g.id).await.unwrap().is_none(), "call {n}");
                }
            }
        }
        let schema_name = if k == 0 { &schema.0 } else { &schema2.0 };
        for (n, (id, r)) in ids.iter().zip(&got).enumerate() {
            assert_eq!(
                audit_ids_present(schema_name, &[*id]).await,
                usize::from(r.is_ok()),
                "call {n}: an event exactly when it succeeded"
            );
        }
        answers.push(names);
    }
    assert_eq!(
        answers[0],
        [
            "ok",
            "inactive grant",
            "inactive grant",
            "invalid client_id",
            "ok",
            "inactive grant",
            "ok"
        ]
    );
    assert_eq!(
        answers[0], answers[1],
        "batched answers equal single answers"
    );
}

/// A batch whose multi-row insert fails on a duplicate hash runs its calls one by one:
/// the duplicates get Conflict, the others succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_hash_in_a_batch_conflicts_alone() {
    let (store, schema) = migrated().await;
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    // Already stored under hash(1).
    store
        .issue_tokens(
            &with_new_grant(on.id, 1, false),
            event(AuditKind::TokensIssued),
        )
        .await
        .unwrap();
    let issues = [
        with_new_grant(on.id, 10, true),
        // Same access hash as the stored token.
        with_new_grant(on.id, 1, false),
        with_new_grant(on.id, 11, false),
        with_new_grant(on.id, 12, true),
    ];
    let with_events: Vec<(TokenIssue, AuditEvent)> = issues
        .iter()
        .map(|i| (i.clone(), event(AuditKind::TokensIssued)))
        .collect();
    let ids: Vec<uuid::Uuid> = with_events.iter().map(|(_, e)| *e.id.as_uuid()).collect();
    let before = store.issuance_stats().fallbacks;
    let got = one_batch(&store, &schema.0, on.id, with_events).await;
    assert_eq!(
        got.iter().map(outcome).collect::<Vec<_>>(),
        ["ok", "conflict access token", "ok", "ok"]
    );
    assert_eq!(store.issuance_stats().fallbacks, before + 1);
    for (n, (issue, r)) in issues.iter().zip(&got).enumerate() {
        let g = issue.new_grant.as_ref().unwrap();
        assert_eq!(
            store.get_grant(g.id).await.unwrap().is_some(),
            r.is_ok(),
            "call {n}: its grant exists exactly when it succeeded"
        );
        if r.is_ok() {
            let (h, t) = issue.access.as_ref().unwrap();
            assert_eq!(
                store.find_access_token(h, T0).await.unwrap().as_ref(),
                Some(t)
            );
        }
    }
    assert_eq!(audit_ids_present(&schema.0, &ids).await, 3);
    // The stored token is untouched.
    let (h, _) = with_new_grant(on.id, 1, false).access.unwrap();
    assert!(store.find_access_token(&h, T0).await.unwrap().is_some());
}

/// Two calls with the same hash in one batch: exactly one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_hash_twice_in_a_batch_is_stored_once() {
    let (store, schema) = migrated().await;
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    let issues = vec![
        (
            with_new_grant(on.id, 20, false),
            event(AuditKind::TokensIssued),
        ),
        (
            with_new_grant(on.id, 20, false),
            event(AuditKind::TokensIssued),
        ),
        (
            with_new_grant(on.id, 21, false),
            event(AuditKind::TokensIssued),
        ),
    ];
    let got = one_batch(&store, &schema.0, on.id, issues).await;
    let mut names: Vec<String> = got.iter().map(outcome).collect();
    names[..2].sort();
    assert_eq!(names, ["conflict access token", "ok", "ok"]);
}

/// A dropped store stops its batcher task, which releases the pool: its connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_stops_its_batcher() {
    let schema = common::fresh_schema().await;
    let _guard = common::DropSchema(schema.clone());
    let app = format!("gc_{schema}");
    let url = format!("{}?application_name={app}", common::url());
    let store = Arc::new(
        PostgresStore::connect(&url, common::options(&schema))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let s = Authstore::new(Arc::clone(&store) as Arc<dyn Backend>, keyring());
    let c = s
        .create_client(NewClient::confidential("svc").scopes(Scopes::parse("read").unwrap()))
        .await
        .unwrap()
        .client;
    s.issue_client_credentials(c.id, None, &TokenOptions::default())
        .await
        .unwrap();
    assert_eq!(store.issuance_stats().batches, 1);
    let admin = common::admin().await;
    let count = || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    assert!(count().await > 0);
    drop(s);
    drop(store);
    for _ in 0..500 {
        if count().await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pool of a dropped store is still open: its batcher did not stop");
}

/// A store whose runtime (and with it the batcher task) is gone still issues: the call
/// runs alone instead of waiting for a batcher that will never answer.
#[test]
fn a_store_outliving_its_batcher_issues_alone() {
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = rt();
    let (store, _schema) = first.block_on(migrated());
    drop(first);
    let second = rt();
    second.block_on(async {
        let on = client("on");
        store
            .insert_client(&on, None, event(AuditKind::ClientCreated))
            .await
            .unwrap();
        let issue = with_new_grant(on.id, 30, false);
        tokio::time::timeout(
            Duration::from_secs(20),
            store.issue_tokens(&issue, event(AuditKind::TokensIssued)),
        )
        .await
        .expect("no hang")
        .unwrap();
        let (h, t) = issue.access.as_ref().unwrap();
        assert_eq!(
            store.find_access_token(h, T0).await.unwrap().as_ref(),
            Some(t)
        );
    });
}

/// `batch_issuance=false` in the URL turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_can_be_turned_off_from_the_url() {
    let schema = common::fresh_schema().await;
    let _guard = common::DropSchema(schema.clone());
    let url = format!("{}?batch_issuance=false", common::url());
    let store = PostgresStore::connect(&url, common::options(&schema))
        .await
        .unwrap();
    assert!(!store.options().batch_issuance);
    store.migrate().await.unwrap();
    let on = client("on");
    store
        .insert_client(&on, None, event(AuditKind::ClientCreated))
        .await
        .unwrap();
    store
        .issue_tokens(
            &with_new_grant(on.id, 40, true),
            event(AuditKind::TokensIssued),
        )
        .await
        .unwrap();
    let st = store.issuance_stats();
    assert!(!st.enabled);
    assert_eq!((st.batches, st.requests), (0, 0));
}
