//! Maintenance and operator commands: `migrate`, `cleanup`, `stats`, `token …`, `keys …`,
//! `audit …`.

use std::collections::VecDeque;
use std::io::Read;
use std::str::FromStr;
use std::time::Duration;

use authstore_core::backend::{CleanupOptions, CleanupReport, RevokeOutcome};
use authstore_core::{
    AuditEvent, AuditEventId, AuditKind, AuditQuery, Authstore, ClientId, Error, Subject,
    Timestamp, TokenKind,
};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::context::{Access, Settings};
use crate::duration::parse_duration;
use crate::error::{CliError, CliResult};
use crate::output;
use authstore::keys::{self, Ring};

/// `migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Print JSON: `{"applied": [versions]}`
    #[arg(long)]
    json: bool,
}

/// `cleanup`.
#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Count what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Keep dead records this long after they stopped being valid (e.g. 1h, 7d; default
    /// `[cleanup] retention_secs` or 1d)
    #[arg(long, value_name = "DURATION")]
    retention: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `token …`. (No `Debug`: arguments may hold a token.)
#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Whether an access or refresh token is active, and what it carries (RFC 7662 names)
    Introspect(TokenArgs),
    /// Revoke an access token, or a refresh token with its whole grant
    Revoke(TokenArgs),
}

/// A token, from an argument or standard input.
#[derive(Args)]
pub(crate) struct TokenArgs {
    /// The token (prefer --token-stdin: arguments show in `ps`)
    #[arg(
        required_unless_present = "token_stdin",
        conflicts_with = "token_stdin"
    )]
    token: Option<String>,
    /// Read the token from standard input
    #[arg(long)]
    token_stdin: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a new random key as one line of a key file (`<id> <64 hex digits>`)
    Generate(GenerateArgs),
}

/// `keys generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The key's id (default k<YYYYMMDD>-1, or s<YYYYMMDD>-1 with --sealing)
    #[arg(long)]
    id: Option<String>,
    /// A key for the sealing key ring (AES-256-GCM) rather than the token key ring
    #[arg(long)]
    sealing: bool,
}

/// `audit …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit events: the newest N (default 100), printed oldest first; with --after,
    /// the N that follow an event
    List(AuditListArgs),
}

/// `audit list`.
#[derive(Debug, Args)]
pub(crate) struct AuditListArgs {
    /// Only events of this kind (e.g. client.created, login.failed)
    #[arg(long)]
    kind: Option<String>,
    /// Only events at or after this time: RFC 3339 (2026-11-22T10:00:00Z) or a duration
    /// ago (1h, 7d)
    #[arg(long, value_name = "TIME-OR-DURATION")]
    since: Option<String>,
    /// Only events before this time (not at it): RFC 3339 or a duration ago
    #[arg(long, value_name = "TIME-OR-DURATION")]
    until: Option<String>,
    /// Only events after this one (an event id from an earlier list), the oldest first: to
    /// read on from where a list ended
    #[arg(long, value_name = "EVENT-ID")]
    after: Option<String>,
    /// Only events about this client
    #[arg(long, value_name = "CLIENT-ID")]
    client: Option<String>,
    /// Only events about this subject (a user id)
    #[arg(long)]
    subject: Option<String>,
    /// At most this many events (1 to 1000, default 100)
    #[arg(long, value_name = "N")]
    limit: Option<String>,
    /// Print JSON (an array, in id order)
    #[arg(long)]
    json: bool,
}

/// `authstore migrate`.
pub(crate) async fn migrate(settings: &Settings, a: MigrateArgs) -> CliResult<()> {
    let store = settings.open(Access::Migrate).await?;
    let applied = store.migrate().await?;
    crate::context::verify_keys(&store).await?;
    if a.json {
        return output::json(&json!({ "applied": applied }));
    }
    if applied.is_empty() {
        output::line("the database schema is up to date (no migration to apply)")
    } else {
        let list: Vec<String> = applied.iter().map(i64::to_string).collect();
        output::line(format!("applied migrations: {}", list.join(", ")))
    }
}

