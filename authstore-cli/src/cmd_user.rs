//! `authstore user …`: create and manage users.

use std::io::{BufRead, IsTerminal, Write};
use std::str::FromStr;

use authstore_core::{
    Authstore, Error, NewUser, Password, PasswordHasher, Timestamp, User, UserId,
};
use clap::{Args, Subcommand};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::context::{Access, Settings};
use crate::error::{CliError, CliResult};
use crate::output;

/// `authstore user …`. (No `Debug`: arguments may hold a password.)
#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user with a password
    Create(CreateArgs),
    /// List users
    List(ListArgs),
    /// Show a user
    Show(WhoJson),
    /// Set a user's password
    SetPassword(SetPasswordArgs),
    /// Disable a user: no more logins, and every grant and token they hold is revoked
    Disable(Who),
    /// Enable a disabled user again
    Enable(Who),
    /// Delete a user and everything they own
    Delete(Who),
}

/// How the password is given.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct PasswordArgs {
    /// Read the password from standard input (preferred: it stays out of `ps`)
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other users in `ps` and in shell history)
    #[arg(long)]
    password: Option<String>,
}

/// `user create`.
#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The username (unique, case-insensitive)
    #[arg(long)]
    username: String,
    /// The email address (unique, case-insensitive)
    #[arg(long)]
    email: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `user list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only users whose username or email contains this (case-insensitive)
    #[arg(long)]
    search: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// A user and `--json`.
#[derive(Debug, Args)]
pub(crate) struct WhoJson {
    /// The user's id, username or email
    #[arg(value_name = "ID-OR-USERNAME")]
    who: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// A user.
#[derive(Debug, Args)]
pub(crate) struct Who {
    /// The user's id, username or email
    #[arg(value_name = "ID-OR-USERNAME")]
    who: String,
}

/// `user set-password`.
#[derive(Args)]
pub(crate) struct SetPasswordArgs {
    /// The user's id, username or email
    #[arg(value_name = "ID-OR-USERNAME")]
    who: String,
    #[command(flatten)]
    password: PasswordArgs,
    /// Also revoke every grant, personal access token and login session of the user (log
    /// out everywhere)
    #[arg(long)]
    revoke_sessions: bool,
}

/// What `--password-stdin` prints on a terminal before it reads a line.
const PROMPT: &str = "Password (it is shown as you type it; end it with Enter): ";

/// Reads the password from `input`. From a terminal (`terminal`): prompts on `prompt` and
/// reads one line. Otherwise reads to the end; one trailing newline is the end of the line,
/// not part of the password.
fn password_from(
    input: &mut impl BufRead,
    terminal: bool,
    prompt: &mut impl Write,
) -> CliResult<Password> {
    let mut buf = Zeroizing::new(String::new());
    let read_err = |e| CliError::io("cannot read the password from standard input", e);
    if terminal {
        prompt
            .write_all(PROMPT.as_bytes())
            .and_then(|()| prompt.flush())
            .map_err(|e| CliError::io("cannot write the password prompt", e))?;
        input.read_line(&mut buf).map_err(read_err)?;
    } else {
        input.read_to_string(&mut buf).map_err(read_err)?;
    }
    let end = buf
        .strip_suffix("\r\n")
        .or_else(|| buf.strip_suffix('\n'))
        .unwrap_or(&buf);
    if end.is_empty() {
        return Err(CliError::input(
            "no password on standard input (pipe it in, e.g. `printf '%s' \"$PW\" | \
             authstore user create … --password-stdin`)",
        ));
    }
    Ok(Password::new(end.to_owned()))
}

/// Reads the password as given, and checks it against the policy before anything changes.
fn read_password(p: &PasswordArgs) -> CliResult<Password> {
    let pw = match (&p.password, p.password_stdin) {
        (Some(pw), _) => {
            eprintln!(
                "warning: --password shows the password to other users of this machine (ps, \
                 shell history); prefer --password-stdin"
            );
            Password::new(pw.clone())
        }
        (None, _) => {
            let stdin = std::io::stdin();
            let terminal = stdin.is_terminal();
            password_from(&mut stdin.lock(), terminal, &mut std::io::stderr())?
        }
    };
    PasswordHasher::check_policy(&pw)?;
    Ok(pw)
}

/// Checks a new user as the store will, before the store is opened (or created).
fn check_new_user(new: &NewUser) -> CliResult<()> {
    let prospective = User {
        id: UserId::from_uuid(uuid::Uuid::nil()),
        username: new.username.clone(),
        email: new.email.clone(),
        email_verified: false,
        active: true,
        metadata: serde_json::Value::Object(serde_json::Map::new()),
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
    };
    Ok(prospective.validate()?)
}

