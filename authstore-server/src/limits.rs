//! Request limits: per-client and per-address rate limits (token bucket, `governor`), and
//! the header-size limit.
//!
//! Rate limits measure real elapsed time with a monotonic clock: they bound load, they are
//! not domain time (token expiry uses the store's injected clock).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use authstore_core::ClientId;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::OAuthError;
use crate::state::AppState;

/// A token-bucket rate limit: `per_second` requests per second on average, up to `burst`
/// at once. `per_second == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second (0: no limit).
    pub per_second: u32,
    /// Requests allowed at once (at least 1 when on).
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: Self = Self {
        per_second: 0,
        burst: 0,
    };

    /// `per_second` on average, `burst` at once.
    pub const fn per_second(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn limiter<K: std::hash::Hash + Eq + Clone>(self) -> Option<DefaultKeyedRateLimiter<K>> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Some(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ))
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `off`, `N` (N per second, burst N) or `N/B` (N per second, burst B).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("rate limit {s:?}: expected off, N or N/BURST (requests per second)");
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s == "0" {
            return Ok(Self::OFF);
        }
        let (n, b) = match s.split_once('/') {
            Some((n, b)) => (n, b),
            None => (s, s),
        };
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if n == 0 || b == 0 {
            return Err(bad());
        }
        Ok(Self::per_second(n, b))
    }
}

/// Keys seen before the limiters forget idle ones.
const RETAIN_AFTER: usize = 10_000;

/// The server's limiters.
pub(crate) struct Limits {
    client: Option<DefaultKeyedRateLimiter<ClientId>>,
    address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    login: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("client", &self.client.is_some())
            .field("address", &self.address.is_some())
            .field("login", &self.login.is_some())
            .finish()
    }
}

impl Limits {
    pub(crate) fn new(client: RateLimit, address: RateLimit, login: RateLimit) -> Self {
        Self {
            client: client.limiter(),
            address: address.limiter(),
            login: login.limiter(),
            checks: AtomicU64::new(0),
        }
    }

    /// The per-client limit (token, introspection, revocation endpoints).
    pub(crate) fn check_client(&self, id: ClientId) -> Result<(), OAuthError> {
        check(&self.client, &id, &self.checks)
    }

    /// The per-address limit of the OAuth endpoints and the authorization pages.
    pub(crate) fn check_address(&self, ip: IpAddr) -> Result<(), OAuthError> {
        check(&self.address, &address_key(ip), &self.checks)
    }

    /// The per-address limit of the login form. Returns the seconds to wait when refused.
    pub(crate) fn check_login(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        match ip {
            Some(ip) => {
                check(&self.login, &ip, &self.checks).map_err(|e| e.retry_after.unwrap_or(1))
            }
            None => Ok(()),
        }
    }
}

/// The key an address is limited under: IPv4 as is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64, so per-/128 keys would be free to rotate through).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
    checks: &AtomicU64,
) -> Result<(), OAuthError> {
    let Some(l) = limiter else { return Ok(()) };
    // Forget idle keys now and then, so a scan of many addresses cannot grow memory.
    if checks.fetch_add(1, Ordering::Relaxed) % 4096 == 0 && l.len() > RETAIN_AFTER {
        l.retain_recent();
        l.shrink_to_fit();
    }
    l.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        OAuthError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    })
}

/// The peer address of a request, when served through [`crate::serve`] (or with
/// `into_make_service_with_connect_info::<SocketAddr>`).
pub(crate) fn peer_ip(req: &Request) -> Option<IpAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        // In-process tests provide the peer with axum's MockConnectInfo.
        .or_else(|| {
            ext.get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
}

/// Middleware: the per-address limit on the OAuth endpoints.
pub(crate) async fn by_address(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = peer_ip(&req) {
        if let Err(e) = state.limits.check_address(ip) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Middleware: 431 when the request headers together exceed the configured size.
pub(crate) async fn header_size(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    if size > state.config.max_header_bytes {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_burst() {
        assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::OFF);
        assert_eq!(
            "5".parse::<RateLimit>().unwrap(),
            RateLimit::per_second(5, 5)
        );
        assert_eq!(
            "5/20".parse::<RateLimit>().unwrap(),
            RateLimit::per_second(5, 20)
        );
        assert!("x".parse::<RateLimit>().is_err());
        assert!("5/0".parse::<RateLimit>().is_err());
        let l = Limits::new(RateLimit::per_second(1, 3), RateLimit::OFF, RateLimit::OFF);
        let id = ClientId::from_uuid(uuid::Uuid::nil());
        for _ in 0..3 {
            assert!(l.check_client(id).is_ok());
        }
        let e = l.check_client(id).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retry_after.unwrap() >= 1);
        // IPv6 addresses share a bucket per /64; mapped IPv4 is the IPv4 address.
        let l6 = Limits::new(RateLimit::OFF, RateLimit::per_second(1, 2), RateLimit::OFF);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l6.check_address(a).is_ok());
        assert!(l6.check_address(b).is_ok());
        assert!(l6.check_address(a).is_err(), "same /64");
        assert!(l6.check_address(c).is_ok(), "another /64");
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(l6.check_address(v4).is_ok());
        assert!(l6.check_address(mapped).is_ok());
        assert!(
            l6.check_address(v4).is_err(),
            "mapped IPv4 is the IPv4 address"
        );
        // Off means off.
        for _ in 0..1000 {
            assert!(l.check_address(IpAddr::from([127, 0, 0, 1])).is_ok());
        }
    }
}
