//! Gives the shared library its soname. While the major version is 0, every minor version may
//! break the ABI, so the soname carries the minor: libp99.so.0.<minor>; from 1.0 on, the major
//! alone: libp99.so.<major>.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let soname =
        if major == "0" { format!("libp99.so.0.{minor}") } else { format!("libp99.so.{major}") };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rerun-if-changed=build.rs");
}
