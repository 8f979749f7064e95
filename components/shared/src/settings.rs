//! Spin variables, read through the core's parsers of the settings
//! (`chatbot_core::config::settings`), once per instance: Spin 4 reuses an instance
//! for many requests, and a changed variable reaches the next instance
//! (instances live at most 128 requests, or 1 s idle, by Spin's defaults).
//! A setting that does not parse, or a variable the host failed to read, is
//! read again by the next request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use chatbot_core::config::ConfigError;
use spin_sdk::variables;

pub use chatbot_core::config::settings::{LimiterSettings, PipelineSettings, SessionLimits};

/// Every variable a component may read, read once: the core's parsers take
/// a synchronous lookup, so the values are fetched first.
#[derive(Default)]
pub struct Variables(HashMap<&'static str, Option<String>>);

impl Variables {
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned().flatten()
    }
}

/// Reads every variable in `names`, all at once (one host call each). A
/// variable the component does not declare is unset; one the host failed to
/// read fails the whole read, which is then not kept.
async fn read(names: &[&'static str]) -> Result<Variables, ConfigError> {
    let values = futures::future::join_all(names.iter().map(variables::get)).await;
    let mut read = HashMap::with_capacity(names.len());
    for (name, value) in names.iter().copied().zip(values) {
        let value = match value {
            Ok(value) => Some(value),
            Err(variables::Error::Undefined(_) | variables::Error::InvalidName(_)) => None,
            Err(variables::Error::Provider(reason) | variables::Error::Other(reason)) => {
                return Err(ConfigError::Unreadable {
                    name: name.to_string(),
                    reason,
                })
            }
        };
        read.insert(name, value);
    }
    Ok(Variables(read))
}

thread_local! {
    static VARIABLES: RefCell<Option<Rc<Variables>>> = const { RefCell::new(None) };
}

/// The instance's variables, read by its first request whose read succeeds.
pub async fn variables() -> Result<Rc<Variables>, ConfigError> {
    if let Some(known) = VARIABLES.with(|v| v.borrow().clone()) {
        return Ok(known);
    }
    let read = Rc::new(read(chatbot_core::config::names::ALL).await?);
    VARIABLES.with(|v| *v.borrow_mut() = Some(read.clone()));
    Ok(read)
}

/// A parsed setting, kept for the instance once it parses.
macro_rules! per_instance {
    ($name:ident, $ty:ty, $parse:expr) => {
        pub async fn $name() -> Result<Rc<$ty>, ConfigError> {
            thread_local! {
                static PARSED: RefCell<Option<Rc<$ty>>> = const { RefCell::new(None) };
            }
            if let Some(parsed) = PARSED.with(|p| p.borrow().clone()) {
                return Ok(parsed);
            }
            let variables = variables().await?;
            let lookup = |name: &str| variables.lookup(name);
            let parsed: Rc<$ty> = Rc::new($parse(&lookup)?);
            PARSED.with(|p| *p.borrow_mut() = Some(parsed.clone()));
            Ok(parsed)
        }
    };
}

per_instance!(pipeline, PipelineSettings, PipelineSettings::from_lookup);
per_instance!(session_limits, SessionLimits, SessionLimits::from_lookup);
per_instance!(limiter, LimiterSettings, LimiterSettings::from_lookup);
per_instance!(
    identity,
    chatbot_core::limits::identity::IdentitySettings,
    chatbot_core::limits::identity::IdentitySettings::from_lookup
);

pub async fn redis_address() -> Result<String, ConfigError> {
    let variables = variables().await?;
    chatbot_core::config::settings::redis_address(&|name: &str| variables.lookup(name))
}

pub async fn postgres_address() -> Result<String, ConfigError> {
    let variables = variables().await?;
    chatbot_core::config::settings::postgres_address(&|name: &str| variables.lookup(name))
}

/// The instance's Redis connection, at the configured address.
pub async fn open_redis() -> Result<crate::redis_script::Conn, crate::StoreError> {
    let address = redis_address()
        .await
        .map_err(|e| crate::StoreError::Redis(e.to_string()))?;
    crate::redis_script::connect(&address).await
}
