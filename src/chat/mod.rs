//! A question's way through retrieval-augmented generation, as pure
//! functions: the request and its prompt ([`query`]), the server-sent events
//! of a streamed answer ([`stream`]), document ingestion ([`ingest`]), and
//! the wire formats of OpenAI and Qdrant ([`upstream`]), and the earlier
//! turns a follow-up is answered with ([`conversation`]).

pub mod conversation;
pub mod ingest;
pub mod query;
pub mod stream;
pub mod upstream;
