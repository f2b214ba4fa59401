//! Measures what one attach path adds to a capability check, inside `cargo xtask vm-test --bench`.
//!
//! ```text
//! capprof-vm-probe --mode fentry|kprobe|tracepoint [--iterations N] [--rounds R]
//! ```
//!
//! The workload is `sethostname` in a private UTS namespace: one `CAP_SYS_ADMIN` check per call,
//! on one pinned CPU. Each round times it with nothing attached, with the mode's empty program(s)
//! attached (fexit; kprobe + kretprobe; `tp_btf`) and with capprof's tracer forced to that mode,
//! in that order. Interference from other work (the host's other processes take the emulated
//! CPU away) only ever adds time, so each measurement is timed in batches of 1000 calls and its
//! 10th-percentile batch counts, and each condition's fastest round counts; the spread of the
//! bare rounds is printed as the noise to judge the result by.
//! The result is the ratio of capprof's added cost to the empty program's, on the same hook and
//! kernel. It also checks that the tracer counted every call. Prints one line of `key=value`
//! fields.

use std::time::Instant;

use anyhow::{Context, bail};
use capprof::{
    attach::{AttachMode, AttachRequest},
    baseline::EmptyProgram,
    capability::Capability,
    loader::TracerOptions,
    trace::TraceSession,
};

struct Options {
    mode: AttachMode,
    iterations: u64,
    rounds: usize,
}

const WARMUP: u64 = 2_000;
/// Calls timed together; small enough that most batches run undisturbed.
const BATCH: u64 = 1_000;

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        mode: AttachMode::Fentry,
        iterations: 100_000,
        rounds: 7,
    };
    let mut mode = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "fentry" => AttachMode::Fentry,
                    "kprobe" => AttachMode::Kprobe,
                    "tracepoint" => AttachMode::Tracepoint,
                    other => bail!("--mode {other}: expected fentry, kprobe or tracepoint"),
                })
            }
            "--iterations" => options.iterations = value()?.parse().context("--iterations")?,
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            other => bail!(
                "unknown argument {other}; usage: capprof-vm-probe --mode fentry|kprobe|tracepoint [--iterations N] [--rounds R]"
            ),
        }
    }
    options.mode = mode.context("--mode is required")?;
    if options.iterations == 0 || options.rounds == 0 {
        bail!("--iterations and --rounds must be at least 1");
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    isolate()?;
    let hostname = b"capprof-bench";
    let mut none = Vec::new();
    let mut empty = Vec::new();
    let mut traced = Vec::new();
    let mut counted_everything = true;
    for _ in 0..options.rounds {
        none.push(time_checks(hostname, options.iterations)?);

        let baseline = EmptyProgram::attach_to(options.mode)?;
        empty.push(time_checks(hostname, options.iterations)?);
        drop(baseline);

        let mut session = TraceSession::start(&TracerOptions {
            attach: AttachRequest::from(options.mode),
            ..Default::default()
        })?;
        traced.push(time_checks(hostname, options.iterations)?);
        counted_everything &= sethostname_checks(&mut session)? == WARMUP + options.iterations;
    }
    let noise = slowest(&none) - fastest(&none);
    let (none, empty, traced) = (fastest(&none), fastest(&empty), fastest(&traced));
    let empty_added = empty - none;
    let capprof_added = traced - none;
    println!(
        "iterations={} rounds={} none_ns={none:.1} empty_ns={empty:.1} capprof_ns={traced:.1} \
         empty_added_ns={empty_added:.1} capprof_added_ns={capprof_added:.1} ratio={:.2} \
         noise_ns={noise:.1} counted_every_check={}",
        options.iterations,
        options.rounds,
        capprof_added / empty_added,
        if counted_everything { "yes" } else { "no" },
    );
    if !counted_everything {
        bail!("the tracer did not count every sethostname check");
    }
    Ok(())
}

/// A private UTS namespace (so the host name is ours to change) and one CPU (so the timing does
/// not include migrations).
fn isolate() -> anyhow::Result<()> {
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUTS) != 0 {
            bail!("unshare(CLONE_NEWUTS): {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Nanoseconds per `sethostname` call, after a warm-up: the 10th percentile of batches of
/// [`BATCH`] calls.
fn time_checks(hostname: &[u8], iterations: u64) -> anyhow::Result<f64> {
    let call = || {
        // SAFETY: a valid buffer and length.
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) }
    };
    for _ in 0..WARMUP {
        if call() != 0 {
            bail!("sethostname: {}", std::io::Error::last_os_error());
        }
    }
    let mut batches = Vec::with_capacity((iterations / BATCH + 1) as usize);
    let mut done = 0;
    while done < iterations {
        let size = BATCH.min(iterations - done);
        let started = Instant::now();
        for _ in 0..size {
            call();
        }
        batches.push(started.elapsed().as_nanos() as f64 / size as f64);
        done += size;
    }
    batches.sort_by(f64::total_cmp);
    Ok(batches[batches.len() / 10])
}

/// `CAP_SYS_ADMIN` checks the tracer counted inside `sethostname`, in this process's cgroup.
fn sethostname_checks(session: &mut TraceSession) -> anyhow::Result<u64> {
    let (_, cgroup_id) = capprof::cgroup::of_pid(std::process::id())?;
    session.poll()?;
    let sethostname = libc::SYS_sethostname as u32;
    Ok(session
        .table()
        .records()
        .filter(|record| {
            record.cgroup_id() == cgroup_id
                && record.capability() == Some(Capability::SysAdmin)
                && record.syscall_nr() == Some(sethostname)
        })
        .map(|record| record.count)
        .sum())
}

fn fastest(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn slowest(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
