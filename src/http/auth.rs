//! Admin authentication: a bearer token compared in constant time.

use md5::{Digest, Md5};

/// Whether `authorization` (the header value) carries `expected` as a bearer
/// token. An empty `expected` means admin access is closed, not open. Digests
/// of equal length are compared without early exit, so timing reveals
/// neither the token's content nor its length.
pub fn bearer_matches(authorization: Option<&str>, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(presented) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let a = Md5::digest(presented.trim().as_bytes());
    let b = Md5::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn no_configured_token_closes_admin() {
        assert!(!bearer_matches(Some("Bearer "), ""));
        assert!(!bearer_matches(Some("Bearer anything"), ""));
    }
}
