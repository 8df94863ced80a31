//! CSRF protection of the login, second-factor and consent forms.
//!
//! Three checks, all before a form changes anything:
//!
//! 1. **Where the post comes from.** A form post whose `Sec-Fetch-Site` is `cross-site` or
//!    `same-site`, or whose `Origin` is present and is not the issuer's origin (`null`
//!    included), is refused ([`from_issuer_origin`]). The forms only ever post from this
//!    server's own pages, which browsers report as `same-origin` with the issuer's origin
//!    (the pages use `Referrer-Policy: same-origin`: under `no-referrer` browsers would send
//!    `Origin: null` on their own same-origin posts). Clients that send neither header
//!    (older browsers, scripts) pass this check and rely on the next two.
//! 2. **A server-made cookie.** The browser holds a cookie `r ‖ BLAKE3-keyed(cookie_key, r)`
//!    (`r` 32 random bytes, base64url, 86 characters). It is verified on every use: a value
//!    the server did not make is replaced on `GET /authorize` and refused on a post, so an
//!    attacker cannot choose the cookie a victim holds.
//! 3. **A form token** `base64url(BLAKE3-keyed(csrf_key, cookie ‖ 0x00 ‖ handle))`: bound to
//!    that browser's cookie and to one authorization session, unforgeable without the key,
//!    and compared in constant time.
//!
//! What each check is worth: a cross-site page can neither read the token nor (with
//! `SameSite=Lax`) make the browser send the cookie on its post, so 3 alone stops ordinary
//! CSRF. It does not stop *login CSRF* by an attacker who can plant a cookie (a sibling
//! subdomain, or any plain-http page under an http issuer or for a `__Secure-` cookie): the
//! attacker fetches a genuine cookie and the matching token for it from `GET /authorize`,
//! plants that cookie in the victim's browser, and posts the login form with their own
//! credentials. Check 2 only narrows this to genuine cookies; check 1 is what refuses the
//! attacker's cross-origin post. Under an https issuer without a path the `__Host-` cookie
//! cannot be planted at all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use axum::http::HeaderMap;

/// The key-derivation context of the cookie's MAC key (the form tokens use the state's
/// `csrf_key`, derived under another context).
pub(crate) const COOKIE_KEY_CONTEXT: &str = "authstore-server 2026-11 csrf cookie";

/// Length of the cookie value: 64 bytes (random ‖ MAC) in base64url without padding.
const COOKIE_LEN: usize = 86;
/// Length of a form token: 32 bytes in base64url without padding.
const TOKEN_LEN: usize = 43;

fn cookie_mac(cookie_key: &[u8; 32], random: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(cookie_key, random)
}

/// A fresh CSRF cookie value, made and MAC'd by this server. `None` when the operating
/// system's random source fails (the caller answers 503).
pub(crate) fn new_cookie(cookie_key: &[u8; 32]) -> Option<String> {
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes[..32]).ok()?;
    let mac = cookie_mac(cookie_key, &bytes[..32]);
    bytes[32..].copy_from_slice(mac.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a cookie value was made by this server ([`new_cookie`] under `cookie_key`):
/// the MAC is compared in constant time (`blake3::Hash` equality is).
pub(crate) fn cookie_valid(cookie_key: &[u8; 32], cookie: &str) -> bool {
    if cookie.len() != COOKIE_LEN {
        return false;
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(cookie) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&bytes[32..]);
    blake3::Hash::from_bytes(mac) == cookie_mac(cookie_key, &bytes[..32])
}

fn mac(key: &[u8; 32], cookie: &str, handle: &str) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(cookie.as_bytes());
    h.update(&[0]);
    h.update(handle.as_bytes());
    h.finalize()
}

/// The form token for `cookie` and `handle`.
pub(crate) fn token(key: &[u8; 32], cookie: &str, handle: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, cookie, handle).as_bytes())
}