fn report_json(r: &CleanupReport, dry_run: bool) -> CliResult<Value> {
    let mut v = serde_json::to_value(r)
        .map_err(|e| CliError::input(format!("cannot encode the report: {e}")))?;
    if let Value::Object(m) = &mut v {
        m.insert("total".into(), json!(r.total()));
        m.insert("dry_run".into(), json!(dry_run));
    }
    Ok(v)
}

/// `authstore cleanup`.
pub(crate) async fn cleanup(settings: &Settings, a: CleanupArgs) -> CliResult<()> {
    let mut options = CleanupOptions::default();
    if let Some(r) = settings.file.retention() {
        options.retention = r;
    }
    if let Some(r) = &a.retention {
        options.retention = parse_duration("--retention", r)?;
    }
    let store = settings.open(Access::Existing).await?;
    let report = if a.dry_run {
        store.cleanup_preview(&options).await?
    } else {
        store.cleanup(&options).await?
    };
    let v = report_json(&report, a.dry_run)?;
    if a.json {
        return output::json(&v);
    }
    output::line(if a.dry_run {
        "would delete (dry run, nothing deleted):"
    } else {
        "deleted:"
    })?;
    if let Value::Object(m) = &v {
        for (k, n) in m {
            if !matches!(k.as_str(), "incomplete" | "dry_run" | "total") {
                output::line(format!("  {k}: {n}"))?;
            }
        }
    }
    output::line(format!("total: {}", report.total()))?;
    if report.incomplete {
        output::line("more remain (a batch or time limit was reached): run cleanup again")?;
    }
    Ok(())
}

/// `authstore stats`.
pub(crate) async fn stats(settings: &Settings, a: StatsArgs) -> CliResult<()> {
    let store = settings.open(Access::Existing).await?;
    let s = store.stats().await?;
    let v = serde_json::to_value(s)
        .map_err(|e| CliError::input(format!("cannot encode the statistics: {e}")))?;
    if a.json {
        return output::json(&v);
    }
    let Value::Object(m) = v else {
        return output::json(&v);
    };
    for (k, val) in &m {
        match val {
            Value::Object(kinds) => {
                let parts: Vec<String> = kinds.iter().map(|(c, n)| format!("{c} {n}")).collect();
                output::line(format!("{k}: {}", parts.join(", ")))?;
            }
            Value::Null => output::line(format!("{k}: unknown"))?,
            other => output::line(format!("{k}: {other}"))?,
        }
    }
    Ok(())
}

fn read_token(a: &TokenArgs) -> CliResult<Zeroizing<String>> {
    let t = match &a.token {
        Some(t) => Zeroizing::new(t.trim().to_owned()),
        None => {
            let mut buf = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| CliError::io("cannot read the token from standard input", e))?;
            Zeroizing::new(buf.trim().to_owned())
        }
    };
    if t.is_empty() {
        return Err(CliError::input("no token given"));
    }
    Ok(t)
}

/// Whether a token of this deployment is a refresh token (else it is tried as an access
/// token), by its prefix.
fn is_refresh(store: &Authstore, token: &str) -> bool {
    let fmt = &store.config().token_format;
    let rest = match fmt.deployment_prefix() {
        Some(p) => token
            .strip_prefix(p)
            .and_then(|r| r.strip_prefix('_'))
            .unwrap_or(token),
        None => token,
    };
    rest.starts_with(&format!("{}_", TokenKind::RefreshToken.prefix()))
}

fn insert_opt(m: &mut Map<String, Value>, k: &str, v: Option<String>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v));
    }
}

