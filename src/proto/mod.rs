//! Protocol code used by the Rust servers.

pub mod ping;
