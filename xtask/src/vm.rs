//! `cargo xtask vm-test`: proves the fentry and kprobe attach paths on real kernels.
//!
//! This project's own kernel only offers the `capability:cap_capable` tracepoint, while the
//! kernels most people run (Debian 12's 6.1, Ubuntu's 5.15 and 6.8, RHEL 9's 5.14) lack it and
//! need fentry/fexit or kprobe/kretprobe. So the tracer's integration tests are built as static
//! binaries, packed into an initramfs with busybox, and run under `qemu-system-x86_64` on such a
//! kernel, once per attach mode. The guest reports on the serial console with
//! `CAPPROF-VM-*` markers (see `vm/guest-init.sh`); this side parses them.
//!
//! Everything downloaded or built is cached under `<target>/vm/`: kernels in `kernels/`, the
//! static build in `cargo/`, the initramfs in `initramfs.cpio`, console logs in `logs/`.

mod artifacts;
mod debian;
mod initramfs;
mod qemu;

use std::{
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use self::{
    debian::Kernel,
    qemu::{Accel, AccelChoice, GuestReport, ModeStatus},
};
use crate::workspace::Workspace;

/// `cargo xtask vm-test` options.
#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// Boot this kernel image (a bzImage such as /boot/vmlinuz-*). Repeatable. The kernel needs
    /// CONFIG_DEBUG_INFO_BTF, BPF, an 8250 serial console and initramfs support built in.
    #[arg(long, value_name = "PATH")]
    kernel: Vec<PathBuf>,

    /// Boot Debian 12's kernel of this version, fetched with `apt-get download` (never
    /// installed): `6.1`, `6.12`, or an exact ABI such as `6.1.0-57`. Repeatable. Without any
    /// --kernel or --debian-kernel, `6.1` is used.
    #[arg(long, value_name = "VERSION")]
    debian_kernel: Vec<String>,

    /// The Debian kernel flavour: `amd64` (what Debian installs on PCs and servers) or
    /// `cloud-amd64` (cloud images; a smaller download).
    #[arg(long, default_value = "amd64")]
    flavour: String,

    /// Attach modes to test. Default: fentry, kprobe and auto, plus tracepoint on kernels that
    /// have the capability:cap_capable tracepoint (Linux 6.14+).
    #[arg(long = "mode", value_enum)]
    modes: Vec<Mode>,

    /// How QEMU runs the guest. `auto` uses KVM when /dev/kvm works for ordinary kernels and
    /// software emulation (TCG) otherwise.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,

    /// Seconds one VM may run before it is stopped and counted as failed.
    #[arg(long, default_value_t = 900)]
    timeout: u64,

    /// Guest memory in MiB (the initramfs is unpacked into it).
    #[arg(long, default_value_t = 1536)]
    memory: u32,

    /// Guest CPUs. More than one exercises the per-CPU maps' summing.
    #[arg(long, default_value_t = 2)]
    cpus: u32,

    /// After the tests, measure each mode's added cost per capability check against an empty
    /// program on the same hook.
    #[arg(long)]
    bench: bool,

    /// Boot into an interactive busybox shell with the test binaries instead of running them
    /// (quit QEMU with Ctrl-A x).
    #[arg(long, conflicts_with = "bench")]
    shell: bool,

    /// Arguments for the test binaries, after `--`: a test name filter, `--nocapture`, ...
    #[arg(last = true, value_name = "TEST ARGS")]
    test_args: Vec<String>,
}

/// The Debian kernels `cargo xtask test` (and so CI) boots: Debian 12's own 6.1 and the 6.12 it
/// ships through bookworm-security, both without the cap_capable tracepoint.
pub const CI_DEBIAN_KERNELS: [&str; 2] = ["6.1", "6.12"];

impl VmTestArgs {
    /// The command line's defaults, on the given Debian kernels.
    pub fn debian(versions: &[&str]) -> Self {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: VmTestArgs,
        }
        let mut words = vec!["vm-test"];
        for version in versions {
            words.extend(["--debian-kernel", version]);
        }
        <Command as clap::Parser>::parse_from(words).args
    }
}