/// `authstore token …`.
pub(crate) async fn token(settings: &Settings, cmd: TokenCommand) -> CliResult<()> {
    match cmd {
        TokenCommand::Introspect(a) => {
            let token = read_token(&a)?;
            let store = settings.open(Access::Existing).await?;
            let refresh = is_refresh(&store, &token);
            let mut m = Map::new();
            let result = if refresh {
                store.introspect_refresh_token(&token).await.map(|t| {
                    m.insert("token_type".into(), json!("refresh_token"));
                    m.insert("client_id".into(), json!(t.client_id.to_string()));
                    insert_opt(&mut m, "sub", t.subject.map(|s| s.as_str().to_owned()));
                    m.insert("scope".into(), json!(t.scope.to_string()));
                    m.insert("iat".into(), json!(t.issued_at.as_unix_seconds()));
                    m.insert("exp".into(), json!(t.expires_at.as_unix_seconds()));
                    m.insert(
                        "idle_exp".into(),
                        json!(t.idle_expires_at.as_unix_seconds()),
                    );
                    m.insert("grant_id".into(), json!(t.grant_id.to_string()));
                })
            } else {
                store.validate_access_token(&token).await.map(|t| {
                    m.insert("token_type".into(), json!("access_token"));
                    m.insert("client_id".into(), json!(t.client_id.to_string()));
                    insert_opt(&mut m, "sub", t.subject.map(|s| s.as_str().to_owned()));
                    m.insert("scope".into(), json!(t.scope.to_string()));
                    m.insert("iat".into(), json!(t.issued_at.as_unix_seconds()));
                    m.insert("exp".into(), json!(t.expires_at.as_unix_seconds()));
                    if !t.audience.is_empty() {
                        m.insert("aud".into(), json!(t.audience));
                    }
                    m.insert("grant_id".into(), json!(t.grant_id.to_string()));
                })
            };
            let active = match result {
                Ok(()) => true,
                Err(Error::Inactive { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            m.insert("active".into(), json!(active));
            if a.json {
                let mut ordered = Map::new();
                ordered.insert("active".into(), json!(active));
                ordered.extend(m.into_iter().filter(|(k, _)| k != "active"));
                return output::json(&Value::Object(ordered));
            }
            if !active {
                return output::line("active: false (unknown, expired or revoked)");
            }
            for (k, v) in &m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                output::line(format!("{k}: {v}"))?;
            }
            Ok(())
        }
        TokenCommand::Revoke(a) => {
            let token = read_token(&a)?;
            let store = settings.open(Access::Existing).await?;
            let refresh = is_refresh(&store, &token);
            match store.revoke_token(&token, None, None).await? {
                RevokeOutcome::Revoked { grant_id } => {
                    if a.json {
                        return output::json(&json!({
                            "revoked": true,
                            "token_type": if refresh { "refresh_token" } else { "access_token" },
                            "grant_id": grant_id.to_string(),
                        }));
                    }
                    output::line(if refresh {
                        format!(
                            "revoked the refresh token and its whole grant {grant_id} (every \
                             token of it)"
                        )
                    } else {
                        format!("revoked the access token (grant {grant_id})")
                    })
                }
                _ => Err(CliError::input(
                    "no such token here (unknown, or already deleted by cleanup): nothing was \
                     revoked",
                )),
            }
        }
    }
}

/// `authstore keys …`.
pub(crate) fn keys(cmd: KeysCommand) -> CliResult<()> {
    match cmd {
        KeysCommand::Generate(a) => {
            let ring = if a.sealing {
                Ring::Sealing
            } else {
                Ring::Token
            };
            let id = a.id.unwrap_or_else(|| keys::default_key_id(ring));
            let line = keys::generate_line(ring, &id)?;
            output::line(line.as_str())
        }
    }
}

/// `--since` / `--until`: an RFC 3339 time, or a duration before now.
enum TimeArg {
    At(Timestamp),
    Ago(Duration),
}

impl TimeArg {
    fn at(&self, now: Timestamp) -> Timestamp {
        match self {
            TimeArg::At(t) => *t,
            TimeArg::Ago(d) => now.saturating_sub(*d),
        }
    }
}

fn parse_time(flag: &str, s: &str) -> CliResult<TimeArg> {
    if let Ok(t) = Timestamp::parse_rfc3339(s.trim()) {
        return Ok(TimeArg::At(t));
    }
    parse_duration(flag, s).map(TimeArg::Ago).map_err(|_| {
        CliError::input(format!(
            "{flag} {s:?}: expected an RFC 3339 time (2026-11-22T10:00:00Z) or a duration \
             ago (90s, 15m, 1h, 7d)"
        ))
    })
}

/// The most events one query returns.
const AUDIT_PAGE: usize = 1000;

/// One query: `q` with `since` raised to `from` (if later) and at most `limit` events.
async fn audit_page(
    store: &Authstore,
    q: &AuditQuery,
    from: Option<Timestamp>,
    after: Option<AuditEventId>,
    limit: usize,
) -> CliResult<Vec<AuditEvent>> {
    let mut p = q.clone();
    p.since = match (q.since, from) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if after.is_some() {
        p.after = after;
    }
    p.limit = Some(u32::try_from(limit).unwrap_or(u32::MAX));
    Ok(store.audit_events(&p).await?)
}

/// The last `n` of `v`.
fn last_n(mut v: Vec<AuditEvent>, n: usize) -> Vec<AuditEvent> {
    let cut = v.len().saturating_sub(n);
    v.drain(..cut);
    v
}

/// The `n` events (1 to 1000) that follow `q.after`, in id order, and whether more follow.
async fn audit_after(
    store: &Authstore,
    q: &AuditQuery,
    n: usize,
) -> CliResult<(Vec<AuditEvent>, bool)> {
    let events = audit_page(store, q, None, None, n).await?;
    let more = match events.last() {
        Some(last) if events.len() == n => !audit_page(store, q, None, Some(last.id), 1)
            .await?
            .is_empty(),
        _ => false,
    };
    Ok((events, more))
}

/// The newest `n` events (1 to 1000) `q` matches, in id order, and whether older ones
/// match too.
///
/// The store lists events oldest first, so this looks back from the newest end: it counts
/// (up to a page) the events at or after a time that doubles its distance from now (1 s,
/// 2 s, 4 s, …) until at least `n` are found, then halves between the last two times. Each
/// query reads at most one page; the number of queries grows with the logarithm of the
/// time the log spans, not with its size.
async fn audit_newest(
    store: &Authstore,
    q: &AuditQuery,
    n: usize,
) -> CliResult<(Vec<AuditEvent>, bool)> {
    let all = audit_page(store, q, None, None, AUDIT_PAGE).await?;
    let Some(oldest) = all.first().map(|e| e.at) else {
        return Ok((all, false));
    };
    let every_one = all.len() < AUDIT_PAGE
        || match all.last() {
            Some(last) => audit_page(store, q, None, Some(last.id), 1)
                .await?
                .is_empty(),
            None => true,
        };
    if every_one {
        let more = all.len() > n;
        return Ok((last_n(all, n), more));
    }
    // More than a page matches, so older events than the `n` shown exist. Invariants:
    // at least `n` events are at or after `lo`, fewer than `n` at or after `hi`.
    let top = q.until.unwrap_or_else(|| store.now());
    let mut hi = Timestamp::from_unix_micros(i64::MAX);
    let mut back = Duration::ZERO;
    let mut lo = loop {
        let t = top.saturating_sub(back);
        if t <= oldest {
            break oldest;
        }
        let got = audit_page(store, q, Some(t), None, AUDIT_PAGE).await?;
        if got.len() >= n {
            if got.len() < AUDIT_PAGE {
                return Ok((last_n(got, n), true));
            }
            break t;
        }
        hi = t;
        back = if back.is_zero() {
            Duration::from_secs(1)
        } else {
            back.saturating_mul(2)
        };
    };
    while i128::from(hi.as_unix_micros()) - i128::from(lo.as_unix_micros()) > 1 {
        let mid = (i128::from(lo.as_unix_micros()) + i128::from(hi.as_unix_micros())) / 2;
        let mid = Timestamp::from_unix_micros(i64::try_from(mid).unwrap_or(i64::MAX));
        let got = audit_page(store, q, Some(mid), None, AUDIT_PAGE).await?;
        if got.len() >= n {
            if got.len() < AUDIT_PAGE {
                return Ok((last_n(got, n), true));
            }
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // At least `n` events are at or after `lo`, and fewer than `n` after it: all but a
    // few share the instant `lo`. Read them on, keeping the last `n`.
    let mut kept: VecDeque<AuditEvent> = VecDeque::with_capacity(n + 1);
    let mut cursor = None;
    loop {
        let page = audit_page(store, q, Some(lo), cursor, AUDIT_PAGE).await?;
        let full = page.len() == AUDIT_PAGE;
        cursor = page.last().map(|e| e.id);
        for e in page {
            kept.push_back(e);
            if kept.len() > n {
                kept.pop_front();
            }
        }
        if !full {
            return Ok((kept.into(), true));
        }
    }
}

/// One event as a line for people.
fn event_line(e: &AuditEvent) -> String {
    let mut l = format!("{} {} {}", e.at, e.id, e.kind);
    if let Some(c) = e.client_id {
        l.push_str(&format!(" client={c}"));
    }
    if let Some(s) = &e.subject {
        l.push_str(&format!(" subject={}", s.as_str()));
    }
    if let Some(g) = e.grant_id {
        l.push_str(&format!(" grant={g}"));
    }
    if let Some(a) = &e.actor {
        l.push_str(&format!(" actor={a}"));
    }
    if let Some(ip) = e.ip {
        l.push_str(&format!(" ip={ip}"));
    }
    if e.details.as_object().is_some_and(|m| !m.is_empty()) {
        l.push_str(&format!(" {}", e.details));
    }
    l
}

/// `authstore audit …`.
pub(crate) async fn audit(settings: &Settings, cmd: AuditCommand) -> CliResult<()> {
    let AuditCommand::List(a) = cmd;
    let mut q = AuditQuery::default();
    if let Some(k) = &a.kind {
        q.kind = Some(AuditKind::from_str(k.trim())?);
    }
    if let Some(c) = &a.client {
        q.client_id = Some(ClientId::from_str(c.trim())?);
    }
    if let Some(s) = &a.subject {
        q.subject = Some(Subject::new(s.trim())?);
    }
    if let Some(e) = &a.after {
        q.after = Some(AuditEventId::from_str(e.trim())?);
    }
    if let Some(l) = &a.limit {
        let n: u32 = l.trim().parse().map_err(|_| {
            CliError::input(format!("--limit {l:?}: expected a number from 1 to 1000"))
        })?;
        q.limit = Some(n);
    }
    let n = usize::try_from(q.effective_limit()?).unwrap_or(AUDIT_PAGE);
    q.limit = None;
    let since = a
        .since
        .as_deref()
        .map(|s| parse_time("--since", s))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_time("--until", s))
        .transpose()?;
    let store = settings.open(Access::Existing).await?;
    let now = store.now();
    q.since = since.map(|s| s.at(now));
    q.until = until.map(|u| u.at(now));
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if s > u {
            return Err(CliError::input(format!(
                "--since ({s}) is after --until ({u}): no event can match"
            )));
        }
    }
    let (events, more) = if q.after.is_some() {
        audit_after(&store, &q, n).await?
    } else {
        audit_newest(&store, &q, n).await?
    };
    if a.json {
        let v = serde_json::to_value(&events)
            .map_err(|e| CliError::input(format!("cannot encode the events: {e}")))?;
        return output::json(&v);
    }
    if events.is_empty() {
        return output::line("no audit events match");
    }
    for e in &events {
        output::line(event_line(e))?;
    }
    if more {
        let note = match (q.after.is_some(), events.first(), events.last()) {
            (true, _, Some(last)) => format!(
                "note: more events follow (--limit {n}): run again with --after {}",
                last.id
            ),
            (false, Some(first), _) => format!(
                "note: older events match too (only the newest {n} are shown): raise --limit \
                 (at most 1000), narrow with --kind or --since, or list the older ones with \
                 --until {} (the first event above is listed again)",
                first.at.saturating_add(Duration::from_micros(1))
            ),
            _ => String::new(),
        };
        eprintln!("{note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use authstore_core::{ManualClock, NewClient, TokenKey, TokenKeyring};

    use super::*;

    /// Every event `q` matches, by paging with the cursor: what the clever search must
    /// agree with.
    async fn brute_force(store: &Authstore, q: &AuditQuery) -> Vec<AuditEvent> {
        let mut all: Vec<AuditEvent> = Vec::new();
        loop {
            let page = audit_page(store, q, None, all.last().map(|e| e.id), AUDIT_PAGE)
                .await
                .unwrap();
            let done = page.len() < AUDIT_PAGE;
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    #[tokio::test]
    async fn newest_events_match_a_full_scan() {
        let start = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let clock = ManualClock::new(start);
        let store = Authstore::new(
            Arc::new(authstore_memory::MemoryStore::new()),
            TokenKeyring::new(TokenKey::generate("k").unwrap()),
        )
        .with_clock(Arc::new(clock.clone()));
        let client = |name: &str| NewClient::confidential(name.to_owned());
        // Events spread over months, then a burst of 1200 at one instant, then a few
        // seconds apart, then a last one: every path of the search is taken by some `n`.
        for i in 0..300u64 {
            store.create_client(client("spread")).await.unwrap();
            clock.advance(Duration::from_secs(3600 * (1 + i % 50)));
        }
        let burst_at = store.now();
        for _ in 0..1200 {
            store.create_client(client("burst")).await.unwrap();
        }
        for _ in 0..700 {
            clock.advance(Duration::from_millis(1500));
            let c = store.create_client(client("late")).await.unwrap();
            store.disable_client(c.client.id).await.unwrap();
        }
        clock.advance(Duration::from_secs(86_400));
        store.create_client(client("last")).await.unwrap();
        clock.advance(Duration::from_secs(60));

        let queries = [
            AuditQuery::default(),
            AuditQuery {
                kind: Some(AuditKind::ClientCreated),
                ..AuditQuery::default()
            },
            AuditQuery {
                kind: Some(AuditKind::ClientDisabled),
                ..AuditQuery::default()
            },
            AuditQuery {
                until: Some(burst_at.saturating_add(Duration::from_secs(5))),
                ..AuditQuery::default()
            },
            AuditQuery {
                since: Some(burst_at),
                until: Some(store.now().saturating_sub(Duration::from_secs(3600))),
                ..AuditQuery::default()
            },
            AuditQuery {
                until: Some(burst_at),
                ..AuditQuery::default()
            },
        ];
        for q in &queries {
            let all = brute_force(&store, q).await;
            for n in [1, 2, 50, 500, 999, 1000] {
                let (got, more) = audit_newest(&store, q, n).await.unwrap();
                let want = last_n(all.clone(), n);
                let ids = |v: &[AuditEvent]| v.iter().map(|e| e.id).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&want), "{q:?} n={n}");
                assert_eq!(more, all.len() > n, "{q:?} n={n}");
            }
        }
        // Reading on with the cursor: the next `n` after an event, and whether more follow.
        let all = brute_force(&store, &AuditQuery::default()).await;
        let q = AuditQuery {
            after: Some(all[10].id),
            ..AuditQuery::default()
        };
        let (got, more) = audit_after(&store, &q, 5).await.unwrap();
        assert_eq!(got, all[11..16].to_vec());
        assert!(more);
        let q = AuditQuery {
            after: Some(all[all.len() - 4].id),
            ..AuditQuery::default()
        };
        let (got, more) = audit_after(&store, &q, 3).await.unwrap();
        assert_eq!(got, all[all.len() - 3..].to_vec());
        assert!(!more, "exactly the last three");
    }
}
