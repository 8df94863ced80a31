//! `authstore serve`: migrate, bind, serve until SIGTERM or SIGINT, finish the requests in
//! flight, stop the background tasks.

use authstore_server::{paths, spawn_maintenance};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd_client::all_clients;
use std::net::{IpAddr, SocketAddr};

use crate::context::{Access, Settings, shell_quote};
use crate::error::{CliError, CliResult};
use crate::output;

/// The address `serve` listens on when none is given.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port)
    #[arg(long, env = "AUTHSTORE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Issuer identifier announced in metadata (default http://<the bound address>)
    #[arg(long, env = "AUTHSTORE_ISSUER", value_name = "URL")]
    issuer: Option<String>,
}

/// The issuer the configuration is checked with before anything is opened, when none is
/// given (the real one, `http://<the bound address>`, is known only once bound).
const PLACEHOLDER_ISSUER: &str = "http://127.0.0.1:8080";

/// Checks a listen address before anything is opened: `HOST:PORT`, an IPv6 address in
/// brackets (`[::1]:8080`). A host name is resolved when bound.
fn check_listen(listen: &str) -> CliResult<()> {
    let l = listen.trim();
    if l.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let usage = "give HOST:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 (port 0: any free \
                 port); an IPv6 address goes in brackets: [::1]:8080";
    let bad = |why: &str| CliError::input(format!("listen address {listen:?}: {why}; {usage}"));
    if l.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(bad("a port is needed"));
    }
    match l.rsplit_once(':') {
        None => Err(bad("a port is needed")),
        Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
            Err(bad("an IPv6 address needs brackets"))
        }
        Some((host, port)) => {
            if port.parse::<u16>().is_err() {
                Err(bad(&format!(
                    "the port {port:?} is not a number from 0 to 65535"
                )))
            } else if host.is_empty() || host.contains(char::is_whitespace) {
                Err(bad("the host is missing"))
            } else {
                Ok(())
            }
        }
    }
}

/// What `serve` prints to stdout once bound: where it listens, the issuer, the database
/// (credentials removed), and with no client yet how to make one.
fn banner(
    settings: &Settings,
    addr: SocketAddr,
    issuer: &str,
    token_url: &str,
    empty: bool,
) -> Vec<String> {
    let mut out = vec![
        format!("listening on http://{addr}"),
        format!("issuer: {issuer}"),
        format!("database: {}", settings.database_display()),
    ];
    if !empty {
        return out;
    }
    out.push(String::new());
    if settings.is_memory() {
        out.push(
            "No clients yet. A memory: store lives only in this process: other commands \
             (authstore client create, …) cannot reach it, and it is gone when the server \
             stops. Use a sqlite:// or postgres:// database to register clients with the \
             authstore command."
                .into(),
        );
        return out;
    }
    let same = settings.same_store();
    out.push("No clients yet. Create one (it prints the client id and, once, its secret):".into());
    out.push(format!(
        "  authstore{} client create --name my-service --grant-type client_credentials \
         --scope {}",
        same.flags,
        shell_quote("read write")
    ));
    out.extend(same.notes());
    out.push("then get an access token with:".into());
    out.push(format!(
        "  curl -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials -d scope=read \
         {token_url}"
    ));
    out
}

