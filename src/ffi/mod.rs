//! The C ABI of libp99, and nothing else.
//!
//! One file per C type, plus the shared machinery every entry point uses: `status` (the one
//! error type C sees), `boundary` (NULL checks and panic catching in one place) and `version`.
//! Logic belongs in the safe cores; functions here check pointers, convert types and call in.

#![allow(non_camel_case_types)]

pub mod boundary;
pub mod cache;
pub mod status;
pub mod version;
pub mod engine;
pub mod tls;
pub mod xdp;
