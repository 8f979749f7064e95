//! Who is asking, on the host side: the client address from Spin's headers,
//! whether the caller holds the admin token, and the end user of a bearer JWT
//! (verified by `chatbot_core::limits::identity`), with the issuer's key set cached in
//! Redis, shared by every replica, and in the instance, for the requests that
//! cannot ask Redis.

use std::cell::RefCell;
use std::time::Duration;

use chatbot_core::config::ConfigError;
use chatbot_core::http::api::ApiError;
use chatbot_core::limits::identity::{
    self, AuthError, IdentitySettings, InstanceKeySets, JwtSettings,
};
use chatbot_core::redis::keys;
use jsonwebtoken::jwk::JwkSet;

use crate::redis_script::{execute, Conn};
use crate::StoreError;
use chatbot_core::redis::script::{bytes_at, Arg, Value};

const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// The key sets this instance fetched or read from Redis, and its own
    /// refetch markers: what a request that cannot ask Redis verifies with
    /// (an instance serves many requests; see `InstanceKeySets`).
    static INSTANCE: RefCell<InstanceKeySets> = RefCell::default();
}

/// The instance's copy of `url`'s key set, fresh or not.
fn instance_copy(url: &str, jwt: &JwtSettings) -> Option<(u64, JwkSet)> {
    INSTANCE.with(|kept| {
        kept.borrow()
            .copy(url, crate::now_epoch_seconds(), jwt.jwks_cache_seconds)
    })
}

fn keep_in_instance(url: &str, fetched_at: u64, keys: &JwkSet) {
    INSTANCE.with(|kept| kept.borrow_mut().keep(url, fetched_at, keys));
}

pub async fn settings() -> Result<std::rc::Rc<IdentitySettings>, ConfigError> {
    crate::settings::identity().await
}

fn header<'a, B>(req: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The address the per-address bucket and the security log use.
pub fn client_address<B>(req: &http::Request<B>, settings: &IdentitySettings) -> String {
    identity::client_address(
        header(req, "spin-client-addr"),
        header(req, "x-forwarded-for"),
        settings.trusted_proxy_hops,
    )
}

/// Whether the request carries the admin bearer token (constant-time compare;
/// no token configured means nobody is admin).
pub async fn is_admin<B>(req: &http::Request<B>) -> bool {
    // Unreadable, no token is known, and nobody is admin.
    let Ok(variables) = crate::settings::variables().await else {
        return false;
    };
    let token = chatbot_core::config::settings::admin_token(&|name: &str| variables.lookup(name));
    chatbot_core::http::auth::bearer_matches(header(req, "authorization"), token.expose())
}

/// Why a request has no user.
#[derive(Debug)]
pub enum AuthFailure {
    /// The token is missing or bad: 401.
    Token(AuthError),
    /// The issuer's keys could not be fetched: 503 (the token may be fine).
    KeysUnavailable(String),
}

impl AuthFailure {
    /// The answer: 401 with the reason, or 503 when the keys are out of reach.
    pub fn api_error(&self) -> ApiError {
        match self {
            Self::Token(why) => ApiError::unauthorized(why.to_string()),
            Self::KeysUnavailable(_) => {
                ApiError::unavailable("the identity provider's signing keys could not be fetched")
            }
        }
    }
}

/// The verified `sub` of the request's bearer JWT.
pub async fn authenticate<B>(
    req: &http::Request<B>,
    jwt: &JwtSettings,
    conn: Option<&Conn>,
) -> Result<String, AuthFailure> {
    let token = identity::bearer_token(header(req, "authorization")).map_err(AuthFailure::Token)?;
    let token_header = identity::read_header(token, jwt).map_err(AuthFailure::Token)?;
    let Some(url) = jwt
        .jwks_url
        .as_deref()
        .filter(|_| token_header.needs_jwks())
    else {
        return identity::verify(token, jwt, None).map_err(AuthFailure::Token);
    };
    // The copy Redis holds, shared by every replica; or, when Redis cannot
    // be asked (down, or failing on it), the instance's own, and Redis is not
    // asked again for this token.
    let (stored, conn) = match conn {
        Some(c) => match stored_jwks(c, url).await {
            Ok(stored) => (stored, Some(c)),
            Err(e) => {
                crate::log::warn("jwks_cache_read_failed", crate::log::Dependency::Redis, &e);
                (instance_copy(url, jwt), None)
            }
        },
        None => (instance_copy(url, jwt), None),
    };
    if let Some((fetched_at, keys)) = &stored {
        keep_in_instance(url, *fetched_at, keys);
    }
    let (jwks, from_cache) = match stored {
        Some((fetched_at, keys))
            if identity::key_set_is_fresh(
                fetched_at,
                crate::now_epoch_seconds(),
                jwt.jwks_cache_seconds,
            ) =>
        {
            (keys, true)
        }
        // Expired: one request refreshes it (at most once per 30 s); the
        // others, and every request while the issuer is down, verify with the
        // last good copy instead of waiting on or failing with the issuer.
        Some((_, last_good)) => match claimed(conn, &keys::jwks_refresh(url)).await {
            true => match fetch_jwks(url, jwt, conn).await {
                Ok(fresh) => (fresh, false),
                Err(_) => {
                    crate::log::warn(
                        "jwks_last_good_copy_used",
                        crate::log::Dependency::Jwks,
                        "the key set could not be refreshed; verifying with the last good copy",
                    );
                    (last_good, true)
                }
            },
            false => (last_good, true),
        },
        None => (fetch_jwks(url, jwt, conn).await?, false),
    };
    match identity::verify(token, jwt, Some(&jwks)) {
        // Keys rotate: a new kid may be in a fresher copy. Refetch once, rarely.
        Err(AuthError::UnknownKey)
            if from_cache && claimed(conn, &keys::jwks_refetch(url)).await =>
        {
            let fresh = fetch_jwks(url, jwt, conn).await?;
            identity::verify(token, jwt, Some(&fresh)).map_err(AuthFailure::Token)
        }
        other => other.map_err(AuthFailure::Token),
    }
}

