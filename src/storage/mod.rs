//! Postgres: the rule every statement keeps ([`sql`]), the conversation
//! history's statements and paging ([`history`]), retention ([`retention`]).

pub mod history;
pub mod retention;
pub mod sql;
