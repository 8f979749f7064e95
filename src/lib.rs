//! Pure logic of the RAG chatbot backend.
//!
//! Nothing here touches spin-sdk, wasmtime or the network: the components in
//! `components/` parse a request, call into this crate, do the host I/O and
//! answer. Everything here is unit-tested natively.

// The common layer: what every feature uses.
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod digest;
pub mod keys;
pub mod log;
pub mod sql;

// Features.
pub mod codec;
pub mod health;
pub mod history;
pub mod identity;
pub mod ingest;
pub mod invalidation;
pub mod metrics;
pub mod query;
pub mod ranking;
pub mod ratelimit;
pub mod retention;
pub mod routes;
pub mod sessions;
pub mod settings;
pub mod stream;
pub mod upstream;