/// Whether this caller takes the marker `key` ([`claim`]); without Redis,
/// the instance's own marker (once per 30 s per instance).
async fn claimed(conn: Option<&Conn>, key: &str) -> bool {
    match conn {
        Some(conn) => claim(conn, key).await,
        None => INSTANCE.with(|kept| kept.borrow_mut().claim(key, crate::now_epoch_seconds())),
    }
}

/// The stored copy and when it was fetched, fresh or not (`None`: Redis
/// holds none, or one of an older format).
async fn stored_jwks(conn: &Conn, url: &str) -> Result<Option<(u64, JwkSet)>, StoreError> {
    let reply = execute(conn, "GET", vec![Arg::bytes(keys::jwks(url))]).await?;
    Ok(bytes_at(&reply, 0).and_then(identity::decode_stored_key_set))
}

/// Takes the marker `key` for 30 s: true for the one caller that set it.
async fn claim(conn: &Conn, key: &str) -> bool {
    let reply = execute(
        conn,
        "SET",
        vec![
            Arg::bytes(key),
            Arg::bytes("1"),
            Arg::bytes("NX"),
            Arg::bytes("EX"),
            Arg::Int(identity::KEY_SET_REFETCH_SECONDS as i64),
        ],
    )
    .await;
    // Redis answers nil when the marker is already set.
    matches!(reply, Ok(values) if !values.is_empty() && !matches!(values[0], Value::Nil))
}

async fn fetch_jwks(
    url: &str,
    jwt: &JwtSettings,
    conn: Option<&Conn>,
) -> Result<JwkSet, AuthFailure> {
    let unavailable = |why: String| {
        crate::log::write(
            crate::log::Level::Error,
            "jwks_unavailable",
            crate::log::Dependency::Jwks,
            &why,
            &[("url", url)],
        );
        AuthFailure::KeysUnavailable(why)
    };
    let response = crate::http::request(
        "GET",
        url,
        &[("accept", "application/json")],
        None,
        crate::bounded(JWKS_TIMEOUT),
    )
    .await
    .map_err(|e| unavailable(format!("{e:?}")))?;
    if response.status != 200 {
        return Err(unavailable(format!("answered {}", response.status)));
    }
    if response.body.len() > identity::MAX_KEY_SET_BYTES {
        return Err(unavailable(format!(
            "the key set is larger than {} KiB",
            identity::MAX_KEY_SET_BYTES >> 10
        )));
    }
    let jwks: JwkSet = serde_json::from_slice(&response.body)
        .map_err(|e| unavailable(format!("not a JWK set: {e}")))?;
    let fetched_at = crate::now_epoch_seconds();
    keep_in_instance(url, fetched_at, &jwks);
    if let Some(conn) = conn {
        let stored = execute(
            conn,
            "SET",
            vec![
                Arg::bytes(keys::jwks(url)),
                Arg::Bytes(identity::encode_stored_key_set(fetched_at, &response.body)),
                Arg::bytes("EX"),
                Arg::Int((jwt.jwks_cache_seconds + identity::LAST_GOOD_KEY_SET_SECONDS) as i64),
            ],
        )
        .await;
        if let Err(e) = stored {
            crate::log::warn("jwks_cache_store_failed", crate::log::Dependency::Redis, &e);
        }
    }
    Ok(jwks)
}
