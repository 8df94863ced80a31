//! Group commit of token issuance: concurrent
//! [`issue_tokens`](authstore_core::backend::GrantStore::issue_tokens) calls written together
//! in one transaction with multi-row statements.
//!
//! One task per store owns a queue. It waits for one request, takes whatever else is queued
//! at that moment (no waiting window, at most [`MAX_BATCH`]) and writes the lot in one
//! transaction; requests arriving meanwhile form the next batch. A batch of one runs the
//! single-call code itself, so at low concurrency a call costs what it costs without
//! batching plus one task hand-off.
//!
//! Per-request outcomes are those of a single call: the validity of every grant (new grants
//! inserted only if their client exists and is enabled; existing grants checked and locked
//! `FOR KEY SHARE` in one statement, as the single path does) is decided per request, and a
//! request found inactive or inconsistent is left out of the writes and answered on its
//! own. If a write of the batch fails for any reason that is not temporary (a duplicate
//! hash, …), the transaction is rolled back and every request of the batch runs again
//! alone, by its caller, through the single-call code, so each gets exactly its own answer.
//! A temporary failure (lost connection, timeout, deadlock) reaches every caller of the
//! batch as a temporary error.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use authstore_core::backend::TokenIssue;
use authstore_core::{AuditEvent, ClientId, Error, Result};
use deadpool_postgres::GenericClient;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::db::{Db, Message, Ts, json_no_nul, no_nul, no_nul_opt, opt_ts, ts};
use crate::stores::{self, P, all, same_client, subj};
use crate::{BACKEND, Inner, IssuanceStats, rows};

/// The most requests written in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// How many requests may wait in the queue before callers wait to enqueue.
const QUEUE: usize = 4 * MAX_BATCH;

/// One queued call.
struct Request {
    issue: TokenIssue,
    audit: AuditEvent,
    reply: oneshot::Sender<Reply>,
}

/// What the batcher tells a caller.
enum Reply {
    /// The call's outcome.
    Done(Result<()>),
    /// Nothing was written for this call: run it alone (with its event, handed back).
    Alone(AuditEvent),
}

/// What [`Batcher::submit`] returns to `issue_tokens`.
pub(crate) enum Submitted {
    /// The call's outcome.
    Done(Result<()>),
    /// Nothing was written: run the call alone with this event.
    Alone(AuditEvent),
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    fallbacks: AtomicU64,
}

/// The queue of one store's batcher task. Dropping it (with the store) closes the queue,
/// and the task ends once it has answered what it holds.
pub(crate) struct Batcher {
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts the batcher task on the current Tokio runtime; `None` outside one (the store
    /// then issues without batching).
    pub(crate) fn start(inner: Arc<Inner>) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        handle.spawn(run(inner, rx, Arc::clone(&counters)));
        Some(Self { tx, counters })
    }

    /// Queues one call and waits for its answer.
    pub(crate) async fn submit(&self, issue: &TokenIssue, audit: AuditEvent) -> Submitted {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            issue: issue.clone(),
            audit,
            reply,
        };
        if let Err(mpsc::error::SendError(req)) = self.tx.send(req).await {
            // The task is gone (its runtime shut down) before taking the request: nothing
            // was written, so the call can safely run alone.
            tracing::debug!("token issuance batcher is not running; issuing alone");
            return Submitted::Alone(req.audit);
        }
        match answer.await {
            Ok(Reply::Done(r)) => Submitted::Done(r),
            Ok(Reply::Alone(audit)) => Submitted::Alone(audit),
            // The task ended while holding the request (runtime shutdown mid-batch): the
            // outcome is unknown, as after a connection lost during a commit.
            Err(_) => Submitted::Done(Err(Error::backend(
                BACKEND,
                true,
                Message(
                    "the token issuance batcher stopped before answering: the tokens may or \
                     may not have been stored",
                ),
            ))),
        }
    }

    /// The counters and the queue length now.
    pub(crate) fn stats(&self) -> IssuanceStats {
        IssuanceStats {
            enabled: true,
            batches: self.counters.batches.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            fallbacks: self.counters.fallbacks.load(Ordering::Relaxed),
            queued: self.tx.max_capacity() - self.tx.capacity(),
        }
    }
}

