//! `cargo xtask setup`: checks (and where allowed, installs) what building and testing capprof
//! needs, one line per item, then builds capprof and asks it which attach paths load.
//!
//! Every line starts with `ok:`, `installed:` or `missing:`; a missing item says the exact command
//! that fixes it. Running it again when everything is present only checks, in seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::bail;

use crate::{
    mounts, packages,
    process::{describe, run_captured},
    workspace::{Workspace, find_on_path, is_root},
};

/// What `setup` may do.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct SetupOptions {
    /// Also set up what the VM tests need (QEMU).
    #[arg(long)]
    pub vm: bool,
    /// Only report; install and mount nothing.
    #[arg(long)]
    pub no_install: bool,
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22";
/// Packages without which the eBPF program cannot be built.
const TOOLCHAIN_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
const DOCTOR_DEADLINE: Duration = Duration::from_secs(120);

/// How to fix a missing item.
enum Fix {
    Run(String),
    Needs(String),
}

/// Whether setup fails while an item is missing.
enum Need {
    Essential,
    /// Fine to lack, and why.
    Optional(&'static str),
}

/// The lines printed so far and what essential items are missing.
#[derive(Default)]
struct Report {
    missing_essential: Vec<String>,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("ok: {what}");
    }

    fn installed(&mut self, what: &str) {
        println!("installed: {what}");
    }

    fn running(&mut self, what: &str) {
        println!("running: {what}");
    }

    fn missing(&mut self, what: &str, fix: Fix, need: Need) {
        let fix = match fix {
            Fix::Run(command) => format!("run: {command}"),
            Fix::Needs(text) => format!("needs: {text}"),
        };
        match need {
            Need::Essential => {
                println!("missing: {what} ({fix})");
                self.missing_essential.push(what.to_owned());
            }
            Need::Optional(why) => println!("missing: {what} ({fix}) [optional: {why}]"),
        }
    }
}

/// Runs every check; fails when an essential item is still missing at the end.
pub fn run(workspace: &Workspace, options: SetupOptions) -> anyhow::Result<()> {
    let mut report = Report::default();
    let can_change = is_root() && !options.no_install;

    let packages_ready = check_packages(&mut report, options);
    let linker_ready = check_bpf_linker(&mut report, workspace, options);
    check_kernel(&mut report, can_change);
    if packages_ready && linker_ready {
        build_and_ask_doctor(&mut report, workspace);
    } else {
        report.missing(
            "capprof build",
            Fix::Needs("the toolchain items above".to_owned()),
            Need::Essential,
        );
    }

    if !report.missing_essential.is_empty() {
        bail!(
            "setup is incomplete: missing {}; see the `missing:` lines above",
            report.missing_essential.join(", ")
        );
    }
    Ok(())
}

