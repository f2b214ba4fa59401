//! The processes `cargo xtask bench` runs, one per role:
//!
//! * `loop`: the measured workload. One capability check per iteration: `sethostname` in a private
//!   UTS namespace, pinned to one CPU, timed batch by batch with `CLOCK_MONOTONIC`. It runs in a
//!   cgroup of its own so that its checks can be told apart from everything else on the machine.
//! * `hold`: keeps a program attached to `cap_capable` while a loop runs (the empty baseline or
//!   capprof's tracer), prints `ready`, waits for a line or EOF on stdin, then reports.
//!
//! Every report is one line of JSON on stdout; xtask's `bench` module reads the same field names.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, bail};
use capprof::{
    attach::AttachRequest,
    baseline::EmptyProgram,
    capability::Capability,
    cgroup::{self, OwnedCgroup},
    collector::TracerCounters,
    loader::TracerOptions,
    trace::TraceSession,
};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark pieces for `cargo xtask bench`: a capability-check loop and program holders.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs sethostname in a private UTS namespace N times and prints ns per iteration as JSON.
    Loop(LoopArgs),
    /// Attaches a program to cap_capable, prints "ready", waits for a line or EOF on stdin, then
    /// prints what it saw as JSON.
    Hold(HoldArgs),
}

#[derive(Debug, clap::Args)]
struct LoopArgs {
    /// Timed iterations (one capability check each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: u64,
    /// Timed batches the iterations are split into. Each batch is timed on its own, so that a
    /// batch slowed by another process taking the CPU can be told apart from the rest.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batches: u64,
    /// Untimed iterations first, to warm caches and let the CPU settle.
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// CPU to pin the loop to [default: the last CPU this process may run on].
    #[arg(long)]
    cpu: Option<usize>,
    /// Stay in the current cgroup instead of a private one (the checks then mix with whatever
    /// else runs in that cgroup).
    #[arg(long)]
    shared_cgroup: bool,
}

#[derive(Debug, clap::Args)]
struct HoldArgs {
    /// Which program to keep attached.
    #[arg(long, value_enum)]
    program: HeldProgram,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HeldProgram {
    /// A tp_btf program on capability:cap_capable that does nothing.
    Empty,
    /// capprof's tracer, loaded as `capprof` loads it by default.
    Capprof,
}

/// What `loop` prints.
#[derive(Debug, Serialize)]
struct LoopReport {
    /// ns per iteration of each timed batch, in order.
    batch_ns_per_check: Vec<f64>,
    /// Average over all timed iterations.
    mean_ns_per_check: f64,
    iterations: u64,
    elapsed_ns: u64,
    /// Every sethostname call made, warm-up included: what a tracer must have counted.
    sethostname_calls: u64,
    cpu: usize,
    /// The cgroup v2 id the checks were made in.
    cgroup_id: u64,
    private_cgroup: bool,
}

/// What `hold --program capprof` prints.
#[derive(Debug, Serialize)]
struct CapprofReport {
    attach_mode: String,
    /// CAP_SYS_ADMIN checks made inside sethostname, per cgroup v2 id.
    sethostname_checks: BTreeMap<u64, u64>,
    counters: TracerCounters,
}

/// What `hold --program empty` prints.
#[derive(Debug, Serialize)]
struct EmptyReport {
    program_id: u32,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Loop(args) => run_loop(&args),
        Command::Hold(args) => hold(args.program),
    }
}