/// Whether the batch path gives this call exactly the single path's answer. Everything
/// the single path refuses before or without looking at the database (a record whose
/// grant or client disagrees with a new grant, strings PostgreSQL cannot store, an
/// already revoked new grant) runs alone instead, so its error is the single path's.
pub(crate) fn batchable(issue: &TokenIssue, audit: &AuditEvent) -> bool {
    let g = issue.grant_id;
    let new_client = issue.new_grant.as_ref().map(|n| n.client_id);
    if let Some(n) = &issue.new_grant {
        if n.id != g
            || n.revoked_at.is_some()
            || stores::check_auth(&n.auth).is_err()
            || rows::enc_auth(&n.auth).is_err()
        {
            return false;
        }
    }
    if let Some((_, t)) = &issue.access {
        if t.grant_id != g
            || new_client.is_some_and(|c| c != t.client_id)
            || stores::check_access(t).is_err()
            || rows::enc_auth(&t.auth).is_err()
        {
            return false;
        }
    }
    if let Some((_, t)) = &issue.refresh {
        if t.grant_id != g
            || new_client.is_some_and(|c| c != t.client_id)
            || t.cnf
                .as_ref()
                .is_some_and(|c| no_nul("cnf", c.value()).is_err())
            || i32::try_from(t.reuse_count).is_err()
        {
            return false;
        }
    }
    no_nul_opt("actor", audit.actor.as_deref()).is_ok()
        && json_no_nul("details", &audit.details).is_ok()
}

/// The batcher task: one batch at a time until the queue closes.
async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Request>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waits for one request, then takes what is queued now, up to MAX_BATCH.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        process(&inner, std::mem::take(&mut batch), &counters).await;
    }
    tracing::debug!("token issuance batcher stopped");
}

/// How long a batch waits for a row lock before its callers run alone.
const BATCH_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";

/// Writes one batch and answers every caller.
async fn process(inner: &Inner, mut batch: Vec<Request>, counters: &Counters) {
    if batch.len() == 1 {
        if let Some(req) = batch.pop() {
            let r = stores::issue_one(inner, &req.issue, &req.audit).await;
            let _ = req.reply.send(Reply::Done(r));
        }
        return;
    }
    match write(inner, &batch).await {
        Ok(outcomes) => {
            for (req, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that went away does not care.
                let _ = req.reply.send(Reply::Done(outcome));
            }
        }
        // A lock conflict is about some rows of the batch: the others need not fail with it.
        Err(e) if crate::db::is_lock_conflict(&e) => {
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                size = batch.len(),
                "batched token issuance hit a lock; each request runs alone"
            );
            for req in batch {
                let _ = req.reply.send(Reply::Alone(req.audit));
            }
        }
        Err(e) if e.is_temporary() => {
            let shared = shared_text(&e);
            let mut first = Some(e);
            for req in batch {
                let err = first
                    .take()
                    .unwrap_or_else(|| Error::backend(BACKEND, true, BatchFailure(shared.clone())));
                let _ = req.reply.send(Reply::Done(Err(err)));
            }
        }
        Err(e) => {
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                error = %e,
                size = batch.len(),
                "batched token issuance failed; each request runs alone"
            );
            for req in batch {
                let _ = req.reply.send(Reply::Alone(req.audit));
            }
        }
    }
}

