//! Drives the rate-limiter component through its `chatbot:ratelimit/limiter`
//! export, as the query handler it is composed into does: one instance for
//! every call (Spin 4 reuses a WASIp3 instance), which keeps its own Redis
//! connection.

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::Store;

use crate::bindings::rate_limiter::exports::chatbot::ratelimit::limiter::{
    Bucket, Decision, Error, Scope,
};
use crate::bindings::rate_limiter::{RateLimiter, RateLimiterPre};
use crate::host::{Counts, HostState};
use crate::runtime::Library;

/// What a caller gives the limiter of its deadline in these tests.
pub const TIMEOUT_MS: u32 = 5_000;

pub struct LimiterUnderTest {
    library: Arc<Library>,
    pre: RateLimiterPre<HostState>,
    /// The one instance, made by the first call.
    instance: tokio::sync::Mutex<Option<(Store<HostState>, RateLimiter)>>,
}

impl LimiterUnderTest {
    /// Loads the built component with these limiter settings over `redis_address`.
    pub fn load(redis_address: &str, settings: &[(&str, &str)]) -> Result<Self> {
        let mut variables = BTreeMap::from([
            (names::REDIS_ADDRESS.to_string(), redis_address.to_string()),
            ("rate_limit_enabled".to_string(), "true".to_string()),
            ("rate_limit_requests".to_string(), "100".to_string()),
            ("rate_limit_window_seconds".to_string(), "60".to_string()),
            ("rate_limit_failure_policy".to_string(), "open".to_string()),
        ]);
        for (name, value) in settings {
            variables.insert(name.to_string(), value.to_string());
        }
        let allowed = vec![crate::origin_of(redis_address)];
        let path = crate::project_root().join("target/wasm32-wasip2/release/rate_limiter.wasm");
        let library = Arc::new(Library::load(&path, variables, &allowed)?);
        let pre = RateLimiterPre::new(library.instance_pre().clone())?;
        Ok(Self {
            library,
            pre,
            instance: tokio::sync::Mutex::new(None),
        })
    }

    /// One check of one session bucket, as one request would make it.
    pub async fn check(&self, key: &str, cost: u32) -> Result<Result<Decision, Error>> {
        self.check_buckets(&[session(key)], cost).await
    }

    /// One check of several buckets at once.
    pub async fn check_buckets(
        &self,
        buckets: &[Bucket],
        cost: u32,
    ) -> Result<Result<Decision, Error>> {
        let mut kept = self.instance.lock().await;
        if kept.is_none() {
            let mut store = self.library.new_store();
            let instance = self.pre.instantiate_async(&mut store).await?;
            *kept = Some((store, instance));
        }
        let (store, instance) = kept.as_mut().expect("made above");
        let guest = instance.chatbot_ratelimit_limiter();
        let buckets = buckets.to_vec();
        let decision = store
            .run_concurrent(async |accessor| {
                guest.call_check(accessor, buckets, cost, TIMEOUT_MS).await
            })
            .await??;
        Ok(decision)
    }

    pub fn counts(&self) -> Counts {
        self.library.env.counters.snapshot()
    }
}

/// A session bucket.
pub fn session(key: &str) -> Bucket {
    Bucket {
        scope: Scope::Session,
        key: key.to_string(),
    }
}

/// A bucket of any scope.
pub fn bucket(scope: Scope, key: &str) -> Bucket {
    Bucket {
        scope,
        key: key.to_string(),
    }
}
