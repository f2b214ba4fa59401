//! `cargo xtask bench`: what capprof adds to a capability check, next to nothing, an empty program
//! on the same hook, and bpftrace, measured in one run.
//!
//! Each round runs the same loop (`capprof-bench loop`: sethostname in a private UTS namespace,
//! one CAP_SYS_ADMIN check per call) four times: with no program, with the empty program held by
//! `capprof-bench hold --program empty`, with capprof's tracer held by `capprof-bench hold
//! --program capprof`, and under bpftrace. Rounds interleave the configurations so that drift in
//! the machine's speed hits all of them alike; the median over rounds is reported. Each loop is
//! timed in small batches and stands for its 10th-percentile batch: on a shared machine whole
//! batches are lost to other processes, and those must not count as the program's cost.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::{
    process::describe,
    stats::{self, Config, CountCheck, Summary},
    workspace::{Workspace, find_on_path, is_root},
};

/// The bpftrace program the issue compares against.
pub const BPFTRACE_PROGRAM: &str =
    "tracepoint:capability:cap_capable { @[cgroup, args->cap] = count(); }";
/// CAP_SYS_ADMIN, the capability sethostname checks.
const CAP_SYS_ADMIN: u32 = 21;
const DRIVER: &str = "capprof-bench";
/// Loading a program parses kernel BTF; attaching is quick. Both well under this.
const ATTACH_DEADLINE: Duration = Duration::from_secs(60);
/// bpftrace prints "Attaching 1 probe..." just before it attaches; give the attach time to finish.
const BPFTRACE_SETTLE: Duration = Duration::from_millis(250);
/// How long bpftrace has to exit after an interrupt before it gets another, and how many.
const BPFTRACE_EXIT_WAIT: Duration = Duration::from_secs(2);
const BPFTRACE_INTERRUPTS: u32 = 5;

/// How to run the benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Rounds; each runs every configuration once, in the order none, empty, capprof, bpftrace.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Timed sethostname calls (capability checks) per loop.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// Batches each loop is timed in; a loop's result is its 10th-percentile batch, so batches
    /// slowed by another process taking the CPU do not count.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: u64,
    /// Untimed calls before each timed loop.
    #[arg(long, default_value_t = 10_000)]
    pub warmup: u64,
    /// CPU to pin the loops to [default: the last CPU the loop may run on].
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `capprof-bench loop`'s report.
#[derive(Debug, Deserialize)]
struct LoopReport {
    batch_ns_per_check: Vec<f64>,
    sethostname_calls: u64,
    cpu: usize,
    cgroup_id: u64,
}

/// `capprof-bench hold --program capprof`'s report.
#[derive(Debug, Deserialize)]
struct CapprofReport {
    attach_mode: String,
    sethostname_checks: BTreeMap<u64, u64>,
    counters: serde_json::Value,
}

/// One capprof round: what the loop made and what capprof counted.
#[derive(Debug, serde::Serialize)]
struct CapprofRound {
    attach_mode: String,
    expected: u64,
    counted: u64,
    counters: serde_json::Value,
}

/// The `--json` document.
#[derive(Debug, serde::Serialize)]
struct JsonReport<'a> {
    rounds: u32,
    iterations: u64,
    batches: u64,
    warmup: u64,
    cpu: usize,
    bpftrace_program: &'static str,
    summary: &'a Summary,
    capprof_rounds: &'a [CapprofRound],
}