/// The text of a temporary error, for the other callers of its batch.
fn shared_text(e: &Error) -> String {
    match e {
        Error::Backend { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// A temporary failure of a whole batch, as seen by the callers other than the first.
#[derive(Debug)]
struct BatchFailure(String);

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batched token issuance failed: {}", self.0)
    }
}

impl StdError for BatchFailure {}

/// Writes the batch in one transaction; the outcome of each request, in order. `Err` means
/// the transaction did not commit (nothing of the batch was written, unless the error is
/// a lost commit, which is temporary).
async fn write(inner: &Inner, batch: &[Request]) -> Result<Vec<Result<()>>> {
    let mut conn = inner.conn().await?;
    let tx = conn.transaction().await.db()?;
    // A batch must not wait long on a row lock (a client being deleted, a cleanup): the
    // whole node's issuance queues behind it. On a lock conflict the batch's callers run
    // alone instead (see `process`).
    tx.batch_execute(BATCH_LOCK_TIMEOUT).await.db()?;
    // New grants (if their client is enabled) and the state of existing grants, pipelined.
    // In either order each answer is one a sequence of single calls could give (a call
    // issuing into a grant another call of the batch creates sees it or not).
    let (inserted, live) = tokio::join!(insert_grants(&tx, batch), live_grants(&tx, batch));
    let (inserted, live) = match (inserted, live) {
        (Ok(i), Ok(l)) => (i, l),
        (i, l) => return Err(pick([i.err(), l.err()])),
    };
    let outcomes: Vec<Result<()>> = batch
        .iter()
        .map(|r| outcome(&r.issue, &inserted, &live))
        .collect();
    let ok: Vec<&Request> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_ok())
        .map(|(r, _)| r)
        .collect();
    if !ok.is_empty() {
        let (a, r, e) = tokio::join!(
            insert_access(&tx, &ok),
            insert_refresh(&tx, &ok),
            insert_audit(&tx, &ok)
        );
        if a.is_err() || r.is_err() || e.is_err() {
            return Err(pick([a.err(), r.err(), e.err()]));
        }
    }
    tx.commit().await.db()?;
    Ok(outcomes)
}

/// The error that decides a failed batch, of pipelined statements that may have run in
/// any order: a temporary one if any (the statements after it only report "transaction
/// aborted"), else any (the batch then runs alone, call by call).
fn pick<const N: usize>(errors: [Option<Error>; N]) -> Error {
    let mut found: Option<Error> = None;
    for e in errors.into_iter().flatten() {
        if e.is_temporary() {
            return e;
        }
        found.get_or_insert(e);
    }
    found.unwrap_or_else(|| Error::backend(BACKEND, false, Message("batched write failed")))
}

/// The single path's answer for one request, given the grants inserted and the live
/// existing grants with their clients.
fn outcome(
    issue: &TokenIssue,
    inserted: &HashSet<Uuid>,
    live: &HashMap<Uuid, ClientId>,
) -> Result<()> {
    let inactive = || Error::Inactive { kind: "grant" };
    if let Some(g) = &issue.new_grant {
        // Its tokens' client was checked against the grant's before queueing.
        return if inserted.contains(g.id.as_uuid()) {
            Ok(())
        } else {
            Err(inactive())
        };
    }
    let client = *live.get(issue.grant_id.as_uuid()).ok_or_else(inactive)?;
    if let Some((_, t)) = &issue.access {
        same_client(client, t.client_id)?;
    }
    if let Some((_, t)) = &issue.refresh {
        same_client(client, t.client_id)?;
    }
    Ok(())
}

/// Inserts the new grants whose client exists and is enabled; their ids.
async fn insert_grants<C: GenericClient>(c: &C, batch: &[Request]) -> Result<HashSet<Uuid>> {
    let grants: Vec<_> = batch
        .iter()
        .filter_map(|r| r.issue.new_grant.as_ref())
        .collect();
    if grants.is_empty() {
        return Ok(HashSet::new());
    }
    let n = grants.len();
    let (mut id, mut client, mut subject, mut scope, mut auth, mut created) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for g in grants {
        id.push(g.id.as_uuid());
        client.push(g.client_id.as_uuid());
        subject.push(subj(g.subject.as_ref()));
        scope.push(g.scope.to_string());
        auth.push(rows::enc_auth(&g.auth)?);
        created.push(ts(g.created_at));
    }
    let params: [P<'_>; 6] = [&id, &client, &subject, &scope, &auth, &created];
    let found = all(
        c,
        "INSERT INTO grants (id, client_id, subject, scope, auth, created_at)
         SELECT u.id, u.client_id, u.subject, u.scope, u.auth, u.created_at
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                     $6::timestamptz[])
              AS u (id, client_id, subject, scope, auth, created_at)
         WHERE EXISTS (SELECT 1 FROM clients AS c WHERE c.id = u.client_id AND NOT c.disabled)
         RETURNING id",
        &params,
    )
    .await?;
    found
        .iter()
        .map(|r| rows::grant_id(r, 0).map(|g| *g.as_uuid()))
        .collect()
}