fn run_loop(args: &LoopArgs) -> anyhow::Result<()> {
    let cpu = match args.cpu {
        Some(cpu) => cpu,
        None => last_allowed_cpu()?,
    };
    pin_to_cpu(cpu)?;
    let private = if args.shared_cgroup {
        None
    } else {
        Some(PrivateCgroup::enter()?)
    };
    let cgroup_id = match &private {
        Some(private) => private.id(),
        None => {
            cgroup::of_pid(std::process::id())
                .context("cannot find this process's cgroup v2 id")?
                .1
        }
    };

    // SAFETY: unshare with a namespace flag only changes this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUTS) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("unshare(CLONE_NEWUTS) failed; the loop needs root (CAP_SYS_ADMIN)");
    }
    let name = CString::new("capprof-bench").expect("no NUL in the host name");
    let set_hostname = || {
        // SAFETY: `name` is a valid buffer of the given length.
        let rc = unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("sethostname failed");
        }
        Ok(())
    };
    stop_on_interrupt();
    let run = |iterations: u64| -> anyhow::Result<()> {
        for i in 0..iterations {
            // Return through the cgroup guard rather than die inside the cgroup and leave it.
            if i % 4096 == 0 && INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            set_hostname()?;
        }
        Ok(())
    };
    run(args.warmup)?;
    let batches = args.batches.min(args.iterations);
    let mut batch_ns_per_check = Vec::with_capacity(batches as usize);
    let mut elapsed_ns = 0;
    let mut done = 0;
    for batch in 0..batches {
        // Spreads the remainder over the last batches.
        let size = (args.iterations - done) / (batches - batch);
        let start = monotonic_ns();
        run(size)?;
        let took = monotonic_ns() - start;
        batch_ns_per_check.push(took as f64 / size as f64);
        elapsed_ns += took;
        done += size;
    }
    drop(private);

    print_json(&LoopReport {
        batch_ns_per_check,
        mean_ns_per_check: elapsed_ns as f64 / args.iterations as f64,
        iterations: args.iterations,
        elapsed_ns,
        sethostname_calls: args.warmup + args.iterations,
        cpu,
        cgroup_id,
        private_cgroup: !args.shared_cgroup,
    })
}

fn hold(program: HeldProgram) -> anyhow::Result<()> {
    match program {
        HeldProgram::Empty => {
            let empty = EmptyProgram::attach()?;
            announce_ready_and_wait()?;
            print_json(&EmptyReport {
                program_id: empty.program_id(),
            })
        }
        HeldProgram::Capprof => {
            // On the empty program's hook (and bpftrace's), so that the ratios compare
            // programs, not hooks, on a kernel that also offers fentry.
            let mut session = TraceSession::start(&TracerOptions {
                attach: AttachRequest::Tracepoint,
                ..TracerOptions::default()
            })?;
            let attach_mode = session.attach_choice().mode.to_string();
            announce_ready_and_wait()?;
            session.poll()?;
            let sethostname = libc::SYS_sethostname as u32;
            let mut sethostname_checks = BTreeMap::new();
            for record in session.table().records().filter(|record| {
                record.capability() == Some(Capability::SysAdmin)
                    && record.syscall_nr() == Some(sethostname)
            }) {
                *sethostname_checks.entry(record.cgroup_id()).or_default() += record.count;
            }
            print_json(&CapprofReport {
                attach_mode,
                sethostname_checks,
                counters: session.table().counters(),
            })
        }
    }
}

fn announce_ready_and_wait() -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the go-ahead from stdin")?;
    Ok(())
}

fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, report)?;
    writeln!(stdout)?;
    stdout.flush()?;
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`], checked by the loop.
fn stop_on_interrupt() {
    let handler = note_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn last_allowed_cpu() -> anyhow::Result<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size matches the set passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity failed");
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .rfind(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .context("this process may run on no CPU")
}

fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("--cpu {cpu} is out of range");
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the size matches the set passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot pin the loop to CPU {cpu}; pick another with --cpu"));
    }
    Ok(())
}

/// A cgroup of the loop's own; dropping it moves the process back to where it was, then the
/// [`OwnedCgroup`] removes the directory.
#[derive(Debug)]
struct PrivateCgroup {
    cgroup: OwnedCgroup,
    original: PathBuf,
}

impl PrivateCgroup {
    fn enter() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let (original, _) =
            cgroup::of_pid(pid).context("cannot find this process's cgroup v2 directory")?;
        let cgroup = OwnedCgroup::create(&format!("capprof-bench-{pid}"))
            .context("cannot create a cgroup for the loop; run as root or pass --shared-cgroup")?;
        let entered = Self { cgroup, original };
        move_self_to(&entered.cgroup.procs_file())?;
        Ok(entered)
    }

    fn id(&self) -> u64 {
        self.cgroup.id()
    }
}

impl Drop for PrivateCgroup {
    fn drop(&mut self) {
        if let Err(error) = move_self_to(&self.original.join("cgroup.procs")) {
            eprintln!("capprof-bench: {error:#}");
        }
    }
}

fn move_self_to(procs: &Path) -> anyhow::Result<()> {
    // "0" names the writing process.
    std::fs::write(procs, "0")
        .with_context(|| format!("cannot move this process into {}", procs.display()))
}
