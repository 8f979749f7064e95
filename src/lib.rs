//! Pure logic of the RAG chatbot backend.
//!
//! Nothing here touches spin-sdk, wasmtime or the network: the components in
//! `components/` parse a request, call into this crate, do the host I/O and
//! answer. Everything here is unit-tested natively.
//!
//! One folder per domain, each opening with what it holds:
//! - [`http`]: the HTTP contract (errors, routes, ids, the admin token);
//! - [`chat`]: the question's way through RAG (validation, prompt,
//!   citations, streamed events, ingestion, OpenAI's and Qdrant's wire formats);
//! - [`cache`]: the query and embedding caches, invalidation, rankings;
//! - [`limits`]: who is asking and how much they may ask (identity, rate
//!   limits, the user's gate and budget);
//! - [`storage`]: Postgres statements (history, retention);
//! - [`telemetry`]: logs, metrics, the audit logs, health reports;
//! - [`redis`]: every key, and the one typed protocol every Lua script follows;
//! - [`config`]: Spin variable names and the settings parsed from them.

pub mod cache;
pub mod chat;
pub mod config;
pub mod http;
pub mod limits;
pub mod redis;
pub mod storage;
pub mod telemetry;