/// The existing grants the batch issues into that are unrevoked with an enabled client,
/// with their client, locked `FOR KEY SHARE` (so cleanup, which skips locked grants,
/// cannot delete them before the batch commits).
async fn live_grants<C: GenericClient>(
    c: &C,
    batch: &[Request],
) -> Result<HashMap<Uuid, ClientId>> {
    let mut ids: Vec<&Uuid> = batch
        .iter()
        .filter(|r| r.issue.new_grant.is_none())
        .map(|r| r.issue.grant_id.as_uuid())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let found = all(
        c,
        "SELECT g.id, g.client_id FROM grants AS g JOIN clients AS c ON c.id = g.client_id
         WHERE g.id = ANY($1::uuid[]) AND g.revoked_at IS NULL AND NOT c.disabled
         FOR KEY SHARE OF g",
        &[&ids],
    )
    .await?;
    found
        .iter()
        .map(|r| Ok((*rows::grant_id(r, 0)?.as_uuid(), rows::client_id(r, 1)?)))
        .collect()
}

async fn insert_access<C: GenericClient>(c: &C, ok: &[&Request]) -> Result<()> {
    let tokens: Vec<_> = ok.iter().filter_map(|r| r.issue.access.as_ref()).collect();
    if tokens.is_empty() {
        return Ok(());
    }
    let n = tokens.len();
    let mut hash = Vec::with_capacity(n);
    let mut grant = Vec::with_capacity(n);
    let mut client = Vec::with_capacity(n);
    let mut subject = Vec::with_capacity(n);
    let mut scope = Vec::with_capacity(n);
    let mut audience = Vec::with_capacity(n);
    let mut issued = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut revoked = Vec::with_capacity(n);
    let mut cnf_kind = Vec::with_capacity(n);
    let mut cnf_value = Vec::with_capacity(n);
    let mut auth = Vec::with_capacity(n);
    let mut claims = Vec::with_capacity(n);
    for (h, t) in tokens {
        let (k, v) = rows::enc_cnf(t.cnf.as_ref());
        hash.push(h.as_bytes().as_slice());
        grant.push(t.grant_id.as_uuid());
        client.push(t.client_id.as_uuid());
        subject.push(subj(t.subject.as_ref()));
        scope.push(t.scope.to_string());
        // A list per row: sent as a JSON array (unnest would flatten a 2-D text[]).
        audience.push(serde_json::Value::from(t.audience.clone()));
        issued.push(ts(t.issued_at));
        expires.push(ts(t.expires_at));
        revoked.push(opt_ts(t.revoked_at));
        cnf_kind.push(k);
        cnf_value.push(v);
        auth.push(rows::enc_auth(&t.auth)?);
        claims.push(&t.claims);
    }
    let params: [P<'_>; 13] = [
        &hash, &grant, &client, &subject, &scope, &audience, &issued, &expires, &revoked,
        &cnf_kind, &cnf_value, &auth, &claims,
    ];
    stores::exec(
        c,
        "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
             issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
         SELECT u.hash, u.grant_id, u.client_id, u.subject, u.scope,
                ARRAY(SELECT a.v FROM jsonb_array_elements_text(u.audience)
                                      WITH ORDINALITY AS a (v, n) ORDER BY a.n),
                u.issued_at, u.expires_at, u.revoked_at, u.cnf_kind, u.cnf_value, u.auth,
                u.claims
         FROM unnest($1::bytea[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                     $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[],
                     $10::text[], $11::text[], $12::jsonb[], $13::jsonb[])
              AS u (hash, grant_id, client_id, subject, scope, audience, issued_at,
                    expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)",
        &params,
    )
    .await?;
    Ok(())
}

async fn insert_refresh<C: GenericClient>(c: &C, ok: &[&Request]) -> Result<()> {
    let tokens: Vec<_> = ok.iter().filter_map(|r| r.issue.refresh.as_ref()).collect();
    if tokens.is_empty() {
        return Ok(());
    }
    let n = tokens.len();
    let mut hash = Vec::with_capacity(n);
    let mut grant = Vec::with_capacity(n);
    let mut client = Vec::with_capacity(n);
    let mut subject = Vec::with_capacity(n);
    let mut scope = Vec::with_capacity(n);
    let mut issued = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut idle = Vec::with_capacity(n);
    let mut rotated = Vec::with_capacity(n);
    let mut successor = Vec::with_capacity(n);
    let mut reuse = Vec::with_capacity(n);
    let mut revoked = Vec::with_capacity(n);
    let mut cnf_kind = Vec::with_capacity(n);
    let mut cnf_value = Vec::with_capacity(n);
    for (h, t) in tokens {
        let (k, v) = rows::enc_cnf(t.cnf.as_ref());
        hash.push(h.as_bytes().as_slice());
        grant.push(t.grant_id.as_uuid());
        client.push(t.client_id.as_uuid());
        subject.push(subj(t.subject.as_ref()));
        scope.push(t.scope.to_string());
        issued.push(ts(t.issued_at));
        expires.push(ts(t.expires_at));
        idle.push(ts(t.idle_expires_at));
        rotated.push(opt_ts(t.rotated_at));
        successor.push(t.successor.as_ref().map(|h| h.as_bytes().as_slice()));
        reuse.push(
            i32::try_from(t.reuse_count).map_err(|_| Error::invalid("reuse_count", "too large"))?,
        );
        revoked.push(opt_ts(t.revoked_at));
        cnf_kind.push(k);
        cnf_value.push(v);
    }
    let params: [P<'_>; 14] = [
        &hash, &grant, &client, &subject, &scope, &issued, &expires, &idle, &rotated, &successor,
        &reuse, &revoked, &cnf_kind, &cnf_value,
    ];
    stores::exec(
        c,
        "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
             expires_at, idle_expires_at, rotated_at, successor, reuse_count, revoked_at,
             cnf_kind, cnf_value)
         SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                              $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                              $9::timestamptz[], $10::bytea[], $11::int4[],
                              $12::timestamptz[], $13::text[], $14::text[])",
        &params,
    )
    .await?;
    Ok(())
}

