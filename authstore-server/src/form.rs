//! Strict `application/x-www-form-urlencoded` parsing for OAuth endpoints and the pages'
//! forms: UTF-8 only, no NUL, no repeated parameter (RFC 6749 §3.1, §3.2), bounded count.

use std::borrow::Cow;

use axum::http::{HeaderMap, header};
use percent_encoding::percent_decode;
use zeroize::{Zeroize, Zeroizing};

use crate::error::OAuthError;

/// Most parameters one request may carry.
const MAX_PARAMS: usize = 64;

/// Why a form or query string was refused. Becomes `invalid_request` on OAuth endpoints and
/// an error page on the HTML ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FormError(pub(crate) Cow<'static, str>);

impl From<FormError> for OAuthError {
    fn from(e: FormError) -> Self {
        OAuthError::invalid_request(e.0)
    }
}

/// Parsed parameters, in order. Parameters with an empty value count as absent (RFC 6749
/// §3.1).
#[derive(Clone, Default)]
pub(crate) struct FormParams(Vec<(String, String)>);

// Values may be secrets (client_secret, code, password): never print them.
impl std::fmt::Debug for FormParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

// Values may be passwords and secrets: wipe them when the request is done.
impl Drop for FormParams {
    fn drop(&mut self) {
        for (_, v) in &mut self.0 {
            v.zeroize();
        }
    }
}

impl FormParams {
    /// Parses a request body, which must be declared `application/x-www-form-urlencoded`.
    pub(crate) fn from_body(headers: &HeaderMap, body: &[u8]) -> Result<Self, FormError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(FormError(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        Self::parse(body)
    }

    /// Parses a query string (`None` is empty).
    pub(crate) fn from_query(query: Option<&str>) -> Result<Self, FormError> {
        Self::parse(query.unwrap_or("").as_bytes())
    }

    fn parse(input: &[u8]) -> Result<Self, FormError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in input.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let k = decode(k)?;
            let v = decode(v)?;
            if k.is_empty() {
                return Err(FormError("a parameter has no name".into()));
            }
            if out.len() >= MAX_PARAMS {
                return Err(FormError("too many parameters".into()));
            }
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(FormError(
                    format!(
                        "the parameter {} is repeated",
                        k.chars().take(40).collect::<String>()
                    )
                    .into(),
                ));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    /// The value of `name`; `None` when absent or empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The value of `name`, or an error naming it.
    pub(crate) fn require(&self, name: &'static str) -> Result<&str, FormError> {
        self.get(name)
            .ok_or_else(|| FormError(format!("the parameter {name} is missing").into()))
    }
}

fn decode(raw: &[u8]) -> Result<String, FormError> {
    let plus: Zeroizing<Vec<u8>> = Zeroizing::new(
        raw.iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect(),
    );
    let bytes: Vec<u8> = percent_decode(&plus).collect();
    let s =
        String::from_utf8(bytes).map_err(|_| FormError("a parameter is not valid UTF-8".into()))?;
    if s.contains('\0') {
        return Err(FormError("a parameter contains a NUL character".into()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<FormParams, FormError> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        FormParams::from_body(&h, body.as_bytes())
    }

    #[test]
    fn strict_parsing() {
        let f = form("grant_type=client_credentials&scope=a+b%20c&empty=").unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), Some("a b c"));
        assert_eq!(f.get("empty"), None);
        assert!(f.require("missing").is_err());
        assert!(form("a=1&a=2").unwrap_err().0.contains("repeated"));
        assert!(form("a=%FF").unwrap_err().0.contains("UTF-8"));
        assert!(form("a=%00").unwrap_err().0.contains("NUL"));
        assert!(form("a=1&").is_ok());
        let many: String = (0..65).map(|i| format!("p{i}=1&")).collect();
        assert!(form(&many).is_err());
        let json = FormParams::from_body(&HeaderMap::new(), b"{\"grant_type\":\"x\"}");
        assert!(json.is_err());
        assert!(format!("{:?}", form("client_secret=hunter2").unwrap()).contains("client_secret"));
        assert!(!format!("{:?}", form("client_secret=hunter2").unwrap()).contains("hunter2"));
    }
}
