//! Redis as the core sees it: every key ([`keys`]), the digests keys are made
//! of ([`digest`]), and [`script::Script`], the one typed protocol every Lua
//! script follows (its source, keys, arguments and reply parser).

pub mod digest;
pub mod families;
pub mod keys;
pub mod script;
