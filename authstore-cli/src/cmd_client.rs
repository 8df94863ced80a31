//! `authstore client …`: register and manage OAuth clients.

use std::collections::BTreeSet;
use std::str::FromStr;

use authstore_core::{
    Authstore, Client, ClientId, ClientType, ClientUpdate, GrantType, NewClient, RedirectUri,
    Scopes, Timestamp, TokenEndpointAuthMethod,
};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::context::{Access, Settings};
use crate::error::{CliError, CliResult};
use crate::output;

const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

/// `authstore client …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Register a client; prints its id and, once, its secret
    Create(CreateArgs),
    /// List every client
    List(JsonArg),
    /// Show one client (never its secret)
    Show(IdArgs),
    /// Change a client
    Update(UpdateArgs),
    /// Delete a client and everything it holds (grants, codes, tokens, consents)
    Delete(IdOnly),
    /// Replace a confidential client's secret; the old one stops working at once
    RotateSecret(IdArgs),
}

/// `--json` alone.
#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print JSON (RFC 7591 field names)
    #[arg(long)]
    json: bool,
}

/// A client id and `--json`.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The client id (a UUID)
    id: String,
    /// Print JSON (RFC 7591 field names)
    #[arg(long)]
    json: bool,
}

/// A client id.
#[derive(Debug, Args)]
pub(crate) struct IdOnly {
    /// The client id (a UUID)
    id: String,
}

/// `client create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A display name
    #[arg(long)]
    name: String,
    /// A redirect URI, matched exactly (repeat for several)
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// A grant type: authorization_code, client_credentials or refresh_token (repeat for
    /// several; default: authorization_code and refresh_token with a redirect URI, else
    /// client_credentials)
    #[arg(long = "grant-type", value_name = "GRANT")]
    grant_types: Vec<String>,
    /// Scopes the client may ask for, space-separated ("read write")
    #[arg(long)]
    scope: Option<String>,
    /// A public client (a browser or native app: no secret, PKCE required)
    #[arg(long)]
    public: bool,
    /// How the client authenticates at the token endpoint (default client_secret_basic,
    /// or none for --public)
    #[arg(long, value_parser = AUTH_METHODS)]
    auth_method: Option<String>,
    /// Print JSON (RFC 7591 field names)
    #[arg(long)]
    json: bool,
}

/// `client update`.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The client id (a UUID)
    id: String,
    /// A new display name
    #[arg(long)]
    name: Option<String>,
    /// Replaces the redirect URIs (repeat for several)
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// Replaces the grant types (repeat for several)
    #[arg(long = "grant-type", value_name = "GRANT")]
    grant_types: Vec<String>,
    /// Replaces the allowed scopes ("read write"; "" for none)
    #[arg(long)]
    scope: Option<String>,
    /// A new token endpoint authentication method
    #[arg(long, value_parser = AUTH_METHODS)]
    auth_method: Option<String>,
    /// Disable the client: it cannot authenticate and none of its tokens validate
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    /// Enable a disabled client again
    #[arg(long)]
    enable: bool,
    /// Print JSON (RFC 7591 field names)
    #[arg(long)]
    json: bool,
}

fn client_id(s: &str) -> CliResult<ClientId> {
    Ok(ClientId::from_str(s.trim())?)
}

fn redirect_uris(v: &[String]) -> CliResult<Vec<RedirectUri>> {
    Ok(v.iter()
        .map(|u| RedirectUri::new(u.as_str()))
        .collect::<Result<_, _>>()?)
}

fn grant_types(v: &[String]) -> CliResult<BTreeSet<GrantType>> {
    Ok(v.iter()
        .map(|g| GrantType::from_str(g))
        .collect::<Result<_, _>>()?)
}

fn auth_method(s: &Option<String>) -> CliResult<Option<TokenEndpointAuthMethod>> {
    Ok(s.as_deref()
        .map(TokenEndpointAuthMethod::from_str)
        .transpose()?)
}

/// Checks a new client as the store will, before the store is opened (or created): the
/// client it would make (with the same defaults for grant types and authentication method)
/// must hold every invariant of a stored client. The store checks again when it creates it.
fn check_new_client(new: &NewClient) -> CliResult<()> {
    let grant_types = if new.grant_types.is_empty() {
        // The store's default (docs/CLI.md): authorization_code and refresh_token with a
        // redirect URI, else client_credentials.
        if new.redirect_uris.is_empty() {
            BTreeSet::from([GrantType::ClientCredentials])
        } else {
            BTreeSet::from([GrantType::AuthorizationCode, GrantType::RefreshToken])
        }
    } else {
        new.grant_types.clone()
    };
    let method =
        new.token_endpoint_auth_method
            .unwrap_or(if new.client_type == ClientType::Public {
                TokenEndpointAuthMethod::None
            } else {
                TokenEndpointAuthMethod::ClientSecretBasic
            });
    let prospective = Client {
        id: ClientId::from_uuid(uuid::Uuid::nil()),
        name: new.name.clone(),
        client_type: new.client_type,
        redirect_uris: new.redirect_uris.clone(),
        grant_types,
        scopes: new.scopes.clone(),
        token_endpoint_auth_method: method,
        lifetimes: new.lifetimes,
        metadata: new.metadata.clone(),
        created_at: Timestamp::UNIX_EPOCH,
        updated_at: Timestamp::UNIX_EPOCH,
        disabled: false,
    };
    Ok(prospective.validate()?)
}

