//! The HTML pages of the front channel: login, second-factor, consent and error pages.
//!
//! Plain server-rendered HTML5 that works without JavaScript. Every interpolated value is
//! escaped ([`escape`]). Every page is sent with the same headers ([`respond`]): a strict
//! Content-Security-Policy (no script, no image, one inline stylesheet allowed by its hash,
//! no framing, forms only to this server and, on the form pages, to the client's origin,
//! since browsers apply `form-action` to the redirect that follows a form submission),
//! `no-store`, `nosniff`, `DENY`, `Cross-Origin-Opener-Policy: same-origin` and
//! `Referrer-Policy: same-origin`.
//!
//! The referrer policy is `same-origin`, not `no-referrer`: under `no-referrer` browsers
//! send `Origin: null` with the pages' own form posts (Fetch, "append a request `Origin`
//! header"), and the form handlers refuse posts whose `Origin` is not the issuer's
//! ([`crate::csrf`]). `same-origin` sends no `Referer` to any other origin; the pages load
//! nothing from elsewhere, and redirects to clients carry `Referrer-Policy: no-referrer`.

use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::Digest;

use crate::authorize::LOGIN_OTP;
use crate::paths;

/// The one inline stylesheet.
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;\
padding:0 1rem;color:#222;line-height:1.5}h1{font-size:1.4rem}label{display:block;\
margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem;\
box-sizing:border-box}button{margin:1rem .5rem 0 0;padding:.4rem 1.2rem}\
.msg{color:#a00}.muted{color:#666;font-size:.9rem}ul{padding-left:1.2rem}";

/// `'sha256-…'` of [`STYLE`], computed once.
static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE.as_bytes()))
    )
});

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// Where a page's forms may go (CSP `form-action`).
#[derive(Debug, Clone)]
pub(crate) enum FormTarget {
    /// No form on the page: `form-action 'none'`.
    None,
    /// This server, and the redirect URI's origin (a CSP source expression, checked by
    /// [`csp_source_of`]) when known.
    SelfAnd(Option<String>),
}

/// The CSP source expression for a redirect URI: its origin (`https://app.example:8443`)
/// for http(s), its scheme (`com.example.app:`) for a private-use scheme. `None` when the
/// URI does not parse or the expression would hold a character outside a conservative set
/// (a CSP source must not smuggle a `;` or a space).
pub(crate) fn csp_source_of(redirect_uri: &str) -> Option<String> {
    let url = url::Url::parse(redirect_uri).ok()?;
    let src = match url.origin() {
        o @ url::Origin::Tuple(..) => o.ascii_serialization(),
        url::Origin::Opaque(_) => format!("{}:", url.scheme()),
    };
    let safe = src.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'/' | b'[' | b']' | b'+')
    });
    safe.then_some(src)
}

fn csp(target: &FormTarget) -> String {
    let form_action = match target {
        FormTarget::None => "'none'".to_owned(),
        FormTarget::SelfAnd(None) => "'self'".to_owned(),
        FormTarget::SelfAnd(Some(src)) => format!("'self' {src}"),
    };
    format!(
        "default-src 'none'; style-src {}; img-src 'none'; base-uri 'none'; \
         frame-ancestors 'none'; form-action {form_action}",
        *STYLE_HASH
    )
}

/// A whole page as a response, with the security headers.
pub(crate) fn respond(
    status: StatusCode,
    title: &str,
    body: &str,
    target: &FormTarget,
) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"same-origin\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&csp(target)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    } else {
        // Unreachable with a checked source; never send a page without a policy.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// What the login and consent forms carry.
#[derive(Clone)]
pub(crate) struct FormContext<'a> {
    /// The issuer's path without a trailing `/` (`""` or `/tenant`): form actions go under it.
    pub(crate) base_path: &'a str,
    /// The client's display name.
    pub(crate) client_name: &'a str,
    /// The authorization session handle.
    pub(crate) handle: &'a str,
    /// The CSRF form token.
    pub(crate) csrf: &'a str,
    /// Where the forms (and the redirect after them) may go.
    pub(crate) target: FormTarget,
}

// The handle and CSRF token are secrets of the browser that holds them: never print them.
impl std::fmt::Debug for FormContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormContext")
            .field("base_path", &self.base_path)
            .field("client_name", &self.client_name)
            .finish_non_exhaustive()
    }
}

fn hidden(out: &mut String, ctx: &FormContext<'_>) {
    let _ = write!(
        out,
        "<input type=\"hidden\" name=\"handle\" value=\"{}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n",
        escape(ctx.handle),
        escape(ctx.csrf)
    );
}

/// The login page. `force_consent` carries `prompt=consent` through the login form.
pub(crate) fn login(
    status: StatusCode,
    ctx: &FormContext<'_>,
    message: Option<&str>,
    force_consent: bool,
) -> Response {
    let mut b = String::new();
    b.push_str("<h1>Sign in</h1>\n");
    let _ = writeln!(
        b,
        "<p>to continue to <strong>{}</strong></p>",
        escape(ctx.client_name)
    );
    if let Some(m) = message {
        let _ = writeln!(b, "<p class=\"msg\" role=\"alert\">{}</p>", escape(m));
    }
    let _ = writeln!(
        b,
        "<form method=\"post\" action=\"{}{}\">",
        escape(ctx.base_path),
        paths::LOGIN
    );
    hidden(&mut b, ctx);
    if force_consent {
        b.push_str("<input type=\"hidden\" name=\"prompt\" value=\"consent\">\n");
    }
    b.push_str(
        "<label for=\"username\">Username or email</label>\n\
         <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" required autofocus>\n\
         <label for=\"password\">Password</label>\n\
         <input type=\"password\" id=\"password\" name=\"password\" \
         autocomplete=\"current-password\" required>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n",
    );
    respond(status, "Sign in", &b, &ctx.target)
}

