//! The HTTP contract every component keeps: the one error type and its JSON
//! body ([`api`]), the route tables ([`routes`]), the admin token ([`auth`]).

pub mod api;
pub mod auth;
pub mod routes;
