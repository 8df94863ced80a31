//! The optional TOML configuration file, and how its values map onto the store, the server
//! and the background tasks. Every table refuses unknown keys, so a typo is an error that
//! names the key instead of a setting silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use authstore_core::{Config, TokenFormat};
use authstore_server::{MaintenanceConfig, RateLimit, ServerConfig};
use serde::Deserialize;

use crate::error::{CliError, CliResult};

/// The whole file. Every key is optional. No `Debug`: `database_url` may hold a password.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// The store URL.
    pub(crate) database_url: Option<String>,
    /// The address `serve` listens on.
    pub(crate) listen: Option<String>,
    /// The issuer `serve` announces.
    pub(crate) issuer: Option<String>,
    /// The token key file.
    pub(crate) token_key_file: Option<PathBuf>,
    /// The sealing key file.
    pub(crate) sealing_key_file: Option<PathBuf>,
    /// Request limits of `serve`.
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Background cleanup of `serve`.
    #[serde(default)]
    pub(crate) cleanup: Cleanup,
    /// Token lifetimes and format.
    #[serde(default)]
    pub(crate) tokens: Tokens,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    /// Per client: `"N/BURST"`, `"N"` or `"off"`.
    pub(crate) client_rate: Option<String>,
    /// Per remote address.
    pub(crate) address_rate: Option<String>,
    /// Per remote address at the login form.
    pub(crate) login_rate: Option<String>,
    /// Request timeout in seconds.
    pub(crate) request_timeout_secs: Option<u64>,
    /// Largest request body.
    pub(crate) max_body_bytes: Option<usize>,
    /// Largest total size of request headers.
    pub(crate) max_header_bytes: Option<usize>,
}