/// Whether `presented` is the token for `cookie` and `handle`, and `cookie` is one this
/// server made (constant-time comparisons). A missing or malformed cookie or token fails.
pub(crate) fn verify(
    key: &[u8; 32],
    cookie_key: &[u8; 32],
    cookie: Option<&str>,
    handle: &str,
    presented: Option<&str>,
) -> bool {
    let (Some(cookie), Some(presented)) = (cookie, presented) else {
        return false;
    };
    if !cookie_valid(cookie_key, cookie) || presented.len() != TOKEN_LEN {
        return false;
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(presented) else {
        return false;
    };
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    blake3::Hash::from_bytes(bytes) == mac(key, cookie, handle)
}

/// Whether a form post may come from where its headers say: not `Sec-Fetch-Site:
/// cross-site` or `same-site`, and no `Origin` other than `issuer_origin` (the issuer's
/// ASCII origin, such as `https://auth.example.com`; `null` is refused). Repeated or
/// non-ASCII values are refused too.
pub(crate) fn from_issuer_origin(headers: &HeaderMap, issuer_origin: &str) -> bool {
    let one = |name: &str| -> Result<Option<String>, ()> {
        let mut all = headers.get_all(name).iter();
        let Some(v) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            return Err(());
        }
        v.to_str()
            .map(|s| Some(s.trim().to_ascii_lowercase()))
            .map_err(|_| ())
    };
    match one("sec-fetch-site") {
        Ok(Some(site)) if site == "cross-site" || site == "same-site" => return false,
        Ok(_) => {}
        Err(()) => return false,
    }
    match one("origin") {
        Ok(None) => true,
        Ok(Some(origin)) => origin == issuer_origin.to_ascii_lowercase(),
        Err(()) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_cookie_handle_and_key() {
        let key = [1u8; 32];
        let ck = [3u8; 32];
        let c1 = new_cookie(&ck).unwrap();
        let c2 = new_cookie(&ck).unwrap();
        assert_eq!(c1.len(), COOKIE_LEN);
        assert!(cookie_valid(&ck, &c1) && c1 != c2);
        let t = token(&key, &c1, "as_h");
        assert!(verify(&key, &ck, Some(&c1), "as_h", Some(&t)));
        assert!(!verify(&key, &ck, Some(&c2), "as_h", Some(&t)));
        assert!(!verify(&key, &ck, Some(&c1), "as_other", Some(&t)));
        assert!(!verify(&[2u8; 32], &ck, Some(&c1), "as_h", Some(&t)));
        assert!(!verify(&key, &ck, None, "as_h", Some(&t)));
        assert!(!verify(&key, &ck, Some(&c1), "as_h", None));
        assert!(!verify(&key, &ck, Some(&c1), "as_h", Some("!!")));
        assert!(!verify(&key, &ck, Some("short"), "as_h", Some(&t)));
        // The separator keeps (cookie, handle) pairs apart.
        assert_ne!(token(&key, &c1, "ab"), token(&key, &c1, "a"));
    }

    #[test]
    fn only_server_made_cookies_count() {
        let key = [1u8; 32];
        let ck = [3u8; 32];
        let genuine = new_cookie(&ck).unwrap();
        // Made under another key (another deployment), or chosen by an attacker.
        let foreign = new_cookie(&[4u8; 32]).unwrap();
        let chosen = "A".repeat(COOKIE_LEN);
        let old_style = URL_SAFE_NO_PAD.encode([5u8; 32]);
        for bad in [&foreign, &chosen, &old_style] {
            assert!(!cookie_valid(&ck, bad), "{bad}");
            // Even with the right token for it, a cookie we did not make is refused.
            let t = token(&key, bad, "as_h");
            assert!(!verify(&key, &ck, Some(bad), "as_h", Some(&t)));
        }
        // One flipped bit of the random part, or of the MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(&genuine).unwrap();
        raw[0] ^= 1;
        assert!(!cookie_valid(&ck, &URL_SAFE_NO_PAD.encode(&raw)));
        raw[0] ^= 1;
        raw[63] ^= 1;
        assert!(!cookie_valid(&ck, &URL_SAFE_NO_PAD.encode(&raw)));
        raw[63] ^= 1;
        assert!(cookie_valid(&ck, &URL_SAFE_NO_PAD.encode(&raw)));
    }

    #[test]
    fn origin_and_fetch_metadata() {
        let issuer = "https://auth.example.com";
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        for ok in [
            h(&[]),
            h(&[("sec-fetch-site", "same-origin")]),
            h(&[("sec-fetch-site", "none")]),
            h(&[("origin", "https://auth.example.com")]),
            h(&[("origin", "HTTPS://AUTH.EXAMPLE.COM")]),
            h(&[
                ("origin", "https://auth.example.com"),
                ("sec-fetch-site", "same-origin"),
            ]),
        ] {
            assert!(from_issuer_origin(&ok, issuer), "{ok:?}");
        }
        for bad in [
            h(&[("sec-fetch-site", "cross-site")]),
            h(&[("sec-fetch-site", "Cross-Site")]),
            h(&[("sec-fetch-site", "same-site")]),
            h(&[("origin", "null")]),
            h(&[("origin", "https://evil.example")]),
            h(&[("origin", "https://sub.auth.example.com")]),
            h(&[("origin", "http://auth.example.com")]),
            h(&[("origin", "https://auth.example.com:8443")]),
            h(&[
                ("origin", "https://auth.example.com"),
                ("origin", "https://evil.example"),
            ]),
            h(&[
                ("origin", "https://auth.example.com"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ] {
            assert!(!from_issuer_origin(&bad, issuer), "{bad:?}");
        }
    }
}
