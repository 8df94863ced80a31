//! The front channel: the authorization endpoint (RFC 6749 §4.1.1 with PKCE, RFC 7636,
//! RFC 9700, RFC 9207), the login page, the second-factor page and the consent page.
//!
//! `GET /authorize` checks the client and the redirect URI first: while either is in doubt
//! nothing redirects, the browser gets an HTML error page (RFC 6749 §4.1.2.1, no open
//! redirector). Every later error redirects to the client with `error`, `state` and `iss`.
//! A valid request becomes an authorization session (`as_…` handle) that the login,
//! second-factor and consent forms carry; every form is CSRF-protected ([`crate::csrf`]).
//! A user with a TOTP enrolment signs in with the password, then a TOTP or recovery code
//! ([`crate::mfa`]); only then is the login session made. A browser with a valid login
//! session (`authstore_session` cookie, plus its second-factor proof for a user with a
//! TOTP enrolment) skips the login page, and a remembered consent that covers the requested
//! scope skips the consent page.
//!
//! Anything sent back to a redirect URI after the first request (from the forms, or from a
//! stored authorization session) is sent only while the client, read again for that
//! request, is enabled and still has that redirect URI registered; otherwise the browser
//! gets an error page and the request ends.
//!
//! Nothing here logs a form, a query string, a cookie, a handle or a code.

use std::net::{IpAddr, SocketAddr};

use authstore_core::identity::subject_of;
use authstore_core::{
    AuthorizationSession, Client, ClientId, ClientType, CodeRequest, Error as CoreError,
    LoginSession, NewAuthorizationSession, Password, PkceChallenge, Scopes, Subject, UserId,
};
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::form::FormParams;
use crate::mfa::{self, Method, TicketError};
use crate::pages::{self, FormContext, FormTarget};
use crate::state::AppState;
use crate::{cookies, csrf, metrics, paths};

/// The second-factor form's target (under the issuer's path, like [`paths::LOGIN`]).
pub(crate) use crate::paths::LOGIN_OTP;

/// `GET /authorize`, `POST /authorize/login`, `POST /authorize/login/otp`,
/// `POST /authorize/consent`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::AUTHORIZE, get(authorize))
        .route(paths::LOGIN, post(login))
        .route(LOGIN_OTP, post(login_otp))
        .route(paths::CONSENT, post(consent))
}

// ----- redirects to the client ---------------------------------------------------------

/// How the browser got here: a redirect answers a GET with 302, a form POST with 303 (so
/// the browser follows with a GET, never re-posting the form to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Get,
    Post,
}

/// Where answers to one authorization request go.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
    via: Via,
}

/// A redirect to the client with `params`, then `state` (when the client sent one) and
/// `iss` (RFC 9207), appended to the registered URI's own query.
fn redirect(app: &AppState, t: &Target<'_>, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(t.redirect_uri) else {
        // Registered URIs are validated as absolute URLs when stored.
        tracing::error!("a registered redirect URI does not parse");
        return pages::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot return to the application",
            "The application's registered redirect URI cannot be used. Tell its operator.",
        );
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = t.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", app.config.issuer_str());
    }
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return pages::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot return to the application",
            "The redirect could not be built. Tell the application's operator.",
        );
    };
    let status = match t.via {
        Via::Get => StatusCode::FOUND,
        Via::Post => StatusCode::SEE_OTHER,
    };
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// An error redirect (RFC 6749 §4.1.2.1). The description is reduced to the characters
/// RFC 6749 allows in `error_description` (printable ASCII except `"` and `\`).
fn error_redirect(app: &AppState, t: &Target<'_>, error: &str, description: &str) -> Response {
    let description: String = description
        .chars()
        .filter(|&c| (c == ' ' || c.is_ascii_graphic()) && c != '"' && c != '\\')
        .take(300)
        .collect();
    redirect(
        app,
        t,
        &[
            ("error", error),
            ("error_description", description.as_str()),
        ],
    )
}

/// A store error as an error redirect, mapped as RFC 6749 §4.1.2.1 lists.
fn store_error_redirect(app: &AppState, t: &Target<'_>, e: &CoreError) -> Response {
    let (error, description) = match e {
        CoreError::InvalidScope { .. } => ("invalid_scope", e.to_string()),
        CoreError::UnauthorizedClient { .. } => ("unauthorized_client", e.to_string()),
        CoreError::InvalidInput { .. } => ("invalid_request", e.to_string()),
        _ if e.is_temporary() => {
            tracing::warn!(code = e.code(), error = %e, "temporary store error");
            (
                "temporarily_unavailable",
                "the server is temporarily unavailable: try again".to_owned(),
            )
        }
        _ => {
            tracing::error!(code = e.code(), error = %e, "store error");
            ("server_error", format!("internal error {}", e.code()))
        }
    };
    error_redirect(app, t, error, &description)
}

// ----- pages for errors that must not redirect -----------------------------------------

fn bad_request(message: &str) -> Response {
    pages::error(StatusCode::BAD_REQUEST, "Invalid request", message)
}

/// A store error as a page (where no redirect is possible or safe).
fn store_error_page(e: &CoreError) -> Response {
    match e {
        CoreError::Inactive { .. } | CoreError::MalformedToken { .. } => pages::expired(),
        CoreError::TooManyAttempts { retry_after } => pages::too_many(retry_after.as_secs()),
        CoreError::NotFound { .. }
        | CoreError::InvalidInput { .. }
        | CoreError::InvalidScope { .. }
        | CoreError::UnauthorizedClient { .. }
        | CoreError::InvalidClient
        | CoreError::InvalidGrant { .. }
        | CoreError::InvalidCredentials => bad_request(&format!(
            "The request was refused: {e}. Return to the application and start again."
        )),
        _ if e.is_temporary() => {
            tracing::warn!(code = e.code(), error = %e, "temporary store error");
            let mut resp = pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "The service is temporarily unavailable. Try again in a moment.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            resp
        }
        _ => {
            tracing::error!(code = e.code(), error = %e, "store error");
            pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                &format!("Internal error {}. Try again later.", e.code()),
            )
        }
    }
}

fn unavailable() -> Response {
    let mut resp = pages::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The service is temporarily unavailable. Try again in a moment.",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    resp
}

// ----- shared pieces ---------------------------------------------------------------------

/// The issuer's path without a trailing `/`: the forms post under it.
fn base_path(app: &AppState) -> &str {
    app.config.issuer.path().trim_end_matches('/')
}

/// This deployment's cookie names and scope.
fn jar(app: &AppState) -> cookies::Jar {
    cookies::Jar::new(&app.config.issuer, app.secure_cookies)
}

/// The key of the CSRF cookie's MAC ([`csrf`]).
fn csrf_cookie_key(app: &AppState) -> zeroize::Zeroizing<[u8; 32]> {
    app.store.derive_key(csrf::COOKIE_KEY_CONTEXT)
}

fn with_cookies(
    mut resp: Response,
    cookies: impl IntoIterator<Item = Option<HeaderValue>>,
) -> Response {
    for c in cookies.into_iter().flatten() {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// A browser's valid login session, and how it signed in.
struct SignedIn {
    session: LoginSession,
    method: Method,
}

/// The browser's login session, if its cookie names a valid one that is enough for its
/// user: a user with a TOTP enrolment also needs the session's second-factor proof cookie
/// ([`mfa`]); without it (a session from before the enrolment, or from before second
/// factors were asked) they are not signed in here.
async fn current_login(app: &AppState, headers: &HeaderMap) -> Result<Option<SignedIn>, Response> {
    let jar = jar(app);
    let Some(handle) = cookies::get(headers, &jar.session()) else {
        return Ok(None);
    };
    let session = match app.store.validate_login_session(handle).await {
        Ok(s) => s,
        Err(CoreError::Inactive { .. } | CoreError::MalformedToken { .. }) => return Ok(None),
        Err(e) => return Err(store_error_page(&e)),
    };
    let proof = cookies::get(headers, &jar.mfa());
    if mfa::proves(&mfa::session_key(&app.store), handle, proof) {
        return Ok(Some(SignedIn {
            session,
            method: Method::PasswordAndOtp,
        }));
    }
    match app.store.backend().get_totp(session.user).await {
        Ok(None) => Ok(Some(SignedIn {
            session,
            method: Method::Password,
        })),
        Ok(Some(_)) => Ok(None),
        Err(e) => Err(store_error_page(&e)),
    }
}

/// The pending authorization session of a form's handle.
async fn pending(app: &AppState, handle: &str) -> Result<AuthorizationSession, Response> {
    app.store
        .authorization_session(handle)
        .await
        .map_err(|e| store_error_page(&e))
}

/// A client by id for a page, read now; a client deleted meanwhile means the request is
/// over. A disabled one is returned: [`returnable`] refuses it.
async fn client_for_page(app: &AppState, id: ClientId) -> Result<Client, Response> {
    match app.store.client(id).await {
        Ok(c) => Ok(c),
        Err(CoreError::NotFound { .. }) => Err(pages::expired()),
        Err(e) => Err(store_error_page(&e)),
    }
}

/// Whether answers for `s` may still go to its redirect URI: `client` (read for this
/// request) is its client, is enabled, and still has the URI registered (exact match).
fn returnable(client: &Client, s: &AuthorizationSession) -> bool {
    client.id == s.client_id
        && !client.disabled
        && client.redirect_uri(s.redirect_uri.as_str()).is_some()
}

/// Ends a request that can no longer return to its client (best effort: the session dies
/// with its lifetime anyway) and says so.
async fn not_returnable(app: &AppState, handle: &str) -> Response {
    let _ = app.store.expire_authorization_session(handle).await;
    pages::not_returnable()
}

/// The user agent to record with a login session: visible ASCII, at most 512 bytes.
fn user_agent(headers: &HeaderMap) -> Option<String> {
    let ua = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let ua: String = ua.chars().filter(|c| !c.is_control()).take(512).collect();
    let ua = ua.trim();
    (!ua.is_empty()).then(|| ua.to_owned())
}

/// A form request: its headers, its peer address (from [`crate::serve`]'s connection info)
/// and its body, read whole and parsed strictly.
struct FormRequest {
    headers: HeaderMap,
    peer: Option<IpAddr>,
    form: FormParams,
}

async fn read_form(app: &AppState, req: Request) -> Result<FormRequest, Response> {
    let (mut parts, body) = req.into_parts();
    // The extractor also honours `MockConnectInfo` (tests).
    let peer = ConnectInfo::<SocketAddr>::from_request_parts(&mut parts, app)
        .await
        .ok()
        .map(|c| c.0.ip());
    let bytes = axum::body::to_bytes(body, app.config.max_body_bytes)
        .await
        .map_err(|_| {
            pages::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form could not be read.",
            )
        })?;
    let form = FormParams::from_body(&parts.headers, &bytes).map_err(|e| {
        bad_request(&format!(
            "The form is malformed: {}. Return to the application and start again.",
            e.0
        ))
    })?;
    Ok(FormRequest {
        headers: parts.headers,
        peer,
        form,
    })
}

/// A form post that passed the CSRF checks ([`csrf`]): the authorization session handle it
/// carries and the browser's CSRF cookie its token is bound to.
struct Checked<'f> {
    handle: &'f str,
    csrf_cookie: &'f str,
}

/// Most cookies of the CSRF cookie's name looked at (a browser sends one per matching path).
const MAX_CSRF_COOKIES: usize = 4;

