//! Standard output: plain lines for people, one JSON document for scripts. Every write is
//! flushed at once (tests and pipelines read lines as they come).

use std::io::Write;

use authstore_core::{Client, Timestamp, User};
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

/// Writes one line to stdout and flushes it. A reader that went away gives
/// [`CliError::StdoutClosed`].
pub(crate) fn line(text: impl AsRef<str>) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::StdoutClosed
            } else {
                CliError::io("cannot write to standard output", e)
            }
        })
}

/// Writes a JSON document (pretty, one trailing newline) to stdout.
pub(crate) fn json(value: &Value) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::input(format!("cannot encode output as JSON: {e}")))?;
    line(text)
}

/// Seconds since the Unix epoch, as RFC 7591 dates are given.
fn unix(t: Timestamp) -> i64 {
    t.as_unix_seconds()
}

/// A client in RFC 7591 names (§3.2.1), plus `disabled`. `secret`, when given, is shown
/// with `client_secret_expires_at: 0` (it does not expire); nowhere else does a secret
/// appear.
pub(crate) fn client_json(c: &Client, secret: Option<&str>) -> Value {
    let mut v = json!({
        "client_id": c.id.to_string(),
        "client_id_issued_at": unix(c.created_at),
        "client_name": c.name,
        "redirect_uris": c.redirect_uris.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "grant_types": c.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "scope": c.scopes.to_string(),
        "token_endpoint_auth_method": c.token_endpoint_auth_method.as_str(),
        "disabled": c.disabled,
    });
    if let (Some(s), Value::Object(m)) = (secret, &mut v) {
        m.insert("client_secret".into(), Value::String(s.to_owned()));
        m.insert("client_secret_expires_at".into(), json!(0));
    }
    v
}

/// A client for people: one `key: value` per line.
pub(crate) fn client_lines(c: &Client) -> Vec<String> {
    let list = |v: Vec<&str>| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.join(" ")
        }
    };
    vec![
        format!("client_id:     {}", c.id),
        format!("name:          {}", c.name),
        format!("type:          {}", c.client_type),
        format!(
            "redirect_uris: {}",
            list(c.redirect_uris.iter().map(|u| u.as_str()).collect())
        ),
        format!(
            "grant_types:   {}",
            list(c.grant_types.iter().map(|g| g.as_str()).collect())
        ),
        format!("scope:         {}", list(c.scopes.iter().collect())),
        format!("auth_method:   {}", c.token_endpoint_auth_method),
        format!("disabled:      {}", c.disabled),
        format!("created_at:    {}", c.created_at),
        format!("updated_at:    {}", c.updated_at),
    ]
}

/// A user for scripts (never a password or hash: the store does not return them).
pub(crate) fn user_json(u: &User) -> Value {
    json!({
        "id": u.id.to_string(),
        "username": u.username,
        "email": u.email,
        "email_verified": u.email_verified,
        "active": u.active,
        "created_at": u.created_at.to_rfc3339(),
        "updated_at": u.updated_at.to_rfc3339(),
    })
}

/// A user for people.
pub(crate) fn user_lines(u: &User) -> Vec<String> {
    vec![
        format!("id:             {}", u.id),
        format!("username:       {}", u.username),
        format!("email:          {}", u.email.as_deref().unwrap_or("(none)")),
        format!("email_verified: {}", u.email_verified),
        format!("active:         {}", u.active),
        format!("created_at:     {}", u.created_at),
        format!("updated_at:     {}", u.updated_at),
    ]
}

/// Writes lines.
pub(crate) fn lines(v: impl IntoIterator<Item = String>) -> CliResult<()> {
    for l in v {
        line(l)?;
    }
    Ok(())
}
