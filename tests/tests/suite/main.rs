//! The harness's integration tests, as one binary: one link of wasmtime and
//! the rest, one Redis and one PostgreSQL for the run, and every test free to
//! run beside the others (each has its own Redis database and Postgres
//! database; see `chatbot_harness::services`). A module per area; run one with
//! `cargo test --test suite <module>::`.

mod async_model;
mod conversations;
mod deploy;
mod empty_reads;
mod footprint;
mod fuzz;
mod harness;
mod harness_p3;
mod health;
mod identity;
mod imports;
mod logs;
mod metrics;
mod openapi;
mod operator_numbers;
mod ops;
mod promises;
mod query;
mod rate_limit_flow;
mod rate_limiter;
mod semantic_cache;
mod spin;
mod streaming;
