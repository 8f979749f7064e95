//! Who is asking: the end user (a verified JWT's `sub`, in `jwt` mode) and
//! the client address the per-address bucket is keyed by.
//!
//! Verification is pure: the component hands over the token, the settings and
//! (for RS256/ES256) the JWKS it holds; fetching and caching the JWKS is its job.

use std::net::{IpAddr, SocketAddr};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::settings::Lookup;
use crate::config::{self, names, ConfigError, Secret};

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Longest `sub` accepted (it becomes a Postgres `user_id` and a hashed Redis key).
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest token read; real ones are well under 4 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Largest key set accepted from the issuer (and so kept in Redis); real
/// ones hold a few keys in a few KiB.
pub const MAX_KEY_SET_BYTES: usize = 256 * 1024;

/// `auth_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The seed's behaviour: the body's `user_id` is taken at its word.
    None,
    /// Every chat request carries a bearer JWT; its `sub` is the user.
    Jwt,
}

impl AuthMode {
    /// Whether a session must be its asker's: only a verified user owns one.
    pub const fn owner_check(self) -> crate::limits::sessions::OwnerCheck {
        match self {
            Self::Jwt => crate::limits::sessions::OwnerCheck::Enforced,
            Self::None => crate::limits::sessions::OwnerCheck::NotEnforced,
        }
    }
}

/// How `jwt` mode verifies tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// HS256 is accepted only when this is set.
    pub hs256_secret: Secret,
    /// RS256 and ES256 are accepted only when this is set.
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// How long a fetched JWKS is trusted before it is fetched again.
    pub jwks_cache_seconds: u64,
}

/// Everything identity-related a component reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    pub mode: AuthMode,
    /// `Some` exactly in `jwt` mode.
    pub jwt: Option<JwtSettings>,
    /// Proxies in front of Spin whose `X-Forwarded-For` entries are trusted.
    pub trusted_proxy_hops: u32,
}

fn optional(lookup: &impl Lookup, name: &str) -> Option<String> {
    lookup
        .get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl IdentitySettings {
    pub fn from_lookup(lookup: &impl Lookup) -> Result<Self, ConfigError> {
        let raw_mode = lookup.get(names::AUTH_MODE).unwrap_or_default();
        let mode = match raw_mode.trim().to_ascii_lowercase().as_str() {
            "" | "none" => AuthMode::None,
            "jwt" => AuthMode::Jwt,
            _ => {
                return Err(ConfigError::Invalid {
                    name: names::AUTH_MODE.into(),
                    value: raw_mode,
                    expected: "none or jwt",
                })
            }
        };
        let trusted_proxy_hops = match lookup.get(names::TRUSTED_PROXY_HOPS) {
            Some(raw) if !raw.trim().is_empty() => {
                config::parse_u64(names::TRUSTED_PROXY_HOPS, &raw, 0, 16)? as u32
            }
            _ => 0,
        };
        let jwt = match mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(JwtSettings::from_lookup(lookup)?),
        };
        Ok(Self {
            mode,
            jwt,
            trusted_proxy_hops,
        })
    }
}

/// Whether keys may be fetched from `url`: over TLS, or in plain HTTP from
/// this machine only (a development issuer). Keys fetched in plain text over
/// a network could be swapped in transit, and every token they verify forged.
fn is_trusted_key_source(raw: &str) -> bool {
    use url::Host;
    // The URL is fetched as written: refuse what a URL parser would rewrite
    // (`\` read as `/`, spaces and control characters dropped) rather than
    // trust one reading and fetch another.
    if raw
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" if url.username().is_empty() && url.password().is_none() => match url.host() {
            Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

impl JwtSettings {
    fn from_lookup(lookup: &impl Lookup) -> Result<Self, ConfigError> {
        let hs256_secret = Secret::new(lookup.get(names::JWT_HS256_SECRET).unwrap_or_default());
        let jwks_url = optional(lookup, names::JWT_JWKS_URL);
        if let Some(url) = &jwks_url {
            if !is_trusted_key_source(url) {
                return Err(ConfigError::Invalid {
                    name: names::JWT_JWKS_URL.into(),
                    value: url.clone(),
                    expected: "an https:// URL (http:// only for a loopback host)",
                });
            }
        }
        if hs256_secret.is_empty() && jwks_url.is_none() {
            return Err(ConfigError::Missing {
                name: format!(
                    "{} or {} (auth_mode is jwt)",
                    names::JWT_HS256_SECRET,
                    names::JWT_JWKS_URL
                ),
            });
        }
        let jwks_cache_seconds = match lookup.get(names::JWT_JWKS_CACHE_SECONDS) {
            Some(raw) if !raw.trim().is_empty() => {
                config::parse_u64(names::JWT_JWKS_CACHE_SECONDS, &raw, 10, 86_400)?
            }
            _ => 300,
        };
        Ok(Self {
            hs256_secret,
            jwks_url,
            issuer: optional(lookup, names::JWT_ISSUER),
            audience: optional(lookup, names::JWT_AUDIENCE),
            jwks_cache_seconds,
        })
    }
}

/// Why a request was not authenticated. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an `Authorization: Bearer <token>` header is required")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("tokens signed with {0} are not accepted")]
    AlgorithmNotAccepted(String),
    #[error("the token's key id is not in the issuer's key set")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by an issuer this service does not trust")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("the token's `sub` claim must be 1 to {MAX_SUBJECT_LEN} characters without control characters")]
    BadSubject,
}