/// `[cleanup]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cleanup {
    /// Seconds between cleanup passes of `serve`; 0 turns them off.
    pub(crate) interval_secs: Option<u64>,
    /// How long dead rows are kept, in seconds.
    pub(crate) retention_secs: Option<u64>,
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tokens {
    /// Access token lifetime.
    pub(crate) access_token_secs: Option<u64>,
    /// Refresh token family absolute lifetime.
    pub(crate) refresh_token_secs: Option<u64>,
    /// Refresh token idle lifetime.
    pub(crate) refresh_idle_secs: Option<u64>,
    /// Authorization code lifetime.
    pub(crate) authorization_code_secs: Option<u64>,
    /// Refresh grace period.
    pub(crate) refresh_grace_secs: Option<u64>,
    /// Deployment prefix of minted tokens.
    pub(crate) deployment_prefix: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> CliResult<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::io(format!("cannot read config file {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| before.matches('\n').count() + 1);
            CliError::ConfigFile {
                path: path.to_owned(),
                reason: match line {
                    Some(n) => format!("line {n}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            }
        })
    }

    /// The store's configuration: `[tokens]` over the defaults.
    pub(crate) fn store_config(&self) -> CliResult<Config> {
        let mut c = Config::default();
        let t = &self.tokens;
        let secs = Duration::from_secs;
        if let Some(v) = t.access_token_secs {
            c.lifetimes.access_token = secs(v);
        }
        if let Some(v) = t.refresh_token_secs {
            c.lifetimes.refresh_token = secs(v);
        }
        if let Some(v) = t.refresh_idle_secs {
            c.lifetimes.refresh_idle = secs(v);
        }
        if let Some(v) = t.authorization_code_secs {
            c.lifetimes.authorization_code = secs(v);
        }
        if let Some(v) = t.refresh_grace_secs {
            c.refresh_grace = secs(v);
        }
        if let Some(p) = &t.deployment_prefix {
            c.token_format = TokenFormat::with_deployment_prefix(p)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The server's configuration for `issuer`: `[limits]` over the defaults.
    pub(crate) fn server_config(&self, issuer: &str) -> CliResult<ServerConfig> {
        let mut s = ServerConfig::new(issuer)?;
        let l = &self.limits;
        let rate = |key: &str, v: &Option<String>, default: RateLimit| -> CliResult<RateLimit> {
            match v {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|e: String| CliError::input(format!("config [limits] {key}: {e}"))),
            }
        };
        s.client_rate_limit = rate("client_rate", &l.client_rate, s.client_rate_limit)?;
        s.address_rate_limit = rate("address_rate", &l.address_rate, s.address_rate_limit)?;
        s.login_rate_limit = rate("login_rate", &l.login_rate, s.login_rate_limit)?;
        if let Some(v) = l.request_timeout_secs {
            if v == 0 {
                return Err(CliError::input(
                    "config [limits] request_timeout_secs: must be at least 1",
                ));
            }
            s.request_timeout = Duration::from_secs(v);
        }
        // The server refuses these too, but only once the store is open: check them first.
        for (key, v, field) in [
            ("max_body_bytes", l.max_body_bytes, &mut s.max_body_bytes),
            (
                "max_header_bytes",
                l.max_header_bytes,
                &mut s.max_header_bytes,
            ),
        ] {
            if let Some(v) = v {
                if v < 1024 {
                    return Err(CliError::input(format!(
                        "config [limits] {key}: must be at least 1024 (bytes)"
                    )));
                }
                *field = v;
            }
        }
        Ok(s)
    }

    /// The background tasks of `serve`: `[cleanup]` over the defaults (every 300 s).
    pub(crate) fn maintenance_config(&self) -> MaintenanceConfig {
        let mut m = MaintenanceConfig::default();
        if let Some(v) = self.cleanup.interval_secs {
            m.cleanup_interval = (v > 0).then(|| Duration::from_secs(v));
        }
        if let Some(v) = self.cleanup.retention_secs {
            m.cleanup.retention = Duration::from_secs(v);
        }
        m
    }

    /// Cleanup retention from `[cleanup] retention_secs`, if set.
    pub(crate) fn retention(&self) -> Option<Duration> {
        self.cleanup.retention_secs.map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_maps() {
        let c: FileConfig = toml::from_str(
            r#"
            database_url = "sqlite://x.db"
            listen = "127.0.0.1:9000"
            issuer = "https://auth.example.com"
            token_key_file = "/k/token"
            sealing_key_file = "/k/sealing"
            [limits]
            client_rate = "5/10"
            address_rate = "off"
            login_rate = "2"
            request_timeout_secs = 3
            max_body_bytes = 4096
            max_header_bytes = 8192
            [cleanup]
            interval_secs = 0
            retention_secs = 7200
            [tokens]
            access_token_secs = 600
            refresh_token_secs = 86400
            refresh_idle_secs = 3600
            authorization_code_secs = 30
            refresh_grace_secs = 5
            deployment_prefix = "acme"
            "#,
        )
        .unwrap();
        let s = c.store_config().unwrap();
        assert_eq!(s.lifetimes.access_token, Duration::from_secs(600));
        assert_eq!(s.lifetimes.refresh_token, Duration::from_secs(86400));
        assert_eq!(s.lifetimes.refresh_idle, Duration::from_secs(3600));
        assert_eq!(s.lifetimes.authorization_code, Duration::from_secs(30));
        assert_eq!(s.refresh_grace, Duration::from_secs(5));
        assert_eq!(s.token_format.deployment_prefix(), Some("acme"));
        let srv = c.server_config("http://127.0.0.1:9000").unwrap();
        assert_eq!(srv.client_rate_limit, RateLimit::per_second(5, 10));
        assert_eq!(srv.address_rate_limit, RateLimit::OFF);
        assert_eq!(srv.login_rate_limit, RateLimit::per_second(2, 2));
        assert_eq!(srv.request_timeout, Duration::from_secs(3));
        assert_eq!(srv.max_body_bytes, 4096);
        assert_eq!(srv.max_header_bytes, 8192);
        let m = c.maintenance_config();
        assert_eq!(m.cleanup_interval, None);
        assert_eq!(m.cleanup.retention, Duration::from_secs(7200));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = toml::from_str::<FileConfig>("databse_url = \"x\"")
            .err()
            .unwrap();
        assert!(e.to_string().contains("databse_url"), "{e}");
        let e = toml::from_str::<FileConfig>("[tokens]\naccess_token = 5")
            .err()
            .unwrap();
        assert!(e.to_string().contains("access_token"), "{e}");
        let c: FileConfig = toml::from_str("[limits]\nclient_rate = \"fast\"").unwrap();
        let e = c.server_config("http://x").unwrap_err().to_string();
        assert!(e.contains("client_rate") && e.contains("N/BURST"), "{e}");
        // What the server would refuse only once the store is open is refused here.
        for (text, key) in [
            ("[limits]\nmax_body_bytes = 10", "max_body_bytes"),
            ("[limits]\nmax_header_bytes = 1023", "max_header_bytes"),
            ("[limits]\nrequest_timeout_secs = 0", "request_timeout_secs"),
        ] {
            let c: FileConfig = toml::from_str(text).unwrap();
            let e = c.server_config("http://x").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least"), "{e}");
        }
        // A rate limit of 0 or off is no limit.
        let c: FileConfig =
            toml::from_str("[limits]\nclient_rate = \"0\"\nlogin_rate = \"OFF\"").unwrap();
        let srv = c.server_config("http://x").unwrap();
        assert_eq!(srv.client_rate_limit, RateLimit::OFF);
        assert_eq!(srv.login_rate_limit, RateLimit::OFF);
        let c: FileConfig = toml::from_str("[tokens]\nrefresh_grace_secs = 3600").unwrap();
        assert!(c.store_config().is_err());
        let c: FileConfig = toml::from_str("[tokens]\ndeployment_prefix = \"Bad_\"").unwrap();
        assert!(c.store_config().is_err());
    }
}
