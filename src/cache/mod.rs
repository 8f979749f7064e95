//! What Redis remembers so that a question is answered once: the query
//! cache's scripts ([`answers`]), embeddings stored compactly ([`codec`]),
//! what an invalidation clears ([`invalidation`]), and decaying rankings of
//! questions and rate-limited sessions ([`ranking`]).

pub mod answers;
pub mod codec;
pub mod invalidation;
pub mod ranking;
