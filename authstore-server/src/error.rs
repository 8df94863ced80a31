//! Errors: [`ServerError`] for building the server, [`OAuthError`] for RFC 6749 §5.2 answers.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the server could not be built or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is wrong; the message says which and how to fix it.
    #[error("invalid server configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The store refused (see the source for what to do).
    #[error("store error: {0}")]
    Store(#[from] authstore_core::Error),
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2): a JSON body with `error` and
/// `error_description`, `Cache-Control: no-store`, and for a failed HTTP Basic client
/// authentication, 401 with `WWW-Authenticate: Basic`.
#[derive(Debug, Clone)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) description: Cow<'static, str>,
    /// Add `WWW-Authenticate: Basic` (the client tried, or should try, HTTP Basic).
    pub(crate) basic_challenge: bool,
    /// Seconds for a `Retry-After` header.
    pub(crate) retry_after: Option<u64>,
}

impl OAuthError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }

    pub(crate) fn invalid_request(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }

    /// 401 `invalid_client` with the `WWW-Authenticate: Basic` challenge (every 401 carries
    /// one, RFC 9110 §15.5.2, whichever way the client sent its credentials). `_basic` says
    /// whether the client tried HTTP Basic; kept for the call sites' clarity.
    pub(crate) fn invalid_client(d: impl Into<Cow<'static, str>>, _basic: bool) -> Self {
        Self {
            basic_challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
        }
    }

    pub(crate) fn invalid_grant(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }

    pub(crate) fn unauthorized_client(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }

    pub(crate) fn unsupported_grant_type(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }

    pub(crate) fn invalid_scope(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }

    /// 429 with `Retry-After`.
    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many requests: retry after the time in Retry-After",
            )
        }
    }

    /// The answer for a store error. Client-caused errors become the matching OAuth error;
    /// a temporary backend failure is 503 `temporarily_unavailable` with `Retry-After: 1`;
    /// anything else is 500 `server_error` (logged with its code, never with a secret:
    /// core errors carry none).
    pub(crate) fn from_core(e: &authstore_core::Error) -> Self {
        use authstore_core::Error as E;
        match e {
            E::MalformedToken { .. } | E::Inactive { .. } => {
                Self::invalid_grant("the grant is invalid, expired or revoked")
            }
            E::CodeReplay { .. } => Self::invalid_grant(
                "the authorization code was already used: every token issued from it is revoked",
            ),
            E::RefreshReuse { .. } => Self::invalid_grant(
                "the refresh token was already used: every token of its grant is revoked",
            ),
            E::InvalidGrant { reason } => Self::invalid_grant(*reason),
            E::InvalidScope { .. } => Self::invalid_scope(e.to_string()),
            E::InvalidInput { .. } => Self::invalid_request(e.to_string()),
            E::NotFound { .. } => Self::invalid_request(e.to_string()),
            E::InvalidClient => Self::invalid_client("client authentication failed", false),
            E::UnauthorizedClient { .. } => Self::unauthorized_client(e.to_string()),
            E::TooManyAttempts { retry_after } => Self::rate_limited(retry_after.as_secs()),
            _ if e.is_temporary() => {
                tracing::warn!(code = e.code(), error = %e, "temporary store error");
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the store is temporarily unavailable: retry",
                    )
                }
            }
            _ => {
                tracing::error!(code = e.code(), error = %e, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("internal error {}", e.code()),
                )
            }
        }
    }
}

impl From<authstore_core::Error> for OAuthError {
    fn from(e: authstore_core::Error) -> Self {
        Self::from_core(&e)
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache`, as every token-endpoint answer needs.
pub(crate) fn no_store(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        no_store(&mut resp);
        if self.basic_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"authstore\", charset=\"UTF-8\""),
            );
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A back-channel handler's result as the response: the error answer is logged at debug
/// level with its code and status only (never a parameter value).
pub(crate) fn answer(result: Result<Response, OAuthError>, refused: &'static str) -> Response {
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = e.error, status = e.status.as_u16(), "{refused}");
            e.into_response()
        }
    }
}