async fn insert_audit<C: GenericClient>(c: &C, ok: &[&Request]) -> Result<()> {
    let n = ok.len();
    let mut id = Vec::with_capacity(n);
    let mut at: Vec<Ts> = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut subject = Vec::with_capacity(n);
    let mut client = Vec::with_capacity(n);
    let mut grant = Vec::with_capacity(n);
    let mut ip: Vec<Option<IpAddr>> = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    for r in ok {
        let e = &r.audit;
        id.push(e.id.as_uuid());
        at.push(ts(e.at));
        kind.push(e.kind.as_str());
        actor.push(e.actor.as_deref());
        subject.push(subj(e.subject.as_ref()));
        client.push(e.client_id.as_ref().map(ClientId::as_uuid));
        grant.push(e.grant_id.as_ref().map(|g| g.as_uuid()));
        ip.push(e.ip);
        details.push(&e.details);
    }
    let params: [P<'_>; 9] = [
        &id, &at, &kind, &actor, &subject, &client, &grant, &ip, &details,
    ];
    stores::exec(
        c,
        "INSERT INTO audit_events (id, at, kind, actor, subject, client_id, grant_id, ip,
             details)
         SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[],
                              $5::text[], $6::uuid[], $7::uuid[], $8::inet[], $9::jsonb[])",
        &params,
    )
    .await?;
    Ok(())
}
