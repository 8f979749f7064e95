//! Host stand-ins for the project's own interfaces, so a component that
//! imports the limiter or the recorder can be tested alone (the real ones are
//! components of their own, composed in by `compose.rs` for end-to-end tests).

use std::sync::Mutex;

use wasmtime::component::Resource;

use super::redis::RedisConnection;
use super::HostState;
use crate::bindings::chatbot::chatbot::metrics::recorder::{self, Batch};
use crate::bindings::chatbot::chatbot::ratelimit::limiter::{self, Bucket, Decision};

pub use limiter::{
    Bucket as LimiterBucket, Decision as LimiterDecision, Error as LimiterError,
    Outcome as LimiterOutcome, Scope as LimiterScope,
};
pub use recorder::{Batch as RecorderBatch, Error as RecorderError, Sample as RecorderSample};

type LimiterFn = dyn Fn(&[Bucket], u32) -> Result<Decision, limiter::Error> + Send + Sync;
type RecorderFn = dyn Fn(&Batch) -> Result<(), recorder::Error> + Send + Sync;

/// One call the component made to the limiter.
#[derive(Debug, Clone)]
pub struct LimiterCall {
    pub buckets: Vec<Bucket>,
    pub cost: u32,
    /// Whether the call lent a connection, and it answered `PING` (i.e. was live).
    pub lent_live_connection: bool,
}

/// One batch the component handed the recorder.
#[derive(Debug, Clone)]
pub struct RecorderCall {
    pub batch: Batch,
    pub lent_live_connection: bool,
}

/// Scripted limiter and recorder behaviour, and a log of every call.
pub struct ChatbotImports {
    limiter: Box<LimiterFn>,
    recorder: Box<RecorderFn>,
    pub limiter_calls: Mutex<Vec<LimiterCall>>,
    pub recorder_calls: Mutex<Vec<RecorderCall>>,
}

impl ChatbotImports {
    pub fn new(
        limiter: impl Fn(&[Bucket], u32) -> Result<Decision, limiter::Error> + Send + Sync + 'static,
        recorder: impl Fn(&Batch) -> Result<(), recorder::Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            limiter: Box::new(limiter),
            recorder: Box::new(recorder),
            limiter_calls: Mutex::default(),
            recorder_calls: Mutex::default(),
        }
    }

    /// A limiter that admits everything (limit 100) and a recorder that accepts everything.
    pub fn permissive() -> Self {
        Self::new(|_, _| Ok(allowed(100, 99)), |_| Ok(()))
    }

    pub fn limiter_calls(&self) -> Vec<LimiterCall> {
        self.limiter_calls.lock().unwrap().clone()
    }

    pub fn recorder_calls(&self) -> Vec<RecorderCall> {
        self.recorder_calls.lock().unwrap().clone()
    }
}

/// An admitting decision with the given limit and remaining tokens.
pub fn allowed(limit: u32, remaining: u32) -> Decision {
    Decision {
        allowed: true,
        limit,
        remaining,
        reset_at_epoch_seconds: 0,
        retry_after_seconds: 0,
        outcome: limiter::Outcome::Enforced,
        scope: limiter::Scope::Session,
    }
}

impl HostState {
    fn chatbot_imports(&self) -> &ChatbotImports {
        self.env
            .chatbot_imports
            .as_deref()
            .expect("linker only adds the chatbot interfaces when stand-ins are configured")
    }

    /// Whether a lent connection is a live one. Takes the connection out first:
    /// the future must not hold `&self` across the await (it must be `Send`).
    fn lent_connection_is_live(
        &self,
        conn: &Resource<RedisConnection>,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let connection = self.redis_connection(conn);
        async move {
            match connection {
                Some(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                None => false,
            }
        }
    }
}

impl limiter::Host for HostState {
    async fn check(
        &mut self,
        conn: Resource<RedisConnection>,
        buckets: Vec<Bucket>,
        cost: u32,
    ) -> Result<Decision, limiter::Error> {
        let live = self.lent_connection_is_live(&conn).await;
        let imports = self.chatbot_imports();
        imports.limiter_calls.lock().unwrap().push(LimiterCall {
            buckets: buckets.clone(),
            cost,
            lent_live_connection: live,
        });
        (imports.limiter)(&buckets, cost)
    }

    async fn check_standalone(
        &mut self,
        buckets: Vec<Bucket>,
        cost: u32,
    ) -> Result<Decision, limiter::Error> {
        let imports = self.chatbot_imports();
        imports.limiter_calls.lock().unwrap().push(LimiterCall {
            buckets: buckets.clone(),
            cost,
            lent_live_connection: false,
        });
        (imports.limiter)(&buckets, cost)
    }
}

impl recorder::Host for HostState {
    async fn record_batch(
        &mut self,
        conn: Resource<RedisConnection>,
        batch: Batch,
    ) -> Result<(), recorder::Error> {
        let live = self.lent_connection_is_live(&conn).await;
        let imports = self.chatbot_imports();
        let outcome = (imports.recorder)(&batch);
        imports.recorder_calls.lock().unwrap().push(RecorderCall {
            batch,
            lent_live_connection: live,
        });
        outcome
    }

    async fn record_batch_standalone(&mut self, batch: Batch) -> Result<(), recorder::Error> {
        let imports = self.chatbot_imports();
        let outcome = (imports.recorder)(&batch);
        imports.recorder_calls.lock().unwrap().push(RecorderCall {
            batch,
            lent_live_connection: false,
        });
        outcome
    }
}
