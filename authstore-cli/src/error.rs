//! The command's one error type: every variant says what is wrong and what to do. `main`
//! prints it as `error: …` on stderr and exits with status 1.

use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The store refused or failed; a hint for the operator may follow.
    #[error("{}", describe_store_error(.0))]
    Store(#[from] authstore_core::Error),
    /// The server could not be built.
    #[error("{0}")]
    Server(#[from] authstore_server::ServerError),
    /// A command-line value is wrong (bad duration, bad id, …).
    #[error("{0}")]
    Input(String),
    /// The configuration file is wrong.
    #[error("config file {}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (the TOML error names the key and line).
        reason: String,
    },
    /// A key ring cannot be had; the message says how to provide one.
    #[error("{0}")]
    Keys(String),
    /// Standard output was closed by its reader (`authstore client list | head -1`): the
    /// command stops, and exits with status 0 without a message.
    #[error("standard output was closed")]
    StdoutClosed,
    /// Reading or writing a file, stdin or stdout, or listening, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<authstore::keys::KeyError> for CliError {
    fn from(e: authstore::keys::KeyError) -> Self {
        match e {
            authstore::keys::KeyError::Io { what, source } => CliError::Io { what, source },
            authstore::keys::KeyError::Store(e) => CliError::Store(e),
            other => CliError::Keys(other.to_string()),
        }
    }
}

impl CliError {
    /// An I/O failure while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A bad command-line value.
    pub(crate) fn input(message: impl Into<String>) -> Self {
        Self::Input(message.into())
    }
}

/// The store's message, the driver's cause for backend errors, the stable code, and what an
/// operator can do where the store's message alone does not say.
fn describe_store_error(e: &authstore_core::Error) -> String {
    use authstore_core::Error as E;
    use std::error::Error as _;
    let cause = match (e, e.source()) {
        (E::Backend { .. }, Some(s)) => format!(": {s}"),
        _ => String::new(),
    };
    let hint = match e {
        E::NotMigrated { .. } => "; run `authstore migrate` first",
        E::Backend {
            temporary: true, ..
        } => "; the database is busy or unreachable: try again",
        E::Backend { .. } => "; check that the database is reachable and not damaged",
        _ => "",
    };
    format!("{e}{cause} [{}]{hint}", e.code())
}

/// Shorthand.
pub(crate) type CliResult<T> = Result<T, CliError>;
