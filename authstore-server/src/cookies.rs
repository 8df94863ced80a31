//! The two cookies of the front channel: the CSRF cookie and the login-session cookie.
//!
//! Both are `HttpOnly; SameSite=Lax; Path=/`, and under an `https` issuer also `Secure` with
//! the `__Host-` name prefix (the browser then refuses them from a sibling subdomain or over
//! plain http, so they cannot be planted). The `Cookie` header is parsed here: small and
//! strict, malformed pairs are ignored.

use axum::http::{HeaderMap, HeaderValue, header};

/// The CSRF cookie's name without the `__Host-` prefix.
const CSRF: &str = "authstore_csrf";
/// The login-session cookie's name without the `__Host-` prefix.
const SESSION: &str = "authstore_session";

/// Longest cookie value read; longer ones are ignored (ours are 43 and ~52 bytes).
const MAX_VALUE: usize = 512;

/// The CSRF cookie's name under this deployment's scheme.
pub(crate) fn csrf_name(secure: bool) -> &'static str {
    if secure {
        "__Host-authstore_csrf"
    } else {
        CSRF
    }
}

/// The login-session cookie's name under this deployment's scheme.
pub(crate) fn session_name(secure: bool) -> &'static str {
    if secure {
        "__Host-authstore_session"
    } else {
        SESSION
    }
}

/// The value of the first well-formed cookie called `name` in the request's `Cookie`
/// headers. Pairs without `=`, with an empty name, with characters a cookie value may not
/// hold (RFC 6265 §4.1.1), or longer than 512 bytes are skipped.
pub(crate) fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `name=value; HttpOnly; SameSite=Lax; Path=/` with `Max-Age` when
/// given, and `Secure` under https. `value` must be cookie-safe (base64url or a token).
pub(crate) fn set(
    name: &str,
    value: &str,
    max_age_secs: Option<u64>,
    secure: bool,
) -> Option<HeaderValue> {
    let mut s = format!("{name}={value}; HttpOnly; SameSite=Lax; Path=/");
    if let Some(age) = max_age_secs {
        s.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        s.push_str("; Secure");
    }
    HeaderValue::from_str(&s).ok()
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
        // First of duplicates.
        assert_eq!(get(&headers(&["x=1; x=2"]), "x"), Some("1"));
    }

    #[test]
    fn attributes() {
        let c = set(csrf_name(false), "v", None, false).unwrap();
        assert_eq!(c, "authstore_csrf=v; HttpOnly; SameSite=Lax; Path=/");
        let c = set(session_name(true), "v", Some(60), true).unwrap();
        assert_eq!(
            c,
            "__Host-authstore_session=v; HttpOnly; SameSite=Lax; Path=/; Max-Age=60; Secure"
        );
    }
}