/// An attach mode as the guest names it (`CAPPROF_TEST_ATTACH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Fentry,
    Kprobe,
    Auto,
    Tracepoint,
}

impl Mode {
    const DEFAULT: [Mode; 4] = [Mode::Fentry, Mode::Kprobe, Mode::Auto, Mode::Tracepoint];

    fn name(self) -> &'static str {
        match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Auto => "auto",
            Mode::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where vm-test keeps kernels, the static build, the initramfs and console logs.
fn vm_dir(workspace: &Workspace) -> PathBuf {
    workspace.target_dir.join("vm")
}

/// One kernel's outcome.
#[derive(Debug)]
struct KernelRun {
    kernel: Kernel,
    accel: AccelChoice,
    report: GuestReport,
    wanted: Vec<Mode>,
    elapsed: Duration,
}

impl KernelRun {
    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(problem) = &self.report.problem {
            failures.push(problem.clone());
        }
        match self.report.doctor_exit {
            Some(0) => {}
            Some(exit) => failures.push(format!("capprof doctor exited with {exit}")),
            None if self.report.done => failures.push("capprof doctor reported nothing".to_owned()),
            None => {}
        }
        for &mode in &self.wanted {
            match self.report.modes.get(mode.name()) {
                Some(result) => match &result.status {
                    ModeStatus::Pass => {}
                    // Only the tracepoint is optional: the others are what this test proves.
                    ModeStatus::Skip(_) if mode == Mode::Tracepoint => {}
                    ModeStatus::Skip(reason) => {
                        failures.push(format!("{mode}: skipped ({reason})"))
                    }
                    ModeStatus::Fail(detail) => failures.push(format!("{mode}: failed ({detail})")),
                },
                None => failures.push(format!("{mode}: no result (the VM stopped first)")),
            }
        }
        if self.report.bench_requested && self.report.bench.is_empty() {
            failures.push("bench: no measurement was reported".to_owned());
        }
        for line in &self.report.bench {
            if line.contains("status=fail") {
                failures.push(format!("bench failed: {line}"));
            }
        }
        failures
    }
}

/// Runs `cargo xtask vm-test`.
pub fn run(workspace: &Workspace, args: VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !cfg!(target_arch = "x86_64") {
        bail!("vm-test builds x86_64 guests with the host's toolchain; run it on an x86_64 host");
    }
    // Everything that can be wrong with the request is said before minutes of building.
    if let Some(bad) = args
        .test_args
        .iter()
        .find(|arg| arg.is_empty() || arg.contains([',', ' ', '"']))
    {
        bail!(
            "test argument {bad:?} cannot be passed on the kernel command line (no spaces, commas or quotes)"
        );
    }
    let wanted: Vec<Mode> = if args.modes.is_empty() {
        Mode::DEFAULT.to_vec()
    } else {
        args.modes.clone()
    };
    let qemu = qemu::find_qemu()?;
    let mut accel = qemu::choose_accel(args.accel)?;
    let vm_dir = vm_dir(workspace);
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;

    let mut kernels = Vec::new();
    for path in &args.kernel {
        kernels.push(Kernel::from_path(path)?);
    }
    let mut debian_versions = args.debian_kernel.clone();
    if args.kernel.is_empty() && debian_versions.is_empty() {
        debian_versions.push("6.1".to_owned());
    }
    for version in &debian_versions {
        kernels.push(debian::fetch(
            version,
            &args.flavour,
            &vm_dir.join("kernels"),
        )?);
    }

    let binaries = artifacts::build(workspace)?;
    let initramfs = initramfs::build(&binaries, &vm_dir)?;
    eprintln!(
        "vm-test: initramfs {} ({} MiB)",
        initramfs.display(),
        std::fs::metadata(&initramfs)?.len() >> 20
    );
    eprintln!("vm-test: accelerator {}", accel.describe());

    let log_dir = vm_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut runs = Vec::new();
    for kernel in kernels {
        let settings = qemu::GuestSettings {
            qemu: qemu.clone(),
            kernel: kernel.image.clone(),
            initramfs: initramfs.clone(),
            memory_mib: args.memory,
            cpus: args.cpus,
            timeout: Duration::from_secs(args.timeout),
            modes: wanted.iter().map(|mode| mode.name()).collect(),
            bench: args.bench,
            test_args: args.test_args.clone(),
            log: log_dir.join(format!("{}.log", kernel.label)),
        };
        eprintln!(
            "vm-test: booting {} ({}), console log {}",
            kernel.label,
            kernel.description,
            settings.log.display()
        );
        if args.shell {
            return qemu::interactive(&settings, &accel);
        }
        let kernel_started = Instant::now();
        let (report, used_accel) = qemu::run_guest(&settings, accel.clone())?;
        // A fallback to TCG holds for the next kernels too: KVM would fail them the same way.
        accel = used_accel.clone();
        runs.push(KernelRun {
            kernel,
            accel: used_accel,
            report,
            wanted: wanted.clone(),
            elapsed: kernel_started.elapsed(),
        });
    }

    let mut failed = false;
    println!();
    println!("vm-test results");
    for run in &runs {
        print_summary(run);
        failed |= !run.failures().is_empty();
    }
    println!("vm-test: total {:.1} s", started.elapsed().as_secs_f64());
    if failed {
        let all: Vec<String> = runs
            .iter()
            .flat_map(|run| {
                run.failures()
                    .into_iter()
                    .map(move |failure| format!("{}: {failure}", run.kernel.label))
            })
            .collect();
        bail!(
            "vm-test failed:\n  {}\nthe console logs under {} hold the tests' output",
            all.join("\n  "),
            log_dir.display()
        );
    }
    Ok(())
}

