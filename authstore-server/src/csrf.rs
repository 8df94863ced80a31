//! CSRF protection of the login and consent forms (double-submit cookie, keyed).
//!
//! The browser holds a random cookie (32 bytes, base64url). Each form carries
//! `base64url(BLAKE3-keyed(csrf_key, cookie || 0x00 || handle))`: bound to that browser's
//! cookie and to one authorization session, and unforgeable without the server's key, so
//! another site can neither read nor compute it, and a cookie planted by a sibling subdomain
//! (under http, where `__Host-` does not apply) is useless without a token for it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of the cookie value: 32 bytes in base64url without padding.
const COOKIE_LEN: usize = 43;

/// A fresh CSRF cookie value (32 random bytes, base64url). `None` when the operating
/// system's random source fails (the caller answers 503).
pub(crate) fn new_cookie() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a cookie value has the shape [`new_cookie`] gives. Others are replaced.
pub(crate) fn well_formed(cookie: &str) -> bool {
    cookie.len() == COOKIE_LEN
        && cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// Whether `presented` is the token for `cookie` and `handle` (constant-time comparison:
/// `blake3::Hash` equality is). A missing or malformed cookie or token fails.
pub(crate) fn verify(
    key: &[u8; 32],
    cookie: Option<&str>,
    handle: &str,
    presented: Option<&str>,
) -> bool {
    let (Some(cookie), Some(presented)) = (cookie, presented) else {
        return false;
    };
    if !well_formed(cookie) || presented.len() != COOKIE_LEN {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_cookie_handle_and_key() {
        let key = [1u8; 32];
        let c1 = new_cookie().unwrap();
        let c2 = new_cookie().unwrap();
        assert!(well_formed(&c1) && c1 != c2);
        let t = token(&key, &c1, "as_h");
        assert!(verify(&key, Some(&c1), "as_h", Some(&t)));
        assert!(!verify(&key, Some(&c2), "as_h", Some(&t)));
        assert!(!verify(&key, Some(&c1), "as_other", Some(&t)));
        assert!(!verify(&[2u8; 32], Some(&c1), "as_h", Some(&t)));
        assert!(!verify(&key, None, "as_h", Some(&t)));
        assert!(!verify(&key, Some(&c1), "as_h", None));
        assert!(!verify(&key, Some(&c1), "as_h", Some("!!")));
        assert!(!verify(&key, Some("short"), "as_h", Some(&t)));
        // The separator keeps (cookie, handle) pairs apart.
        assert_ne!(token(&key, &c1, "ab"), token(&key, &c1, "a"));
    }
}
