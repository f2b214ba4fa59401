//! Command-line parsing and dispatch. Each subcommand lives in its own module and calls the
//! library; errors become messages and exit codes here, at the edge.

mod compose;
mod daemon;
mod dirs;
mod doctor;
mod events;
mod exit;
mod profile;
mod ps;
mod report;
mod reset;
mod status;
mod trace;
mod unload;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit::Exit;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   failure (the message says what happened)
  2   bad usage
  3   insufficient privileges (capprof loads eBPF: run as root, or grant CAP_BPF, CAP_PERFMON)
  4   the kernel lacks what capprof needs (BTF, or no way to hook cap_capable)
  5   the capprof daemon is not running (start it with `sudo capprof daemon`)
  6   no container, service or image has that name, or several do (the message lists them)
  7   permission denied on the daemon's socket (run with sudo, or join the `capprof` group),
      or, over TCP, the TLS handshake refused a certificate
  8   the daemon cannot answer now (shutting down, busy, or not collecting): try again
  9   verify: the workload failed with the recommended capabilities (the report says what to add)
  10  verify --leave-one-out: the workload also works without some of them (the report names them)
  11  compose check: a profiled service's cap_add/cap_drop does not match its profile
  With `trace -- COMMAND` and `profile -- COMMAND`, capprof exits with the command's status.";

/// Which Linux capabilities does this container really need?
///
/// capprof watches every capability check the kernel makes (an eBPF program on cap_capable),
/// attributes each to its cgroup, and tells you what was granted, denied, and why.
#[derive(Debug, Parser)]
#[command(name = "capprof", version, after_long_help = EXIT_CODES_HELP)]
struct Cli {
    /// Log filter for diagnostics on stderr (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, global = true, env = "CAPPROF_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Profile(profile::ProfileArgs),
    Daemon(daemon::DaemonArgs),
    Report(report::ReportArgs),
    Watch(watch::WatchArgs),
    Ps(ps::PsArgs),
    Events(events::EventsArgs),
    Status(status::StatusArgs),
    Compose(compose::ComposeArgs),
    Verify(verify::VerifyArgs),
    Reset(reset::ResetArgs),
    Trace(trace::TraceArgs),
    Doctor(doctor::DoctorArgs),
    Unload(unload::UnloadArgs),
}

/// Parses the command line, runs the subcommand, and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("capprof: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Daemon(args) => daemon::run(args).await,
            Command::Trace(args) => trace::run(args).await,
            Command::Unload(args) => unload::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Ps(args) => ps::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Events(args) => events::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Reset(args) => reset::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Profile(args) => profile::run(args).await,
            Command::Compose(args) => compose::run(args).await,
        }
    });
    match outcome {
        Ok(exit) => exit.into(),
        Err(error) => {
            let exit = Exit::for_error(&error);
            eprintln!("capprof: {error:#}");
            exit.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap checks its definitions (unique ids, valid defaults, ...) only in debug builds and
    /// only for the subcommand being parsed: this checks all of them.
    #[test]
    fn every_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