fn print_summary(run: &KernelRun) {
    let release = run
        .report
        .kernel_release
        .as_deref()
        .unwrap_or("(did not boot)");
    println!(
        "  {} — {}, running {release}, {} in {:.1} s",
        run.kernel.label,
        run.kernel.description,
        run.accel.describe(),
        run.elapsed.as_secs_f64()
    );
    if let Some(offers) = &run.report.offers {
        println!("    kernel offers: {offers}");
    }
    match run.report.doctor_exit {
        Some(0) => println!("    capprof doctor: ok"),
        Some(exit) => println!("    capprof doctor: FAILED (exit {exit})"),
        None => {}
    }
    for mode in &run.wanted {
        let line = match run.report.modes.get(mode.name()) {
            Some(result) => {
                let seconds = result
                    .elapsed
                    .map(|elapsed| format!(" ({:.1} s)", elapsed.as_secs_f64()))
                    .unwrap_or_default();
                match &result.status {
                    ModeStatus::Pass => format!("pass{seconds}"),
                    ModeStatus::Skip(reason) => format!("not offered: {reason}"),
                    ModeStatus::Fail(detail) => format!("FAIL{seconds}: {detail}"),
                }
            }
            None => "FAIL: no result".to_owned(),
        };
        println!("    {:<11} {line}", mode.name());
    }
    for bench in &run.report.bench {
        println!("    bench {}", describe_bench(bench));
    }
    if let Some(problem) = &run.report.problem {
        println!("    problem: {problem}");
    }
}

/// `mode=fentry status=pass none_ns=.. empty_added_ns=.. capprof_added_ns=.. ratio=..` in words.
fn describe_bench(line: &str) -> String {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("?")
    };
    match field("status") {
        "pass" => format!(
            "{:<10} {} ns per check bare, empty program +{} ns, capprof +{} ns (noise {} ns): \
             capprof adds {}x what an empty program on the same hook adds",
            field("mode"),
            field("none_ns"),
            field("empty_added_ns"),
            field("capprof_added_ns"),
            field("noise_ns"),
            field("ratio"),
        ),
        "skip" => format!("{:<10} not offered by this kernel", field("mode")),
        _ => format!("{:<10} FAILED: {line}", field("mode")),
    }
}