/// The user named by id (a UUID), username or email.
async fn find_user(store: &Authstore, who: &str) -> CliResult<User> {
    let who = who.trim();
    if let Ok(id) = UserId::from_str(who) {
        return Ok(store.user(id).await?);
    }
    match store.user_by_username(who).await {
        Ok(u) => Ok(u),
        Err(Error::NotFound { .. } | Error::InvalidInput { .. }) if who.contains('@') => {
            Ok(store.user_by_email(who).await?)
        }
        Err(Error::NotFound { .. }) => Err(CliError::input(format!(
            "no user with id, username or email {who:?} (see `authstore user list`)"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn print_user(u: &User, json: bool) -> CliResult<()> {
    if json {
        output::json(&output::user_json(u))
    } else {
        output::lines(output::user_lines(u))
    }
}

/// Runs a `user` command.
pub(crate) async fn run(settings: &Settings, cmd: UserCommand) -> CliResult<()> {
    match cmd {
        UserCommand::Create(a) => {
            let mut new = NewUser::new(a.username.trim());
            if let Some(e) = &a.email {
                new = new.email(e.trim());
            }
            check_new_user(&new)?;
            let pw = read_password(&a.password)?;
            let store = settings.open(Access::Create).await?;
            let user = store.create_user(new).await?;
            if let Err(e) = store.set_password(user.id, &pw, false).await {
                // Leave nothing half-made behind: a user without the password asked for.
                let _ = store.delete_user(user.id).await;
                return Err(e.into());
            }
            print_user(&user, a.json)
        }
        UserCommand::List(a) => {
            let store = settings.open(Access::Existing).await?;
            let mut users: Vec<User> = Vec::new();
            loop {
                let page = store
                    .list_users(users.last().map(|u| u.id), 1000, a.search.as_deref())
                    .await?;
                let done = page.len() < 1000;
                users.extend(page);
                if done {
                    break;
                }
            }
            if a.json {
                return output::json(&Value::Array(users.iter().map(output::user_json).collect()));
            }
            if users.is_empty() {
                return output::line("no users");
            }
            for u in &users {
                output::line(format!(
                    "{}  {:<8} {}{}",
                    u.id,
                    if u.active { "active" } else { "disabled" },
                    u.username,
                    u.email
                        .as_deref()
                        .map(|e| format!("  <{e}>"))
                        .unwrap_or_default()
                ))?;
            }
            Ok(())
        }
        UserCommand::Show(a) => {
            let store = settings.open(Access::Existing).await?;
            let u = find_user(&store, &a.who).await?;
            print_user(&u, a.json)
        }
        UserCommand::SetPassword(a) => {
            let pw = read_password(&a.password)?;
            let store = settings.open(Access::Existing).await?;
            let u = find_user(&store, &a.who).await?;
            store.set_password(u.id, &pw, a.revoke_sessions).await?;
            if a.revoke_sessions {
                let n = store.revoke_all_login_sessions(u.id).await?;
                output::line(format!(
                    "password set for {}; their grants and tokens are revoked, and {n} login \
                     session(s)",
                    u.username
                ))
            } else {
                output::line(format!("password set for {}", u.username))
            }
        }
        UserCommand::Disable(a) => {
            let store = settings.open(Access::Existing).await?;
            let u = find_user(&store, &a.who).await?;
            let u = store.disable_user(u.id).await?;
            output::line(format!(
                "disabled user {} ({}); their grants and tokens are revoked",
                u.username, u.id
            ))
        }
        UserCommand::Enable(a) => {
            let store = settings.open(Access::Existing).await?;
            let u = find_user(&store, &a.who).await?;
            let u = store.enable_user(u.id).await?;
            output::line(format!("enabled user {} ({})", u.username, u.id))
        }
        UserCommand::Delete(a) => {
            let store = settings.open(Access::Existing).await?;
            let u = find_user(&store, &a.who).await?;
            store.delete_user(u.id).await?;
            output::line(format!("deleted user {} ({})", u.username, u.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_a_prompt_and_one_line_is_read() {
        let mut prompt = Vec::new();
        let mut input = std::io::Cursor::new("correct horse\nnot read\n");
        let pw = password_from(&mut input, true, &mut prompt).unwrap();
        assert_eq!(pw.secret(), "correct horse");
        assert_eq!(String::from_utf8(prompt).unwrap(), PROMPT);
        // From a pipe: no prompt, everything up to the end (one trailing newline dropped).
        let mut prompt = Vec::new();
        let mut input = std::io::Cursor::new("two\nlines\r\n");
        let pw = password_from(&mut input, false, &mut prompt).unwrap();
        assert_eq!(pw.secret(), "two\nlines");
        assert!(prompt.is_empty());
        // Enter alone on a terminal is no password.
        let e = password_from(&mut std::io::Cursor::new("\n"), true, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no password"), "{e}");
    }
}