/// The CSRF checks of a form post: it comes from the issuer's origin, and its token is the
/// one for its handle and a CSRF cookie this server made. `None`: the caller answers 403
/// ([`pages::csrf_failed`]) before anything else.
fn check_form<'f>(app: &AppState, req: &'f FormRequest) -> Option<Checked<'f>> {
    let origin = app.config.issuer.origin().ascii_serialization();
    if !csrf::from_issuer_origin(&req.headers, &origin) {
        return None;
    }
    let handle = req.form.get("handle")?;
    let presented = req.form.get("csrf");
    let cookie_key = csrf_cookie_key(app);
    let name = jar(app).csrf();
    cookies::get_all(&req.headers, &name)
        .take(MAX_CSRF_COOKIES)
        .find(|c| csrf::verify(&app.csrf_key, &cookie_key, Some(c), handle, presented))
        .map(|csrf_cookie| Checked {
            handle,
            csrf_cookie,
        })
}

/// Everything the login and consent pages need about the request in flight.
struct Flow<'a> {
    app: &'a AppState,
    handle: &'a str,
    csrf_cookie: &'a str,
    session: &'a AuthorizationSession,
    client: &'a Client,
}

impl Flow<'_> {
    fn csrf_token(&self) -> String {
        csrf::token(&self.app.csrf_key, self.csrf_cookie, self.handle)
    }

    /// The forms' context. Their `form-action` allows the client's origin: after a form,
    /// the browser follows a redirect to it.
    fn form_context<'t>(&'t self, csrf_token: &'t str) -> FormContext<'t> {
        FormContext {
            base_path: base_path(self.app),
            client_name: &self.client.name,
            handle: self.handle,
            csrf: csrf_token,
            target: FormTarget::SelfAnd(pages::csp_source_of(self.session.redirect_uri.as_str())),
        }
    }

    fn target(&self, via: Via) -> Target<'_> {
        Target {
            redirect_uri: self.session.redirect_uri.as_str(),
            state: self.session.state.as_deref(),
            via,
        }
    }

    fn login_page(
        &self,
        status: StatusCode,
        message: Option<&str>,
        force_consent: bool,
    ) -> Response {
        let token = self.csrf_token();
        let ctx = self.form_context(&token);
        pages::login(status, &ctx, message, force_consent)
    }

    fn second_factor_page(
        &self,
        status: StatusCode,
        ticket: &str,
        message: Option<&str>,
        force_consent: bool,
    ) -> Response {
        let token = self.csrf_token();
        let ctx = self.form_context(&token);
        pages::second_factor(status, &ctx, ticket, message, force_consent)
    }

    /// After the right password of a user with a TOTP enrolment: no session, no subject
    /// yet, but the second-factor page with a fresh ticket (unless their second factor is
    /// locked).
    async fn start_second_factor(&self, user: UserId, force_consent: bool) -> Response {
        // A locked user never gets here: the store refused the password step
        // (`TooManyAttempts`), and until a second factor passes each password step keeps
        // counting against the user.
        metrics::login("second_factor");
        let expires = self.app.store.now().saturating_add(mfa::TICKET_LIFETIME);
        let key = mfa::ticket_key(&self.app.store);
        let ticket = mfa::ticket(&key, self.handle, user, expires);
        self.second_factor_page(StatusCode::OK, &ticket, None, force_consent)
    }

    /// The user is who they said (password, and the second factor if they have one): make
    /// the login session (and its second-factor proof), attach the subject, go on.
    async fn finish_login(
        &self,
        user: UserId,
        ip: Option<IpAddr>,
        ua: Option<String>,
        method: Method,
        force_consent: bool,
    ) -> Response {
        let app = self.app;
        let jar = jar(app);
        let max_age = app.store.config().lifetimes.login_session.as_secs();
        let mut set = Vec::new();
        match app
            .store
            .create_login_session(user, ip, ua.as_deref())
            .await
        {
            Ok((_, secret)) => {
                set.push(jar.set(&jar.session(), secret.secret(), Some(max_age)));
                if method == Method::PasswordAndOtp {
                    let proof = mfa::session_proof(&mfa::session_key(&app.store), secret.secret());
                    set.push(jar.set(&jar.mfa(), &proof, Some(max_age)));
                }
            }
            Err(e) => return store_error_page(&e),
        }
        let subject = subject_of(user);
        let resp = match app.store.attach_subject(self.handle, &subject).await {
            // The login worked even when this request is over: keep the session either way.
            Err(e) => store_error_page(&e),
            Ok(()) => {
                self.after_login(user, &subject, method, force_consent, false, Via::Post)
                    .await
            }
        };
        with_cookies(resp, set)
    }

    /// After the subject is attached: issue at once when a remembered consent covers the
    /// scope (and the client did not ask for the consent page), else show the consent page,
    /// or with `prompt=none` answer `consent_required`.
    async fn after_login(
        &self,
        user: UserId,
        subject: &Subject,
        method: Method,
        force_consent: bool,
        no_ui: bool,
        via: Via,
    ) -> Response {
        let remembered = match self
            .app
            .store
            .consent(self.session.client_id, subject)
            .await
        {
            Ok(c) => c,
            Err(e) => return store_error_page(&e),
        };
        let covered = remembered.is_some_and(|c| self.session.scope.is_subset(&c.scope));
        if covered && !force_consent {
            return issue(self.app, self.client, self.handle, method, via).await;
        }
        if no_ui {
            if !returnable(self.client, self.session) {
                return not_returnable(self.app, self.handle).await;
            }
            // Best effort: the session dies with its lifetime anyway.
            let _ = self
                .app
                .store
                .expire_authorization_session(self.handle)
                .await;
            return error_redirect(
                self.app,
                &self.target(via),
                "consent_required",
                "the user has not approved this client for the requested scope",
            );
        }
        let username = match self.app.store.user(user).await {
            Ok(u) => u.username,
            Err(e) => return store_error_page(&e),
        };
        let token = self.csrf_token();
        let ctx = self.form_context(&token);
        pages::consent(&ctx, &username, self.session.scope.iter())
    }
}

/// Completes the session (exactly once) and redirects with a fresh code.
async fn issue(
    app: &AppState,
    client: &Client,
    handle: &str,
    method: Method,
    via: Via,
) -> Response {
    match app.store.complete_authorization_session(handle).await {
        Ok(s) => issue_for(app, client, &s, method, via).await,
        Err(e) => store_error_page(&e),
    }
}

/// Issues the code of a completed session and redirects with it, while `client` (read for
/// this request) still allows the session's redirect URI.
async fn issue_for(
    app: &AppState,
    client: &Client,
    s: &AuthorizationSession,
    method: Method,
    via: Via,
) -> Response {
    if !returnable(client, s) {
        return pages::not_returnable();
    }
    let Some(subject) = s.subject.clone() else {
        // Completion requires a subject; a session without one is not ours to finish.
        return pages::expired();
    };
    let t = Target {
        redirect_uri: s.redirect_uri.as_str(),
        state: s.state.as_deref(),
        via,
    };
    let req = CodeRequest {
        client_id: s.client_id,
        subject,
        redirect_uri: s.redirect_uri.as_str().to_owned(),
        scope: s.scope.clone(),
        code_challenge: s.code_challenge.clone(),
        nonce: s.nonce.clone(),
        auth: method.context(),
    };
    match app.store.issue_code(req).await {
        Ok(code) => {
            tracing::debug!(client_id = %s.client_id, "authorization code issued");
            redirect(app, &t, &[("code", code.code.secret())])
        }
        Err(e) => store_error_redirect(app, &t, &e),
    }
}

// ----- GET /authorize --------------------------------------------------------------------

/// What the client's `prompt` asks for (OpenID Connect Core §3.1.2.1; other values are
/// ignored).
#[derive(Debug, Default, Clone, Copy)]
struct Prompt {
    none: bool,
    login: bool,
    consent: bool,
}

impl Prompt {
    fn parse(p: Option<&str>) -> Result<Self, &'static str> {
        let mut out = Self::default();
        for v in p.unwrap_or("").split(' ') {
            match v {
                "none" => out.none = true,
                "login" => out.login = true,
                "consent" => out.consent = true,
                _ => {}
            }
        }
        if out.none && (out.login || out.consent) {
            return Err("prompt=none cannot be combined with login or consent");
        }
        Ok(out)
    }
}

async fn authorize(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    // 1. Until the client and redirect URI are known good, errors are pages, never
    //    redirects.
    let params = match FormParams::from_query(uri.query()) {
        Ok(p) => p,
        Err(e) => {
            return bad_request(&format!(
                "The authorization request is malformed: {}. Return to the application and \
                 start again.",
                e.0
            ));
        }
    };
    let unknown = || {
        bad_request(
            "The application that sent you here is not registered (unknown client_id). \
             Tell its operator.",
        )
    };
    let Some(client_id) = params.get("client_id") else {
        return bad_request("The authorization request has no client_id.");
    };
    let Ok(client_id) = client_id.parse::<ClientId>() else {
        return unknown();
    };
    let client = match app.store.client(client_id).await {
        Ok(c) => c,
        Err(CoreError::NotFound { .. }) => return unknown(),
        Err(e) => return store_error_page(&e),
    };
    if client.disabled {
        return bad_request("The application that sent you here is disabled.");
    }
    let redirect_uri = match params.get("redirect_uri") {
        Some(u) => match client.redirect_uri(u) {
            Some(r) => r.as_str().to_owned(),
            None => {
                return bad_request(
                    "The redirect_uri is not registered for this application (an exact match \
                     is required). Tell its operator.",
                );
            }
        },
        None => match client.redirect_uris.as_slice() {
            [only] => only.as_str().to_owned(),
            _ => {
                return bad_request(
                    "The authorization request has no redirect_uri, and this application has \
                     more than one registered: it must say which.",
                );
            }
        },
    };

    // 2. From here on, errors go back to the client.
    let state_param = params.get("state");
    let t = Target {
        redirect_uri: &redirect_uri,
        state: state_param,
        via: Via::Get,
    };
    match params.get("response_type") {
        Some("code") => {}
        None => return error_redirect(&app, &t, "invalid_request", "response_type is missing"),
        Some(_) => {
            return error_redirect(
                &app,
                &t,
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
    }
    // No scope asks for everything the client may have.
    let scope = match params.get("scope") {
        Some(s) => match Scopes::parse(s) {
            Ok(s) => s,
            Err(e) => return error_redirect(&app, &t, "invalid_scope", &e.to_string()),
        },
        None => client.scopes.clone(),
    };
    let challenge = match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (None, None) => None,
        (Some(c), Some("S256")) => match PkceChallenge::s256(c) {
            Ok(p) => Some(p),
            Err(e) => return error_redirect(&app, &t, "invalid_request", &e.to_string()),
        },
        (Some(_), None) => {
            return error_redirect(
                &app,
                &t,
                "invalid_request",
                "code_challenge_method is required and must be S256",
            );
        }
        (_, Some(_)) if params.get("code_challenge").is_none() => {
            return error_redirect(
                &app,
                &t,
                "invalid_request",
                "code_challenge_method was sent without code_challenge",
            );
        }
        (_, Some(_)) => {
            return error_redirect(
                &app,
                &t,
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted, RFC 9700 2.1.1)",
            );
        }
    };
    if client.client_type == ClientType::Public && challenge.is_none() {
        return error_redirect(
            &app,
            &t,
            "invalid_request",
            "PKCE is required for public clients: send code_challenge with \
             code_challenge_method=S256",
        );
    }
    let prompt = match Prompt::parse(params.get("prompt")) {
        Ok(p) => p,
        Err(d) => return error_redirect(&app, &t, "invalid_request", d),
    };
    let (session, handle) = match app
        .store
        .create_authorization_session(NewAuthorizationSession {
            client_id: client.id,
            redirect_uri: redirect_uri.clone(),
            scope,
            state: state_param.map(str::to_owned),
            code_challenge: challenge,
            nonce: params.get("nonce").map(str::to_owned),
        })
        .await
    {
        Ok(x) => x,
        Err(e) => return store_error_redirect(&app, &t, &e),
    };
    let handle = handle.secret();

    // 3. The browser: its CSRF cookie (made now if absent or not made by this server) and
    //    its login session.
    let jar = jar(&app);
    let csrf_name = jar.csrf();
    let cookie_key = csrf_cookie_key(&app);
    let existing = cookies::get_all(&headers, &csrf_name)
        .take(MAX_CSRF_COOKIES)
        .find(|c| csrf::cookie_valid(&cookie_key, c));
    let (csrf_cookie, set_csrf) = match existing {
        Some(c) => (c.to_owned(), None),
        None => match csrf::new_cookie(&cookie_key) {
            Some(c) => {
                let set = jar.set(&csrf_name, &c, None);
                (c, set)
            }
            None => {
                tracing::error!("the operating system's random source failed");
                return unavailable();
            }
        },
    };
    let login = match current_login(&app, &headers).await {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let flow = Flow {
        app: &app,
        handle,
        csrf_cookie: &csrf_cookie,
        session: &session,
        client: &client,
    };

    // 4. Signed in (and not asked to sign in again): on to consent. Else the login page.
    let resp = match login.filter(|_| !prompt.login) {
        Some(SignedIn {
            session: ls,
            method,
        }) => {
            let subject = subject_of(ls.user);
            if let Err(e) = app.store.attach_subject(handle, &subject).await {
                return store_error_page(&e);
            }
            flow.after_login(
                ls.user,
                &subject,
                method,
                prompt.consent,
                prompt.none,
                Via::Get,
            )
            .await
        }
        None if prompt.none => {
            let _ = app.store.expire_authorization_session(handle).await;
            return error_redirect(&app, &t, "login_required", "the user is not signed in");
        }
        None => flow.login_page(StatusCode::OK, None, prompt.consent),
    };
    with_cookies(resp, [set_csrf])
}

/// The checks every credential form (password, second factor) passes first: CSRF (a forged
/// form changes nothing and costs no credential check), then the per-address login limit
/// (a code guess is a credential attempt like a password).
// The error is the page to answer with, built only when refusing: its size costs nothing.
#[allow(clippy::result_large_err)]
fn check_credential_form<'f>(
    app: &AppState,
    freq: &'f FormRequest,
) -> Result<Checked<'f>, Response> {
    let checked = check_form(app, freq).ok_or_else(pages::csrf_failed)?;
    if let Err(secs) = app.limits.check_login(freq.peer) {
        metrics::login("rate_limited");
        return Err(pages::too_many(secs));
    }
    Ok(checked)
}