/// Returns whether the eBPF toolchain's packages are present (or cannot be checked here).
fn check_packages(report: &mut Report, options: SetupOptions) -> bool {
    let required = packages::required(options.vm);
    let names: Vec<&str> = required.iter().map(|package| package.name).collect();
    if find_on_path("dpkg-query").is_none() || !packages::host_is_debian_like() {
        report.missing(
            "Debian packages cannot be checked on this system",
            Fix::Needs(format!(
                "the equivalents of: {}; a Rust nightly with rust-src (CAPPROF_BPF_TOOLCHAIN=nightly) replaces the *-web packages",
                names.join(" ")
            )),
            Need::Optional("the build below tells whether the toolchain works"),
        );
        return true;
    }
    let installed = match packages::installed(&required) {
        Ok(installed) => installed,
        Err(error) => {
            report.missing(
                "Debian package status",
                Fix::Needs(format!("a working dpkg-query: {error:#}")),
                Need::Essential,
            );
            return false;
        }
    };
    let absent: Vec<packages::Package> = required
        .iter()
        .copied()
        .filter(|package| !installed.contains(package.name))
        .collect();
    if absent.is_empty() {
        report.ok(&format!("Debian packages: {}", names.join(" ")));
        return true;
    }
    let absent_names: Vec<&str> = absent.iter().map(|package| package.name).collect();
    let can_install = is_root() && !options.no_install;
    if can_install {
        report.running(&packages::install_command(&absent_names, true));
        match packages::install(&absent_names) {
            Ok(()) => {
                report.installed(&absent_names.join(" "));
                return true;
            }
            Err(output) => {
                for line in output.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    let (essential, optional): (Vec<&packages::Package>, Vec<_>) = absent
        .iter()
        .partition(|package| package.optional.is_none());
    if !essential.is_empty() {
        let names: Vec<&str> = essential.iter().map(|package| package.name).collect();
        report.missing(
            &format!("Debian packages {}", names.join(" ")),
            Fix::Run(packages::install_command(&names, is_root())),
            Need::Essential,
        );
    }
    for package in optional {
        report.missing(
            &format!("Debian package {}", package.name),
            Fix::Run(packages::install_command(&[package.name], is_root())),
            Need::Optional(package.optional.unwrap_or_default()),
        );
    }
    TOOLCHAIN_PACKAGES
        .iter()
        .all(|name| installed.contains(*name))
}

/// Returns whether bpf-linker 0.13.0 is on `PATH`.
fn check_bpf_linker(report: &mut Report, workspace: &Workspace, options: SetupOptions) -> bool {
    let on_path = find_on_path("bpf-linker");
    if let Some(path) = &on_path
        && linker_version(path).as_deref() == Some(BPF_LINKER_VERSION)
    {
        report.ok(&format!(
            "bpf-linker {BPF_LINKER_VERSION} ({})",
            path.display()
        ));
        return true;
    }
    let cargo_installed = cargo_bin_dir().map(|dir| dir.join("bpf-linker"));
    let cargo_has_it = cargo_installed
        .as_deref()
        .is_some_and(|path| linker_version(path).as_deref() == Some(BPF_LINKER_VERSION));
    if !cargo_has_it {
        let found = match &on_path {
            Some(path) => format!(
                "bpf-linker {BPF_LINKER_VERSION} (found {} at {})",
                linker_version(path).unwrap_or_else(|| "an unknown version".to_owned()),
                path.display()
            ),
            None => format!("bpf-linker {BPF_LINKER_VERSION}"),
        };
        if options.no_install {
            report.missing(
                &found,
                Fix::Run(BPF_LINKER_INSTALL.to_owned()),
                Need::Essential,
            );
            return false;
        }
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            report.missing(
                &found,
                Fix::Needs(format!("llvm-22-dev first, then run: {BPF_LINKER_INSTALL}")),
                Need::Essential,
            );
            return false;
        }
        report.running(&format!("{BPF_LINKER_INSTALL} (about 90 s on 2 cores)"));
        let mut install = workspace.cargo();
        install
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--no-default-features", "--features", "llvm-22"])
            .arg("--quiet")
            // Without it bpf-linker's build finds /usr/bin/llvm-config, which is LLVM 14.
            .env("LLVM_PREFIX", LLVM_PREFIX);
        match install.status() {
            Ok(status) if status.success() => {
                report.installed(&format!("bpf-linker {BPF_LINKER_VERSION}"));
            }
            outcome => {
                let why = match outcome {
                    Ok(status) => format!("`{}` failed ({status})", describe(&install)),
                    Err(error) => format!("cannot run cargo: {error}"),
                };
                report.missing(
                    &found,
                    Fix::Needs(format!("{why}; run it by hand: {BPF_LINKER_INSTALL}")),
                    Need::Essential,
                );
                return false;
            }
        }
    }
    // Installed by cargo, but a different bpf-linker (or none) is what PATH finds.
    let on_path_now = find_on_path("bpf-linker");
    let same_file = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if let (Some(found), Some(installed)) = (&on_path_now, &cargo_installed)
        && same_file(found, installed)
    {
        return true;
    }
    let shadow = match on_path_now {
        Some(path) => format!("PATH finds {} first", path.display()),
        None => "its directory is not on PATH".to_owned(),
    };
    report.missing(
        &format!("bpf-linker {BPF_LINKER_VERSION} on PATH ({shadow})"),
        Fix::Run("export PATH=\"${CARGO_HOME:-$HOME/.cargo}/bin:$PATH\"".to_owned()),
        Need::Essential,
    );
    false
}

/// `bpf-linker --version` prints `bpf-linker 0.13.0`.
fn linker_version(path: &Path) -> Option<String> {
    let output = Command::new(path).arg("--version").output().ok()?;
    parse_linker_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_linker_version(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "bpf-linker").then(|| words.next().map(str::to_owned))?
    })
}

fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    Some(home.join("bin"))
}

fn check_kernel(report: &mut Report, can_change: bool) {
    let sudo = if is_root() { "" } else { "sudo " };
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        report.ok("kernel BTF (/sys/kernel/btf/vmlinux)");
    } else {
        report.missing(
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            Fix::Needs("a kernel built with CONFIG_DEBUG_INFO_BTF=y".to_owned()),
            Need::Essential,
        );
    }

    check_tracepoint(report, can_change, sudo);

    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        report.ok("kprobe PMU (/sys/bus/event_source/devices/kprobe)");
    } else {
        report.missing(
            "kprobe PMU (/sys/bus/event_source/devices/kprobe)",
            Fix::Needs("a kernel built with CONFIG_KPROBES=y".to_owned()),
            Need::Optional("capprof uses fentry or the tracepoint instead"),
        );
    }

    let bpffs = Path::new("/sys/fs/bpf");
    let bpffs_command = format!("{sudo}mount -t bpf bpf /sys/fs/bpf");
    if mounts::is_mounted_at(&mounts::current(), "bpf", bpffs) {
        report.ok("bpffs at /sys/fs/bpf");
    } else if can_change && mount("bpf", bpffs) {
        report.installed("bpffs mounted at /sys/fs/bpf");
    } else {
        report.missing(
            "bpffs at /sys/fs/bpf",
            Fix::Run(bpffs_command),
            Need::Optional("only pinned programs and maps need it"),
        );
    }

    match mounts::find(&mounts::current(), "cgroup2") {
        Some(path) => report.ok(&format!("cgroup v2 at {}", path.display())),
        None => report.missing(
            "a cgroup v2 mount",
            Fix::Run(format!(
                "{sudo}mkdir -p /sys/fs/cgroup/unified && {sudo}mount -t cgroup2 none /sys/fs/cgroup/unified"
            )),
            Need::Essential,
        ),
    }
}

/// The `capability:cap_capable` tracepoint, as tracefs lists it (bpftrace attaches through it).
fn check_tracepoint(report: &mut Report, can_change: bool, sudo: &str) {
    let tracing = Path::new("/sys/kernel/tracing");
    let mut tracefs = mounts::find(&mounts::current(), "tracefs").map(Path::to_path_buf);
    if tracefs.is_none() && can_change && mount("tracefs", tracing) {
        report.installed("tracefs mounted at /sys/kernel/tracing");
        tracefs = Some(tracing.to_path_buf());
    }
    let Some(tracefs) = tracefs else {
        report.missing(
            "tracefs",
            Fix::Run(format!(
                "{sudo}mount -t tracefs tracefs /sys/kernel/tracing"
            )),
            Need::Optional("bpftrace (the benchmark's reference) needs it; capprof does not"),
        );
        return;
    };
    let event = tracefs.join("events/capability/cap_capable");
    if event.exists() {
        report.ok(&format!(
            "tracepoint capability:cap_capable ({})",
            event.display()
        ));
    } else {
        report.missing(
            &format!("tracepoint capability:cap_capable ({})", event.display()),
            Fix::Needs("Linux 6.14 or later".to_owned()),
            Need::Optional("capprof uses fentry or kprobes instead; the benchmark needs it"),
        );
    }
}

