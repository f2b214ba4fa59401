//! `capprof trace`: every capability check, live, host-wide, in one cgroup, or for one command.

use std::{
    collections::HashSet, ffi::CString, io::Write, os::unix::ffi::OsStrExt, path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use capprof::{
    attach::AttachRequest,
    cgroup::{self, OwnedCgroup},
    loader::TracerOptions,
    trace::TraceSession,
    trace_output::{self, CheckLine},
};
use capprof_common::CheckKey;
use tokio::signal::unix::{SignalKind, signal};

use super::Exit;

/// Trace capability checks live: host-wide, in one cgroup, or for one command
///
/// Examples:
///   capprof trace                                  every check on the host, until Ctrl-C
///   capprof trace --cgroup /sys/fs/cgroup/unified/docker/<id> --duration 30
///   capprof trace --format json -- ping -c1 127.0.0.1
///
/// With a command after `--`, capprof runs it in a cgroup of its own, traces only that cgroup,
/// stops when the command exits and exits with its status.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct TraceArgs {
    /// How to hook cap_capable: the strongest path the kernel offers, or one forced.
    #[arg(long, value_enum, default_value_t = AttachRequest::Auto)]
    attach: AttachRequest,

    /// Only trace this cgroup v2 directory (e.g. /sys/fs/cgroup/unified/docker/<id>).
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    cgroup: Option<PathBuf>,

    /// Stop after this many seconds (default: until Ctrl-C, or until COMMAND exits).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Output: an aligned table, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// How often to read the kernel's counters, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    interval_ms: u64,

    /// Size of the ring buffer for first sightings, in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = capprof_common::DEFAULT_EVENTS_BYTES / 1024)]
    ring_buffer_kib: u32,

    /// A command to run and trace in a cgroup of its own.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<Exit> {
    if let Some(duration) = args.duration
        && !(duration > 0.0 && duration.is_finite())
    {
        anyhow::bail!("--duration must be a positive number of seconds, not {duration}");
    }
    let own_cgroup = match args.command.is_empty() {
        true => None,
        false => Some(
            OwnedCgroup::create(&format!("capprof-trace-{}", std::process::id()))
                .context("creating a cgroup for the command")?,
        ),
    };
    let cgroup_id = match (&args.cgroup, &own_cgroup) {
        (Some(path), _) => {
            Some(cgroup::id_of(path).with_context(|| format!("--cgroup {}", path.display()))?)
        }
        (None, Some(owned)) => Some(owned.id()),
        (None, None) => None,
    };
    let options = TracerOptions {
        attach: args.attach,
        cgroup_id,
        events_bytes: args.ring_buffer_kib.saturating_mul(1024),
    };
    let mut session = TraceSession::start(&options)?;
    eprintln!(
        "capprof: tracing cap_capable via {}",
        session.attach_choice().explain()
    );

    let mut child = match &own_cgroup {
        Some(owned) => Some(spawn_in_cgroup(&args.command, owned)?),
        None => None,
    };
    let mut printer = Printer::new(args.format);
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms));
    let deadline = args
        .duration
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs_f64(secs));
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut command_status = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let changed = session.poll()?;
                printer.print_changes(&session, &changed)?;
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => break,
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                command_status = Some(status.context("waiting for the command")?);
                break;
            }
        }
    }
    if let Some(mut running) = child {
        // Stopped by a signal or the duration: do not leave the command behind.
        let _ = running.start_kill();
        let _ = running.wait().await;
    }
    let changed = session.poll()?;
    printer.print_changes(&session, &changed)?;
    printer.print_summary(&session)?;
    drop(own_cgroup);

    Ok(match command_status {
        None => Exit::Success,
        Some(status) => match status.code() {
            Some(0) => Exit::Success,
            Some(code) => Exit::Command(u8::try_from(code).unwrap_or(1)),
            // Killed by a signal: the shell convention.
            None => Exit::Command(128u8.saturating_add(
                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0) as u8,
            )),
        },
    })
}

/// Starts `command` inside `cgroup`: the child moves itself there between fork and exec, so
/// every check it makes is traced.
fn spawn_in_cgroup(
    command: &[String],
    cgroup: &OwnedCgroup,
) -> anyhow::Result<tokio::process::Child> {
    let procs = CString::new(cgroup.procs_file().as_os_str().as_bytes())
        .context("cgroup path contains NUL")?;
    let mut process = tokio::process::Command::new(&command[0]);
    process.args(&command[1..]).kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (open, write, close) on memory prepared before the fork.
    unsafe {
        process.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
    process
        .spawn()
        .with_context(|| format!("starting `{}`", command[0]))
}

/// Prints live changes and the final summary in the chosen format.
struct Printer {
    format: Format,
    header_printed: bool,
    shown: HashSet<CheckKey>,
}

impl Printer {
    fn new(format: Format) -> Self {
        Self {
            format,
            header_printed: false,
            shown: HashSet::new(),
        }
    }

    /// JSON: one line per changed key, with its count so far. Table: one row per new key (the
    /// final counts come with the summary).
    fn print_changes(
        &mut self,
        session: &TraceSession,
        changed: &[CheckKey],
    ) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for key in changed {
            let Some(record) = session.table().get(key) else {
                continue;
            };
            match self.format {
                Format::Json => {
                    writeln!(out, "{}", serde_json::to_string(&CheckLine::new(record))?)?
                }
                Format::Table => {
                    if !self.shown.insert(*key) {
                        continue;
                    }
                    if !self.header_printed {
                        writeln!(out, "{}", trace_output::table_header())?;
                        self.header_printed = true;
                    }
                    writeln!(out, "{}", trace_output::table_row(record))?;
                }
            }
        }
        out.flush()?;
        Ok(())
    }

    fn print_summary(&self, session: &TraceSession) -> anyhow::Result<()> {
        let summaries = trace_output::summarize(session.table(), |id| {
            cgroup::path_of_id(id)
                .ok()
                .flatten()
                .map(|path| path.display().to_string())
        });
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Json => {
                for summary in &summaries {
                    writeln!(out, "{}", serde_json::to_string(summary)?)?;
                }
                let counters = session.table().counters();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "kind": "counters", "counters": counters })
                )?;
            }
            Format::Table => {
                if self.header_printed {
                    writeln!(out, "\nfinal counts:\n{}", trace_output::table_header())?;
                    for record in session.table().records() {
                        writeln!(out, "{}", trace_output::table_row(record))?;
                    }
                    writeln!(out)?;
                }
                write!(
                    out,
                    "{}",
                    trace_output::render_summary(&summaries, session.table().counters())
                )?;
            }
        }
        Ok(())
    }
}
