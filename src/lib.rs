//! Pure logic of the RAG chatbot backend.
//!
//! Nothing here touches spin-sdk, wasmtime or the network: the components in
//! `components/` parse a request, call into this crate, do the host I/O and
//! answer. Everything here is unit-tested natively.

pub mod api;
pub mod auth;
pub mod codec;
pub mod config;
pub mod health;
pub mod history;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod query;
pub mod ratelimit;
pub mod sql;
pub mod upstream;
