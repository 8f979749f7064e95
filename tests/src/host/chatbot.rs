//! Host stand-ins for the project's own interfaces, so a component that
//! imports the limiter or the recorder can be tested alone (the real ones are
//! components of their own, composed in by `compose.rs` for end-to-end tests).

use std::sync::Mutex;

use wasmtime::component::Accessor;

use super::{HostState, Spin4};
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
    /// What the caller gave the limiter of its deadline.
    pub timeout_ms: u32,
}

/// One batch the component handed the recorder.
#[derive(Debug, Clone)]
pub struct RecorderCall {
    pub batch: Batch,
    /// What the caller gave the recorder of its deadline.
    pub timeout_ms: u32,
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

fn chatbot_imports<T>(accessor: &Accessor<T, Spin4>) -> std::sync::Arc<ChatbotImports> {
    accessor.with(|mut access| {
        access
            .get()
            .env
            .chatbot_imports
            .clone()
            .expect("linker only adds the chatbot interfaces when stand-ins are configured")
    })
}

impl limiter::Host for HostState {}

impl limiter::HostWithStore for Spin4 {
    async fn check<T: Send>(
        accessor: &Accessor<T, Self>,
        buckets: Vec<Bucket>,
        cost: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Decision, limiter::Error>> {
        let imports = chatbot_imports(accessor);
        imports.limiter_calls.lock().unwrap().push(LimiterCall {
            buckets: buckets.clone(),
            cost,
            timeout_ms,
        });
        Ok((imports.limiter)(&buckets, cost))
    }
}

impl recorder::Host for HostState {}

impl recorder::HostWithStore for Spin4 {
    async fn record_batch<T: Send>(
        accessor: &Accessor<T, Self>,
        batch: Batch,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), recorder::Error>> {
        let imports = chatbot_imports(accessor);
        let outcome = (imports.recorder)(&batch);
        imports
            .recorder_calls
            .lock()
            .unwrap()
            .push(RecorderCall { batch, timeout_ms });
        Ok(outcome)
    }
}
