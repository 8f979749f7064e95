//! What an operator sees: JSON log lines ([`log`]), Prometheus metrics kept
//! in Redis ([`metrics`]), the audit logs ([`audit`]), health reports ([`health`]).

pub mod audit;
pub mod health;
pub mod log;
pub mod metrics;