fn mount(fstype: &str, target: &Path) -> bool {
    Command::new("mount")
        .args(["-t", fstype, fstype])
        .arg(target)
        .status()
        .is_ok_and(|status| status.success())
}

fn build_and_ask_doctor(report: &mut Report, workspace: &Workspace) {
    let mut build = workspace.cargo();
    build
        .args(["build", "--quiet", "--release", "-p", "capprof"])
        // The binary must carry the eBPF program.
        .env_remove("AYA_BUILD_SKIP");
    report.running("cargo build --release -p capprof");
    match build.status() {
        Ok(status) if status.success() => {}
        outcome => {
            let why = match outcome {
                Ok(status) => format!("the build failed ({status}); its errors are above"),
                Err(error) => format!("cannot run cargo: {error}"),
            };
            report.missing("capprof build", Fix::Needs(why), Need::Essential);
            return;
        }
    }
    let binary = workspace.release_binary("capprof");
    report.ok(&format!("capprof built ({})", binary.display()));

    let doctor = run_captured(Command::new(&binary).arg("doctor"), DOCTOR_DEADLINE);
    let finished = match doctor {
        Ok(finished) => finished,
        Err(error) => {
            report.missing(
                "capprof doctor",
                Fix::Needs(format!("{error:#}")),
                Need::Essential,
            );
            return;
        }
    };
    match doctor_outcome(
        finished.status.code(),
        &format!("{}{}", finished.stdout, finished.stderr),
    ) {
        DoctorOutcome::Passed => {
            report.ok("capprof doctor");
            for line in finished
                .stdout
                .lines()
                .filter(|line| !line.trim().is_empty())
            {
                println!("    {line}");
            }
        }
        DoctorOutcome::NotAvailable => report.missing(
            "capprof doctor",
            Fix::Needs("a capprof build that has the `doctor` subcommand".to_owned()),
            Need::Optional("this capprof does not have it yet"),
        ),
        DoctorOutcome::Failed => {
            for line in finished
                .stdout
                .lines()
                .chain(finished.stderr.lines())
                .filter(|line| !line.trim().is_empty())
            {
                println!("    {line}");
            }
            report.missing(
                "capprof doctor",
                Fix::Needs(format!(
                    "an attach path that loads ({} exited with {}); see its output above",
                    binary.display(),
                    finished.status
                )),
                Need::Essential,
            );
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum DoctorOutcome {
    Passed,
    /// clap's usage error: the subcommand does not exist in this build.
    NotAvailable,
    Failed,
}

fn doctor_outcome(exit_code: Option<i32>, output: &str) -> DoctorOutcome {
    match exit_code {
        Some(0) => DoctorOutcome::Passed,
        Some(2)
            if output.contains("unrecognized subcommand")
                || output.contains("unknown subcommand") =>
        {
            DoctorOutcome::NotAvailable
        }
        _ => DoctorOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_linker_version() {
        assert_eq!(
            parse_linker_version("bpf-linker 0.13.0\n").as_deref(),
            Some("0.13.0")
        );
        assert_eq!(
            parse_linker_version("warning: x\nbpf-linker 0.9.14\n").as_deref(),
            Some("0.9.14")
        );
        assert_eq!(parse_linker_version("bpf-linker\n"), None);
        assert_eq!(parse_linker_version("rustc 1.95.0\n"), None);
    }

    #[test]
    fn doctor_exit_codes_are_told_apart() {
        assert_eq!(doctor_outcome(Some(0), ""), DoctorOutcome::Passed);
        assert_eq!(
            doctor_outcome(Some(2), "error: unrecognized subcommand 'doctor'\n"),
            DoctorOutcome::NotAvailable
        );
        assert_eq!(
            doctor_outcome(Some(2), "no attach path loads"),
            DoctorOutcome::Failed,
            "exit 2 without clap's message is the doctor's own failure"
        );
        assert_eq!(doctor_outcome(Some(1), ""), DoctorOutcome::Failed);
        assert_eq!(doctor_outcome(None, ""), DoctorOutcome::Failed);
    }
}
