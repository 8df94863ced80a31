//! Group commit of token issuance: concurrent
//! [`issue_tokens`](authstore_core::backend::GrantStore::issue_tokens) calls written together
//! in one transaction with multi-row statements, in two round trips, with a second batch in
//! flight while PostgreSQL commits the first.
//!
//! One task per store owns a queue. When it may start a batch (below), it waits for one
//! request, takes whatever else is queued at that moment (no waiting window, at most
//! [`MAX_BATCH`]) and hands the lot to a task of its own, which writes it in one transaction
//! on its own pooled connection; requests arriving meanwhile form the next batch. A batch of
//! one runs the single-call code itself, so at low concurrency a call costs what it costs
//! without batching plus one task hand-off.
//!
//! **Two batches in flight, one executing.** At most [`IN_FLIGHT`] (two) batches are in
//! flight, and only one of them executes statements: the next batch starts as soon as the
//! previous one has sent its `COMMIT` (or, for a batch of one or a batch that fails, when
//! it is done). So PostgreSQL flushes one batch's commit while it runs the next batch's
//! statements, and the requests arriving while a batch executes still form one batch.
//! Letting both batches execute at once was measured too: on the 2-core reference machine
//! it halved the batch size (4.9 instead of 8 requests at 16 callers), cost a third more
//! server CPU per issuance and gained no throughput.
//!
//! **Round trips.** A batch costs two: the first carries `BEGIN; SET LOCAL lock_timeout`,
//! the insert of the new grants and the check of the existing ones; the second carries the
//! access-token, refresh-token and audit-event inserts and the `COMMIT`. Each statement is
//! sent, in order, before the next is created (tokio-postgres queues a request on its
//! connection when its future is first polled), so PostgreSQL runs them in that order
//! without waiting for the client. The statements are prepared once per connection, inside
//! the first transaction that needs them (one more round trip then), so under its lock
//! timeout: preparing a statement locks the tables it names. The `COMMIT` is sent only once
//! every insert of the batch has been sent; if an insert failed before reaching the server
//! (its parameters could not be encoded, the connection was gone), no `COMMIT` is sent and
//! the transaction is rolled back. If an insert fails on the server, PostgreSQL aborts the
//! transaction and answers the pipelined `COMMIT` by rolling back, **without an error**
//! (tokio-postgres reports `Ok` for it; a test pins this): so a batch counts as committed
//! only when every one of its statements and the `COMMIT` succeeded, and a failed insert
//! fails the batch (nothing of it is written). A connection whose transaction may still be
//! open (a failed `ROLLBACK`, a `COMMIT` without an answer, a batch cancelled midway)
//! leaves the pool instead of serving another call. One statement with data-modifying CTEs
//! (one round trip) was measured too: it cost about 1.5 times the server CPU per issuance
//! of these five statements, and issued less.
//!
//! **Locks between batches.** Two batches may lock the same existing grants: the check
//! takes `FOR KEY SHARE`, which does not conflict with itself, nor with the foreign-key
//! checks of the inserts; new grants, tokens and events are new rows. Two batches only wait
//! on each other through a unique key both insert (the same token hash twice, which a
//! caller would have to do on purpose): the second waits for the first to end, and a cycle
//! of such waits is broken by the lock timeout or PostgreSQL's deadlock detection, both
//! treated as below.
//!
//! Per-request outcomes are those of a single call: the validity of every grant (new grants
//! inserted only if their client exists and is enabled; existing grants checked and locked
//! `FOR KEY SHARE` in one statement, as the single path does) is decided per request, and a
//! request found inactive or inconsistent is left out of the writes and answered on its
//! own. If a write of the batch fails for any reason that is not temporary (a duplicate
//! hash, …), the transaction is rolled back and every request of the batch runs again
//! alone, by its caller, through the single-call code, so each gets exactly its own answer.
//! A batch waits at most one second on a row lock (`lock_timeout`): on a lock timeout or a
//! deadlock its requests run alone too, so the requests that do not touch the locked rows
//! are not held up. Any other temporary failure (lost connection, timeout) reaches every
//! caller of the batch as a temporary error.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use authstore_core::backend::TokenIssue;
use authstore_core::{AuditEvent, ClientId, Error, Result};
use deadpool_postgres::Object;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_postgres::Statement;
use uuid::Uuid;

