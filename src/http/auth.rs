//! Bearer tokens: the one reader of an `Authorization: Bearer <token>`
//! header (the admin token and end users' JWTs alike), and the admin token's
//! constant-time check.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// The token of an `Authorization: Bearer <token>` header (the scheme in any
/// case, as RFC 9110 says; spaces around the token ignored), if there is one.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `authorization` (the header value) carries `expected` as a bearer
/// token. An empty `expected` means admin access is closed, not open. The
/// tokens' digests are compared (`subtle`, without early exit), so timing
/// reveals neither the token's content nor its length.
pub fn bearer_matches(authorization: Option<&str>, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(presented) = bearer_token(authorization) else {
        return false;
    };
    let presented = Md5::digest(presented.as_bytes());
    let expected = Md5::digest(expected.as_bytes());
    presented.as_slice().ct_eq(expected.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some("bearer  s3cret "), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cret2"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn no_configured_token_closes_admin() {
        assert!(!bearer_matches(Some("Bearer "), ""));
        assert!(!bearer_matches(Some("Bearer anything"), ""));
    }

    #[test]
    fn bearer_tokens_are_read_whatever_the_schemes_case() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("BEARER abc")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
    }
}
