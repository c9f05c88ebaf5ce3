//! The C ABI of libp99, and nothing else.
//!
//! One file per C type, plus the shared machinery every entry point uses: `boundary` (the
//! handle trait, the pointer-argument forms with their safety argument, panic catching,
//! `p99_last_error_message`, struct growth), `status` (the one error type C sees and the
//! conversions into it) and `version`. Logic belongs in the safe cores; functions here check
//! pointers, convert types and call in.

#![allow(non_camel_case_types)]

pub mod boundary;
pub mod cache;
pub mod engine;
pub mod status;
pub mod tls;
pub mod version;
pub mod xdp;