use crate::db::{Db, Message, Ts, json_no_nul, no_nul, no_nul_opt, opt_ts, pg_err, ts};
use crate::stores::{self, P, same_client, subj};
use crate::{BACKEND, Inner, IssuanceStats, rows};

/// The most requests written in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// The most batches in flight, each in its own transaction on its own connection; only one
/// of them executes statements, the others wait for their `COMMIT`.
pub(crate) const IN_FLIGHT: usize = 2;

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

/// The batcher task: takes a batch whenever it may start one, until the queue closes.
/// Each batch is written by a task of its own; those finish (and answer their callers) even
/// after this one has ended.
async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Request>, counters: Arc<Counters>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let executing = Arc::new(Semaphore::new(1));
    loop {
        // The permits first, then the requests: while a batch executes, requests queue and
        // form the next one.
        let Ok(flight) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let Ok(turn) = Arc::clone(&executing).acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Waits for one request, then takes what is queued now, up to MAX_BATCH.
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let inner = Arc::clone(&inner);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut turn = Turn(Some(turn));
            process(&inner, batch, &counters, &mut turn).await;
            drop(turn);
            drop(flight);
        });
    }
    tracing::debug!("token issuance batcher stopped");
}

/// A batch's turn to execute statements: only one batch at a time has it. It ends when the
/// batch has sent its `COMMIT` (or is done), and the next batch may start while PostgreSQL
/// commits this one.
struct Turn(Option<OwnedSemaphorePermit>);

impl Turn {
    /// Lets the next batch start.
    fn end(&mut self) {
        drop(self.0.take());
    }
}

/// Opens a batch's transaction. A batch must not wait long on a row lock (a client being
/// deleted, a cleanup): the requests behind it queue. On a lock conflict the batch's
/// callers run alone instead (see `process`).
const BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '1s'";

