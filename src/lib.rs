//! p99: Rust modules for C servers behind a stable C ABI.
//!
//! The safe cores live in their own modules; `ffi` is the only place that speaks C.

pub mod cache;
pub mod engine;
pub mod ffi;
pub mod proto;
/// AF_XDP sockets (the C API is in `ffi::xdp`).
///
/// cbindgen:ignore
pub mod xdp;
