//! The guest's programs: the tracer's integration tests, the trigger they run, the `capprof`
//! binary and, for `--bench`, the probe that measures each attach mode, all linked statically so that the initramfs
//! needs no libraries.
//!
//! The musl target is not available on our machines, so this links glibc statically
//! (`-C target-feature=+crt-static`, glibc's static libraries come with libc6-dev). An explicit
//! `--target` keeps that flag away from build scripts and proc-macros, and a target directory of
//! its own keeps the ordinary build's artifacts untouched.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, bail};

use crate::workspace::Workspace;

const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The integration test targets of `capprof-tests` that run in the guest: they need root, BPF
/// and cgroup v2, but no Docker engine.
pub const GUEST_TEST_TARGETS: &[&str] = &["tracer"];
/// The trigger the tests run; they find it through `CAPPROF_TRIGGER`.
const TRIGGER: &str = "capprof-trigger";
/// Measures each attach mode against an empty program for `--bench`.
const BENCH_PROBE: &str = "capprof-vm-probe";

/// Statically linked executables for the guest.
#[derive(Debug)]
pub struct GuestBinaries {
    /// (test target name, executable).
    pub tests: Vec<(String, PathBuf)>,
    /// Other binaries by name: the trigger, `capprof`, the bench probe.
    pub programs: Vec<(String, PathBuf)>,
}

/// Builds the guest's programs in `<target>/vm/cargo`.
pub fn build(workspace: &Workspace) -> anyhow::Result<GuestBinaries> {
    let target_dir = super::vm_dir(workspace).join("cargo");
    eprintln!(
        "vm-test: building static test binaries in {}",
        target_dir.display()
    );
    let mut programs = Vec::new();
    let bins = cargo(
        workspace,
        &target_dir,
        &[
            "build",
            "--package",
            "capprof",
            "--package",
            "capprof-tests",
            "--bins",
        ],
    )?;
    for artifact in bins {
        if artifact.kinds.iter().any(|kind| kind == "bin") {
            programs.push((artifact.name, artifact.executable));
        }
    }
    let mut test_args = vec!["test", "--no-run", "--package", "capprof-tests"];
    for target in GUEST_TEST_TARGETS {
        test_args.extend(["--test", target]);
    }
    let tests: Vec<(String, PathBuf)> = cargo(workspace, &target_dir, &test_args)?
        .into_iter()
        .filter(|artifact| artifact.test && GUEST_TEST_TARGETS.contains(&artifact.name.as_str()))
        .map(|artifact| (artifact.name, artifact.executable))
        .collect();

    for target in GUEST_TEST_TARGETS {
        if !tests.iter().any(|(name, _)| name == target) {
            bail!("cargo built no `{target}` test executable of capprof-tests");
        }
    }
    for name in [TRIGGER, "capprof", BENCH_PROBE] {
        if !programs.iter().any(|(program, _)| program == name) {
            bail!("cargo built no `{name}` binary");
        }
    }
    for (name, path) in tests.iter().chain(&programs) {
        if !is_static_executable(path)? {
            bail!(
                "{name} ({}) is dynamically linked; the guest has no libraries. Is glibc's static \
                 libc.a installed (package libc6-dev)?",
                path.display()
            );
        }
    }
    Ok(GuestBinaries { tests, programs })
}

struct Artifact {
    name: String,
    kinds: Vec<String>,
    test: bool,
    executable: PathBuf,
}

/// Runs one cargo command for the static target and returns the executables it produced.
fn cargo(workspace: &Workspace, target_dir: &Path, args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(' ');
    }
    rustflags.push_str("-C target-feature=+crt-static");
    let mut command = workspace.cargo();
    command
        .args(args)
        .args([
            "--profile",
            "vm-test",
            "--target",
            HOST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        artifacts.push(Artifact {
            name: message["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kinds: message["target"]["kind"]
                .as_array()
                .map(|kinds| {
                    kinds
                        .iter()
                        .filter_map(|kind| kind.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            test: message["profile"]["test"].as_bool().unwrap_or(false),
            executable: executable.into(),
        });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(artifacts)
}

/// An ELF executable without a program interpreter (`PT_INTERP`) needs no dynamic loader.
fn is_static_executable(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |offset: usize, size: usize| -> anyhow::Result<u64> {
        let slice = bytes
            .get(offset..offset + size)
            .with_context(|| format!("{} is truncated", path.display()))?;
        let mut value = [0u8; 8];
        value[..size].copy_from_slice(slice);
        Ok(u64::from_le_bytes(value))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    const PT_INTERP: u64 = 3;
    let program_headers = field(0x20, 8)? as usize;
    let entry_size = field(0x36, 2)? as usize;
    let entries = field(0x38, 2)? as usize;
    for index in 0..entries {
        if field(program_headers + index * entry_size, 4)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        let me = std::env::current_exe().unwrap();
        let linked_statically = cfg!(target_feature = "crt-static");
        assert_eq!(is_static_executable(&me).unwrap(), linked_statically);
    }
}