/// Writes one batch and answers every caller.
async fn process(inner: &Inner, mut batch: Vec<Request>, counters: &Counters, turn: &mut Turn) {
    if batch.len() == 1 {
        if let Some(req) = batch.pop() {
            // As the single path answers (`issue_tokens`): a foreign-key failure (a client
            // deleted between the grant's EXISTS check and its key check) is `Inactive`.
            let r =
                crate::db::fk_as_inactive(stores::issue_one(inner, &req.issue, &req.audit).await);
            let _ = req.reply.send(Reply::Done(r));
        }
        return;
    }
    match write(inner, &batch, turn).await {
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

/// A pooled connection that may be inside a transaction. Dropped without
/// [`Lease::release`] (a batch cancelled midway, a transaction whose end is unknown), it
/// leaves the pool and closes, so the server rolls back whatever is open and no other call
/// gets a connection inside a transaction.
struct Lease(Option<Object>);

impl Lease {
    /// Back to the pool: its transaction is over.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

/// The statements of a batch, prepared on its connection.
struct Statements {
    grants: Statement,
    live: Statement,
    access: Statement,
    refresh: Statement,
    audit: Statement,
}

impl Statements {
    /// From the connection's cache (nothing sent), else prepared together (one round trip).
    async fn prepare(c: &Object) -> Result<Self> {
        let (grants, live, access, refresh, audit) = tokio::try_join!(
            c.prepare_cached(INSERT_GRANTS),
            c.prepare_cached(LIVE_GRANTS),
            c.prepare_cached(INSERT_ACCESS),
            c.prepare_cached(INSERT_REFRESH),
            c.prepare_cached(INSERT_AUDIT),
        )
        .db()?;
        Ok(Self {
            grants,
            live,
            access,
            refresh,
            audit,
        })
    }
}

/// A statement's future after its first poll. tokio-postgres queues a request on the
/// connection during that first poll, so statements polled once each, one after the other,
/// reach the server in that order and run there without waiting for the client.
enum Sent<F: Future> {
    /// It finished during the first poll: nothing to send, or it failed before sending
    /// (parameters it could not encode, a closed connection).
    Done(F::Output),
    /// Sent; the answer is awaited later.
    Waiting(Pin<Box<F>>),
}

/// Polls `f` once (see [`Sent`]).
async fn send<F: Future>(f: F) -> Sent<F> {
    let mut f = Box::pin(f);
    match poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        Poll::Ready(out) => Sent::Done(out),
        Poll::Pending => Sent::Waiting(f),
    }
}

impl<F: Future> Sent<F> {
    /// The statement's answer.
    async fn answer(self) -> F::Output {
        match self {
            Self::Done(out) => out,
            Self::Waiting(f) => f.await,
        }
    }
}

impl<T, E, F: Future<Output = std::result::Result<T, E>>> Sent<F> {
    /// Whether it failed during its first poll, possibly without reaching the server.
    fn failed_at_once(&self) -> bool {
        matches!(self, Self::Done(Err(_)))
    }
}

/// Writes the batch in one transaction; the outcome of each request, in order. `Err` means
/// the transaction did not commit (nothing of the batch was written, unless the error is
/// temporary: a lost commit).
async fn write(inner: &Inner, batch: &[Request], turn: &mut Turn) -> Result<Vec<Result<()>>> {
    let lease = Lease(Some(inner.conn().await?));
    let Some(c) = lease.0.as_ref() else {
        return Err(Error::backend(BACKEND, true, Message("no connection")));
    };
    let (result, ended) = transaction(c, batch, turn).await;
    if ended {
        lease.release();
    }
    result
}

/// How a transaction went: the batch's result, and whether the transaction is known to be
/// over (committed or rolled back), so the connection may serve another call.
type Ended = (Result<Vec<Result<()>>>, bool);

/// The two round trips of a batch (see the module documentation).
async fn transaction(c: &Object, batch: &[Request], turn: &mut Turn) -> Ended {
    // Round trip 1: open the transaction; new grants (if their client is enabled), then the
    // state of existing grants. Each answer is one a sequence of single calls could give (a
    // call issuing into a grant another call of the batch creates sees it, as if it came
    // second).
    let begin = send(c.batch_execute(BEGIN)).await;
    if begin.failed_at_once() {
        // Nothing was sent: the connection is closed.
        return (Err(pick([begin.answer().await.db().err()])), false);
    }
    // Inside the transaction, so under its lock timeout: preparing a statement locks the
    // tables it names (a table locked elsewhere, by a migration say, makes it wait). Once
    // the connection has them, this sends nothing.
    //
    // BEGIN's answer is read while the prepare runs (without waiting for it when the
    // statements are cached and nothing is sent): the driver stops reading the connection
    // while an unread answer's buffer is full, which could leave a prepare unanswered.
    let mut begin = std::pin::pin!(begin.answer());
    let mut begun = None;
    let prepared = {
        let mut prepare = std::pin::pin!(Statements::prepare(c));
        loop {
            tokio::select! {
                biased;
                p = &mut prepare => break p,
                b = &mut begin, if begun.is_none() => begun = Some(b),
            }
        }
    };
    let st = match prepared {
        Ok(st) => st,
        Err(e) => {
            let b = match begun {
                Some(b) => b,
                None => begin.await,
            };
            return (Err(pick([b.db().err(), Some(e)])), rollback(c).await);
        }
    };
    let inserted = send(insert_grants(c, &st.grants, batch)).await;
    let live = send(live_grants(c, &st.live, batch)).await;
    let begin = async {
        match begun {
            Some(b) => b,
            None => begin.await,
        }
    };
    let (begin, inserted, live) = tokio::join!(begin, inserted.answer(), live.answer());
    let (inserted, live) = match (begin.db(), inserted, live) {
        (Ok(()), Ok(i), Ok(l)) => (i, l),
        (b, i, l) => return (Err(pick([b.err(), i.err(), l.err()])), rollback(c).await),
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
    if ok.is_empty() {
        // Nothing to write: only the grant checks ran (and nothing was inserted, or some
        // request would be ok).
        return match c.batch_execute("COMMIT").await {
            Ok(()) => (Ok(outcomes), true),
            Err(e) => (Err(pg_err(e)), false),
        };
    }

    // Round trip 2: the rows, then the COMMIT.
    let rows = (
        AccessRows::new(&ok),
        RefreshRows::new(&ok),
        AuditRows::new(&ok),
    );
    let (access, refresh, audit) = match rows {
        (Ok(a), Ok(r), Ok(e)) => (a, r, e),
        (a, r, e) => return (Err(pick([a.err(), r.err(), e.err()])), rollback(c).await),
    };
    let (pa, pr, pe) = (access.params(), refresh.params(), audit.params());
    let a = send(exec_rows(c, &st.access, access.len(), &pa)).await;
    let r = send(exec_rows(c, &st.refresh, refresh.len(), &pr)).await;
    let e = send(exec_rows(c, &st.audit, audit.len(), &pe)).await;
    if a.failed_at_once() || r.failed_at_once() || e.failed_at_once() {
        // An insert that did not reach the server leaves the transaction healthy: a COMMIT
        // now would write part of the batch.
        let (a, r, e) = tokio::join!(a.answer(), r.answer(), e.answer());
        let errors = [a.err(), r.err(), e.err()].map(|e| e.map(pg_err));
        return (Err(pick(errors)), rollback(c).await);
    }
    let commit = send(c.batch_execute("COMMIT")).await;
    turn.end();
    let (a, r, e, commit) = tokio::join!(a.answer(), r.answer(), e.answer(), commit.answer());
    let inserts = [a.err(), r.err(), e.err()];
    match commit {
        Ok(()) if inserts.iter().all(Option::is_none) => (Ok(outcomes), true),
        // An insert failed and the COMMIT was answered after it, on the same connection: the
        // failure was the server's, which aborted the transaction, and PostgreSQL answered
        // the COMMIT by rolling back (without an error). Nothing was written.
        Ok(()) if inserts.iter().flatten().all(|e| e.as_db_error().is_some()) => {
            (Err(pick(inserts.map(|e| e.map(pg_err)))), true)
        }
        // A failure the server did not report (the driver could not read an answer): whether
        // the COMMIT wrote the rest is unknown, as after a lost commit.
        Ok(()) => (
            Err(Error::backend(
                BACKEND,
                true,
                Message(
                    "batched token issuance lost an answer: the tokens may or may not have \
                     been stored",
                ),
            )),
            false,
        ),
        // The server refused the COMMIT: nothing was written.
        Err(commit) if commit.as_db_error().is_some() => {
            let [a, r, e] = inserts.map(|e| e.map(pg_err));
            (Err(pick([a, r, e, Some(pg_err(commit))])), false)
        }
        // The driver failed to read the COMMIT's answer: it may have been applied.
        Err(_) => (
            Err(Error::backend(
                BACKEND,
                true,
                Message(
                    "batched token issuance lost the answer to its COMMIT: the tokens may or \
                     may not have been stored",
                ),
            )),
            false,
        ),
    }
}

/// Rolls the open transaction back; whether that is known to have worked.
async fn rollback(c: &Object) -> bool {
    c.batch_execute("ROLLBACK").await.is_ok()
}

/// Runs a prepared multi-row insert, unless it has no rows (then nothing is sent).
async fn exec_rows(
    c: &Object,
    st: &Statement,
    rows: usize,
    params: &[P<'_>],
) -> std::result::Result<u64, tokio_postgres::Error> {
    if rows == 0 {
        return Ok(0);
    }
    c.execute(st, params).await
}

/// The error that decides a failed batch, of pipelined statements: a temporary one if any,
/// else the first (the statements after a failed one only report "transaction aborted");
/// the batch then runs alone, call by call.
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

/// Inserts the new grants whose client exists and is enabled.
const INSERT_GRANTS: &str = "INSERT INTO grants (id, client_id, subject, scope, auth, created_at)
     SELECT u.id, u.client_id, u.subject, u.scope, u.auth, u.created_at
     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                 $6::timestamptz[])
          AS u (id, client_id, subject, scope, auth, created_at)
     WHERE EXISTS (SELECT 1 FROM clients AS c WHERE c.id = u.client_id AND NOT c.disabled)
     RETURNING id";

/// The existing grants that are unrevoked with an enabled client, locked `FOR KEY SHARE`.
const LIVE_GRANTS: &str =
    "SELECT g.id, g.client_id FROM grants AS g JOIN clients AS c ON c.id = g.client_id
     WHERE g.id = ANY($1::uuid[]) AND g.revoked_at IS NULL AND NOT c.disabled
     FOR KEY SHARE OF g";

const INSERT_ACCESS: &str =
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
                expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)";

const INSERT_REFRESH: &str =
    "INSERT INTO refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
         expires_at, idle_expires_at, rotated_at, successor, reuse_count, revoked_at,
         cnf_kind, cnf_value)
     SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                          $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                          $9::timestamptz[], $10::bytea[], $11::int4[],
                          $12::timestamptz[], $13::text[], $14::text[])";

