//! The bearer token that every write must carry. The token is compared in constant time and
//! never printed: its `Debug` is redacted.

use http::HeaderMap;
use std::fmt;

#[derive(Clone)]
pub struct Token(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token must be printable ASCII without spaces")]
    NotPrintable,
}

impl Token {
    /// A token from a file or the environment; surrounding whitespace (a final newline) is
    /// not part of it.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Token(t.as_bytes().to_vec()))
    }

    /// Whether two tokens are the same secret (a reader token must not be the admin's).
    pub fn same_as(&self, other: &Token) -> bool {
        constant_time_eq(&self.0, &other.0)
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|given| constant_time_eq(given, &self.0))
    }
}

/// The credential of `Authorization: Bearer <credential>`, if the header is there.
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, given) = value.split_first_chunk::<7>()?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(given)
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Takes as long for every token of the right length, whatever its bytes; only the length
/// can be learnt from timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn only_the_exact_bearer_token_authorizes() -> Result<(), TokenError> {
        let t = Token::new("s3cret\n")?;
        assert!(t.authorizes(&headers("Bearer s3cret")));
        assert!(t.authorizes(&headers("bearer s3cret")));
        assert!(!t.authorizes(&headers("Bearer s3cre")));
        assert!(!t.authorizes(&headers("Bearer s3cret2")));
        assert!(!t.authorizes(&headers("Basic s3cret")));
        assert!(!t.authorizes(&headers("Bearer")));
        assert!(!t.authorizes(&HeaderMap::new()));
        assert_eq!(Token::new(" \n").err(), Some(TokenError::Empty));
        assert!(!format!("{t:?}").contains("s3cret"));
        Ok(())
    }
}