impl AuthError {
    /// A short, stable reason, for logs and the security log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::AlgorithmNotAccepted(_) => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "issuer",
            Self::WrongAudience => "audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::BadSubject => "subject",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (read by
/// [`crate::http::auth::bearer_token`]), bounded in length.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let token = crate::http::auth::bearer_token(authorization).ok_or(AuthError::Missing)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// What a token's header asks for: the algorithm (only HS256, RS256 and ES256
/// are ever accepted; `none` does not even parse) and the key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub algorithm: Algorithm,
    pub key_id: Option<String>,
}

impl TokenHeader {
    /// Whether the key must come from the JWKS.
    pub fn needs_jwks(&self) -> bool {
        self.algorithm != Algorithm::HS256
    }
}

pub fn read_header(token: &str, settings: &JwtSettings) -> Result<TokenHeader, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        // A header that parses but names an algorithm the library does not
        // know (`none`, say) is refused by name, not as noise.
        declared_algorithm(token)
            .map(AuthError::AlgorithmNotAccepted)
            .unwrap_or(AuthError::Malformed)
    })?;
    let accepted = match header.alg {
        Algorithm::HS256 => !settings.hs256_secret.is_empty(),
        Algorithm::RS256 | Algorithm::ES256 => settings.jwks_url.is_some(),
        _ => false,
    };
    if !accepted {
        return Err(AuthError::AlgorithmNotAccepted(format!("{:?}", header.alg)));
    }
    Ok(TokenHeader {
        algorithm: header.alg,
        key_id: header.kid,
    })
}

fn declared_algorithm(token: &str) -> Option<String> {
    use base64::Engine;
    let segment = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let alg = header.get("alg")?.as_str()?;
    Some(
        alg.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect(),
    )
}

