//! `authstore`: the OAuth 2.0 server (`authstore serve`) and the operator's commands for
//! clients, users, tokens, keys, the audit log and maintenance. See docs/CLI.md.
//!
//! Errors are printed as `error: …` on stderr with exit status 1; usage errors exit with 2.

mod cmd_admin;
mod cmd_client;
mod cmd_user;
mod config;
mod context;
mod duration;
mod error;
mod output;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::context::{GlobalInput, Settings};
use crate::error::{CliError, CliResult};

// No `Debug` on the parsed arguments: they may hold a password, a token or a database
// password.

/// authstore: an OAuth 2.0 authorization server and its store.
#[derive(Parser)]
#[command(name = "authstore", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes. Precedence: flag, then environment, then config file, then
/// default.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Store URL: sqlite://PATH, postgres://USER@HOST/DB or memory: (environment
    /// AUTHSTORE_DATABASE_URL, then DATABASE_URL; default sqlite://./authstore.db)
    #[arg(
        long,
        global = true,
        env = "AUTHSTORE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// TOML configuration file (see docs/CLI.md for its keys)
    #[arg(long, global = true, env = "AUTHSTORE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Token key file (default for SQLite: <database file>.token-keys). Keys may also be
    /// given inline in AUTHSTORE_TOKEN_KEYS
    #[arg(
        long,
        global = true,
        env = "AUTHSTORE_TOKEN_KEY_FILE",
        value_name = "FILE"
    )]
    token_key_file: Option<PathBuf>,
    /// Sealing key file (default for SQLite: <database file>.sealing-keys). Keys may also
    /// be given inline in AUTHSTORE_SEALING_KEYS
    #[arg(
        long,
        global = true,
        env = "AUTHSTORE_SEALING_KEY_FILE",
        value_name = "FILE"
    )]
    sealing_key_file: Option<PathBuf>,
    /// Log format on stderr (filter from AUTHSTORE_LOG or RUST_LOG, default info)
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "AUTHSTORE_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OAuth 2.0 server (migrates the database first)
    Serve(serve::ServeArgs),
    /// Register and manage OAuth clients
    #[command(subcommand)]
    Client(cmd_client::ClientCommand),
    /// Create and manage users
    #[command(subcommand)]
    User(cmd_user::UserCommand),
    /// Apply pending database migrations
    Migrate(cmd_admin::MigrateArgs),
    /// Delete expired, revoked and consumed records past the retention window
    Cleanup(cmd_admin::CleanupArgs),
    /// Counts of clients, grants, codes, tokens and sessions
    Stats(cmd_admin::StatsArgs),
    /// Look at or revoke a token as the operator
    #[command(subcommand)]
    Token(cmd_admin::TokenCommand),
    /// Generate keys
    #[command(subcommand)]
    Keys(cmd_admin::KeysCommand),
    /// Read the audit log
    #[command(subcommand)]
    Audit(cmd_admin::AuditCommand),
}

fn init_logging(format: LogFormat) -> CliResult<()> {
    use tracing_subscriber::EnvFilter;
    let (var, spec) = match (
        context::env_var("AUTHSTORE_LOG"),
        context::env_var("RUST_LOG"),
    ) {
        (Some(s), _) => ("AUTHSTORE_LOG", s),
        (None, Some(s)) => ("RUST_LOG", s),
        (None, None) => ("default", "info".to_owned()),
    };
    let filter = EnvFilter::try_new(&spec).map_err(|e| {
        CliError::input(format!(
            "{var}={spec:?} is not a log filter ({e}); use e.g. info, debug or \
             authstore_server=debug,info"
        ))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    result.map_err(|e| CliError::input(format!("cannot start logging: {e}")))
}

async fn run(cli: Cli, database_url_from_flag: bool) -> CliResult<()> {
    let g = cli.global;
    let input = GlobalInput {
        database_url: g.database_url,
        database_url_from_flag,
        config: g.config,
        token_key_file: g.token_key_file,
        sealing_key_file: g.sealing_key_file,
    };
    // `keys generate` needs no store, nor a valid config file.
    if let Command::Keys(k) = cli.command {
        return cmd_admin::keys(k);
    }
    let settings = Settings::resolve(input)?;
    match cli.command {
        Command::Serve(a) => serve::run(&settings, a).await,
        Command::Client(c) => cmd_client::run(&settings, c).await,
        Command::User(c) => cmd_user::run(&settings, c).await,
        Command::Migrate(a) => cmd_admin::migrate(&settings, a).await,
        Command::Cleanup(a) => cmd_admin::cleanup(&settings, a).await,
        Command::Stats(a) => cmd_admin::stats(&settings, a).await,
        Command::Token(c) => cmd_admin::token(&settings, c).await,
        Command::Audit(c) => cmd_admin::audit(&settings, c).await,
        Command::Keys(k) => cmd_admin::keys(k),
    }
}

fn main() -> ExitCode {
    // Usage errors print clap's message and exit with status 2; --help and --version exit 0.
    let matches = Cli::command().get_matches();
    // Whether the database URL was typed as a flag or came from AUTHSTORE_DATABASE_URL:
    // hints never print a URL that came from the environment as a flag.
    let database_url_from_flag =
        matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let fail = |e: CliError| {
        // A reader that went away (`authstore client list | head -1`) is not a failure.
        if matches!(e, CliError::StdoutClosed) {
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {e}");
        ExitCode::from(1)
    };
    if let Err(e) = init_logging(cli.global.log_format) {
        return fail(e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(CliError::io("cannot start the async runtime", e)),
    };
    match runtime.block_on(run(cli, database_url_from_flag)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