fn print_client(c: &Client, secret: Option<&str>, json: bool) -> CliResult<()> {
    if json {
        return output::json(&output::client_json(c, secret));
    }
    let mut lines = output::client_lines(c);
    if let Some(s) = secret {
        lines.insert(1, format!("client_secret: {s}"));
    }
    output::lines(lines)?;
    if secret.is_some() {
        output::line(format!(
            "\nThe secret is shown only now: put it in the client's configuration. \
             `authstore client rotate-secret {}` makes a new one.",
            c.id
        ))?;
    }
    Ok(())
}

/// Every client, in id order.
pub(crate) async fn all_clients(store: &Authstore) -> CliResult<Vec<Client>> {
    let mut out: Vec<Client> = Vec::new();
    loop {
        let page = store.list_clients(out.last().map(|c| c.id), 1000).await?;
        let done = page.len() < 1000;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Runs a `client` command.
pub(crate) async fn run(settings: &Settings, cmd: ClientCommand) -> CliResult<()> {
    // Arguments are checked before the store is opened (and perhaps created).
    match cmd {
        ClientCommand::Create(a) => {
            let mut new = NewClient::confidential(a.name.clone());
            if a.public {
                new.client_type = ClientType::Public;
            }
            new.redirect_uris = redirect_uris(&a.redirect_uris)?;
            new.grant_types = grant_types(&a.grant_types)?;
            if let Some(s) = &a.scope {
                new.scopes = Scopes::parse(s.trim())?;
            }
            new.token_endpoint_auth_method = auth_method(&a.auth_method)?;
            check_new_client(&new)?;
            let store = settings.open(Access::Create).await?;
            let created = store.create_client(new).await?;
            print_client(
                &created.client,
                created.secret.as_ref().map(|s| s.secret()),
                a.json,
            )
        }
        ClientCommand::List(a) => {
            let store = settings.open(Access::Existing).await?;
            let clients = all_clients(&store).await?;
            if a.json {
                return output::json(&Value::Array(
                    clients
                        .iter()
                        .map(|c| output::client_json(c, None))
                        .collect(),
                ));
            }
            if clients.is_empty() {
                return output::line("no clients (create one with `authstore client create`)");
            }
            for c in &clients {
                output::line(format!(
                    "{}  {:<12} {:<9} {}{}",
                    c.id,
                    c.client_type.as_str(),
                    if c.disabled { "disabled" } else { "enabled" },
                    c.name,
                    if c.scopes.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", c.scopes)
                    }
                ))?;
            }
            Ok(())
        }
        ClientCommand::Show(a) => {
            let id = client_id(&a.id)?;
            let store = settings.open(Access::Existing).await?;
            let c = store.client(id).await?;
            print_client(&c, None, a.json)
        }
        ClientCommand::Update(a) => {
            let id = client_id(&a.id)?;
            let update = ClientUpdate {
                name: a.name.clone(),
                redirect_uris: (!a.redirect_uris.is_empty())
                    .then(|| redirect_uris(&a.redirect_uris))
                    .transpose()?,
                grant_types: (!a.grant_types.is_empty())
                    .then(|| grant_types(&a.grant_types))
                    .transpose()?,
                scopes: a
                    .scope
                    .as_deref()
                    .map(|s| Scopes::parse(s.trim()))
                    .transpose()?,
                token_endpoint_auth_method: auth_method(&a.auth_method)?,
                ..ClientUpdate::default()
            };
            let changes = update != ClientUpdate::default();
            if !changes && !a.disable && !a.enable {
                return Err(CliError::input(
                    "nothing to change: give --name, --redirect-uri, --grant-type, --scope, \
                     --auth-method, --disable or --enable",
                ));
            }
            let store = settings.open(Access::Existing).await?;
            let mut c = if changes {
                store.update_client(id, update).await?
            } else {
                store.client(id).await?
            };
            if a.disable {
                c = store.disable_client(id).await?;
            } else if a.enable {
                c = store.enable_client(id).await?;
            }
            print_client(&c, None, a.json)
        }
        ClientCommand::Delete(a) => {
            let id = client_id(&a.id)?;
            let store = settings.open(Access::Existing).await?;
            store.delete_client(id).await?;
            output::line(format!("deleted client {id}"))
        }
        ClientCommand::RotateSecret(a) => {
            let id = client_id(&a.id)?;
            let store = settings.open(Access::Existing).await?;
            let secret = store.rotate_client_secret(id).await?;
            let c = store.client(id).await?;
            print_client(&c, Some(secret.secret()), a.json)
        }
    }
}
