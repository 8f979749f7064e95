//! Who is asking and how much they may ask: the end user and the client
//! address ([`identity`]), token buckets ([`ratelimit`]), and the user's
//! gate in Redis: session ownership, concurrent sessions, the daily token
//! budget ([`sessions`]).

pub mod identity;
pub mod ratelimit;
pub mod sessions;
