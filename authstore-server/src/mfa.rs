//! The second factor of the login form (TOTP, or a recovery code).
//!
//! After the password of a user with a TOTP enrolment succeeds, no login session is made
//! and no subject attached: the browser gets the second-factor page, whose form carries a
//! **ticket** saying "the password of this user was verified for this authorization
//! session, until then":
//!
//! `base64url(user id (16 bytes) ‖ expiry (µs since the epoch, 8 bytes, big-endian) ‖
//! BLAKE3-keyed(ticket_key, len(handle) ‖ handle ‖ user id ‖ expiry))`
//!
//! checked in constant time, with the expiry on the store's clock ([`TICKET_LIFETIME`]).
//! A ticket is useless without a right code: wrong codes count in the store's lockout.
//!
//! A login session made after a second factor gets a **proof cookie**
//! `base64url(BLAKE3-keyed(session_key, session handle))`. It marks the session as
//! `amr: ["pwd", "otp"]` for later requests, and a user with a TOTP enrolment needs it:
//! their session without it (made before the enrolment, or before this check existed) counts
//! as not signed in.

use std::time::Duration;

use authstore_core::{AuthContext, Authstore, Timestamp, UserId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

/// The key-derivation context of the tickets' MAC key.
const TICKET_KEY_CONTEXT: &str = "authstore-server 2026-11 mfa ticket";
/// The key-derivation context of the proof cookies' MAC key.
const SESSION_KEY_CONTEXT: &str = "authstore-server 2026-11 mfa session";

/// How long the second-factor page may be answered after the password.
pub(crate) const TICKET_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Bytes of a decoded ticket: user id, expiry, MAC.
const TICKET_BYTES: usize = 16 + 8 + 32;

/// How the user signed in: what the codes of the request carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// A password only (the user has no second factor).
    Password,
    /// A password, then a TOTP code or a recovery code.
    PasswordAndOtp,
}

impl Method {
    /// The authentication context of codes issued after this sign-in (RFC 8176 values).
    pub(crate) fn context(self) -> AuthContext {
        match self {
            Self::Password => AuthContext {
                amr: vec!["pwd".to_owned()],
                ..AuthContext::default()
            },
            Self::PasswordAndOtp => AuthContext {
                amr: vec!["pwd".to_owned(), "otp".to_owned()],
                mfa_verified: true,
                ..AuthContext::default()
            },
        }
    }
}

/// The tickets' key.
pub(crate) fn ticket_key(store: &Authstore) -> Zeroizing<[u8; 32]> {
    store.derive_key(TICKET_KEY_CONTEXT)
}

/// The proof cookies' key.
pub(crate) fn session_key(store: &Authstore) -> Zeroizing<[u8; 32]> {
    store.derive_key(SESSION_KEY_CONTEXT)
}

fn ticket_mac(key: &[u8; 32], handle: &str, user: &[u8], expiry: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(handle.len() as u64).to_be_bytes());
    h.update(handle.as_bytes());
    h.update(user);
    h.update(expiry);
    h.finalize()
}

