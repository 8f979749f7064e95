//! The query handler's imports: the rate limiter and the metrics recorder
//! (components of their own, composed by `[dependencies]`), in their WIT terms.

use chatbot_core::limits::ratelimit;
use chatbot_core::telemetry::metrics::{LimiterOutcome, Sample};

spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../wit/ratelimit.wit", "../../wit/metrics.wit", "../../wit/app.wit"],
    world: "chatbot:app/query-handler",
    generate_all,
});

pub use chatbot::metrics::recorder;
pub use chatbot::ratelimit::limiter;

/// What is left of the request's deadline, in the limiter's and the recorder's terms.
pub fn timeout_ms() -> u32 {
    chatbot_spin::time_left().as_millis().min(u32::MAX as u128) as u32
}

/// Hands a request's samples to the recorder (a failure is logged, never
/// fails the request).
pub async fn record(samples: Vec<Sample>, seen_session: Option<String>) {
    let batch = recorder::Batch {
        samples: samples
            .into_iter()
            .map(|s| recorder::Sample {
                name: s.name,
                labels: s.labels,
                value: s.value,
            })
            .collect(),
        seen_session,
    };
    if let Err(e) = recorder::record_batch(batch, timeout_ms()).await {
        chatbot_spin::log::warn(
            "metrics_record_failed",
            chatbot_spin::log::Dependency::Redis,
            format_args!("{e:?}"),
        );
    }
}

impl From<limiter::Scope> for ratelimit::Scope {
    fn from(scope: limiter::Scope) -> Self {
        match scope {
            limiter::Scope::ClientAddress => Self::ClientAddress,
            limiter::Scope::ClientNetwork => Self::ClientNetwork,
            limiter::Scope::Session => Self::Session,
            limiter::Scope::User => Self::User,
        }
    }
}

impl From<limiter::Outcome> for LimiterOutcome {
    fn from(outcome: limiter::Outcome) -> Self {
        match outcome {
            limiter::Outcome::Enforced => Self::Enforced,
            limiter::Outcome::Disabled => Self::Disabled,
            limiter::Outcome::FailedOpen => Self::FailedOpen,
            limiter::Outcome::FailedClosed => Self::FailedClosed,
        }
    }
}

impl From<&limiter::Decision> for ratelimit::Decision {
    /// The limiter's decision in the terms the headers are written from.
    fn from(decision: &limiter::Decision) -> Self {
        Self {
            allowed: decision.allowed,
            limit: decision.limit,
            remaining: decision.remaining,
            reset_at_epoch_seconds: decision.reset_at_epoch_seconds,
            retry_after_seconds: decision.retry_after_seconds,
        }
    }
}
