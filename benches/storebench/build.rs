//! Compiles the C harness once per store (each with its own symbol prefix, see rename.h) and
//! binds storage.h and harness.h with bindgen, per store.
//!
//!   slab  c-examples/mcserver/storage_slab.c (always; the build fails clearly without it)
//!   p99   c-examples/mcserver/storage_p99.c over libp99, when that file and a staged libp99
//!         (make stage: build/stage) exist; otherwise the binary reports it as not built.
//!
//! STOREBENCH_MCSERVER_DIR and P99_STAGE override where the sources and libp99 are.

use std::env;
use std::path::{Path, PathBuf};

fn bind(prefix: &str, mcserver: &Path, extra_include: Option<&Path>, out: &Path) {
    let wrapper = format!(
        "#define STOREBENCH_PREFIX {prefix}\n#include \"rename.h\"\n#include \"storage.h\"\n#include \"harness.h\"\n"
    );
    let mut b = bindgen::Builder::default()
        .header_contents("wrapper.h", &wrapper)
        .clang_arg(format!("-I{}", mcserver.display()))
        .clang_arg(format!("-I{}", env::var("CARGO_MANIFEST_DIR").unwrap()))
        .allowlist_function(format!("{prefix}_.*"))
        .allowlist_type("storage_.*|harness_.*")
        .allowlist_var("STORAGE_.*")
        .prepend_enum_name(false)
        .layout_tests(false);
    if let Some(i) = extra_include {
        b = b.clang_arg(format!("-I{}", i.display()));
    }
    b.generate()
        .unwrap_or_else(|e| panic!("bindgen for {prefix}: {e}"))
        .write_to_file(out.join(format!("bindings_{prefix}.rs")))
        .expect("write bindings");
}

fn compile(prefix: &str, store_c: &Path, mcserver: &Path, extra_include: Option<&Path>) {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut b = cc::Build::new();
    b.file(dir.join("harness.c"))
        .file(store_c)
        .include(mcserver)
        .include(&dir)
        .define("STOREBENCH_PREFIX", prefix)
        .define("NDEBUG", None)
        .flag("-std=gnu11")
        .flag("-include")
        .flag(dir.join("rename.h").to_str().unwrap())
        .opt_level(3)
        .warnings(true);
    if let Some(i) = extra_include {
        b.include(i);
    }
    b.compile(&format!("storebench_{prefix}"));
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..");
    let mcserver = env::var_os("STOREBENCH_MCSERVER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("c-examples/mcserver"));
    let stage =
        env::var_os("P99_STAGE").map(PathBuf::from).unwrap_or_else(|| root.join("build/stage"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for f in ["harness.c", "harness.h", "rename.h", "build.rs"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=STOREBENCH_MCSERVER_DIR");
    println!("cargo:rerun-if-env-changed=P99_STAGE");
    println!("cargo::rustc-check-cfg=cfg(has_p99_store)");

    let slab = mcserver.join("storage_slab.c");
    println!("cargo:rerun-if-changed={}", slab.display());
    println!("cargo:rerun-if-changed={}", mcserver.join("storage.h").display());
    if !slab.is_file() {
        panic!("{} is missing: the store benchmark needs the C slab store", slab.display());
    }
    compile("slab", &slab, &mcserver, None);
    bind("slab", &mcserver, None, &out);

    let p99c = mcserver.join("storage_p99.c");
    println!("cargo:rerun-if-changed={}", p99c.display());
    let stage_inc = stage.join("include");
    let stage_lib = stage.join("lib");
    println!("cargo:rerun-if-changed={}", stage_lib.join("libp99.so").display());
    if p99c.is_file() && stage_lib.join("libp99.so").exists() && stage_inc.join("p99.h").is_file() {
        compile("p99", &p99c, &mcserver, Some(&stage_inc));
        bind("p99", &mcserver, Some(&stage_inc), &out);
        let lib = stage_lib.canonicalize().unwrap();
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=p99");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-cfg=has_p99_store");
    } else {
        println!(
            "cargo:warning=p99 store variant not built: needs {} and a staged libp99 in {}",
            p99c.display(),
            stage.display()
        );
    }
}