/// Runs the server.
pub(crate) async fn run(settings: &Settings, a: ServeArgs) -> CliResult<()> {
    // Handlers first: a SIGTERM that arrives as soon as "listening" is printed must stop the
    // server gracefully, not kill it.
    let signal_err = |e| CliError::io("cannot install the SIGTERM/SIGINT handlers", e);
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;

    let file = &settings.file;
    let listen = a
        .listen
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let issuer = a.issuer.or_else(|| file.issuer.clone());
    // Check what can be checked before anything is opened, created or bound.
    check_listen(&listen)?;
    file.server_config(issuer.as_deref().unwrap_or(PLACEHOLDER_ISSUER))?;

    let store = settings.open(Access::Serve).await?;
    let applied = store.migrate().await?;
    crate::context::verify_keys(&store).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied database migrations");
    }

    let listener = tokio::net::TcpListener::bind(listen.trim())
        .await
        .map_err(|e| CliError::io(format!("cannot listen on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::io(format!("cannot read the address bound for {listen}"), e))?;
    let issuer_given = issuer.is_some();
    let issuer = issuer.unwrap_or_else(|| format!("http://{addr}"));
    let config = file.server_config(&issuer)?;
    let issuer = config.issuer_str().to_owned();
    let token_url = config.endpoint(paths::TOKEN);
    let app = authstore_server::router(store.clone(), config)?;
    let empty = all_clients(&store).await?.is_empty();
    let maintenance = spawn_maintenance(store.clone(), file.maintenance_config());

    if addr.ip().is_unspecified() && !issuer_given {
        tracing::warn!(
            %issuer,
            "listening on every interface with an issuer made from the bound address: set \
             --issuer (or AUTHSTORE_ISSUER, or issuer in the config file) to the URL clients use"
        );
    }
    // Best effort: a closed stdout (a daemon's) must not stop the server.
    for l in banner(settings, addr, &issuer, &token_url, empty) {
        if let Err(e) = output::line(&l) {
            tracing::warn!(error = %e, "cannot write to standard output");
        }
    }
    tracing::info!(%addr, %issuer, "serving");

    let shutdown = async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: finishing requests in flight");
    };
    let served = authstore_server::serve(listener, app, shutdown).await;
    maintenance.shutdown().await;
    served.map_err(|e| CliError::io("the server failed", e))?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::FileConfig;
    use crate::context::UrlSource;

    fn settings(url: &str, source: UrlSource, config: Option<&str>) -> Settings {
        Settings {
            database_url: url.to_owned(),
            database_url_source: source,
            config_path: config.map(PathBuf::from),
            file: FileConfig::default(),
            token_key_file: None,
            sealing_key_file: None,
        }
    }

    fn lines(s: &Settings) -> Vec<String> {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        banner(
            s,
            addr,
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/token",
            true,
        )
    }

    const SECRET_SHAPES: [&str; 5] = [
        "postgres://u:hunter2@db/x",
        "postgres://u@db/x?password=hunter2",
        "postgres://db/x?sslmode=require&sslpassword=hunter2",
        "postgres//u:hunter2@db/x",
        "postgresql:u:hunter2@db/x",
    ];

    #[test]
    fn the_banner_never_shows_a_password() {
        for url in SECRET_SHAPES {
            for source in [
                UrlSource::Flag,
                UrlSource::Env("AUTHSTORE_DATABASE_URL"),
                UrlSource::Env("DATABASE_URL"),
                UrlSource::ConfigFile,
            ] {
                let out = lines(&settings(url, source, Some("a.toml"))).join("\n");
                assert!(!out.contains("hunter2"), "{url} {source:?}: {out}");
                assert!(
                    !out.contains("--database-url postgres"),
                    "a URL with credentials is never printed as a flag: {out}"
                );
                assert!(out.contains("database: "), "{out}");
            }
        }
    }

    #[test]
    fn the_hint_prints_a_command_that_reaches_the_same_store() {
        // A flag without credentials: repeated as it was given.
        let out = lines(&settings("sqlite://x.db", UrlSource::Flag, None)).join("\n");
        assert!(
            out.contains("authstore --database-url sqlite://x.db client create"),
            "{out}"
        );
        // From the environment: never turned into a flag; the same variable is asked for.
        for var in ["AUTHSTORE_DATABASE_URL", "DATABASE_URL"] {
            let out = lines(&settings("sqlite://x.db", UrlSource::Env(var), None)).join("\n");
            assert!(!out.contains("--database-url"), "{out}");
            assert!(
                out.contains("authstore client create")
                    && out.contains(&format!("the same {var} in its environment")),
                "{out}"
            );
        }
        // From the config file: the same --config.
        let out = lines(&settings(
            "postgres://u:hunter2@db/x",
            UrlSource::ConfigFile,
            Some("/etc/a b.toml"),
        ))
        .join("\n");
        assert!(
            out.contains("authstore --config '/etc/a b.toml' client create"),
            "{out}"
        );
        assert!(!out.contains("--database-url") && !out.contains("hunter2"));
        // A flag with credentials: not printed; the operator is told why.
        let out = lines(&settings(
            "postgres://u:hunter2@db/x",
            UrlSource::Flag,
            None,
        ))
        .join("\n");
        assert!(out.contains("authstore client create"), "{out}");
        assert!(
            out.contains("same --database-url") && out.contains("AUTHSTORE_DATABASE_URL"),
            "{out}"
        );
        assert!(!out.contains("hunter2"));
        // The default database: no option needed.
        let out = lines(&settings(
            crate::context::DEFAULT_DATABASE_URL,
            UrlSource::Default,
            None,
        ))
        .join("\n");
        assert!(
            out.contains("  authstore client create --name my-service"),
            "{out}"
        );
        assert!(out.contains("curl -u CLIENT_ID:CLIENT_SECRET"), "{out}");
        // memory: no other process reaches it: no command to run, a note instead.
        let out = lines(&settings("memory:", UrlSource::Flag, None)).join("\n");
        assert!(out.contains("database: memory:"), "{out}");
        assert!(
            !out.contains("client create --name") && !out.contains("curl"),
            "{out}"
        );
        assert!(out.contains("lives only in this process"), "{out}");
    }

    #[test]
    fn listen_addresses_are_checked_with_a_helpful_message() {
        for ok in [
            "127.0.0.1:0",
            "0.0.0.0:8080",
            "[::1]:8080",
            "localhost:8080",
            " 127.0.0.1:9 ",
        ] {
            check_listen(ok).unwrap();
        }
        for (bad, why) in [
            ("::1", "a port is needed"),
            ("127.0.0.1", "a port is needed"),
            ("[::1]", "a port is needed"),
            ("localhost", "a port is needed"),
            ("::1:8080", "a port is needed"),
            ("fe80::1%eth0:80", "brackets"),
            ("127.0.0.1:notaport", "not a number"),
            ("127.0.0.1:70000", "not a number"),
            (":8080", "host is missing"),
        ] {
            let e = check_listen(bad).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("[::1]:8080") && e.contains("listen"),
                "{bad}: {e}"
            );
        }
    }
}
