//! The cookies of the front channel: the CSRF cookie, the login-session cookie and the
//! second-factor proof of that session ([`crate::mfa`]).
//!
//! All are `HttpOnly; SameSite=Lax` with `Path=` the issuer's path (`/` when the issuer has
//! none), so tenants that share a host under different issuer paths keep apart cookies
//! instead of overwriting each other's login. Under an `https` issuer they are also `Secure`
//! and carry a name prefix the browser enforces:
//!
//! - issuer without a path: `__Host-` (requires `Secure`, `Path=/` and no `Domain`, so a
//!   sibling subdomain or a plain-http page cannot plant or overwrite them);
//! - issuer with a path: `__Secure-` (`__Host-` requires `Path=/`, which would mix the
//!   tenants again). `__Secure-` still stops plain-http pages from setting them, but not a
//!   sibling subdomain with its own https page: the CSRF cookie is therefore server-made and
//!   checked ([`crate::csrf`]), and form posts must come from the issuer's origin.
//!
//! The `Cookie` header is parsed here: small and strict, malformed pairs are ignored.

use axum::http::{HeaderMap, HeaderValue, header};

/// The CSRF cookie's name without a prefix.
const CSRF: &str = "authstore_csrf";
/// The login-session cookie's name without a prefix.
const SESSION: &str = "authstore_session";
/// The second-factor proof cookie's name without a prefix.
const MFA: &str = "authstore_mfa";

/// Longest cookie value read; longer ones are ignored (ours are at most 86 bytes).
const MAX_VALUE: usize = 512;

/// The name prefix the browser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// Plain http: none is possible.
    None,
    /// `__Host-`: https and `Path=/`.
    Host,
    /// `__Secure-`: https under an issuer path.
    Secure,
}

/// How this deployment's cookies are named and scoped, from its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jar {
    prefix: Prefix,
    path: String,
}

impl Jar {
    /// The jar for `issuer` (`secure` when it is `https`).
    pub(crate) fn new(issuer: &url::Url, secure: bool) -> Self {
        let path = issuer.path().trim_end_matches('/');
        // A `Path` attribute ends at `;`; a path holding one (or a control character) cannot be
        // expressed, and falls back to the whole host.
        let usable =
            !path.is_empty() && path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';');
        let path = if usable {
            path.to_owned()
        } else {
            "/".to_owned()
        };
        let prefix = match (secure, path.as_str()) {
            (false, _) => Prefix::None,
            (true, "/") => Prefix::Host,
            (true, _) => Prefix::Secure,
        };
        Self { prefix, path }
    }

    /// The cookies' `Path` attribute.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    fn secure(&self) -> bool {
        self.prefix != Prefix::None
    }

    fn name(&self, base: &str) -> String {
        match self.prefix {
            Prefix::None => base.to_owned(),
            Prefix::Host => format!("__Host-{base}"),
            Prefix::Secure => format!("__Secure-{base}"),
        }
    }

    /// The CSRF cookie's name.
    pub(crate) fn csrf(&self) -> String {
        self.name(CSRF)
    }

    /// The login-session cookie's name.
    pub(crate) fn session(&self) -> String {
        self.name(SESSION)
    }

    /// The second-factor proof cookie's name.
    pub(crate) fn mfa(&self) -> String {
        self.name(MFA)
    }

    /// A `Set-Cookie` value: `name=value; HttpOnly; SameSite=Lax; Path=…` with `Max-Age` when
    /// given, and `Secure` under https. `value` must be cookie-safe (base64url or a token).
    pub(crate) fn set(
        &self,
        name: &str,
        value: &str,
        max_age_secs: Option<u64>,
    ) -> Option<HeaderValue> {
        let mut s = format!("{name}={value}; HttpOnly; SameSite=Lax; Path={}", self.path);
        if let Some(age) = max_age_secs {
            s.push_str(&format!("; Max-Age={age}"));
        }
        if self.secure() {
            s.push_str("; Secure");
        }
        HeaderValue::from_str(&s).ok()
    }
}