pub fn run(workspace: &Workspace, options: &BenchOptions) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads eBPF programs and runs sethostname in a new namespace: run it as root \
             (sudo -E env PATH=\"$PATH\" cargo xtask bench)"
        );
    }
    let bpftrace = find_on_path("bpftrace")
        .context("bpftrace is not installed; `cargo xtask setup` installs it")?;
    let driver = build_driver(workspace)?;
    raise_memlock_limit();

    let mut samples: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
    let mut capprof_rounds = Vec::new();
    let mut cpu = options.cpu;
    for round in 1..=options.rounds {
        eprint!("round {round}/{}:", options.rounds);
        for config in Config::ALL {
            let measured = match config {
                Config::None => run_loop(&driver, options)?,
                Config::Empty => with_holder(&driver, "empty", options)?.0,
                Config::Capprof => {
                    let (measured, report) = with_holder(&driver, "capprof", options)?;
                    let report: CapprofReport = serde_json::from_str(&report)
                        .with_context(|| format!("unreadable capprof report: {report}"))?;
                    capprof_rounds.push(CapprofRound {
                        expected: measured.sethostname_calls,
                        counted: report
                            .sethostname_checks
                            .get(&measured.cgroup_id)
                            .copied()
                            .unwrap_or(0),
                        attach_mode: report.attach_mode,
                        counters: report.counters,
                    });
                    measured
                }
                Config::Bpftrace => under_bpftrace(&bpftrace, &driver, options)?,
            };
            cpu = Some(measured.cpu);
            let ns_per_check = stats::quantile(&measured.batch_ns_per_check, stats::LOOP_QUANTILE)
                .context("the loop reported no batches")?;
            eprint!(" {} {ns_per_check:.1}", config.name());
            samples.entry(config).or_default().push(ns_per_check);
        }
        eprintln!();
    }

    let counts = CountCheck {
        expected: capprof_rounds.iter().map(|round| round.expected).sum(),
        counted: capprof_rounds.iter().map(|round| round.counted).sum(),
    };
    let summary = stats::summarize(&samples, counts)
        .context("a configuration has no measurement; this is a bug in xtask")?;
    if options.json {
        let report = JsonReport {
            rounds: options.rounds,
            iterations: options.iterations,
            batches: options.batches,
            warmup: options.warmup,
            cpu: cpu.unwrap_or_default(),
            bpftrace_program: BPFTRACE_PROGRAM,
            summary: &summary,
            capprof_rounds: &capprof_rounds,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mode = capprof_rounds
            .first()
            .map_or("unknown", |round| round.attach_mode.as_str());
        println!(
            "\n{} rounds × {} sethostname calls (one CAP_SYS_ADMIN check each) in batches of {} on \
             CPU {}; capprof attached with {mode}.\nns/check: the median over rounds of each \
             loop's 10th-percentile batch.\n",
            options.rounds,
            options.iterations,
            options.iterations / options.batches.min(options.iterations),
            cpu.unwrap_or_default()
        );
        print!("{}", stats::render(&summary));
        if summary.all_targets_met() {
            println!("all targets met");
        } else {
            println!("some targets are NOT met");
        }
    }
    if counts.lost() != 0 {
        bail!(
            "capprof's aggregated count for the loops' key differs from the checks made by {}",
            counts.lost()
        );
    }
    Ok(())
}

fn build_driver(workspace: &Workspace) -> anyhow::Result<PathBuf> {
    let mut build = workspace.cargo();
    build
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "capprof-tests",
            "--bin",
            DRIVER,
        ])
        // The driver loads the real program.
        .env_remove("AYA_BUILD_SKIP");
    eprintln!("building: {}", describe(&build));
    let status = build
        .status()
        .with_context(|| format!("cannot run `{}`", describe(&build)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); `cargo xtask setup` checks the eBPF toolchain",
            describe(&build)
        );
    }
    Ok(workspace.release_binary(DRIVER))
}

fn run_loop(driver: &Path, options: &BenchOptions) -> anyhow::Result<LoopReport> {
    let mut command = Command::new(driver);
    command
        .arg("loop")
        .arg(format!("--iterations={}", options.iterations))
        .arg(format!("--batches={}", options.batches))
        .arg(format!("--warmup={}", options.warmup));
    if let Some(cpu) = options.cpu {
        command.arg(format!("--cpu={cpu}"));
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", driver.display()))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(&command), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("unreadable loop report: {stdout}"))
}

/// A child process that is killed (by its pid) if it is still running when this is dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the loop while `capprof-bench hold --program <program>` holds its program attached;
/// returns the loop's report and the holder's.
fn with_holder(
    driver: &Path,
    program: &str,
    options: &BenchOptions,
) -> anyhow::Result<(LoopReport, String)> {
    let mut holder = Reaped(
        Command::new(driver)
            .args(["hold", "--program", program])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", driver.display()))?,
    );
    let mut stdin: ChildStdin = holder.0.stdin.take().expect("stdin is piped");
    let mut stdout = BufReader::new(holder.0.stdout.take().expect("stdout is piped"));
    let ready = read_line(&mut stdout)?;
    if ready.trim() != "ready" {
        let status = holder.0.wait()?;
        bail!(
            "the {program} program could not be attached ({status}); its error is above{}",
            if ready.is_empty() {
                String::new()
            } else {
                format!(": {ready}")
            }
        );
    }
    let measured = run_loop(driver, options)?;
    writeln!(stdin, "done")?;
    drop(stdin);
    let report = read_line(&mut stdout)?;
    let status = holder.0.wait()?;
    if !status.success() || report.trim().is_empty() {
        bail!("the {program} holder failed after the loop ({status}); its error is above");
    }
    Ok((measured, report))
}

fn read_line(reader: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line)
}

