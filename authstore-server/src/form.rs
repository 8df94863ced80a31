//! Strict `application/x-www-form-urlencoded` parsing for OAuth endpoints and the pages'
//! forms: UTF-8 only, no NUL, no repeated parameter (RFC 6749 §3.1, §3.2), bounded count.

use std::borrow::Cow;

use axum::http::{HeaderMap, header};
use zeroize::Zeroize;

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
    decode_component(raw).map_err(|e| match e {
        DecodeError::Utf8 => FormError("a parameter is not valid UTF-8".into()),
        DecodeError::Nul => FormError("a parameter contains a NUL character".into()),
    })
}

/// Why a form component could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The decoded bytes are not UTF-8.
    Utf8,
    /// The decoded text holds a NUL character.
    Nul,
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` (two
/// hex digits, either case) the byte XX, a `%` not followed by two hex digits stays as it
/// is (as `percent_encoding::percent_decode` does). The result must be UTF-8 without NUL.
///
/// One pass, one allocation (the result); a component without `+` or `%` is only checked
/// and copied. The bytes of a refused component are wiped: it may be a secret.
pub(crate) fn decode_component(raw: &[u8]) -> Result<String, DecodeError> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Utf8)?;
        if s.contains('\0') {
            return Err(DecodeError::Nul);
        }
        return Ok(s.to_owned());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (
                raw.get(i + 1).and_then(|&h| hex(h)),
                raw.get(i + 2).and_then(|&l| hex(l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    let refuse = |mut bytes: Vec<u8>, e| {
        bytes.zeroize();
        Err(e)
    };
    if out.contains(&0) {
        return refuse(out, DecodeError::Nul);
    }
    match String::from_utf8(out) {
        Ok(s) => Ok(s),
        Err(e) => refuse(e.into_bytes(), DecodeError::Utf8),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
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

    /// The one-pass decoder gives what `+` → space then `percent_decode` gives, on every
    /// tricky shape: lone and truncated `%`, bad hex digits, both cases, multi-byte UTF-8.
    #[test]
    fn decode_component_matches_percent_decode() {
        let reference = |raw: &[u8]| -> Result<String, DecodeError> {
            let plus: Vec<u8> = raw
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
            let s = String::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?;
            if s.contains('\0') {
                return Err(DecodeError::Nul);
            }
            Ok(s)
        };
        let cases: &[&[u8]] = &[
            b"",
            b"plain",
            b"a+b",
            b"a%20b",
            b"%",
            b"%2",
            b"%%41",
            b"%4g",
            b"%G1",
            b"100%",
            b"%41%42%4a%4A",
            b"caf%C3%A9",
            b"%E2%82",
            b"%FF",
            b"\xff",
            b"a%00b",
            b"a\0b",
            b"++%2B+",
            b"%+41",
            b"x%2",
        ];
        for raw in cases {
            assert_eq!(
                decode_component(raw),
                reference(raw),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // Every two-byte tail after a %, exhaustively over a small alphabet.
        let alphabet = b"0aF%g+\x80";
        for &x in alphabet {
            for &y in alphabet {
                let raw = [b'a', b'%', x, y, b'z'];
                assert_eq!(decode_component(&raw), reference(&raw), "{raw:?}");
            }
        }
    }
}