/// The well-formed values of the cookies called `name` in the request's `Cookie` headers, in
/// the order sent (browsers send the cookie with the longest `Path` first). Pairs without
/// `=`, with an empty name, with characters a cookie value may not hold (RFC 6265 §4.1.1), or
/// longer than 512 bytes are skipped.
pub(crate) fn get_all<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let k = k.trim();
            let v = v.trim();
            let v = match v.strip_prefix('"') {
                Some(rest) => rest.strip_suffix('"')?,
                None => v,
            };
            let ok = !k.is_empty()
                && v.len() <= MAX_VALUE
                && v.bytes().all(|b| {
                    b == 0x21
                        || (0x23..=0x2b).contains(&b)
                        || (0x2d..=0x3a).contains(&b)
                        || (0x3c..=0x5b).contains(&b)
                        || (0x5d..=0x7e).contains(&b)
                });
            ok.then_some((k, v))
        })
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of the first well-formed cookie called `name` (see [`get_all`]).
pub(crate) fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    get_all(headers, name).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, v.parse().unwrap());
        }
        h
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn parsing_is_strict_and_tolerant() {
        let h = headers(&[
            "a=1; authstore_csrf=abc-_1; b",
            "authstore_session=\"ls_x\"",
        ]);
        assert_eq!(get(&h, "authstore_csrf"), Some("abc-_1"));
        assert_eq!(get(&h, "authstore_session"), Some("ls_x"));
        assert_eq!(get(&h, "a"), Some("1"));
        assert_eq!(get(&h, "b"), None);
        assert_eq!(get(&h, "missing"), None);
        // Malformed pairs are skipped, the next well-formed one wins.
        let h = headers(&["x=a b; x=\"unterminated; x=a,b; =v; x=ok"]);
        assert_eq!(get(&h, "x"), Some("ok"));
        let long = format!("x={}", "a".repeat(600));
        assert_eq!(get(&headers(&[&long]), "x"), None);
        // First of duplicates, and all of them in order.
        let h = headers(&["x=1; y=0; x=2", "x=3"]);
        assert_eq!(get(&h, "x"), Some("1"));
        assert_eq!(get_all(&h, "x").collect::<Vec<_>>(), ["1", "2", "3"]);
    }

    #[test]
    fn names_prefixes_and_paths_follow_the_issuer() {
        // http: no prefix (none is possible), the issuer's path.
        let j = Jar::new(&url("http://127.0.0.1:8080"), false);
        assert_eq!(j.csrf(), "authstore_csrf");
        assert_eq!(
            j.set(&j.csrf(), "v", None).unwrap(),
            "authstore_csrf=v; HttpOnly; SameSite=Lax; Path=/"
        );
        let j = Jar::new(&url("http://127.0.0.1:8080/tenant/"), false);
        assert_eq!(
            j.set(&j.session(), "v", Some(60)).unwrap(),
            "authstore_session=v; HttpOnly; SameSite=Lax; Path=/tenant; Max-Age=60"
        );
        // https at the root: __Host- with Path=/.
        let j = Jar::new(&url("https://auth.example.com"), true);
        assert_eq!(
            j.set(&j.session(), "v", Some(60)).unwrap(),
            "__Host-authstore_session=v; HttpOnly; SameSite=Lax; Path=/; Max-Age=60; Secure"
        );
        // https under a path: __Secure- (which allows a Path) with the issuer's path.
        let j = Jar::new(&url("https://auth.example.com/a/b"), true);
        assert_eq!(j.mfa(), "__Secure-authstore_mfa");
        assert_eq!(
            j.set(&j.csrf(), "v", None).unwrap(),
            "__Secure-authstore_csrf=v; HttpOnly; SameSite=Lax; Path=/a/b; Secure"
        );
        // A path a Path attribute cannot hold falls back to the host.
        let j = Jar::new(&url("https://auth.example.com/a;b"), true);
        assert_eq!(j.path(), "/");
        assert_eq!(j.csrf(), "__Host-authstore_csrf");
    }
}
