//! The library version, at compile time (header macros) and at run time.

use std::ffi::c_char;

/// Major version of the header in use. Keep equal to Cargo.toml (checked by tests).
pub const P99_VERSION_MAJOR: u32 = 0;
/// Minor version of the header in use. While the major version is 0, a new minor version may
/// break the ABI, and the soname (`libp99.so.0.<minor>`) changes with it.
pub const P99_VERSION_MINOR: u32 = 2;
/// Patch version of the header in use.
pub const P99_VERSION_PATCH: u32 = 0;
/// The version as one comparable number: major * 1000000 + minor * 1000 + patch.
pub const P99_VERSION_NUMBER: u32 =
    P99_VERSION_MAJOR * 1_000_000 + P99_VERSION_MINOR * 1_000 + P99_VERSION_PATCH;

/// Returns the version of the loaded library as a static NUL-terminated string
/// "MAJOR.MINOR.PATCH". Compare it with the `P99_VERSION_*` macros to detect a header/library
/// mismatch. Never NULL; owned by libp99; thread-safe.
#[no_mangle]
pub extern "C" fn p99_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Returns the version of the loaded library as `P99_VERSION_NUMBER` would encode it.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn p99_version_number() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 1_000_000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 1_000
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_match_cargo_toml() {
        assert_eq!(P99_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(P99_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(P99_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        assert_eq!(p99_version_number(), P99_VERSION_NUMBER);
    }
}
