//! What Redis remembers so that a question is answered once: the query
//! cache's scripts ([`answers`]), embeddings stored compactly ([`codec`]),
//! what an invalidation clears ([`invalidation`]), decaying rankings of
//! questions and rate-limited sessions ([`ranking`]), and the index of
//! answered questions the semantic cache searches ([`semantic`]).

pub mod answers;
pub mod codec;
pub mod invalidation;
pub mod ranking;
pub mod semantic;