const INSERT_AUDIT: &str =
    "INSERT INTO audit_events (id, at, kind, actor, subject, client_id, grant_id, ip,
         details)
     SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[],
                          $5::text[], $6::uuid[], $7::uuid[], $8::inet[], $9::jsonb[])";

/// Inserts the new grants whose client exists and is enabled; their ids.
async fn insert_grants(c: &Object, st: &Statement, batch: &[Request]) -> Result<HashSet<Uuid>> {
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
    let found = c.query(st, &params).await.db()?;
    found
        .iter()
        .map(|r| rows::grant_id(r, 0).map(|g| *g.as_uuid()))
        .collect()
}

/// The existing grants the batch issues into that are unrevoked with an enabled client,
/// with their client, locked `FOR KEY SHARE` (so cleanup, which skips locked grants,
/// cannot delete them before the batch commits).
async fn live_grants(
    c: &Object,
    st: &Statement,
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
    let found = c.query(st, &[&ids]).await.db()?;
    found
        .iter()
        .map(|r| Ok((*rows::grant_id(r, 0)?.as_uuid(), rows::client_id(r, 1)?)))
        .collect()
}

/// The columns of the access tokens of a batch.
struct AccessRows<'a> {
    hash: Vec<&'a [u8]>,
    grant: Vec<&'a Uuid>,
    client: Vec<&'a Uuid>,
    subject: Vec<Option<&'a str>>,
    scope: Vec<String>,
    audience: Vec<serde_json::Value>,
    issued: Vec<Ts>,
    expires: Vec<Ts>,
    revoked: Vec<Option<Ts>>,
    cnf_kind: Vec<Option<&'static str>>,
    cnf_value: Vec<Option<&'a str>>,
    auth: Vec<serde_json::Value>,
    claims: Vec<&'a serde_json::Value>,
}

