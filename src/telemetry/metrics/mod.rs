//! The metrics: the registry of what may be recorded ([`registry`]), how a
//! request's samples are validated and stored in Redis in one script call
//! ([`recording`]), how a scrape's Redis data becomes Prometheus text
//! ([`rendering`]), and the `/health/metrics` summary ([`summary`]).
//!
//! An instance lives a few requests (at most 128 under Spin 4) and a
//! deployment has many replicas, so every counter and histogram bucket lives
//! in Redis hashes, shared by all of them. Labels take values only from closed
//! vocabularies (enums in [`registry`]), so no caller input (session ids,
//! questions) can become a label and blow up cardinality.

pub mod recording;
pub mod registry;
pub mod rendering;
pub mod summary;

pub use recording::{Record, Sample, SampleError};
pub use registry::*;
pub use rendering::{render, ActiveSessions, Snapshot, CONTENT_TYPE};