/// The pending request behind a form, and its client, provided the browser can still be
/// sent back to the request's redirect URI.
async fn returnable_request(
    app: &AppState,
    handle: &str,
) -> Result<(AuthorizationSession, Client), Response> {
    let session = pending(app, handle).await?;
    let client = client_for_page(app, session.client_id).await?;
    if !returnable(&client, &session) {
        return Err(not_returnable(app, handle).await);
    }
    Ok((session, client))
}

// ----- POST /authorize/login -------------------------------------------------------------

async fn login(State(app): State<AppState>, req: Request) -> Response {
    let freq = match read_form(&app, req).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Checked {
        handle,
        csrf_cookie,
    } = match check_credential_form(&app, &freq) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let FormRequest {
        headers,
        peer: ip,
        form,
    } = &freq;
    let ip = *ip;
    let (session, client) = match returnable_request(&app, handle).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let flow = Flow {
        app: &app,
        handle,
        csrf_cookie,
        session: &session,
        client: &client,
    };
    let force_consent = form.get("prompt") == Some("consent");
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return flow.login_page(
            StatusCode::BAD_REQUEST,
            Some("Enter your username and your password."),
            force_consent,
        );
    };
    let password = Password::new(password.to_owned());
    let user = match app.store.login(username, &password, ip).await {
        Ok(u) => u,
        Err(CoreError::InvalidCredentials) => {
            metrics::login("failure");
            return flow.login_page(
                StatusCode::UNAUTHORIZED,
                Some("Wrong username or password."),
                force_consent,
            );
        }
        Err(CoreError::TooManyAttempts { retry_after }) => {
            metrics::login("locked");
            return pages::too_many(retry_after.as_secs());
        }
        Err(e) => return store_error_page(&e),
    };
    drop(password);
    // A user with a TOTP enrolment is not signed in by a password alone. (An enrolment is
    // live as soon as it is made: the store has no "unconfirmed" state.)
    match app.store.backend().get_totp(user.id).await {
        Ok(Some(_)) => return flow.start_second_factor(user.id, force_consent).await,
        Ok(None) => {}
        Err(e) => return store_error_page(&e),
    }
    metrics::login("success");
    flow.finish_login(
        user.id,
        ip,
        user_agent(headers),
        Method::Password,
        force_consent,
    )
    .await
}

// ----- POST /authorize/login/otp ---------------------------------------------------------

async fn login_otp(State(app): State<AppState>, req: Request) -> Response {
    let freq = match read_form(&app, req).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Checked {
        handle,
        csrf_cookie,
    } = match check_credential_form(&app, &freq) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let FormRequest {
        headers,
        peer: ip,
        form,
    } = &freq;
    let ip = *ip;
    let Some(ticket) = form.get("ticket") else {
        return pages::bad_ticket();
    };
    let key = mfa::ticket_key(&app.store);
    let user = match mfa::open_ticket(&key, handle, ticket, app.store.now()) {
        Ok(u) => u,
        Err(TicketError::Invalid) => return pages::bad_ticket(),
        Err(TicketError::Expired) => return pages::expired(),
    };
    let (session, client) = match returnable_request(&app, handle).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let flow = Flow {
        app: &app,
        handle,
        csrf_cookie,
        session: &session,
        client: &client,
    };
    let force_consent = form.get("prompt") == Some("consent");
    let (code, recovery) = match (form.get("code"), form.get("recovery_code")) {
        (Some(c), None) => (Some(c), None),
        (None, Some(r)) => (None, Some(r)),
        _ => {
            return flow.second_factor_page(
                StatusCode::BAD_REQUEST,
                ticket,
                Some("Enter the code from your authenticator app, or a recovery code."),
                force_consent,
            );
        }
    };
    // The store refuses a locked user (`TooManyAttempts`); each wrong code counts as a
    // failure of the user in its lockout.
    let verdict = match (code, recovery) {
        (Some(c), _) => app.store.verify_totp(user, c).await,
        (None, Some(r)) => app.store.use_recovery_code(user, r).await,
        (None, None) => Ok(false),
    };
    match verdict {
        Ok(true) => {
            metrics::login("success");
            flow.finish_login(
                user,
                ip,
                user_agent(headers),
                Method::PasswordAndOtp,
                force_consent,
            )
            .await
        }
        Ok(false) => {
            metrics::login("failure");
            flow.second_factor_page(
                StatusCode::UNAUTHORIZED,
                ticket,
                Some("That code is wrong or was already used. Try again."),
                force_consent,
            )
        }
        Err(CoreError::TooManyAttempts { retry_after }) => {
            metrics::login("locked");
            pages::too_many(retry_after.as_secs())
        }
        // Disabled since the password was checked.
        Err(CoreError::InvalidCredentials) => {
            metrics::login("failure");
            flow.login_page(
                StatusCode::UNAUTHORIZED,
                Some("Wrong username or password."),
                force_consent,
            )
        }
        Err(e) => store_error_page(&e),
    }
}

// ----- POST /authorize/consent -----------------------------------------------------------

