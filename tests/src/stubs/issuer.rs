//! A local identity provider for the tests: signs JWTs with the fixture keys
//! in `tests/fixtures/jwt` (HS256 with a shared secret, RS256, ES256) and
//! serves the public halves as a JWKS at `/.well-known/jwks.json`, whose keys
//! can be rotated while the app runs. Counts the key-set fetches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::StubServer;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "chatbot";
pub const HS256_SECRET: &str = "test-hs256-secret-of-thirty-two-bytes!";

/// The fixture keys a test can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// HS256 with [`HS256_SECRET`].
    Hs256,
    /// RS256, key id `rsa-a`.
    RsaA,
    /// RS256, key id `rsa-b` (for rotation).
    RsaB,
    /// ES256 (P-256), key id `ec-a`.
    EcA,
}

impl SigningKey {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::RsaA | Self::RsaB => Algorithm::RS256,
            Self::EcA => Algorithm::ES256,
        }
    }

    pub fn key_id(self) -> Option<&'static str> {
        match self {
            Self::Hs256 => None,
            Self::RsaA => Some("rsa-a"),
            Self::RsaB => Some("rsa-b"),
            Self::EcA => Some("ec-a"),
        }
    }

    fn pem(self) -> Option<&'static [u8]> {
        match self {
            Self::Hs256 => None,
            Self::RsaA => Some(include_bytes!("../../fixtures/jwt/rsa-a.pem")),
            Self::RsaB => Some(include_bytes!("../../fixtures/jwt/rsa-b.pem")),
            Self::EcA => Some(include_bytes!("../../fixtures/jwt/ec-a.pem")),
        }
    }

    fn encoding_key(self) -> EncodingKey {
        match (self, self.pem()) {
            (Self::EcA, Some(pem)) => EncodingKey::from_ec_pem(pem).expect("fixture EC key"),
            (_, Some(pem)) => EncodingKey::from_rsa_pem(pem).expect("fixture RSA key"),
            (_, None) => EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        }
    }

    /// The public JWK of an asymmetric key, with its key id.
    pub fn public_jwk(self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), self.algorithm())
            .expect("a JWK for the fixture key");
        jwk.common.key_id = self.key_id().map(str::to_string);
        jwk
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims that pass every check: `sub`, `iss`, `aud`, an `exp` ten minutes out.
pub fn claims(subject: &str) -> Value {
    json!({"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600})
}

/// A token for `claims`, signed with `key` (its key id in the header).
pub fn sign(key: SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm());
    header.kid = key.key_id().map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key.encoding_key()).expect("signing a test token")
}

/// A good token for `subject`.
pub fn token(key: SigningKey, subject: &str) -> String {
    sign(key, &claims(subject))
}

struct IssuerState {
    keys: Mutex<Vec<SigningKey>>,
    fetches: AtomicU64,
    down: AtomicBool,
}

/// The JWKS endpoint; stops when dropped.
pub struct IssuerStub {
    server: StubServer,
    state: Arc<IssuerState>,
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "identity provider down").into_response();
    }
    let keys = state
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.public_jwk())
        .collect();
    Json(JwkSet { keys }).into_response()
}

impl IssuerStub {
    pub async fn start(keys: &[SigningKey]) -> anyhow::Result<Self> {
        let state = Arc::new(IssuerState {
            keys: Mutex::new(keys.to_vec()),
            fetches: AtomicU64::new(0),
            down: AtomicBool::new(false),
        });
        let router = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(state.clone());
        Ok(Self {
            server: StubServer::serve(router).await?,
            state,
        })
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.origin())
    }

    /// Publishes these keys from now on (a rotation).
    pub fn publish(&self, keys: &[SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.to_vec();
    }

    /// Answers 503 to every fetch from now on (`true`), or serves the keys again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many times the key set was fetched (or a fetch was tried while down).
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}
