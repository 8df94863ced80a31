//! Client authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic`, `client_secret_post`, and `none` for public clients (RFC 6749
//! §2.3, RFC 7591 method names). A client must use the method it is registered with.

use authstore_core::{Client, ClientId, ClientType, TokenEndpointAuthMethod};
use axum::http::{HeaderMap, header};
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::OAuthError;
use crate::form::FormParams;
use crate::state::AppState;

/// Whether an endpoint accepts public clients (identified by `client_id` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Public {
    Allowed,
    Refused,
}

/// Authenticates the client of a request, then applies the per-client rate limit to
/// confidential clients.
///
/// Failures are 401 `invalid_client` with `WWW-Authenticate: Basic` (RFC 9110 §15.5.2: every
/// 401 carries a challenge). Sending credentials two ways, or a `client_id` that differs from
/// the Basic one, is `invalid_request`.
///
/// A public client proves nothing by naming its `client_id`, so it gets no per-client
/// bucket: anyone could otherwise drain it and lock the real application out. Its requests
/// are bounded by the per-address limit and by the grant checks (PKCE, rotation).
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form: &FormParams,
    public: Public,
) -> Result<Client, OAuthError> {
    let client = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let (id, secret) = parse_basic(value.as_bytes())?;
            if form.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "the client authenticated twice (HTTP Basic and client_secret): use one",
                ));
            }
            if form.get("client_id").is_some_and(|f| f != id.as_str()) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the HTTP Basic user name",
                ));
            }
            let client = verify(state, &id, &secret, true).await?;
            require_method(&client, TokenEndpointAuthMethod::ClientSecretBasic, true)?;
            client
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => {
                let client = verify(state, id, secret, false).await?;
                require_method(&client, TokenEndpointAuthMethod::ClientSecretPost, false)?;
                client
            }
            (Some(id), None) => {
                let refused = || {
                    OAuthError::invalid_client(
                        "client authentication failed: this endpoint needs the client's \
                         credentials (HTTP Basic or client_secret_post)",
                        true,
                    )
                };
                let Ok(id) = id.parse::<ClientId>() else {
                    return Err(refused());
                };
                let client = match state.store.client(id).await {
                    Ok(c) => c,
                    Err(authstore_core::Error::NotFound { .. }) => return Err(refused()),
                    Err(e) => return Err(OAuthError::from_core(&e)),
                };
                if public == Public::Refused
                    || client.client_type != ClientType::Public
                    || client.disabled
                {
                    return Err(refused());
                }
                client
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "client_secret was sent without client_id",
                ));
            }
            (None, None) => {
                return Err(OAuthError::invalid_client(
                    "client authentication is required (HTTP Basic, client_secret_post, or \
                     client_id for public clients)",
                    true,
                ));
            }
        },
    };
    if client.client_type == ClientType::Confidential {
        state.limits.check_client(client.id)?;
    }
    Ok(client)
}

async fn verify(
    state: &AppState,
    id: &str,
    secret: &str,
    basic: bool,
) -> Result<Client, OAuthError> {
    let failed = || OAuthError::invalid_client("client authentication failed", basic);
    let Ok(id) = id.parse::<ClientId>() else {
        return Err(failed());
    };
    match state.store.verify_client_secret(id, secret).await {
        Ok(c) => Ok(c),
        Err(authstore_core::Error::InvalidClient) => Err(failed()),
        Err(e) => Err(OAuthError::from_core(&e)),
    }
}

fn require_method(
    client: &Client,
    used: TokenEndpointAuthMethod,
    basic: bool,
) -> Result<(), OAuthError> {
    if client.token_endpoint_auth_method == used {
        Ok(())
    } else {
        Err(OAuthError::invalid_client(
            format!(
                "this client is registered for {} client authentication",
                client.token_endpoint_auth_method.as_str()
            ),
            basic,
        ))
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &[u8]) -> Result<(String, Zeroizing<String>), OAuthError> {
    let bad = |d: &'static str| OAuthError::invalid_client(d, true);
    let rest = value
        .strip_prefix(b"Basic ")
        .or_else(|| value.strip_prefix(b"basic "))
        .ok_or_else(|| bad("the Authorization header must use the Basic scheme"))?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
            .map_err(|_| bad("the Basic credentials are not valid base64"))?,
    );
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("the Basic credentials have no ':'"))?;
    let id = form_decode(&decoded[..colon]).ok_or_else(|| bad("malformed client id"))?;
    let secret = Zeroizing::new(
        form_decode(&decoded[colon + 1..]).ok_or_else(|| bad("malformed client secret"))?,
    );
    Ok((id, secret))
}

fn form_decode(raw: &[u8]) -> Option<String> {
    crate::form::decode_component(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let enc = base64::engine::general_purpose::STANDARD.encode("my%20id:s%3Acret+x");
        let (id, secret) = parse_basic(format!("Basic {enc}").as_bytes()).unwrap();
        assert_eq!(id, "my id");
        assert_eq!(secret.as_str(), "s:cret x");
        assert!(parse_basic(b"Bearer abc").is_err());
        assert!(parse_basic(b"Basic !!!").is_err());
        let nocolon = base64::engine::general_purpose::STANDARD.encode("abc");
        assert!(parse_basic(format!("Basic {nocolon}").as_bytes()).is_err());
    }
}