async fn consent(State(app): State<AppState>, req: Request) -> Response {
    let freq = match read_form(&app, req).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let Some(Checked { handle, .. }) = check_form(&app, &freq) else {
        return pages::csrf_failed();
    };
    let forbidden = || {
        pages::error(
            StatusCode::FORBIDDEN,
            "Not signed in",
            "You are not signed in as the account this request is for. Return to the \
             application and start again.",
        )
    };
    let login = match current_login(&app, &freq.headers).await {
        Ok(Some(l)) => l,
        Ok(None) => return forbidden(),
        Err(resp) => return resp,
    };
    let session = match pending(&app, handle).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let subject = subject_of(login.session.user);
    if session.subject.as_ref() != Some(&subject) {
        return forbidden();
    }
    let client = match client_for_page(&app, session.client_id).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    // Before anything goes back to the redirect URI, approved or denied.
    if !returnable(&client, &session) {
        return not_returnable(&app, handle).await;
    }
    match freq.form.get("decision") {
        Some("approve") => {
            // Complete first (compare-and-set): a second submit changes nothing, not even
            // the remembered consent.
            let s = match app.store.complete_authorization_session(handle).await {
                Ok(s) => s,
                Err(e) => return store_error_page(&e),
            };
            let t = Target {
                redirect_uri: s.redirect_uri.as_str(),
                state: s.state.as_deref(),
                via: Via::Post,
            };
            if let Err(e) = app
                .store
                .record_consent(s.client_id, &subject, &s.scope)
                .await
            {
                return store_error_redirect(&app, &t, &e);
            }
            issue_for(&app, &client, &s, login.method, Via::Post).await
        }
        Some("deny") => {
            if let Err(e) = app.store.expire_authorization_session(handle).await {
                return store_error_page(&e);
            }
            let t = Target {
                redirect_uri: session.redirect_uri.as_str(),
                state: session.state.as_deref(),
                via: Via::Post,
            };
            error_redirect(&app, &t, "access_denied", "the user denied the request")
        }
        _ => bad_request("Choose Approve or Deny."),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use authstore_core::{
        AuditKind, AuditQuery, AuthContext, Client, ClientId, ClientUpdate, CodeRedemption,
        NewClient, NewUser, Password, PkceChallenge, RedirectUri, Scopes, TokenOptions, User,
    };

    use super::LOGIN_OTP;
    use crate::RateLimit;
    use crate::testing::{TestResponse, TestServer};

    const REDIRECT: &str = "https://app.example/cb";
    const PASSWORD: &str = "correct horse battery staple";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const ISSUER: &str = "http://127.0.0.1:8080";

    /// A browser: keeps the cookies the server sets and sends them back.
    struct Browser<'a> {
        srv: &'a TestServer,
        cookies: Vec<(String, String)>,
    }

    impl<'a> Browser<'a> {
        fn new(srv: &'a TestServer) -> Self {
            Self {
                srv,
                cookies: Vec::new(),
            }
        }

        fn cookie(&self, name: &str) -> Option<&str> {
            self.cookies
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }

        fn cookie_header(&self) -> String {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        }

        fn keep(&mut self, resp: &TestResponse) {
            for v in resp.headers.get_all("set-cookie") {
                let v = v.to_str().unwrap();
                let (k, rest) = v.split_once('=').unwrap();
                let value = rest.split(';').next().unwrap();
                self.cookies.retain(|(n, _)| n != k);
                self.cookies.push((k.to_owned(), value.to_owned()));
            }
        }

        async fn get(&mut self, path: &str) -> TestResponse {
            let c = self.cookie_header();
            let resp = if c.is_empty() {
                self.srv.get(path, &[]).await
            } else {
                self.srv.get(path, &[("cookie", &c)]).await
            };
            self.keep(&resp);
            resp
        }

        async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> TestResponse {
            self.post_with(path, fields, &[]).await
        }

        /// A form post with extra request headers.
        async fn post_with(
            &mut self,
            path: &str,
            fields: &[(&str, &str)],
            extra: &[(&str, &str)],
        ) -> TestResponse {
            let body = encode(fields);
            let c = self.cookie_header();
            let mut headers = extra.to_vec();
            if !c.is_empty() {
                headers.push(("cookie", &c));
            }
            let resp = self.srv.post_form(path, &body, &headers).await;
            self.keep(&resp);
            resp
        }
    }

    fn encode(fields: &[(&str, &str)]) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            s.append_pair(k, v);
        }
        s.finish()
    }

    fn authz(fields: &[(&str, &str)]) -> String {
        format!("/authorize?{}", encode(fields))
    }

    /// A PKCE request of the public client for `read`, with `state=xyz`.
    fn public_request(client: &Client, extra: &[(&str, &str)]) -> String {
        let challenge = PkceChallenge::from_verifier(VERIFIER).unwrap().challenge;
        let id = client.id.to_string();
        let mut f = vec![
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", "read"),
            ("state", "xyz"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        f.extend_from_slice(extra);
        authz(&f)
    }

    fn hidden(body: &str, name: &str) -> String {
        let pat = format!("name=\"{name}\" value=\"");
        let i = body
            .find(&pat)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            + pat.len();
        let j = body[i..].find('"').unwrap();
        body[i..i + j].to_owned()
    }

    fn location(resp: &TestResponse) -> (url::Url, HashMap<String, String>) {
        let url = url::Url::parse(resp.header("location").expect("a Location")).unwrap();
        let q = url.query_pairs().into_owned().collect();
        (url, q)
    }

    async fn user(srv: &TestServer, name: &str) -> User {
        let u = srv.store.create_user(NewUser::new(name)).await.unwrap();
        srv.store
            .set_password(u.id, &Password::new(PASSWORD.to_owned()), false)
            .await
            .unwrap();
        u
    }

    async fn public_client(srv: &TestServer, name: &str, scopes: &str) -> Client {
        srv.store
            .create_client(
                NewClient::public(name, RedirectUri::new(REDIRECT).unwrap())
                    .scopes(Scopes::parse(scopes).unwrap()),
            )
            .await
            .unwrap()
            .client
    }

    async fn count(srv: &TestServer, kind: AuditKind) -> usize {
        srv.store
            .audit_events(&AuditQuery {
                kind: Some(kind),
                limit: Some(1000),
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .len()
    }

    /// GET the request, sign in as `username`: the answer to the login form.
    async fn sign_in(b: &mut Browser<'_>, url: &str, username: &str) -> TestResponse {
        let page = b.get(url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Sign in"), "{}", page.body);
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let mut fields = vec![
            ("handle", handle.as_str()),
            ("csrf", csrf.as_str()),
            ("username", username),
            ("password", PASSWORD),
        ];
        // Like a browser: every hidden field of the form goes back.
        if page.body.contains("name=\"prompt\" value=\"consent\"") {
            fields.push(("prompt", "consent"));
        }
        b.post("/authorize/login", &fields).await
    }

    async fn decide(b: &mut Browser<'_>, consent_page: &TestResponse, d: &str) -> TestResponse {
        let handle = hidden(&consent_page.body, "handle");
        let csrf = hidden(&consent_page.body, "csrf");
        b.post(
            "/authorize/consent",
            &[("handle", &handle), ("csrf", &csrf), ("decision", d)],
        )
        .await
    }

    #[tokio::test]
    async fn full_flow_public_client_with_pkce() {
        let srv = TestServer::new();
        let alice = user(&srv, "alice").await;
        let client = public_client(&srv, "Photo App", "read write").await;
        let mut b = Browser::new(&srv);

        let page = b.get(&public_request(&client, &[])).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("Photo App"));
        assert!(page.body.contains("action=\"/authorize/login\""));
        assert!(b.cookie("authstore_csrf").is_some());
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let consent = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &handle),
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("<li><code>read</code></li>"));
        assert!(!consent.body.contains("<code>write</code>"));
        assert!(consent.body.contains("Signed in as alice"));
        assert!(consent.body.contains("action=\"/authorize/consent\""));
        assert!(b.cookie("authstore_session").unwrap().starts_with("ls_"));

        let done = decide(&mut b, &consent, "approve").await;
        assert_eq!(done.status, 303, "{}", done.body);
        let (url, q) = location(&done);
        assert_eq!(url.as_str().split('?').next(), Some(REDIRECT));
        assert_eq!(q["state"], "xyz");
        assert_eq!(q["iss"], ISSUER);
        assert!(!q.contains_key("error"));
        let tokens = srv
            .store
            .redeem_code(CodeRedemption {
                code: &q["code"],
                client_id: client.id,
                redirect_uri: Some(REDIRECT),
                code_verifier: Some(VERIFIER),
                options: &TokenOptions::default(),
            })
            .await
            .unwrap();
        assert_eq!(tokens.scope.to_string(), "read");
        let at = srv
            .store
            .validate_access_token(tokens.access_token.secret())
            .await
            .unwrap();
        assert_eq!(at.subject, Some(alice.subject()));
        assert_eq!(at.auth.amr, vec!["pwd".to_owned()]);
        let consent = srv
            .store
            .consent(client.id, &alice.subject())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(consent.scope.to_string(), "read");
    }

    #[tokio::test]
    async fn full_flow_confidential_client_keeps_the_registered_query() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let registered = "https://conf.example/cb?tenant=7";
        let created = srv
            .store
            .create_client(
                NewClient::confidential("Back Office")
                    .redirect_uri(RedirectUri::new(registered).unwrap())
                    .scopes(Scopes::parse("read write").unwrap()),
            )
            .await
            .unwrap();
        let id = created.client.id.to_string();
        let mut b = Browser::new(&srv);
        // No redirect_uri (one registered), no scope (all the client's), no state, no PKCE.
        let url = authz(&[("response_type", "code"), ("client_id", &id)]);
        let consent = sign_in(&mut b, &url, "alice").await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("<code>read</code>"));
        assert!(consent.body.contains("<code>write</code>"));
        let csp = consent.header("content-security-policy").unwrap();
        assert!(
            csp.contains("form-action 'self' https://conf.example;")
                || csp.ends_with("form-action 'self' https://conf.example")
        );
        let done = decide(&mut b, &consent, "approve").await;
        assert_eq!(done.status, 303);
        let (url, q) = location(&done);
        assert!(
            url.as_str()
                .starts_with("https://conf.example/cb?tenant=7&code=")
        );
        assert_eq!(q["tenant"], "7");
        assert!(!q.contains_key("state"));
        assert_eq!(q["iss"], ISSUER);
        let tokens = srv
            .store
            .redeem_code(CodeRedemption {
                code: &q["code"],
                client_id: created.client.id,
                redirect_uri: Some(registered),
                code_verifier: None,
                options: &TokenOptions::default(),
            })
            .await
            .unwrap();
        assert_eq!(tokens.scope.to_string(), "read write");
        assert!(tokens.refresh_token.is_some());
    }

    #[tokio::test]
    async fn remembered_consent_skips_the_page_and_prompt_consent_shows_it() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read write").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(decide(&mut b, &consent, "approve").await.status, 303);

        // Signed in and consented: straight back with a code, no page.
        let again = b.get(&public_request(&client, &[])).await;
        assert_eq!(again.status, 302, "{}", again.body);
        let (_, q) = location(&again);
        assert!(q["code"].starts_with("ac_"));
        assert_eq!(q["state"], "xyz");
        assert_eq!(q["iss"], ISSUER);

        // prompt=consent shows the page anyway.
        let forced = b
            .get(&public_request(&client, &[("prompt", "consent")]))
            .await;
        assert_eq!(forced.status, 200);
        assert!(forced.body.contains("Approve"));
        assert!(forced.header("location").is_none());

        // A wider scope than remembered asks again.
        let wider = b
            .get(&public_request(&client, &[]).replace("scope=read", "scope=read+write"))
            .await;
        assert_eq!(wider.status, 200);
        assert!(wider.body.contains("<code>write</code>"));

        // prompt=login shows the login page although signed in.
        let relogin = b
            .get(&public_request(&client, &[("prompt", "login")]))
            .await;
        assert_eq!(relogin.status, 200);
        assert!(relogin.body.contains("name=\"password\""));

        // prompt=consent survives the login form of a browser that is not signed in.
        let mut fresh = Browser::new(&srv);
        let forced = sign_in(
            &mut fresh,
            &public_request(&client, &[("prompt", "consent")]),
            "alice",
        )
        .await;
        assert_eq!(forced.status, 200);
        assert!(forced.body.contains("Approve"));
        // And without it, the remembered consent applies right after login.
        let mut fresh = Browser::new(&srv);
        let direct = sign_in(&mut fresh, &public_request(&client, &[]), "alice").await;
        assert_eq!(direct.status, 303, "{}", direct.body);
        assert!(location(&direct).1.contains_key("code"));
        assert!(fresh.cookie("authstore_session").is_some());
    }

    #[tokio::test]
    async fn deny_redirects_with_access_denied_and_ends_the_request() {
        let srv = TestServer::new();
        let alice = user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        let denied = decide(&mut b, &consent, "deny").await;
        assert_eq!(denied.status, 303);
        let (_, q) = location(&denied);
        assert_eq!(q["error"], "access_denied");
        assert_eq!(q["state"], "xyz");
        assert_eq!(q["iss"], ISSUER);
        assert!(!q.contains_key("code"));
        // The request is over: approving it now gets the expired page, and no consent.
        let late = decide(&mut b, &consent, "approve").await;
        assert_eq!(late.status, 400);
        assert!(late.body.contains("expired"));
        assert!(late.header("location").is_none());
        assert!(
            srv.store
                .consent(client.id, &alice.subject())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 0);
    }

    #[tokio::test]
    async fn bad_client_or_redirect_uri_gets_a_page_never_a_redirect() {
        let srv = TestServer::new();
        let client = public_client(&srv, "App", "read").await;
        let id = client.id.to_string();
        let unknown = ClientId::from_uuid(uuid::Uuid::now_v7()).to_string();
        let cases = [
            authz(&[("response_type", "code"), ("client_id", &unknown)]),
            authz(&[("response_type", "code"), ("client_id", "not-a-uuid")]),
            authz(&[("response_type", "code"), ("redirect_uri", REDIRECT)]),
            authz(&[
                ("response_type", "code"),
                ("client_id", &id),
                ("redirect_uri", "https://evil.example/cb"),
            ]),
            authz(&[
                ("response_type", "code"),
                ("client_id", &id),
                ("redirect_uri", "https://app.example/cb/"),
            ]),
            // Repeated parameters are refused before anything else.
            format!("/authorize?client_id={id}&client_id={id}&response_type=code"),
            format!(
                "{}&state=a&state=b",
                public_request(&client, &[]).replace("state=xyz&", "")
            ),
            "/authorize?client_id=%FF".to_owned(),
        ];
        for url in &cases {
            let r = srv.get(url, &[]).await;
            assert_eq!(r.status, 400, "{url}: {}", r.body);
            assert!(r.header("location").is_none(), "{url}");
            assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        }
        srv.store.disable_client(client.id).await.unwrap();
        let r = srv.get(&public_request(&client, &[]), &[]).await;
        assert_eq!(r.status, 400);
        assert!(r.header("location").is_none());
        assert_eq!(count(&srv, AuditKind::AuthorizationSessionCreated).await, 0);
    }

    #[tokio::test]
    async fn request_errors_redirect_to_the_client() {
        let srv = TestServer::new();
        let client = public_client(&srv, "App", "read write").await;
        let id = client.id.to_string();
        let expect = |r: &TestResponse, error: &str| {
            assert_eq!(r.status, 302, "{}", r.body);
            let (url, q) = location(r);
            assert!(url.as_str().starts_with(REDIRECT));
            assert_eq!(q["error"], error, "{:?}", q);
            assert!(q.contains_key("error_description"));
            assert_eq!(q["iss"], ISSUER);
            assert!(!q.contains_key("code"));
        };
        let r = srv
            .get(
                &public_request(&client, &[]).replace("response_type=code", "response_type=token"),
                &[],
            )
            .await;
        expect(&r, "unsupported_response_type");
        assert_eq!(location(&r).1["state"], "xyz");
        // Public client without PKCE.
        let r = srv
            .get(
                &authz(&[
                    ("response_type", "code"),
                    ("client_id", &id),
                    ("state", "s1"),
                ]),
                &[],
            )
            .await;
        expect(&r, "invalid_request");
        assert_eq!(location(&r).1["state"], "s1");
        // plain is refused, and so is a challenge without a method (which means plain).
        let challenge = PkceChallenge::from_verifier(VERIFIER).unwrap().challenge;
        for method in [Some("plain"), None, Some("S512")] {
            let mut f = vec![
                ("response_type", "code"),
                ("client_id", id.as_str()),
                ("code_challenge", challenge.as_str()),
            ];
            if let Some(m) = method {
                f.push(("code_challenge_method", m));
            }
            expect(&srv.get(&authz(&f), &[]).await, "invalid_request");
        }
        // A malformed challenge.
        let r = srv
            .get(
                &public_request(&client, &[]).replace(&challenge, "short"),
                &[],
            )
            .await;
        expect(&r, "invalid_request");
        // Scopes: malformed, and beyond the client's.
        let r = srv
            .get(
                &public_request(&client, &[]).replace("scope=read", "scope=read%22"),
                &[],
            )
            .await;
        expect(&r, "invalid_scope");
        let r = srv
            .get(
                &public_request(&client, &[]).replace("scope=read", "scope=admin"),
                &[],
            )
            .await;
        expect(&r, "invalid_scope");
        // A missing response_type, and prompt=none with login.
        let r = srv
            .get(
                &public_request(&client, &[]).replace("response_type=code&", ""),
                &[],
            )
            .await;
        expect(&r, "invalid_request");
        let r = srv
            .get(&public_request(&client, &[("prompt", "none login")]), &[])
            .await;
        expect(&r, "invalid_request");
        // A state the store refuses (a control character) still comes back verbatim.
        let r = srv
            .get(
                &public_request(&client, &[]).replace("state=xyz", "state=a%01b"),
                &[],
            )
            .await;
        expect(&r, "invalid_request");
        assert_eq!(location(&r).1["state"], "a\u{1}b");
        assert_eq!(count(&srv, AuditKind::AuthorizationSessionCreated).await, 0);
    }

    #[tokio::test]
    async fn prompt_none() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let r = b.get(&public_request(&client, &[("prompt", "none")])).await;
        assert_eq!(r.status, 302);
        assert_eq!(location(&r).1["error"], "login_required");
        assert_eq!(location(&r).1["state"], "xyz");

        // Signed in (by a denied request) but never consented.
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(decide(&mut b, &consent, "deny").await.status, 303);
        let r = b.get(&public_request(&client, &[("prompt", "none")])).await;
        assert_eq!(r.status, 302);
        assert_eq!(location(&r).1["error"], "consent_required");

        // Consented: a code without any page.
        let consent = b.get(&public_request(&client, &[])).await;
        assert_eq!(decide(&mut b, &consent, "approve").await.status, 303);
        let r = b.get(&public_request(&client, &[("prompt", "none")])).await;
        assert_eq!(r.status, 302);
        assert!(location(&r).1["code"].starts_with("ac_"));
    }

    #[tokio::test]
    async fn wrong_password_is_401_without_a_session() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        for username in ["alice", "nobody"] {
            let r = b
                .post(
                    "/authorize/login",
                    &[
                        ("handle", &handle),
                        ("csrf", &csrf),
                        ("username", username),
                        ("password", "wrong password!"),
                    ],
                )
                .await;
            assert_eq!(r.status, 401);
            assert!(r.body.contains("Wrong username or password."));
            assert!(r.header("set-cookie").is_none());
            assert!(!r.body.contains("wrong password!"));
            // The page is ready for another try.
            assert_eq!(hidden(&r.body, "handle"), handle);
            assert_eq!(hidden(&r.body, "csrf"), csrf);
        }
        assert!(b.cookie("authstore_session").is_none());
        assert_eq!(count(&srv, AuditKind::LoginSessionCreated).await, 0);
        // Missing fields: the form again, no attempt.
        let before = srv.store.password_verifications().await.unwrap();
        let r = b
            .post(
                "/authorize/login",
                &[("handle", &handle), ("csrf", &csrf), ("username", "alice")],
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(srv.store.password_verifications().await.unwrap(), before);
        // The right password then works.
        let r = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &handle),
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(b.cookie("authstore_session").is_some());
    }

    #[tokio::test]
    async fn locked_user_gets_429() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let r = b
                .post(
                    "/authorize/login",
                    &[
                        ("handle", &handle),
                        ("csrf", &csrf),
                        ("username", "alice"),
                        ("password", "not the password"),
                    ],
                )
                .await;
            statuses.push(r.status.as_u16());
            if r.status == 429 {
                assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            }
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    }

    #[tokio::test]
    async fn csrf_failures_are_403_and_change_nothing() {
        let srv = TestServer::new();
        let alice = user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut a = Browser::new(&srv);
        let mut other = Browser::new(&srv);
        let page = a.get(&public_request(&client, &[])).await;
        other.get(&public_request(&client, &[])).await;
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let a_cookie = a.cookie("authstore_csrf").unwrap().to_owned();
        let other_cookie = other.cookie("authstore_csrf").unwrap().to_owned();
        assert_ne!(a_cookie, other_cookie);
        let before = srv.store.password_verifications().await.unwrap();
        let wrong = crate::csrf::token(&[9; 32], &a_cookie, &handle);
        // (the CSRF cookie sent, the form fields)
        type Case<'a> = (Option<String>, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case<'_>> = vec![
            // No token.
            (Some(a_cookie.clone()), vec![("handle", &handle)]),
            // A wrong token (another key).
            (
                Some(a_cookie.clone()),
                vec![("handle", &handle), ("csrf", &wrong)],
            ),
            // The token with another browser's cookie.
            (
                Some(other_cookie.clone()),
                vec![("handle", &handle), ("csrf", &csrf)],
            ),
            // No cookie at all.
            (None, vec![("handle", &handle), ("csrf", &csrf)]),
            // No handle.
            (Some(a_cookie.clone()), vec![("csrf", &csrf)]),
        ];
        for (cookie, mut fields) in cases {
            fields.push(("username", "alice"));
            fields.push(("password", PASSWORD));
            let body = encode(&fields);
            let headers: Vec<(&str, String)> = cookie
                .iter()
                .map(|c| ("cookie", format!("authstore_csrf={c}")))
                .collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = srv.post_form("/authorize/login", &body, &headers).await;
            assert_eq!(r.status, 403, "{fields:?}");
            assert!(r.body.contains("came from another site"));
            assert!(r.header("set-cookie").is_none());
            let r = srv.post_form("/authorize/consent", &body, &headers).await;
            assert_eq!(r.status, 403);
        }
        assert_eq!(srv.store.password_verifications().await.unwrap(), before);
        for kind in [
            AuditKind::LoginAttempted,
            AuditKind::LoginFailed,
            AuditKind::LoginSucceeded,
            AuditKind::LoginSessionCreated,
            AuditKind::AuthorizationSessionSubject,
        ] {
            assert_eq!(count(&srv, kind).await, 0, "{kind:?}");
        }
        // The real form still works afterwards.
        let ok = a
            .post(
                "/authorize/login",
                &[
                    ("handle", &handle),
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(ok.status, 200);
        // A consent form needs the CSRF token too, and the signed-in user.
        let forged = a
            .post(
                "/authorize/consent",
                &[
                    ("handle", &handle),
                    ("csrf", &wrong),
                    ("decision", "approve"),
                ],
            )
            .await;
        assert_eq!(forged.status, 403);
        assert!(
            srv.store
                .consent(client.id, &alice.subject())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn consent_needs_the_sessions_own_user() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        user(&srv, "bob").await;
        let client = public_client(&srv, "App", "read").await;
        let mut alice = Browser::new(&srv);
        let consent = sign_in(&mut alice, &public_request(&client, &[]), "alice").await;
        let mut bob = Browser::new(&srv);
        sign_in(&mut bob, &public_request(&client, &[]), "bob").await;
        // Alice's form and CSRF cookie, Bob's login session.
        let mut mixed = Browser::new(&srv);
        mixed.cookies = vec![
            (
                "authstore_csrf".into(),
                alice.cookie("authstore_csrf").unwrap().into(),
            ),
            (
                "authstore_session".into(),
                bob.cookie("authstore_session").unwrap().into(),
            ),
        ];
        let r = decide(&mut mixed, &consent, "approve").await;
        assert_eq!(r.status, 403);
        // Without any login session.
        mixed.cookies.truncate(1);
        let r = decide(&mut mixed, &consent, "approve").await;
        assert_eq!(r.status, 403);
        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 0);
        // Alice herself can.
        assert_eq!(decide(&mut alice, &consent, "approve").await.status, 303);
    }

    #[tokio::test]
    async fn a_second_approve_issues_no_second_code() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        let first = decide(&mut b, &consent, "approve").await;
        assert_eq!(first.status, 303);
        let second = decide(&mut b, &consent, "approve").await;
        assert_eq!(second.status, 400);
        assert!(
            second
                .body
                .contains("has expired; return to the application and start again")
        );
        assert!(second.header("location").is_none());
        let deny = decide(&mut b, &consent, "deny").await;
        assert_eq!(deny.status, 400);
        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 1);
        assert_eq!(count(&srv, AuditKind::ConsentRecorded).await, 1);
    }

    #[tokio::test]
    async fn an_expired_request_gets_the_expired_page() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        srv.clock.advance(Duration::from_secs(601));
        let before = srv.store.password_verifications().await.unwrap();
        let r = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&page.body, "handle")),
                    ("csrf", &hidden(&page.body, "csrf")),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(r.body.contains(
            "This sign-in request has expired; return to the application and start again."
        ));
        assert_eq!(srv.store.password_verifications().await.unwrap(), before);
    }

    #[tokio::test]
    async fn login_rate_limit_gives_429() {
        let srv = TestServer::with_config(|c| c.login_rate_limit = RateLimit::per_second(1, 2));
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let form = [
            ("handle", handle.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", "not the password"),
        ];
        assert_eq!(b.post("/authorize/login", &form).await.status, 401);
        assert_eq!(b.post("/authorize/login", &form).await.status, 401);
        let before = srv.store.password_verifications().await.unwrap();
        let r = b.post("/authorize/login", &form).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(srv.store.password_verifications().await.unwrap(), before);
    }

    #[tokio::test]
    async fn cookies_over_http() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let set = page.header("set-cookie").unwrap();
        assert!(set.starts_with("authstore_csrf="));
        assert!(
            set.contains("; HttpOnly")
                && set.contains("; SameSite=Lax")
                && set.contains("; Path=/")
        );
        assert!(!set.contains("Secure"));
        assert_eq!(b.cookie("authstore_csrf").unwrap().len(), 86);
        // Sent back, the cookie is kept, not replaced.
        let again = b.get(&public_request(&client, &[])).await;
        assert!(again.header("set-cookie").is_none());
        let r = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&again.body, "handle")),
                    ("csrf", &hidden(&again.body, "csrf")),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        let set = r.header("set-cookie").unwrap();
        assert!(set.starts_with("authstore_session=ls_"));
        assert!(
            set.contains("; HttpOnly")
                && set.contains("; SameSite=Lax")
                && set.contains("; Path=/")
        );
        assert!(set.contains("; Max-Age=1209600"));
        assert!(!set.contains("Secure"));
    }

    #[tokio::test]
    async fn cookies_and_paths_under_an_https_issuer() {
        // At the root: the `__Host-` prefix, `Path=/`.
        let srv = TestServer::with_config(|c| {
            c.issuer = url::Url::parse("https://auth.example.com").unwrap();
        });
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        let csrf = b.cookie("__Host-authstore_csrf").unwrap().to_owned();
        let set = consent.header("set-cookie").unwrap();
        assert!(set.starts_with("__Host-authstore_session=ls_"));
        assert!(
            set.contains("; Secure") && set.contains("; HttpOnly") && set.contains("; Path=/;")
        );
        // A cookie without the prefix is not ours under https.
        let plain = srv
            .get(
                &public_request(&client, &[]),
                &[("cookie", &format!("authstore_csrf={csrf}"))],
            )
            .await;
        assert!(
            plain
                .header("set-cookie")
                .unwrap()
                .starts_with("__Host-authstore_csrf=")
        );

        // Under a path: `__Secure-` (`__Host-` requires `Path=/`) and `Path=/tenant`.
        let srv = TestServer::with_config(|c| {
            c.issuer = url::Url::parse("https://auth.example.com/tenant").unwrap();
        });
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        assert_eq!(page.status, 200);
        let set = page.header("set-cookie").unwrap();
        assert!(set.starts_with("__Secure-authstore_csrf="), "{set}");
        assert!(
            set.contains("; Secure")
                && set.contains("; HttpOnly")
                && set.contains("; SameSite=Lax")
                && set.ends_with("; Path=/tenant; Secure"),
            "{set}"
        );
        assert!(page.body.contains("action=\"/tenant/authorize/login\""));
        let consent = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&page.body, "handle")),
                    ("csrf", &hidden(&page.body, "csrf")),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        let set = consent.header("set-cookie").unwrap();
        assert!(set.starts_with("__Secure-authstore_session=ls_"));
        assert!(set.contains("; Secure") && set.contains("; HttpOnly"));
        assert!(set.contains("; Path=/tenant;"), "{set}");
        assert!(
            consent
                .body
                .contains("action=\"/tenant/authorize/consent\"")
        );
        let done = decide(&mut b, &consent, "approve").await;
        assert_eq!(location(&done).1["iss"], "https://auth.example.com/tenant");
        // The tenant's session works from its own cookie.
        let again = b.get(&public_request(&client, &[])).await;
        assert_eq!(again.status, 302, "{}", again.body);
    }

    #[tokio::test]
    async fn tenants_under_http_get_their_own_cookie_path() {
        let srv = TestServer::with_config(|c| {
            c.issuer = url::Url::parse("http://127.0.0.1:8080/tenant-a/").unwrap();
        });
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        let set = consent.header("set-cookie").unwrap();
        assert!(set.starts_with("authstore_session=ls_"));
        assert!(
            set.contains("; Path=/tenant-a;") && !set.contains("Secure"),
            "{set}"
        );
        // Another tenant's cookie of the same name, sent along by the browser (a shorter
        // path, so after ours), does not disturb this one's form.
        let other = TestServer::new();
        let other_client = public_client(&other, "Other", "read").await;
        let mut o = Browser::new(&other);
        o.get(&public_request(&other_client, &[])).await;
        let foreign = o.cookie("authstore_csrf").unwrap().to_owned();
        b.cookies.push(("authstore_csrf".into(), foreign));
        let page = b
            .get(&public_request(&client, &[("prompt", "login")]))
            .await;
        assert_eq!(page.status, 200);
        assert!(page.header("set-cookie").is_none());
        let r = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&page.body, "handle")),
                    ("csrf", &hidden(&page.body, "csrf")),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("Approve"));
    }

    #[tokio::test]
    async fn interpolated_values_are_escaped() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let evil = "<script>alert(1)</script>";
        let client = public_client(&srv, evil, &format!("read {evil}")).await;
        let mut b = Browser::new(&srv);
        let url = public_request(&client, &[])
            .replace(
                "scope=read",
                &format!(
                    "scope={}",
                    encode(&[("s", &format!("read {evil}"))])[2..].to_owned()
                ),
            )
            .replace("state=xyz", &encode(&[("state", evil)]));
        let page = b.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains("<script>"));
        assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        let consent = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &handle),
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(!consent.body.contains("<script>"));
        assert!(
            consent
                .body
                .contains("<li><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></li>")
        );
        assert!(
            consent
                .body
                .contains("<h1>Authorize &lt;script&gt;alert(1)&lt;/script&gt;</h1>")
        );
        let done = decide(&mut b, &consent, "approve").await;
        let raw = done.header("location").unwrap();
        assert!(!raw.contains('<') && !raw.contains('>'));
        assert_eq!(location(&done).1["state"], evil);
    }

    #[tokio::test]
    async fn pages_carry_the_security_headers() {
        let srv = TestServer::new();
        let client = public_client(&srv, "App", "read").await;
        let page = srv.get(&public_request(&client, &[]), &[]).await;
        let error = srv.get("/authorize?client_id=x", &[]).await;
        for (r, form_action) in [
            (&page, "form-action 'self' https://app.example"),
            (&error, "form-action 'none'"),
        ] {
            let csp = r.header("content-security-policy").unwrap();
            for d in [
                "default-src 'none'",
                "style-src 'sha256-",
                "img-src 'none'",
                "base-uri 'none'",
                "frame-ancestors 'none'",
                form_action,
            ] {
                assert!(csp.contains(d), "{csp} lacks {d}");
            }
            assert!(!csp.contains("script-src"));
            assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("x-frame-options"), Some("DENY"));
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(r.header("referrer-policy"), Some("same-origin"));
            assert!(
                r.body
                    .contains("<meta name=\"referrer\" content=\"same-origin\">")
            );
            assert!(r.body.starts_with("<!DOCTYPE html>"));
            assert!(!r.body.contains("<script"));
        }
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logs_hold_no_secrets() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // A second registered dispatcher makes tracing-core ask every registered one for a
        // callsite's interest instead of caching the answer of whichever thread hit it first
        // (a parallel test without a subscriber would otherwise cache "never").
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _guard = tracing::subscriber::set_default(subscriber);

        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        // Other tests run on other threads at the same time: a callsite they registered
        // while this subscriber was being installed may have cached "never". Recompute.
        tracing::callsite::rebuild_interest_cache();
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        // A wrong password first, then the right one.
        b.post(
            "/authorize/login",
            &[
                ("handle", &handle),
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", "Tr0ub4dor&3-wrong"),
            ],
        )
        .await;
        let consent = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &handle),
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        let done = decide(&mut b, &consent, "approve").await;
        let code = location(&done).1["code"].clone();
        let again = b.get(&public_request(&client, &[])).await;
        let code2 = location(&again).1["code"].clone();

        let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let session = b.cookie("authstore_session").unwrap();
        let csrf_cookie = b.cookie("authstore_csrf").unwrap();
        for secret in [
            PASSWORD,
            "Tr0ub4dor&3-wrong",
            code.as_str(),
            code2.as_str(),
            session,
            csrf_cookie,
            csrf.as_str(),
            handle.as_str(),
            VERIFIER,
        ] {
            assert!(!logs.contains(secret), "the logs hold a secret:\n{logs}");
        }
        assert!(
            logs.contains("request{method=GET route=\"/authorize\"}"),
            "{logs}"
        );
        assert!(
            logs.contains("request{method=POST route=\"/authorize/login\"}"),
            "{logs}"
        );
        assert!(
            logs.contains("request{method=POST route=\"/authorize/consent\"}"),
            "{logs}"
        );
    }

    // ----- second factor ------------------------------------------------------------------

    /// A server whose store can seal TOTP secrets (the harness's cannot), without the
    /// per-address login limit (these tests post many forms at once), with `edit` applied.
    fn mfa_server(edit: impl FnOnce(&mut crate::ServerConfig)) -> TestServer {
        use authstore_core::{
            Authstore, Config, ManualClock, PasswordParams, SealingKey, SealingKeyring, TokenKey,
            TokenKeyring,
        };
        let clock = ManualClock::new(crate::testing::START);
        let store = Authstore::new(
            Arc::new(authstore_memory::MemoryStore::new()),
            TokenKeyring::new(TokenKey::from_bytes("k1", [7; 32]).unwrap()),
        )
        .with_clock(Arc::new(clock.clone()))
        .with_config(Config {
            password_params: PasswordParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            danger_allow_weak_password_params: true,
            ..Config::default()
        })
        .unwrap()
        .with_sealing_keys(SealingKeyring::new(
            SealingKey::from_bytes("s1", [5; 32]).unwrap(),
        ));
        let mut config = crate::ServerConfig::new("http://127.0.0.1:8080").unwrap();
        config.request_timeout = Duration::from_secs(30);
        config.login_rate_limit = RateLimit::OFF;
        edit(&mut config);
        let app = crate::router(store.clone(), config).unwrap().layer(
            axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))),
        );
        TestServer { app, store, clock }
    }

    /// A user with a password and a TOTP enrolment; returns the TOTP secret.
    async fn enrolled(srv: &TestServer, name: &str) -> (User, Vec<u8>) {
        let u = user(srv, name).await;
        let secret = srv.store.enroll_totp(u.id).await.unwrap();
        let bytes = authstore_core::totp::base32_decode(secret.secret()).unwrap();
        (u, bytes)
    }

    /// The TOTP code `offset` steps from now on the store's clock (RFC 6238).
    fn totp(srv: &TestServer, secret: &[u8], offset: i64) -> String {
        let step = authstore_core::totp::step_at(srv.store.now().as_unix_seconds());
        authstore_core::totp::code(secret, step + offset)
    }

    /// Answers a second-factor page with `field` (`code` or `recovery_code`) = `value`.
    async fn second_factor(
        b: &mut Browser<'_>,
        page: &TestResponse,
        field: &str,
        value: &str,
    ) -> TestResponse {
        let mut fields = vec![
            ("handle", hidden(&page.body, "handle")),
            ("csrf", hidden(&page.body, "csrf")),
            ("ticket", hidden(&page.body, "ticket")),
            (field, value.to_owned()),
        ];
        if page.body.contains("name=\"prompt\" value=\"consent\"") {
            fields.push(("prompt", "consent".to_owned()));
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.post(LOGIN_OTP, &fields).await
    }

    /// The authentication context the tokens of `code` carry.
    async fn auth_of(srv: &TestServer, client: &Client, code: &str) -> AuthContext {
        let tokens = srv
            .store
            .redeem_code(CodeRedemption {
                code,
                client_id: client.id,
                redirect_uri: Some(REDIRECT),
                code_verifier: Some(VERIFIER),
                options: &TokenOptions::default(),
            })
            .await
            .unwrap();
        srv.store
            .validate_access_token(tokens.access_token.secret())
            .await
            .unwrap()
            .auth
    }

    fn is_second_factor_page(r: &TestResponse) -> bool {
        r.body.contains("Two-step verification")
            && r.body.contains("/authorize/login/otp\"")
            && r.body.contains("name=\"code\"")
            && r.body.contains("name=\"recovery_code\"")
            && !r.body.contains("name=\"password\"")
    }

    #[tokio::test]
    async fn a_totp_user_needs_the_second_factor() {
        let srv = mfa_server(|_| {});
        let (alice, secret) = enrolled(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);

        // The password alone: the second-factor page, no session, no subject, no code.
        let otp_page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(otp_page.status, 200, "{}", otp_page.body);
        assert!(is_second_factor_page(&otp_page), "{}", otp_page.body);
        assert!(otp_page.header("set-cookie").is_none());
        assert!(otp_page.header("location").is_none());
        assert!(b.cookie("authstore_session").is_none());
        assert_eq!(count(&srv, AuditKind::LoginSessionCreated).await, 0);
        assert_eq!(count(&srv, AuditKind::AuthorizationSessionSubject).await, 0);
        // Its form cannot be turned into a consent.
        let forged = decide(&mut b, &otp_page, "approve").await;
        assert_eq!(forged.status, 403);
        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 0);

        // A wrong code: the page again, 401, the same ticket; still no session.
        let wrong = second_factor(&mut b, &otp_page, "code", "000000").await;
        let wrong = if totp(&srv, &secret, 0) == "000000" {
            second_factor(&mut b, &otp_page, "code", "111111").await
        } else {
            wrong
        };
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        assert!(is_second_factor_page(&wrong));
        assert!(
            wrong
                .body
                .contains("That code is wrong or was already used.")
        );
        assert_eq!(
            hidden(&wrong.body, "ticket"),
            hidden(&otp_page.body, "ticket")
        );
        assert!(wrong.header("set-cookie").is_none());
        assert_eq!(count(&srv, AuditKind::SecondFactorFailed).await, 1);
        // Neither field, or both: the page again, nothing counted.
        let none = b
            .post(
                LOGIN_OTP,
                &[
                    ("handle", &hidden(&otp_page.body, "handle")),
                    ("csrf", &hidden(&otp_page.body, "csrf")),
                    ("ticket", &hidden(&otp_page.body, "ticket")),
                ],
            )
            .await;
        assert_eq!(none.status, 400);
        assert!(is_second_factor_page(&none));
        assert_eq!(count(&srv, AuditKind::SecondFactorFailed).await, 1);

        // The right code: a session (with its second-factor proof), the consent page.
        let code = totp(&srv, &secret, 0);
        let consent = second_factor(&mut b, &otp_page, "code", &code).await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("Approve"));
        assert!(consent.body.contains("Signed in as alice"));
        assert!(b.cookie("authstore_session").unwrap().starts_with("ls_"));
        assert_eq!(b.cookie("authstore_mfa").unwrap().len(), 43);
        let done = decide(&mut b, &consent, "approve").await;
        assert_eq!(done.status, 303, "{}", done.body);
        let auth = auth_of(&srv, &client, &location(&done).1["code"]).await;
        assert_eq!(auth.amr, ["pwd", "otp"]);
        assert!(auth.mfa_verified);

        // Signed in with both factors: later requests need neither, and say so.
        let again = b.get(&public_request(&client, &[])).await;
        assert_eq!(again.status, 302, "{}", again.body);
        let auth = auth_of(&srv, &client, &location(&again).1["code"]).await;
        assert_eq!(auth.amr, ["pwd", "otp"]);
        assert!(auth.mfa_verified);

        // The same session without its proof is not enough for this user.
        let mut stripped = Browser::new(&srv);
        stripped.cookies = b
            .cookies
            .iter()
            .filter(|(k, _)| k != "authstore_mfa")
            .cloned()
            .collect();
        let page = stripped.get(&public_request(&client, &[])).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("name=\"password\""));
        let none = stripped
            .get(&public_request(&client, &[("prompt", "none")]))
            .await;
        assert_eq!(location(&none).1["error"], "login_required");
        // Nor is another session's proof.
        let mut other = Browser::new(&srv);
        let p2 = sign_in(&mut other, &public_request(&client, &[]), "alice").await;
        let r = second_factor(&mut other, &p2, "code", &totp(&srv, &secret, 1)).await;
        assert_eq!(r.status, 302 + 1, "{}", r.body);
        let mut mixed = Browser::new(&srv);
        mixed.cookies = vec![
            (
                "authstore_session".into(),
                b.cookie("authstore_session").unwrap().into(),
            ),
            (
                "authstore_mfa".into(),
                other.cookie("authstore_mfa").unwrap().into(),
            ),
        ];
        let page = mixed.get(&public_request(&client, &[])).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("name=\"password\""));

        // A password-only user is unchanged: amr pwd, no proof cookie.
        let bob = user(&srv, "bob").await;
        let mut bb = Browser::new(&srv);
        let consent = sign_in(&mut bb, &public_request(&client, &[]), "bob").await;
        assert_eq!(consent.status, 200);
        assert!(bb.cookie("authstore_mfa").is_none());
        let done = decide(&mut bb, &consent, "approve").await;
        let auth = auth_of(&srv, &client, &location(&done).1["code"]).await;
        assert_eq!(auth.amr, ["pwd"]);
        assert!(!auth.mfa_verified);
        assert_ne!(bob.id, alice.id);
    }

    #[tokio::test]
    async fn a_totp_code_is_accepted_once() {
        let srv = mfa_server(|_| {});
        let (_, secret) = enrolled(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let code = totp(&srv, &secret, 0);
        let mut b = Browser::new(&srv);
        let page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(
            second_factor(&mut b, &page, "code", &code).await.status,
            200
        );
        // Seen over a shoulder and replayed in another browser, within the same 30 s.
        let mut thief = Browser::new(&srv);
        let page = sign_in(&mut thief, &public_request(&client, &[]), "alice").await;
        assert!(is_second_factor_page(&page));
        let r = second_factor(&mut thief, &page, "code", &code).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(thief.cookie("authstore_session").is_none());
        // An earlier step is a replay too.
        let r = second_factor(&mut thief, &page, "code", &totp(&srv, &secret, -1)).await;
        assert_eq!(r.status, 401);
        assert_eq!(count(&srv, AuditKind::LoginSessionCreated).await, 1);
    }

    #[tokio::test]
    async fn a_recovery_code_works_once() {
        let srv = mfa_server(|_| {});
        let (alice, _) = enrolled(&srv, "alice").await;
        let codes = srv.store.generate_recovery_codes(alice.id).await.unwrap();
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert!(is_second_factor_page(&page));
        let consent = second_factor(&mut b, &page, "recovery_code", codes[0].secret()).await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        assert!(consent.body.contains("Approve"));
        let done = decide(&mut b, &consent, "approve").await;
        let auth = auth_of(&srv, &client, &location(&done).1["code"]).await;
        assert_eq!(auth.amr, ["pwd", "otp"]);
        assert!(auth.mfa_verified);
        assert_eq!(srv.store.unused_recovery_codes(alice.id).await.unwrap(), 9);

        let mut again = Browser::new(&srv);
        let page = sign_in(&mut again, &public_request(&client, &[]), "alice").await;
        let r = second_factor(&mut again, &page, "recovery_code", codes[0].secret()).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(again.cookie("authstore_session").is_none());
        // Both fields at once are refused without a try.
        let before = count(&srv, AuditKind::SecondFactorFailed).await;
        let both = again
            .post(
                LOGIN_OTP,
                &[
                    ("handle", &hidden(&page.body, "handle")),
                    ("csrf", &hidden(&page.body, "csrf")),
                    ("ticket", &hidden(&page.body, "ticket")),
                    ("code", "123456"),
                    ("recovery_code", codes[1].secret()),
                ],
            )
            .await;
        assert_eq!(both.status, 400);
        assert_eq!(count(&srv, AuditKind::SecondFactorFailed).await, before);
        assert_eq!(srv.store.unused_recovery_codes(alice.id).await.unwrap(), 9);
    }

    #[tokio::test]
    async fn a_forged_or_expired_ticket_is_refused() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let srv = mfa_server(|_| {});
        let (_, secret) = enrolled(&srv, "alice").await;
        let (mallory, _) = enrolled(&srv, "mallory").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = sign_in(&mut b, &public_request(&client, &[]), "mallory").await;
        let ticket = hidden(&page.body, "ticket");
        let handle = hidden(&page.body, "handle");
        let csrf = hidden(&page.body, "csrf");
        // Mallory knows her password, not Alice's: she swaps Alice's id into her ticket.
        let alice_id = srv
            .store
            .backend()
            .find_user_by_username("alice")
            .await
            .unwrap()
            .unwrap()
            .id;
        let mut raw = URL_SAFE_NO_PAD.decode(&ticket).unwrap();
        raw[..16].copy_from_slice(alice_id.as_uuid().as_bytes());
        let swapped = URL_SAFE_NO_PAD.encode(&raw);
        // A later expiry spliced in.
        let mut raw = URL_SAFE_NO_PAD.decode(&ticket).unwrap();
        raw[16..24].copy_from_slice(&i64::MAX.to_be_bytes());
        let extended = URL_SAFE_NO_PAD.encode(&raw);
        // A genuine ticket of another request of the same browser.
        let other = sign_in(&mut b, &public_request(&client, &[]), "mallory").await;
        let foreign = hidden(&other.body, "ticket");
        let code = totp(&srv, &secret, 0);
        for bad in [
            swapped.as_str(),
            extended.as_str(),
            foreign.as_str(),
            "x",
            "",
        ] {
            let mut fields = vec![
                ("handle", handle.as_str()),
                ("csrf", csrf.as_str()),
                ("code", code.as_str()),
            ];
            if !bad.is_empty() {
                fields.push(("ticket", bad));
            }
            let r = b.post(LOGIN_OTP, &fields).await;
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            assert!(r.body.contains("altered"), "{}", r.body);
            assert!(r.header("set-cookie").is_none());
        }
        // Nothing was tried, nothing signed in.
        assert_eq!(count(&srv, AuditKind::SecondFactorFailed).await, 0);
        assert_eq!(count(&srv, AuditKind::TotpUsed).await, 0);
        assert_eq!(count(&srv, AuditKind::LoginSessionCreated).await, 0);
        assert_eq!(count(&srv, AuditKind::AuthorizationSessionSubject).await, 0);
        assert_ne!(mallory.id, alice_id);

        // Alice's own ticket expires after five minutes on the store's clock.
        let mut a = Browser::new(&srv);
        let page = sign_in(&mut a, &public_request(&client, &[]), "alice").await;
        srv.clock.advance(Duration::from_secs(299));
        let fresh = totp(&srv, &secret, 0);
        srv.clock.advance(Duration::from_secs(2));
        let r = second_factor(&mut a, &page, "code", &fresh).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("has expired"));
        assert!(a.cookie("authstore_session").is_none());
        assert_eq!(count(&srv, AuditKind::TotpUsed).await, 0);
    }

    #[tokio::test]
    async fn a_right_password_does_not_reset_the_second_factor_lockout() {
        let srv = mfa_server(|_| {});
        let (_, secret) = enrolled(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let right = totp(&srv, &secret, 0);
        let wrong = if right == "999999" {
            "888888"
        } else {
            "999999"
        };
        let mut b = Browser::new(&srv);
        let first = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        for _ in 0..4 {
            assert_eq!(
                second_factor(&mut b, &first, "code", wrong).await.status,
                401
            );
        }
        // The password step and four wrong codes are five failures: the user is locked.
        // The password again opens no new round of guesses (a right password does not
        // clear the count until a second factor passes), and the right code is refused too.
        let second = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(second.status, 429, "{}", second.body);
        assert!(second.header("retry-after").is_some());
        assert_eq!(
            second_factor(&mut b, &first, "code", &right).await.status,
            429
        );
        assert!(b.cookie("authstore_session").is_none());
        assert_eq!(count(&srv, AuditKind::TotpUsed).await, 0);
        // After the window, the right code works.
        srv.clock.advance(Duration::from_secs(16 * 60));
        let page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert!(is_second_factor_page(&page), "{}", page.body);
        let ok = second_factor(&mut b, &page, "code", &totp(&srv, &secret, 0)).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(b.cookie("authstore_session").is_some());
    }

    // ----- redirect URIs that went away ---------------------------------------------------

    /// Replaces the client's redirect URIs with one other URI.
    async fn unregister_redirect(srv: &TestServer, client: &Client) {
        srv.store
            .update_client(
                client.id,
                ClientUpdate {
                    redirect_uris: Some(vec![
                        RedirectUri::new("https://app.example/other").unwrap(),
                    ]),
                    ..ClientUpdate::default()
                },
            )
            .await
            .unwrap();
    }

    fn assert_not_returnable(r: &TestResponse) {
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.header("location").is_none());
        assert!(r.body.contains("no longer registered"), "{}", r.body);
    }

    #[tokio::test]
    async fn nothing_goes_to_a_redirect_uri_that_is_no_longer_registered() {
        let srv = TestServer::new();
        user(&srv, "alice").await;
        // Deny after the URI was removed.
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(consent.status, 200);
        unregister_redirect(&srv, &client).await;
        assert_not_returnable(&decide(&mut b, &consent, "deny").await);
        // The request is over.
        let late = decide(&mut b, &consent, "approve").await;
        assert_eq!(late.status, 400);
        assert!(late.header("location").is_none());

        // Approve after the URI was removed: no consent recorded, no code.
        let client = public_client(&srv, "App 2", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        unregister_redirect(&srv, &client).await;
        assert_not_returnable(&decide(&mut b, &consent, "approve").await);

        // The login form after the URI was removed (where a remembered consent would issue
        // at once).
        let client = public_client(&srv, "App 3", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert_eq!(decide(&mut b, &consent, "approve").await.status, 303);
        let mut fresh = Browser::new(&srv);
        let page = fresh.get(&public_request(&client, &[])).await;
        unregister_redirect(&srv, &client).await;
        let r = fresh
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&page.body, "handle")),
                    ("csrf", &hidden(&page.body, "csrf")),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_not_returnable(&r);
        assert!(fresh.cookie("authstore_session").is_none());

        // A client disabled mid-flow counts as not registered.
        let client = public_client(&srv, "App 4", "read").await;
        let mut b = Browser::new(&srv);
        let consent = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        srv.store.disable_client(client.id).await.unwrap();
        assert_not_returnable(&decide(&mut b, &consent, "deny").await);

        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 1);
        assert_eq!(count(&srv, AuditKind::ConsentRecorded).await, 1);
    }

    #[tokio::test]
    async fn the_second_factor_form_checks_the_redirect_uri_too() {
        let srv = mfa_server(|_| {});
        let (_, secret) = enrolled(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        unregister_redirect(&srv, &client).await;
        let r = second_factor(&mut b, &page, "code", &totp(&srv, &secret, 0)).await;
        assert_not_returnable(&r);
        assert_eq!(count(&srv, AuditKind::TotpUsed).await, 0);
    }

    // ----- CSRF: planted cookies, cross-origin posts --------------------------------------

    #[tokio::test]
    async fn a_planted_csrf_cookie_is_replaced_and_refused() {
        use base64::Engine;
        let srv = TestServer::new();
        user(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        // The attacker chooses a cookie value (both the old shape and the new length).
        let chosen_old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([42u8; 32]);
        let chosen_new = "A".repeat(86);
        let csrf_key = srv.store.derive_key("authstore-server 2026-11 csrf");
        for planted in [chosen_old, chosen_new] {
            let mut b = Browser::new(&srv);
            b.cookies = vec![("authstore_csrf".into(), planted.clone())];
            // GET replaces it; the page's token is for the new cookie.
            let page = b.get(&public_request(&client, &[])).await;
            assert_eq!(page.status, 200);
            let set = page.header("set-cookie").unwrap();
            assert!(set.starts_with("authstore_csrf="));
            let made = b.cookie("authstore_csrf").unwrap().to_owned();
            assert_ne!(made, planted);
            let handle = hidden(&page.body, "handle");
            let page_token = hidden(&page.body, "csrf");
            // With the planted cookie, neither the page's token nor the right token for the
            // planted cookie itself (as the old server would have handed out) passes.
            let for_planted = crate::csrf::token(&csrf_key, &planted, &handle);
            for token in [&page_token, &for_planted] {
                let r = srv
                    .post_form(
                        "/authorize/login",
                        &encode(&[
                            ("handle", &handle),
                            ("csrf", token),
                            ("username", "alice"),
                            ("password", PASSWORD),
                        ]),
                        &[("cookie", &format!("authstore_csrf={planted}"))],
                    )
                    .await;
                assert_eq!(r.status, 403, "{}", r.body);
            }
            // The cookie the server made works.
            let ok = b
                .post(
                    "/authorize/login",
                    &[
                        ("handle", &handle),
                        ("csrf", &page_token),
                        ("username", "alice"),
                        ("password", PASSWORD),
                    ],
                )
                .await;
            assert_eq!(ok.status, 200, "{}", ok.body);
        }
        assert_eq!(count(&srv, AuditKind::LoginSucceeded).await, 2);
        assert_eq!(count(&srv, AuditKind::LoginFailed).await, 0);
    }

    #[tokio::test]
    async fn cross_origin_form_posts_are_refused() {
        let srv = mfa_server(|c| {
            c.issuer = url::Url::parse("https://auth.example.com/tenant").unwrap();
        });
        let (_, secret) = enrolled(&srv, "alice").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let page = b.get(&public_request(&client, &[])).await;
        let login = [
            ("handle", hidden(&page.body, "handle")),
            ("csrf", hidden(&page.body, "csrf")),
            ("username", "alice".to_owned()),
            ("password", PASSWORD.to_owned()),
        ];
        let login: Vec<(&str, &str)> = login.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused: [&[(&str, &str)]; 7] = [
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "same-site")],
            &[("origin", "https://evil.example")],
            &[("origin", "https://sibling.example.com")],
            &[("origin", "http://auth.example.com")],
            &[("origin", "null")],
            &[
                ("origin", "https://auth.example.com"),
                ("sec-fetch-site", "cross-site"),
            ],
        ];
        let before = srv.store.password_verifications().await.unwrap();
        for headers in refused {
            let r = b.post_with("/authorize/login", &login, headers).await;
            assert_eq!(r.status, 403, "{headers:?}");
            assert!(r.body.contains("came from another site"));
        }
        assert_eq!(srv.store.password_verifications().await.unwrap(), before);
        // What a browser sends from the page itself.
        let same: &[(&str, &str)] = &[
            ("origin", "https://auth.example.com"),
            ("sec-fetch-site", "same-origin"),
        ];
        let otp_page = b.post_with("/authorize/login", &login, same).await;
        assert!(is_second_factor_page(&otp_page), "{}", otp_page.body);
        let code = totp(&srv, &secret, 0);
        let otp = [
            ("handle", hidden(&otp_page.body, "handle")),
            ("csrf", hidden(&otp_page.body, "csrf")),
            ("ticket", hidden(&otp_page.body, "ticket")),
            ("code", code.clone()),
        ];
        let otp: Vec<(&str, &str)> = otp.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for headers in refused {
            let r = b.post_with(LOGIN_OTP, &otp, headers).await;
            assert_eq!(r.status, 403, "{headers:?}");
        }
        assert_eq!(count(&srv, AuditKind::TotpUsed).await, 0);
        let consent = b.post_with(LOGIN_OTP, &otp, same).await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        let decision = [
            ("handle", hidden(&consent.body, "handle")),
            ("csrf", hidden(&consent.body, "csrf")),
            ("decision", "approve".to_owned()),
        ];
        let decision: Vec<(&str, &str)> = decision.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for headers in refused {
            let r = b.post_with("/authorize/consent", &decision, headers).await;
            assert_eq!(r.status, 403, "{headers:?}");
        }
        assert_eq!(count(&srv, AuditKind::CodeIssued).await, 0);
        // No Origin and no Sec-Fetch-Site (an older browser): the token still decides.
        let done = b.post("/authorize/consent", &decision).await;
        assert_eq!(done.status, 303, "{}", done.body);
    }

    // ----- headers of every page ----------------------------------------------------------

    #[tokio::test]
    async fn every_page_carries_the_same_security_headers_under_https() {
        let srv = mfa_server(|c| {
            c.issuer = url::Url::parse("https://auth.example.com/tenant").unwrap();
        });
        let (_, secret) = enrolled(&srv, "alice").await;
        user(&srv, "bob").await;
        let client = public_client(&srv, "App", "read").await;
        let mut b = Browser::new(&srv);
        let mut pages: Vec<(&str, TestResponse)> = Vec::new();
        let login_page = b.get(&public_request(&client, &[])).await;
        let wrong = b
            .post(
                "/authorize/login",
                &[
                    ("handle", &hidden(&login_page.body, "handle")),
                    ("csrf", &hidden(&login_page.body, "csrf")),
                    ("username", "alice"),
                    ("password", "wrong password!"),
                ],
            )
            .await;
        assert_eq!(wrong.status, 401);
        let otp_page = sign_in(&mut b, &public_request(&client, &[]), "alice").await;
        assert!(is_second_factor_page(&otp_page));
        let otp_wrong = second_factor(&mut b, &otp_page, "code", "12345x").await;
        assert_eq!(otp_wrong.status, 401);
        let consent = second_factor(&mut b, &otp_page, "code", &totp(&srv, &secret, 0)).await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        let mut bob = Browser::new(&srv);
        let bob_consent = sign_in(&mut bob, &public_request(&client, &[]), "bob").await;
        let error = srv.get("/authorize?client_id=x", &[]).await;
        let csrf = srv.post_form("/authorize/login", "handle=x", &[]).await;
        let ticket = b
            .post(
                LOGIN_OTP,
                &[
                    ("handle", &hidden(&otp_page.body, "handle")),
                    ("csrf", &hidden(&otp_page.body, "csrf")),
                    ("ticket", "forged"),
                    ("code", "123456"),
                ],
            )
            .await;
        srv.clock.advance(Duration::from_secs(601));
        let expired = second_factor(&mut b, &otp_page, "code", "123456").await;
        pages.extend([
            ("login", login_page),
            ("login 401", wrong),
            ("second factor", otp_page),
            ("second factor 401", otp_wrong),
            ("consent after the second factor", consent),
            ("consent", bob_consent),
            ("error", error),
            ("csrf", csrf),
            ("bad ticket", ticket),
            ("expired", expired),
        ]);
        let expected_status = [200, 401, 200, 401, 200, 200, 400, 403, 400, 400];
        let reference = &pages[0].1;
        let csp_base = |r: &TestResponse| {
            let csp = r.header("content-security-policy").unwrap().to_owned();
            csp.split("; ")
                .filter(|d| !d.starts_with("form-action"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        for ((name, r), status) in pages.iter().zip(expected_status) {
            assert_eq!(r.status, status, "{name}: {}", r.body);
            for h in [
                "content-type",
                "cache-control",
                "pragma",
                "x-frame-options",
                "x-content-type-options",
                "referrer-policy",
                "cross-origin-opener-policy",
            ] {
                assert!(r.header(h).is_some(), "{name} lacks {h}");
                assert_eq!(r.header(h), reference.header(h), "{name}: {h}");
            }
            assert_eq!(csp_base(r), csp_base(reference), "{name}");
            assert!(csp_base(r).contains("default-src 'none'"));
            assert!(csp_base(r).contains("frame-ancestors 'none'"));
            assert_eq!(r.header("referrer-policy"), Some("same-origin"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert!(r.body.starts_with("<!DOCTYPE html>"), "{name}");
            for set in r.headers.get_all("set-cookie") {
                let set = set.to_str().unwrap();
                assert!(set.starts_with("__Secure-authstore_"), "{name}: {set}");
                for attr in ["; HttpOnly", "; SameSite=Lax", "; Secure", "; Path=/tenant"] {
                    assert!(set.contains(attr), "{name}: {set} lacks {attr}");
                }
            }
        }
        // The cookies the flow set: CSRF, session and its second-factor proof.
        for name in ["csrf", "session", "mfa"] {
            assert!(
                b.cookie(&format!("__Secure-authstore_{name}")).is_some(),
                "{name}"
            );
        }
    }
}