impl<'a> AccessRows<'a> {
    fn new(ok: &[&'a Request]) -> Result<Self> {
        let tokens: Vec<_> = ok.iter().filter_map(|r| r.issue.access.as_ref()).collect();
        let n = tokens.len();
        let mut rows = Self {
            hash: Vec::with_capacity(n),
            grant: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            subject: Vec::with_capacity(n),
            scope: Vec::with_capacity(n),
            audience: Vec::with_capacity(n),
            issued: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            revoked: Vec::with_capacity(n),
            cnf_kind: Vec::with_capacity(n),
            cnf_value: Vec::with_capacity(n),
            auth: Vec::with_capacity(n),
            claims: Vec::with_capacity(n),
        };
        for (h, t) in tokens {
            let (k, v) = rows::enc_cnf(t.cnf.as_ref());
            rows.hash.push(h.as_bytes().as_slice());
            rows.grant.push(t.grant_id.as_uuid());
            rows.client.push(t.client_id.as_uuid());
            rows.subject.push(subj(t.subject.as_ref()));
            rows.scope.push(t.scope.to_string());
            // A list per row: sent as a JSON array (unnest would flatten a 2-D text[]).
            rows.audience
                .push(serde_json::Value::from(t.audience.clone()));
            rows.issued.push(ts(t.issued_at));
            rows.expires.push(ts(t.expires_at));
            rows.revoked.push(opt_ts(t.revoked_at));
            rows.cnf_kind.push(k);
            rows.cnf_value.push(v);
            rows.auth.push(rows::enc_auth(&t.auth)?);
            rows.claims.push(&t.claims);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.hash.len()
    }

    fn params(&self) -> [P<'_>; 13] {
        [
            &self.hash,
            &self.grant,
            &self.client,
            &self.subject,
            &self.scope,
            &self.audience,
            &self.issued,
            &self.expires,
            &self.revoked,
            &self.cnf_kind,
            &self.cnf_value,
            &self.auth,
            &self.claims,
        ]
    }
}

/// The columns of the refresh tokens of a batch.
struct RefreshRows<'a> {
    hash: Vec<&'a [u8]>,
    grant: Vec<&'a Uuid>,
    client: Vec<&'a Uuid>,
    subject: Vec<Option<&'a str>>,
    scope: Vec<String>,
    issued: Vec<Ts>,
    expires: Vec<Ts>,
    idle: Vec<Ts>,
    rotated: Vec<Option<Ts>>,
    successor: Vec<Option<&'a [u8]>>,
    reuse: Vec<i32>,
    revoked: Vec<Option<Ts>>,
    cnf_kind: Vec<Option<&'static str>>,
    cnf_value: Vec<Option<&'a str>>,
}

impl<'a> RefreshRows<'a> {
    fn new(ok: &[&'a Request]) -> Result<Self> {
        let tokens: Vec<_> = ok.iter().filter_map(|r| r.issue.refresh.as_ref()).collect();
        let n = tokens.len();
        let mut rows = Self {
            hash: Vec::with_capacity(n),
            grant: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            subject: Vec::with_capacity(n),
            scope: Vec::with_capacity(n),
            issued: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            idle: Vec::with_capacity(n),
            rotated: Vec::with_capacity(n),
            successor: Vec::with_capacity(n),
            reuse: Vec::with_capacity(n),
            revoked: Vec::with_capacity(n),
            cnf_kind: Vec::with_capacity(n),
            cnf_value: Vec::with_capacity(n),
        };
        for (h, t) in tokens {
            let (k, v) = rows::enc_cnf(t.cnf.as_ref());
            rows.hash.push(h.as_bytes().as_slice());
            rows.grant.push(t.grant_id.as_uuid());
            rows.client.push(t.client_id.as_uuid());
            rows.subject.push(subj(t.subject.as_ref()));
            rows.scope.push(t.scope.to_string());
            rows.issued.push(ts(t.issued_at));
            rows.expires.push(ts(t.expires_at));
            rows.idle.push(ts(t.idle_expires_at));
            rows.rotated.push(opt_ts(t.rotated_at));
            rows.successor
                .push(t.successor.as_ref().map(|h| h.as_bytes().as_slice()));
            rows.reuse.push(
                i32::try_from(t.reuse_count)
                    .map_err(|_| Error::invalid("reuse_count", "too large"))?,
            );
            rows.revoked.push(opt_ts(t.revoked_at));
            rows.cnf_kind.push(k);
            rows.cnf_value.push(v);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.hash.len()
    }

    fn params(&self) -> [P<'_>; 14] {
        [
            &self.hash,
            &self.grant,
            &self.client,
            &self.subject,
            &self.scope,
            &self.issued,
            &self.expires,
            &self.idle,
            &self.rotated,
            &self.successor,
            &self.reuse,
            &self.revoked,
            &self.cnf_kind,
            &self.cnf_value,
        ]
    }
}

/// The columns of the audit events of a batch.
struct AuditRows<'a> {
    id: Vec<&'a Uuid>,
    at: Vec<Ts>,
    kind: Vec<&'static str>,
    actor: Vec<Option<&'a str>>,
    subject: Vec<Option<&'a str>>,
    client: Vec<Option<&'a Uuid>>,
    grant: Vec<Option<&'a Uuid>>,
    ip: Vec<Option<IpAddr>>,
    details: Vec<&'a serde_json::Value>,
}

impl<'a> AuditRows<'a> {
    fn new(ok: &[&'a Request]) -> Result<Self> {
        let n = ok.len();
        let mut rows = Self {
            id: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            subject: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            grant: Vec::with_capacity(n),
            ip: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
        };
        for r in ok {
            let e = &r.audit;
            rows.id.push(e.id.as_uuid());
            rows.at.push(ts(e.at));
            rows.kind.push(e.kind.as_str());
            rows.actor.push(e.actor.as_deref());
            rows.subject.push(subj(e.subject.as_ref()));
            rows.client
                .push(e.client_id.as_ref().map(ClientId::as_uuid));
            rows.grant.push(e.grant_id.as_ref().map(|g| g.as_uuid()));
            rows.ip.push(e.ip);
            rows.details.push(&e.details);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.id.len()
    }

    fn params(&self) -> [P<'_>; 9] {
        [
            &self.id,
            &self.at,
            &self.kind,
            &self.actor,
            &self.subject,
            &self.client,
            &self.grant,
            &self.ip,
            &self.details,
        ]
    }
}