/// Runs the loop while bpftrace counts checks per cgroup and capability.
fn under_bpftrace(
    bpftrace: &Path,
    driver: &Path,
    options: &BenchOptions,
) -> anyhow::Result<LoopReport> {
    let mut child = Reaped(
        Command::new(bpftrace)
            .args(["-e", BPFTRACE_PROGRAM])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bpftrace.display()))?,
    );
    let lines = forward_lines(child.0.stdout.take().expect("stdout is piped"));
    let errors = forward_lines(child.0.stderr.take().expect("stderr is piped"));

    let started = Instant::now();
    loop {
        let remaining = ATTACH_DEADLINE.saturating_sub(started.elapsed());
        match lines.recv_timeout(remaining) {
            Ok(line) if line.starts_with("Attaching ") => break,
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "bpftrace did not attach within {} s",
                ATTACH_DEADLINE.as_secs()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                let stderr: Vec<String> = errors.try_iter().collect();
                bail!("bpftrace exited ({status}): {}", stderr.join("\n"));
            }
        }
    }
    std::thread::sleep(BPFTRACE_SETTLE);

    let measured = run_loop(driver, options)?;

    let status = interrupt(&mut child.0)?;
    // bpftrace prints its map when interrupted; the reader thread ends at EOF.
    let output: Vec<String> = lines.iter().collect();
    if !status.success() {
        let stderr: Vec<String> = errors.try_iter().collect();
        bail!("bpftrace failed ({status}): {}", stderr.join("\n"));
    }
    let seen = bpftrace_count(&output, measured.cgroup_id, CAP_SYS_ADMIN);
    // Besides sethostname the loop makes a few more CAP_SYS_ADMIN checks (unshare, mmap), so
    // bpftrace must have seen at least every call: otherwise it attached late.
    if seen < measured.sethostname_calls {
        bail!(
            "bpftrace counted {seen} CAP_SYS_ADMIN checks for the loop's cgroup {} but the loop made \
             {} sethostname calls: it was not attached for the whole loop; raise --warmup",
            measured.cgroup_id,
            measured.sethostname_calls
        );
    }
    Ok(measured)
}

/// Stops bpftrace with SIGINT, which makes it print its maps, and waits for it to exit.
///
/// bpftrace only looks at an interrupt when its event loop is woken, and a program without
/// output never wakes it: a SIGINT that lands before the loop sleeps is noted and then forgotten,
/// and bpftrace sleeps forever (seen here: a second SIGINT ended it). So the signal is repeated
/// until it exits.
fn interrupt(bpftrace: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(bpftrace.id()).context("bpftrace's pid is out of range")?;
    for _ in 0..BPFTRACE_INTERRUPTS {
        // SAFETY: kill sends a signal to the bpftrace process this function's caller started
        // and has not reaped yet (try_wait below reaps it only once it has exited).
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot interrupt bpftrace");
        }
        let asked = Instant::now();
        while asked.elapsed() < BPFTRACE_EXIT_WAIT {
            if let Some(status) = bpftrace.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    bail!(
        "bpftrace did not exit after {BPFTRACE_INTERRUPTS} interrupts {} s apart",
        BPFTRACE_EXIT_WAIT.as_secs()
    )
}

/// Sends each line `stream` prints to the returned channel, from a thread.
fn forward_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The count bpftrace printed for `@[cgroup, cap]`, 0 when absent.
fn bpftrace_count(output: &[String], cgroup_id: u64, cap: u32) -> u64 {
    output
        .iter()
        .filter_map(|line| {
            let (key, count) = line.strip_prefix("@[")?.split_once("]:")?;
            let (cgroup, capability) = key.split_once(',')?;
            let matches = cgroup.trim().parse::<u64>().ok()? == cgroup_id
                && capability.trim().parse::<u32>().ok()? == cap;
            matches.then(|| count.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// bpftrace and the holders load BPF programs; kernels before 5.11 charge them to memlock.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct. Failing is fine on kernels that account BPF
    // memory to cgroups instead.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftrace_map_lines() {
        let output: Vec<String> = [
            "Attaching 1 probe...",
            "",
            "",
            "@[1, 21]: 978",
            "@[1830, 21]: 210003",
            "@[1830, 12]: 4",
            "@[18300, 21]: 7",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(bpftrace_count(&output, 1830, 21), 210_003);
        assert_eq!(bpftrace_count(&output, 1830, 12), 4);
        assert_eq!(bpftrace_count(&output, 1, 21), 978);
        assert_eq!(bpftrace_count(&output, 99, 21), 0);
    }

    #[test]
    fn capprof_report_reads_integer_cgroup_keys() {
        let report: CapprofReport = serde_json::from_str(
            r#"{"attach_mode":"tracepoint","sethostname_checks":{"1849":210000,"1":3},"counters":{"events_lost":0}}"#,
        )
        .unwrap();
        assert_eq!(report.sethostname_checks.get(&1849), Some(&210_000));
        assert_eq!(report.sethostname_checks.get(&1), Some(&3));
        assert_eq!(report.attach_mode, "tracepoint");
    }
}
