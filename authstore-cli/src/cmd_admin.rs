//! Maintenance and operator commands: `migrate`, `cleanup`, `stats`, `token …`, `keys …`,
//! `audit …`.

use std::io::Read;
use std::str::FromStr;

use authstore_core::backend::{CleanupOptions, CleanupReport, RevokeOutcome};
use authstore_core::{
    AuditKind, AuditQuery, Authstore, ClientId, Error, Subject, Timestamp, TokenKind,
};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::context::Settings;
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
    /// List audit events, oldest first
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
    /// Only events about this client
    #[arg(long, value_name = "CLIENT-ID")]
    client: Option<String>,
    /// Only events about this subject (a user id)
    #[arg(long)]
    subject: Option<String>,
    /// At most this many events (1 to 1000, default 100)
    #[arg(long, value_name = "N")]
    limit: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `authstore migrate`.
pub(crate) async fn migrate(settings: &Settings, a: MigrateArgs) -> CliResult<()> {
    let store = settings.open(false).await?;
    let applied = store.migrate().await?;
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
    let store = settings.open(true).await?;
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
    let store = settings.open(true).await?;
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
            let store = settings.open(true).await?;
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
            let store = settings.open(true).await?;
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

/// `--since`: an RFC 3339 time, or a duration before now.
enum Since {
    At(Timestamp),
    Ago(std::time::Duration),
}

fn parse_since(s: &str) -> CliResult<Since> {
    if let Ok(t) = Timestamp::parse_rfc3339(s.trim()) {
        return Ok(Since::At(t));
    }
    parse_duration("--since", s).map(Since::Ago).map_err(|_| {
        CliError::input(format!(
            "--since {s:?}: expected an RFC 3339 time (2026-11-22T10:00:00Z) or a duration \
             ago (90s, 15m, 1h, 7d)"
        ))
    })
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
    if let Some(l) = &a.limit {
        let n: u32 = l.trim().parse().map_err(|_| {
            CliError::input(format!("--limit {l:?}: expected a number from 1 to 1000"))
        })?;
        q.limit = Some(n);
    }
    q.effective_limit()?;
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let store = settings.open(true).await?;
    q.since = since.map(|s| match s {
        Since::At(t) => t,
        Since::Ago(d) => store.now().saturating_sub(d),
    });
    let events = store.audit_events(&q).await?;
    if a.json {
        let v = serde_json::to_value(&events)
            .map_err(|e| CliError::input(format!("cannot encode the events: {e}")))?;
        return output::json(&v);
    }
    if events.is_empty() {
        return output::line("no audit events match");
    }
    for e in &events {
        let mut l = format!("{} {}", e.at, e.kind);
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
        output::line(l)?;
    }
    Ok(())
}
