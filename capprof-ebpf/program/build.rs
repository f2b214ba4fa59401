//! Rebuilds the eBPF object when the linker changes: `bpf-linker` is not a cargo dependency, so
//! cargo cannot see it otherwise.
fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(error) => println!(
            "cargo:warning=bpf-linker not found on PATH ({error}); run `cargo xtask setup`"
        ),
    }
}
