//! Builds the eBPF program (`capprof-ebpf`) for the BPF target and puts the object in `OUT_DIR`.
//!
//! The BPF target needs `-Z build-std=core`, which needs the standard library's sources:
//!
//! * `CAPPROF_BPF_TOOLCHAIN=/usr` (the default when Debian's `rust-web-src` is installed) uses
//!   Debian's `/usr/bin/cargo` and `/usr/bin/rustc` with `RUSTC_BOOTSTRAP=1`;
//! * `CAPPROF_BPF_TOOLCHAIN=nightly` (or any rustup toolchain name) uses that toolchain, which needs
//!   the `rust-src` component.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build for `cargo check` and `cargo clippy`; the resulting
//! binary then refuses to trace and says why.

use std::{env, fs, path::Path};

const TOOLCHAIN_VAR: &str = "CAPPROF_BPF_TOOLCHAIN";
const DEBIAN_STD_SOURCES: &str = "/usr/lib/rustlib/src/rust/library/core";

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = env::var("OUT_DIR")?;
    let object = Path::new(&out_dir).join("capprof");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // An empty object keeps `include_bytes!` compiling; the loader reports it at run time.
        fs::write(&object, [])?;
        return Ok(());
    }

    let toolchain = env::var(TOOLCHAIN_VAR).unwrap_or_else(|_| {
        if Path::new(DEBIAN_STD_SOURCES).exists() {
            "/usr".to_owned()
        } else {
            "nightly".to_owned()
        }
    });
    if toolchain.starts_with('/') {
        // A stable compiler outside rustup: unlock `-Z build-std` for it.
        // SAFETY: the build script is single-threaded.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../capprof-ebpf/program");
    let root = root.to_str().expect("the workspace path is UTF-8");
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("../capprof-ebpf/common");
    println!("cargo:rerun-if-changed={}", common.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "capprof-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .map_err(|error| {
        error.context(format!(
            "building the eBPF program with toolchain `{toolchain}` failed; run `cargo xtask setup` \
             (installs bpf-linker and Debian's rust-web-src), pick another toolchain with \
             {TOOLCHAIN_VAR}=nightly, or skip the eBPF build with AYA_BUILD_SKIP=1"
        ))
    })
}
