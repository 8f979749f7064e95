//! Drives the rate-limiter component through its `chatbot:ratelimit/limiter`
//! export, lending it a Redis connection the way the query handler does.

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::Resource;

use crate::bindings::fermyon::spin2_0_0::redis::HostConnection;
use crate::bindings::rate_limiter::exports::chatbot::ratelimit::limiter::{
    Bucket, Decision, Error, Scope,
};
use crate::bindings::rate_limiter::RateLimiterPre;
use crate::host::Counts;
use crate::runtime::Library;

pub struct LimiterUnderTest {
    library: Arc<Library>,
    pre: RateLimiterPre<crate::host::HostState>,
    redis_address: String,
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
            redis_address: redis_address.to_string(),
        })
    }

    /// One check of one session bucket, as one request would make it: a fresh
    /// instance, a fresh connection opened through the host and lent to the limiter.
    pub async fn check(&self, key: &str, cost: u32) -> Result<Result<Decision, Error>> {
        self.check_after_open(&[session(key)], cost, || {}).await
    }

    /// One check of several buckets at once.
    pub async fn check_buckets(
        &self,
        buckets: &[Bucket],
        cost: u32,
    ) -> Result<Result<Decision, Error>> {
        self.check_after_open(buckets, cost, || {}).await
    }

    /// [`Self::check`], running `after_open` once the lent connection is open
    /// (e.g. to stop the server under it).
    pub async fn check_after_open(
        &self,
        buckets: &[Bucket],
        cost: u32,
        after_open: impl FnOnce(),
    ) -> Result<Result<Decision, Error>> {
        let mut store = self.library.new_store();
        let conn: Resource<_> = match store.data_mut().open(self.redis_address.clone()).await? {
            Ok(conn) => conn,
            Err(e) => anyhow::bail!("the host could not open Redis: {e:?}"),
        };
        after_open();
        let borrowed = Resource::new_borrow(conn.rep());
        let instance = self.pre.instantiate_async(&mut store).await?;
        let decision = instance
            .chatbot_ratelimit_limiter()
            .call_check(&mut store, borrowed, buckets, cost)
            .await?;
        Ok(decision)
    }

    /// A check where the limiter opens its own connection.
    pub async fn check_standalone(&self, key: &str, cost: u32) -> Result<Result<Decision, Error>> {
        let mut store = self.library.new_store();
        let instance = self.pre.instantiate_async(&mut store).await?;
        instance
            .chatbot_ratelimit_limiter()
            .call_check_standalone(&mut store, &[session(key)], cost)
            .await
            .map_err(anyhow::Error::from)
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