/// A ticket for `user` in the authorization session `handle`, good until `expires`.
pub(crate) fn ticket(key: &[u8; 32], handle: &str, user: UserId, expires: Timestamp) -> String {
    let user = user.as_uuid().as_bytes();
    let expiry = expires.as_unix_micros().to_be_bytes();
    let mac = ticket_mac(key, handle, user, &expiry);
    let mut out = Vec::with_capacity(TICKET_BYTES);
    out.extend_from_slice(user);
    out.extend_from_slice(&expiry);
    out.extend_from_slice(mac.as_bytes());
    URL_SAFE_NO_PAD.encode(out)
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketError {
    /// Malformed, forged, altered, or for another authorization session.
    Invalid,
    /// Genuine, but past its expiry.
    Expired,
}

/// The user of a genuine, unexpired ticket for `handle`.
pub(crate) fn open_ticket(
    key: &[u8; 32],
    handle: &str,
    presented: &str,
    now: Timestamp,
) -> Result<UserId, TicketError> {
    if presented.len() > 100 {
        return Err(TicketError::Invalid);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(presented)
        .map_err(|_| TicketError::Invalid)?;
    let bytes =
        <[u8; TICKET_BYTES]>::try_from(bytes.as_slice()).map_err(|_| TicketError::Invalid)?;
    let (user, rest) = bytes.split_at(16);
    let (expiry, mac) = rest.split_at(8);
    let mut presented_mac = [0u8; 32];
    presented_mac.copy_from_slice(mac);
    // Constant time: `blake3::Hash` equality is.
    if blake3::Hash::from_bytes(presented_mac) != ticket_mac(key, handle, user, expiry) {
        return Err(TicketError::Invalid);
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(expiry);
    if now >= Timestamp::from_unix_micros(i64::from_be_bytes(e)) {
        return Err(TicketError::Expired);
    }
    let uuid = uuid::Uuid::from_slice(user).map_err(|_| TicketError::Invalid)?;
    Ok(UserId::from_uuid(uuid))
}

fn proof_mac(key: &[u8; 32], session_handle: &str) -> blake3::Hash {
    blake3::keyed_hash(key, session_handle.as_bytes())
}

/// The proof cookie's value for a login session made after a second factor.
pub(crate) fn session_proof(key: &[u8; 32], session_handle: &str) -> String {
    URL_SAFE_NO_PAD.encode(proof_mac(key, session_handle).as_bytes())
}

/// Whether `presented` is the proof for `session_handle` (constant time).
pub(crate) fn proves(key: &[u8; 32], session_handle: &str, presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    if presented.len() != 43 {
        return false;
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(presented) else {
        return false;
    };
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    blake3::Hash::from_bytes(bytes) == proof_mac(key, session_handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Timestamp = Timestamp::from_unix_micros(1_767_225_600_000_000);

    #[test]
    fn tickets_bind_handle_user_and_expiry() {
        let key = [1u8; 32];
        let user = UserId::from_uuid(uuid::Uuid::now_v7());
        let other = UserId::from_uuid(uuid::Uuid::now_v7());
        let until = START.saturating_add(TICKET_LIFETIME);
        let t = ticket(&key, "as_h", user, until);
        assert_eq!(open_ticket(&key, "as_h", &t, START), Ok(user));
        assert_eq!(
            open_ticket(&key, "as_h", &t, until),
            Err(TicketError::Expired)
        );
        assert_eq!(
            open_ticket(&key, "as_other", &t, START),
            Err(TicketError::Invalid)
        );
        assert_eq!(
            open_ticket(&[2u8; 32], "as_h", &t, START),
            Err(TicketError::Invalid)
        );
        // Another user or a later expiry spliced into a genuine ticket.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[..16].copy_from_slice(other.as_uuid().as_bytes());
        let spliced = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            open_ticket(&key, "as_h", &spliced, START),
            Err(TicketError::Invalid)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[16..24].copy_from_slice(&i64::MAX.to_be_bytes());
        let later = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            open_ticket(&key, "as_h", &later, until),
            Err(TicketError::Invalid)
        );
        for junk in ["", "!!", "AAAA", &"A".repeat(75), &"A".repeat(500)] {
            assert_eq!(
                open_ticket(&key, "as_h", junk, START),
                Err(TicketError::Invalid)
            );
        }
    }

    #[test]
    fn proofs_bind_the_session() {
        let key = [1u8; 32];
        let p = session_proof(&key, "ls_a");
        assert!(proves(&key, "ls_a", Some(&p)));
        assert!(!proves(&key, "ls_b", Some(&p)));
        assert!(!proves(&[2u8; 32], "ls_a", Some(&p)));
        assert!(!proves(&key, "ls_a", None));
        assert!(!proves(&key, "ls_a", Some("x")));
    }
}