/// The JWKS key for a token: matched by `kid` (or the only key of the right
/// type when the token names none), and only if its type fits the algorithm,
/// so a key published for one algorithm never verifies another.
fn jwks_key(jwks: &JwkSet, header: &TokenHeader) -> Result<DecodingKey, AuthError> {
    let fits = |jwk: &&jsonwebtoken::jwk::Jwk| {
        let type_fits = match (&jwk.algorithm, header.algorithm) {
            (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
                ec.curve == EllipticCurve::P256
            }
            _ => false,
        };
        let declared_fits = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::RS256) => header.algorithm == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => header.algorithm == Algorithm::ES256,
            Some(_) => false,
        };
        type_fits && declared_fits
    };
    let jwk = match &header.key_id {
        Some(kid) => jwks
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
            .find(fits),
        None => {
            let mut candidates = jwks.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
    .ok_or(AuthError::UnknownKey)?;
    DecodingKey::from_jwk(jwk).map_err(|_| AuthError::UnknownKey)
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Verifies a token and answers its subject. `jwks` is needed for RS256 and
/// ES256 (an [`AuthError::UnknownKey`] tells the caller to refetch it once).
pub fn verify(
    token: &str,
    settings: &JwtSettings,
    jwks: Option<&JwkSet>,
) -> Result<String, AuthError> {
    let header = read_header(token, settings)?;
    let key = match header.algorithm {
        Algorithm::HS256 => DecodingKey::from_secret(settings.hs256_secret.expose().as_bytes()),
        _ => jwks_key(jwks.ok_or(AuthError::UnknownKey)?, &header)?,
    };
    let mut validation = Validation::new(header.algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Nothing to compare an `aud` with: accepting any is the configured intent.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let data =
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => {
                AuthError::AlgorithmNotAccepted(format!("{:?}", header.algorithm))
            }
            _ => AuthError::Malformed,
        })?;
    let subject = data
        .claims
        .sub
        .ok_or(AuthError::MissingClaim("sub".into()))?;
    if subject.is_empty()
        || subject.chars().count() > MAX_SUBJECT_LEN
        || subject.chars().any(char::is_control)
    {
        return Err(AuthError::BadSubject);
    }
    Ok(subject)
}

/// The client address the per-address bucket is keyed by.
///
/// Spin's `spin-client-addr` (`ip:port`) is the peer of the TCP connection.
/// Behind `hops` trusted proxies, the client is the `hops`-th address from the
/// right of `X-Forwarded-For` (each proxy appends the address it saw); entries
/// further left were written by the client and are never trusted. With fewer
/// entries than hops, the leftmost one is taken. IPv6 clients are keyed by their
/// /64, which is what one subscriber usually holds.
pub fn client_address(
    spin_client_addr: Option<&str>,
    forwarded_for: Option<&str>,
    hops: u32,
) -> String {
    let peer = spin_client_addr
        .map(|raw| {
            raw.parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| raw.parse::<IpAddr>())
                .map(bucket_of)
                .unwrap_or_else(|_| raw.to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return peer;
    }
    let index = entries.len().saturating_sub(hops as usize);
    let entry = entries[index];
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .map(bucket_of)
        // A proxy we trust wrote something that is not an address: key by the proxy.
        .unwrap_or(peer)
}

/// The /48 of an IPv6 client address as [`client_address`] writes it
/// (`a:b:c:d::/64`), for the network bucket; `None` for any other address.
pub fn network_of(address: &str) -> Option<String> {
    let prefix = address.strip_suffix("::/64")?;
    let segments: Vec<&str> = prefix.split(':').collect();
    match segments.as_slice() {
        [a, b, c, _] => Some(format!("{a}:{b}:{c}::/48")),
        _ => None,
    }
}

fn bucket_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// How long a key set outlives its freshness: the last good copy verifies
/// tokens through an issuer outage this long after `jwt_jwks_cache_seconds`.
/// A key the issuer revoked is still accepted while it is served, so the
/// window is a day, not forever.
pub const LAST_GOOD_KEY_SET_SECONDS: u64 = 86_400;

/// A key set as stored in Redis: when it was fetched, a newline, and the
/// issuer's JSON as it came. Anything else (an older format) reads as no copy.
pub fn encode_stored_key_set(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut stored = format!("{fetched_at}\n").into_bytes();
    stored.extend_from_slice(body);
    stored
}

/// The copy's fetch time and keys, if `stored` is one.
pub fn decode_stored_key_set(stored: &[u8]) -> Option<(u64, JwkSet)> {
    let newline = stored.iter().position(|&b| b == b'\n')?;
    let fetched_at = std::str::from_utf8(&stored[..newline]).ok()?.parse().ok()?;
    let keys = serde_json::from_slice(&stored[newline + 1..]).ok()?;
    Some((fetched_at, keys))
}

/// Whether a copy fetched at `fetched_at` is still fresh at `now` (a clock
/// that went back counts as fresh: the copy is no older than it was).
pub fn key_set_is_fresh(fetched_at: u64, now: u64, cache_seconds: u64) -> bool {
    now.saturating_sub(fetched_at) < cache_seconds
}

/// A key set is fetched again for an unknown `kid`, or refreshed after it
/// expired, at most this often (per deployment with Redis, per instance
/// without), so tokens with made-up key ids, or an issuer that is down,
/// cannot make us hammer the issuer.
pub const KEY_SET_REFETCH_SECONDS: u64 = 30;

/// What one instance keeps for itself of the issuer's key sets, for the
/// requests that cannot ask Redis (down, or failing): the newest copy it
/// fetched or read from Redis, kept as Redis keeps it (fresh for
/// `jwt_jwks_cache_seconds`, then the last good copy for
/// [`LAST_GOOD_KEY_SET_SECONDS`], then gone), and the refetch markers Redis
/// would hold, each taken at most once per [`KEY_SET_REFETCH_SECONDS`].
/// Keyed by URL and marker: a deployment has one key set URL, so it holds
/// one copy and two markers.
#[derive(Debug, Default)]
pub struct InstanceKeySets {
    copies: std::collections::HashMap<String, (u64, JwkSet)>,
    claims: std::collections::HashMap<String, u64>,
}

impl InstanceKeySets {
    /// Keeps `keys`, fetched at `fetched_at`, unless a newer copy is kept.
    pub fn keep(&mut self, url: &str, fetched_at: u64, keys: &JwkSet) {
        match self.copies.get(url) {
            Some((kept_at, _)) if *kept_at > fetched_at => {}
            _ => {
                self.copies
                    .insert(url.to_string(), (fetched_at, keys.clone()));
            }
        }
    }

    /// The copy kept for `url` and when it was fetched, fresh or not, until
    /// it is older than its freshness and the last good copy's day.
    pub fn copy(&self, url: &str, now: u64, cache_seconds: u64) -> Option<(u64, JwkSet)> {
        let (fetched_at, keys) = self.copies.get(url)?;
        key_set_is_fresh(
            *fetched_at,
            now,
            cache_seconds.saturating_add(LAST_GOOD_KEY_SET_SECONDS),
        )
        .then(|| (*fetched_at, keys.clone()))
    }

    /// Takes `marker` at `now`: true unless it was taken less than
    /// [`KEY_SET_REFETCH_SECONDS`] ago (as `SET NX EX 30` in Redis).
    pub fn claim(&mut self, marker: &str, now: u64) -> bool {
        match self.claims.get(marker) {
            Some(taken) if key_set_is_fresh(*taken, now, KEY_SET_REFETCH_SECONDS) => false,
            _ => {
                self.claims.insert(marker.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    #[test]
    fn a_stored_key_set_reads_back_and_an_older_format_reads_as_none() {
        let body = br#"{"keys":[]}"#;
        let stored = encode_stored_key_set(1_700_000_000, body);
        let (at, keys) = decode_stored_key_set(&stored).unwrap();
        assert_eq!(at, 1_700_000_000);
        assert!(keys.keys.is_empty());
        assert!(
            decode_stored_key_set(body).is_none(),
            "plain JSON of the old format"
        );
        assert!(decode_stored_key_set(b"x\n{\"keys\":[]}").is_none());
        assert!(decode_stored_key_set(b"12\nnot json").is_none());
    }

    #[test]
    fn a_key_set_is_fresh_for_its_cache_seconds() {
        assert!(key_set_is_fresh(1000, 1000, 300));
        assert!(key_set_is_fresh(1000, 1299, 300));
        assert!(!key_set_is_fresh(1000, 1300, 300));
        assert!(key_set_is_fresh(1000, 900, 300), "a clock that went back");
    }

    fn key_set(kid: &str) -> JwkSet {
        serde_json::from_value(json!({"keys": [{
            "kty": "oct", "kid": kid, "k": "c2VjcmV0"
        }]}))
        .unwrap()
    }

    fn kid_of(copy: Option<(u64, JwkSet)>) -> Option<(u64, String)> {
        copy.map(|(at, keys)| (at, keys.keys[0].common.key_id.clone().unwrap()))
    }

    #[test]
    fn an_instance_keeps_its_newest_key_set_for_its_freshness_and_the_last_good_day() {
        let url = "https://issuer.test/jwks.json";
        let mut kept = InstanceKeySets::default();
        assert!(kept.copy(url, 1000, 300).is_none(), "nothing kept yet");
        kept.keep(url, 1000, &key_set("a"));
        assert_eq!(kid_of(kept.copy(url, 1000, 300)), Some((1000, "a".into())));
        assert!(kept
            .copy("https://other.test/jwks.json", 1000, 300)
            .is_none());
        // An older copy (another replica's, read from Redis) does not replace it.
        kept.keep(url, 900, &key_set("old"));
        assert_eq!(kid_of(kept.copy(url, 1000, 300)), Some((1000, "a".into())));
        kept.keep(url, 1100, &key_set("b"));
        assert_eq!(kid_of(kept.copy(url, 1100, 300)), Some((1100, "b".into())));
        // Past its freshness it is still the last good copy, for a day.
        let last_day = 1100 + 300 + LAST_GOOD_KEY_SET_SECONDS;
        assert_eq!(
            kid_of(kept.copy(url, last_day - 1, 300)),
            Some((1100, "b".into()))
        );
        assert!(kept.copy(url, last_day, 300).is_none(), "then gone");
    }

    #[test]
    fn an_instance_takes_a_refetch_marker_at_most_once_per_thirty_seconds() {
        let mut kept = InstanceKeySets::default();
        assert!(kept.claim("refetch", 1000));
        assert!(!kept.claim("refetch", 1000));
        assert!(!kept.claim("refetch", 1000 + KEY_SET_REFETCH_SECONDS - 1));
        assert!(kept.claim("refresh", 1001), "each marker on its own");
        assert!(kept.claim("refetch", 1000 + KEY_SET_REFETCH_SECONDS));
        assert!(!kept.claim("refetch", 1000 + KEY_SET_REFETCH_SECONDS));
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            hs256_secret: Secret::new("test-secret-of-enough-length"),
            jwks_url: None,
            issuer: Some("https://issuer.test".into()),
            audience: Some("chatbot".into()),
            jwks_cache_seconds: 300,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": now() + 600, "iss": "https://issuer.test", "aud": "chatbot"})
    }

    #[test]
    fn a_good_hs256_token_names_its_subject() {
        let token = hs256(good_claims(), "test-secret-of-enough-length");
        assert_eq!(verify(&token, &settings(), None), Ok("alice".into()));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let s = settings();
        let secret = "test-secret-of-enough-length";
        let mut c = good_claims();
        c["exp"] = json!(now() - 120);
        assert_eq!(verify(&hs256(c, secret), &s, None), Err(AuthError::Expired));
        let mut c = good_claims();
        c["exp"] = json!(now() - 5); // within the leeway
        assert!(verify(&hs256(c, secret), &s, None).is_ok());
        let mut c = good_claims();
        c["nbf"] = json!(now() + 120);
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::NotYetValid)
        );
        let mut c = good_claims();
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::WrongIssuer)
        );
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::MissingClaim("iss".into()))
        );
        let mut c = good_claims();
        c["aud"] = json!("someone-else");
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::WrongAudience)
        );
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::MissingClaim("sub".into()))
        );
        let mut c = good_claims();
        c["sub"] = json!("a\u{0}b");
        assert_eq!(
            verify(&hs256(c, secret), &s, None),
            Err(AuthError::BadSubject)
        );
        assert_eq!(
            verify(&hs256(good_claims(), "another-secret"), &s, None),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify("not.a.jwt", &s, None), Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(good_claims().to_string());
        let none = format!("{}.{body}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(
            verify(&none, &settings(), None),
            Err(AuthError::AlgorithmNotAccepted(_))
        ));
        // RS256 with no JWKS configured: refused before any key is looked at.
        let rs = format!(
            "{}.{body}.c2ln",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#)
        );
        assert!(matches!(
            verify(&rs, &settings(), None),
            Err(AuthError::AlgorithmNotAccepted(_))
        ));
        // HS256 when only a JWKS is configured: the classic confusion (an RSA
        // public key used as an HMAC secret) has no secret to use.
        let jwks_only = JwtSettings {
            hs256_secret: Secret::default(),
            jwks_url: Some("https://issuer.test/jwks".into()),
            ..settings()
        };
        let token = hs256(good_claims(), "anything");
        assert!(matches!(
            verify(&token, &jwks_only, Some(&JwkSet { keys: vec![] })),
            Err(AuthError::AlgorithmNotAccepted(_))
        ));
        // An HS512 token is not accepted even with the right secret.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good_claims(),
            &EncodingKey::from_secret(b"test-secret-of-enough-length"),
        )
        .unwrap();
        assert!(matches!(
            verify(&hs512, &settings(), None),
            Err(AuthError::AlgorithmNotAccepted(_))
        ));
    }

    #[test]
    fn an_octet_key_in_the_jwks_never_verifies_rs256() {
        let jwks_only = JwtSettings {
            hs256_secret: Secret::default(),
            jwks_url: Some("https://issuer.test/jwks".into()),
            ..settings()
        };
        let jwks: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}
        ]}))
        .unwrap();
        let header = TokenHeader {
            algorithm: Algorithm::RS256,
            key_id: Some("k1".into()),
        };
        assert!(matches!(
            jwks_key(&jwks, &header),
            Err(AuthError::UnknownKey)
        ));
        // And so a token naming it is refused before any signature is checked.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&good_claims()).unwrap()),
            b64.encode("not a signature"),
        );
        assert!(matches!(
            verify(&token, &jwks_only, Some(&jwks)),
            Err(AuthError::UnknownKey)
        ));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::Missing));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
    }

    #[test]
    fn the_client_address_trusts_only_the_configured_proxies() {
        let peer = Some("10.0.0.9:5555");
        assert_eq!(client_address(peer, Some("1.2.3.4"), 0), "10.0.0.9");
        assert_eq!(client_address(peer, Some("6.6.6.6, 1.2.3.4"), 1), "1.2.3.4");
        assert_eq!(
            client_address(peer, Some("6.6.6.6, 1.2.3.4, 10.0.0.2"), 2),
            "1.2.3.4"
        );
        assert_eq!(client_address(peer, Some("1.2.3.4"), 3), "1.2.3.4");
        assert_eq!(client_address(peer, None, 1), "10.0.0.9");
        assert_eq!(client_address(peer, Some("not-an-ip"), 1), "10.0.0.9");
        assert_eq!(
            client_address(Some("[2001:db8:1:2:3:4:5:6]:443"), None, 0),
            "2001:db8:1:2::/64"
        );
        // The /64's /48, for the network bucket; IPv4 clients have none.
        let v6 = client_address(Some("[2001:db8:1:2:3:4:5:6]:443"), None, 0);
        assert_eq!(network_of(&v6).as_deref(), Some("2001:db8:1::/48"));
        let zeros = client_address(Some("[2001:db8::9]:443"), None, 0);
        assert_eq!(network_of(&zeros).as_deref(), Some("2001:db8:0::/48"));
        assert_eq!(network_of("1.2.3.4"), None);
        assert_eq!(network_of("unknown"), None);
        assert_eq!(network_of("a::/64"), None);
        assert_eq!(
            client_address(Some("[::ffff:1.2.3.4]:1"), None, 0),
            "1.2.3.4"
        );
        assert_eq!(client_address(None, None, 0), "unknown");
    }

    #[test]
    fn keys_come_over_tls_or_from_this_machine() {
        for trusted in [
            "https://issuer.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://localhost:3000/jwks",
            "http://[::1]:8080/jwks",
        ] {
            assert!(is_trusted_key_source(trusted), "{trusted}");
        }
        for untrusted in [
            "http://issuer.example/jwks",
            "http://10.0.0.5/jwks",
            "http://127.0.0.1.attacker.example/jwks",
            "http://localhost@attacker.example/jwks",
            "http://localhost\\@attacker.example/jwks",
            "http://localhost /jwks",
            "http://[::2]/jwks",
            "ftp://127.0.0.1/jwks",
            "https://",
            "issuer.example/jwks",
        ] {
            assert!(!is_trusted_key_source(untrusted), "{untrusted}");
        }
        let lookup = |name: &str| match name {
            "auth_mode" => Some("jwt".to_string()),
            "jwt_jwks_url" => Some("http://issuer.example/jwks".to_string()),
            _ => None,
        };
        let refused = IdentitySettings::from_lookup(&lookup)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("https://"), "{refused}");
    }

    #[test]
    fn settings_require_a_key_source_in_jwt_mode() {
        let lookup = |name: &str| match name {
            "auth_mode" => Some("jwt".to_string()),
            _ => None,
        };
        assert!(IdentitySettings::from_lookup(&lookup).is_err());
        let lookup = |name: &str| match name {
            "auth_mode" => Some("jwt".to_string()),
            "jwt_hs256_secret" => Some("s".to_string()),
            "trusted_proxy_hops" => Some("1".to_string()),
            _ => None,
        };
        let s = IdentitySettings::from_lookup(&lookup).unwrap();
        assert_eq!(s.mode, AuthMode::Jwt);
        assert_eq!(s.trusted_proxy_hops, 1);
        let none = IdentitySettings::from_lookup(&|_: &str| None).unwrap();
        assert_eq!(none.mode, AuthMode::None);
        assert!(none.jwt.is_none());
        let bad = |name: &str| (name == "auth_mode").then(|| "oauth".to_string());
        assert!(IdentitySettings::from_lookup(&bad).is_err());
    }
}