/// The second-factor page, after a right password for a user with a TOTP enrolment: a code
/// from the authenticator app, or (behind "Use a recovery code") a recovery code. Both
/// forms carry `ticket` ([`crate::mfa`]) and post to [`LOGIN_OTP`].
pub(crate) fn second_factor(
    status: StatusCode,
    ctx: &FormContext<'_>,
    ticket: &str,
    message: Option<&str>,
    force_consent: bool,
) -> Response {
    let mut b = String::new();
    b.push_str("<h1>Two-step verification</h1>\n");
    let _ = writeln!(
        b,
        "<p>to continue to <strong>{}</strong></p>",
        escape(ctx.client_name)
    );
    if let Some(m) = message {
        let _ = writeln!(b, "<p class=\"msg\" role=\"alert\">{}</p>", escape(m));
    }
    let open = |b: &mut String| {
        let _ = writeln!(
            b,
            "<form method=\"post\" action=\"{}{}\">",
            escape(ctx.base_path),
            LOGIN_OTP
        );
        hidden(b, ctx);
        let _ = writeln!(
            b,
            "<input type=\"hidden\" name=\"ticket\" value=\"{}\">",
            escape(ticket)
        );
        if force_consent {
            b.push_str("<input type=\"hidden\" name=\"prompt\" value=\"consent\">\n");
        }
    };
    open(&mut b);
    b.push_str(
        "<label for=\"code\">Code from your authenticator app</label>\n\
         <input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" \
         pattern=\"[0-9]{6}\" maxlength=\"6\" autocomplete=\"one-time-code\" required autofocus>\n\
         <button type=\"submit\">Verify</button>\n</form>\n\
         <details>\n<summary>Use a recovery code</summary>\n",
    );
    open(&mut b);
    b.push_str(
        "<label for=\"recovery_code\">Recovery code</label>\n\
         <input type=\"text\" id=\"recovery_code\" name=\"recovery_code\" \
         autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" required>\n\
         <p class=\"muted\">Each recovery code works once.</p>\n\
         <button type=\"submit\">Use recovery code</button>\n</form>\n</details>\n",
    );
    respond(status, "Two-step verification", &b, &ctx.target)
}

/// The consent page: the client, the scopes it asks for, Approve and Deny.
pub(crate) fn consent<'s>(
    ctx: &FormContext<'_>,
    username: &str,
    scopes: impl Iterator<Item = &'s str>,
) -> Response {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>Authorize {}</h1>\n<p><strong>{}</strong> asks for access to your account.</p>",
        escape(ctx.client_name),
        escape(ctx.client_name)
    );
    let items: Vec<String> = scopes
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    if items.is_empty() {
        b.push_str("<p>It asks for no particular permission.</p>\n");
    } else {
        let _ = writeln!(b, "<p>It asks to:</p>\n<ul>\n{}\n</ul>", items.join("\n"));
    }
    let _ = writeln!(
        b,
        "<p class=\"muted\">Signed in as {}.</p>",
        escape(username)
    );
    let _ = writeln!(
        b,
        "<form method=\"post\" action=\"{}{}\">",
        escape(ctx.base_path),
        paths::CONSENT
    );
    hidden(&mut b, ctx);
    b.push_str(
        "<button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>\n",
    );
    respond(StatusCode::OK, "Authorize", &b, &ctx.target)
}

/// An error page (no form, no redirect).
pub(crate) fn error(status: StatusCode, title: &str, message: &str) -> Response {
    let b = format!("<h1>{}</h1>\n<p>{}</p>\n", escape(title), escape(message));
    respond(status, title, &b, &FormTarget::None)
}

/// 429 with `Retry-After`.
pub(crate) fn too_many(retry_after_secs: u64) -> Response {
    let secs = retry_after_secs.max(1);
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        &format!("Too many sign-in attempts. Wait {secs} seconds, then try again."),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The page for a sign-in request that is no longer pending.
pub(crate) fn expired() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "Sign-in request expired",
        "This sign-in request has expired; return to the application and start again.",
    )
}

/// The page for a request whose client was disabled, deleted, or no longer has the
/// request's redirect URI registered: nothing may go back to that URI.
pub(crate) fn not_returnable() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "Cannot return to the application",
        "The application's redirect URI is no longer registered, or the application was \
         disabled. Return to the application and start again; if this happens again, tell \
         its operator.",
    )
}

/// The page for a second-factor form whose ticket is not genuine.
pub(crate) fn bad_ticket() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "Invalid request",
        "The sign-in form was altered or belongs to another sign-in request. Return to the \
         application and start again.",
    )
}

/// The page for a form without a valid CSRF token.
pub(crate) fn csrf_failed() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "Form expired",
        "The form expired or came from another site. Return to the application and start again.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn style_hash_matches_the_stylesheet() {
        use sha2::Digest;
        let h = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(STYLE.as_bytes()));
        assert_eq!(*STYLE_HASH, format!("'sha256-{h}'"));
        let resp = error(StatusCode::BAD_REQUEST, "t", "m");
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains(&*STYLE_HASH));
        assert!(csp.contains("form-action 'none'"));
    }

    #[test]
    fn csp_sources() {
        assert_eq!(
            csp_source_of("https://app.example:8443/cb?x=1").as_deref(),
            Some("https://app.example:8443")
        );
        assert_eq!(
            csp_source_of("http://127.0.0.1:9000/cb").as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            csp_source_of("com.example.app:/oauth").as_deref(),
            Some("com.example.app:")
        );
        assert_eq!(csp_source_of("not a uri"), None);
    }
}
