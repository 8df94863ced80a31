//! `authstore serve`: migrate, bind, serve until SIGTERM or SIGINT, finish the requests in
//! flight, stop the background tasks.

use authstore_server::{paths, spawn_maintenance};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd_client::all_clients;
use crate::context::{Settings, shell_quote};
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
    // Check what can be checked before anything is opened or bound.
    if let Some(i) = &issuer {
        file.server_config(i)?;
    }

    let store = settings.open(false).await?;
    let applied = store.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied database migrations");
    }

    let listener = tokio::net::TcpListener::bind(&listen)
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
    let say = |l: String| {
        if let Err(e) = output::line(&l) {
            tracing::warn!(error = %e, "cannot write to standard output");
        }
    };
    say(format!("listening on http://{addr}"));
    say(format!("issuer: {issuer}"));
    say(format!("database: {}", settings.database_display()));
    if empty {
        let flags = settings.global_flags();
        for l in [
            String::new(),
            "No clients yet. Create one (it prints the client id and, once, its secret):".into(),
            format!(
                "  authstore{flags} client create --name my-service --grant-type \
                 client_credentials --scope {}",
                shell_quote("read write")
            ),
            "then get an access token with:".into(),
            format!(
                "  curl -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials -d \
                 scope=read {token_url}"
            ),
        ] {
            say(l);
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
