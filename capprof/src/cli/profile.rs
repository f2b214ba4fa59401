//! `capprof profile -- COMMAND`: profile every container a command starts, then print each
//! Compose service's minimal cap_add.

use std::{
    io::{IsTerminal, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use capprof::{
    api::{ApiClient, ConnectArgs},
    attach::AttachRequest,
    compose::ComposeProject,
    compose_files::{self, NameOrigin, PROJECT_NAME_ENV, ProjectName},
    daemon::DaemonConfig,
    daemon::DaemonError,
    profile_output,
    profile_run::{self, RunBaseline, RunSnapshot},
    profiler::{Profiler, ProfilerError, SETTLE_TIMEOUT},
    report_output::ReportFormat,
    service::ServiceError,
    service_profiles::{ProfileSource, ProfileSourceError, ProjectProfiles},
};
use tokio::{
    io::AsyncReadExt,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::{
    Exit,
    dirs::{PinDirArg, StateDirArg},
};

const PROFILE_EXIT_CODES: &str = "\
Exit codes:
  the command's own status when it ran (128+N when a signal N ended it), also when capprof
  could not print the profiles afterwards (it says why on stderr);
  when the command did not run, or ran fine and the profiles could not be printed:
  1   failure (the message says what happened)
  2   bad usage
  3   insufficient privileges to trace (no daemon runs, so capprof loads eBPF itself: run as root)
  4   the kernel lacks what capprof needs (BTF, or no way to hook cap_capable)
  7   permission denied on the daemon's socket (run with sudo, or join the `capprof` group)
  127 the command cannot be started";

/// Run a command and profile every container it starts; when it exits, print each Compose
/// service's minimal cap_add with reasons, and exit with the command's status
///
/// Examples:
///   capprof profile -- docker-compose up --abort-on-container-exit
///   capprof profile --compose docker-compose.yml -- make integration-test
///   capprof profile -p shop --format compose -o caps.yml -- ./run-tests.sh
///
/// The running capprof daemon does the tracing when there is one; otherwise capprof traces in
/// this process for as long as the command runs (root needed), keeping the profiles in the same
/// state directory as the daemon. Either way the profiles of several runs of one project merge,
/// so run the tests that exercise different paths one after another, then apply the result with
/// `capprof compose apply FILE`.
///
/// The project is the one named with --project; otherwise the Compose file's (--compose, or the
/// file docker-compose finds here, named as docker-compose names it) when its containers ran;
/// otherwise the projects of the containers that ran (their com.docker.compose.project label).
/// The file's services are listed in its order, and those that made no check are named.
///
/// On a terminal a progress line (time, containers, checks) stays below the command's output,
/// which passes through capprof; with --no-progress, or when stderr is not a terminal, the
/// command gets the terminal itself and capprof prints a plain progress line now and then.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, after_long_help = PROFILE_EXIT_CODES)]
pub struct ProfileArgs {
    /// The Compose file(s) the command uses, in `-f` order (default: the one docker-compose
    /// would find in this directory, if any).
    #[arg(long = "compose", short = 'f', value_name = "FILE")]
    compose: Vec<PathBuf>,

    /// The Compose project, when the command names one (`docker-compose -p NAME`).
    #[arg(long, short = 'p', value_name = "NAME")]
    project: Option<String>,

    /// How to print each service's recommendation.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,

    /// Write the profiles to this file instead of standard output, which the command's own
    /// output shares (useful with --format json or compose).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,

    /// No progress line: the command writes to the terminal directly.
    #[arg(long)]
    no_progress: bool,

    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    pin_dir: PinDirArg,

    /// How to hook cap_capable when capprof traces in this process.
    #[arg(long, value_enum, default_value_t = AttachRequest::Auto)]
    attach: AttachRequest,

    #[command(flatten)]
    connect: ConnectArgs,

    /// The command to run: `docker-compose up`, a test runner, a script.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The library's wrapped errors, unwrapped so that the exit code sees what happened.
fn exit_error(error: ProfilerError) -> anyhow::Error {
    match error {
        ProfilerError::Client(client) => client.into(),
        ProfilerError::Embedded(ServiceError::Daemon(DaemonError::Trace(trace))) => trace.into(),
        other => other.into(),
    }
}

pub(super) fn source_error(error: ProfileSourceError) -> anyhow::Error {
    match error {
        ProfileSourceError::Client(client) => client.into(),
        other => other.into(),
    }
}

pub async fn run(args: ProfileArgs) -> anyhow::Result<Exit> {
    let config = DaemonConfig {
        state_dir: args.state_dir.path.clone(),
        pin_root: args.pin_dir.path.clone(),
        attach: args.attach,
        ..DaemonConfig::default()
    };
    let mut profiler = Profiler::connect_or_embed(&args.connect.target(), config)
        .await
        .map_err(exit_error)?;
    if profiler.is_embedded() {
        eprintln!(
            "capprof: no capprof daemon is running: tracing in this process while the command runs (profiles kept in {})",
            args.state_dir.path.display()
        );
    } else {
        eprintln!("capprof: profiling with the running capprof daemon");
    }
    let outcome = profile_command(&args, &mut profiler).await;
    let finished = profiler.finish().await.map_err(exit_error);
    let (status, printed) = match outcome {
        Ok(done) => done,
        Err(error) => {
            finished?;
            if error.downcast_ref::<CommandNotStarted>().is_some() {
                eprintln!("capprof: {error:#}");
                return Ok(Exit::Command(127));
            }
            return Err(error);
        }
    };
    let printed = printed.and(finished);
    let exit = command_exit(status);
    match (exit, printed) {
        (Exit::Success, Err(error)) => Err(error),
        (exit, Err(error)) => {
            eprintln!("capprof: {error:#}");
            Ok(exit)
        }
        (exit, Ok(())) => Ok(exit),
    }
}

/// Runs the command and prints the profiles; the command's status, and whether printing worked.
async fn profile_command(
    args: &ProfileArgs,
    profiler: &mut Profiler,
) -> anyhow::Result<(ExitStatus, anyhow::Result<()>)> {
    let mut client = profiler.client().clone();
    let baseline = RunBaseline::new(&client.containers(false).await?);
    let mut display = Display::new(if args.no_progress {
        Mode::Off
    } else if std::io::stderr().is_terminal() {
        Mode::Terminal
    } else {
        Mode::Plain
    });
    let status = run_command(&args.command, &mut display, &mut client, &baseline).await?;
    eprintln!(
        "capprof: the command exited ({}); waiting for its last checks to be attributed",
        describe_status(status)
    );
    let printed = async {
        // capprof's handlers stay installed once the command is gone: Ctrl-C now cuts the wait
        // short instead of being swallowed.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            settled = settle(profiler, &mut client, &baseline) => settled?,
            _ = interrupt.recv() => eprintln!("capprof: interrupted: the profiles as they are now"),
            _ = terminate.recv() => eprintln!("capprof: terminated: the profiles as they are now"),
        }
        print_profiles(args, &mut client, &baseline).await
    }
    .await;
    Ok((status, printed))
}

/// How long the run's containers' counts must stay unchanged, when other checks are still
/// pending, before the profiles count as complete.
const STABLE_FOR: Duration = Duration::from_secs(2);

/// Waits until the command's checks are folded and attributed. Checks still pending after a
/// few polls are usually another engine's containers (their cgroups look like containers but
/// this engine does not know them, so the daemon waits before calling them the host's): then
/// it is enough that the run's own containers' counts stop changing.
async fn settle(
    profiler: &mut Profiler,
    client: &mut ApiClient,
    baseline: &RunBaseline,
) -> anyhow::Result<()> {
    let settled = profiler
        .settle(Duration::from_secs(3))
        .await
        .map_err(exit_error)?;
    if settled.pending_keys == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = baseline.snapshot(&client.containers(false).await?);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = baseline.snapshot(&client.containers(false).await?);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= STABLE_FOR {
            return Ok(());
        }
    }
    eprintln!(
        "capprof: the containers' checks were still being counted after {} s; the profiles below may lack the last ones (`capprof report` later has them)",
        SETTLE_TIMEOUT.as_secs()
    );
    Ok(())
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn command_exit(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(0), _) => Exit::Success,
        (Some(code), _) => Exit::Command(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => Exit::Command(128u8.saturating_add(signal as u8)),
        (None, None) => Exit::Failure,
    }
}

async fn print_profiles(
    args: &ProfileArgs,
    client: &mut ApiClient,
    baseline: &RunBaseline,
) -> anyhow::Result<()> {
    let snapshot = baseline.snapshot(&client.containers(false).await?);
    let files = match args.compose.is_empty() {
        false => Some(args.compose.clone()),
        // The file docker-compose would use here, if any; no file is fine too.
        true => std::env::current_dir()
            .ok()
            .and_then(|cwd| compose_files::resolve_files(&[], None, &cwd).ok()),
    };
    let explicit = args.project.as_deref().map(|name| ProjectName {
        name: compose_files::normalize(name),
        origin: NameOrigin::Flag,
    });
    let environment = std::env::var(PROJECT_NAME_ENV).ok();
    let from_file = match &files {
        Some(files) => Some(compose_files::project_name(
            None,
            environment.as_deref(),
            files,
        )?),
        None => None,
    };
    let file_services = match &files {
        Some(files) => match ComposeProject::load(files) {
            Ok(project) => Some(project.service_names()),
            Err(error) => {
                eprintln!("capprof: listing the services from the Compose file: {error}");
                None
            }
        },
        None => None,
    };
    let projects =
        profile_run::projects_to_report(explicit.as_ref(), from_file.as_ref(), &snapshot);
    if let Some(explicit) = &explicit {
        let seen = snapshot.projects();
        if !seen.is_empty() && !seen.contains(&explicit.name) {
            eprintln!(
                "capprof: note: the command's containers belong to project(s) {}, not to `{}` named with --project",
                seen.join(", "),
                explicit.name
            );
        }
    }
    let mut source = ProfileSource::Api(client.clone());
    let mut profiles: Vec<ProjectProfiles> = Vec::new();
    for project in &projects {
        let file_belongs = from_file
            .as_ref()
            .is_some_and(|file| file.name == project.name)
            || projects.len() == 1;
        let services = profile_run::services_to_report(
            &project.name,
            file_services.as_deref().filter(|_| file_belongs),
            &snapshot,
        );
        profiles.push(
            source
                .project(&project.name, &services)
                .await
                .map_err(source_error)?,
        );
    }
    summarize(&snapshot, &projects);
    let rendered = profile_output::render(&profiles, args.format);
    match &args.output {
        Some(path) => std::fs::write(path, rendered)
            .with_context(|| format!("writing the profiles to {}", path.display()))?,
        None => {
            // Not print!: a closed stdout must end in an error, not a panic that skips the
            // tracer's cleanup.
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(rendered.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing the profiles to standard output")?;
        }
    }
    if args.format == ReportFormat::Table && profiles.iter().any(|p| !p.profiled.is_empty()) {
        // As the user would type it: relative to the current directory when it is below it.
        let cwd = std::env::current_dir().unwrap_or_default();
        let file = files
            .as_ref()
            .and_then(|files| files.first())
            .map(|file| {
                file.strip_prefix(&cwd)
                    .unwrap_or(file)
                    .display()
                    .to_string()
            })
            .unwrap_or_else(|| "docker-compose.yml".to_owned());
        eprintln!(
            "capprof: write these into the Compose file with `capprof compose apply {file}` (`--dry-run` shows the diff first)"
        );
    }
    Ok(())
}

fn summarize(snapshot: &RunSnapshot, projects: &[ProjectName]) {
    let names: Vec<String> = projects
        .iter()
        .map(|project| format!("{} (named by {})", project.name, project.origin))
        .collect();
    eprintln!(
        "capprof: {} container(s) ran, {} capability checks; project{}: {}",
        snapshot.containers.len(),
        snapshot.checks(),
        if names.len() == 1 { "" } else { "s" },
        if names.is_empty() {
            "none (no container with Compose labels ran)".to_owned()
        } else {
            names.join(", ")
        }
    );
}

/// Runs the command to its end; on a terminal its output passes through [`Display`].
async fn run_command(
    command: &[String],
    display: &mut Display,
    client: &mut ApiClient,
    baseline: &RunBaseline,
) -> anyhow::Result<ExitStatus> {
    let mut process = tokio::process::Command::new(&command[0]);
    process.args(&command[1..]);
    if display.mode == Mode::Terminal {
        process.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut child = process.spawn().map_err(|source| CommandNotStarted {
        command: command[0].clone(),
        source,
    })?;
    let (chunks, mut output) = mpsc::channel::<(Stream, Vec<u8>)>(64);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, Stream::Out, chunks.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, Stream::Err, chunks.clone()));
    }
    drop(chunks);

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            Some((stream, bytes)) = output.recv() => display.output(stream, &bytes),
            _ = ticker.tick() => {
                // Progress is best effort: a failed poll shows nothing new.
                if let Ok(containers) = client.containers(false).await {
                    display.progress(&baseline.snapshot(&containers), started.elapsed().as_secs());
                }
            }
            // The terminal sent it to the command too: wait for the command to end.
            _ = interrupt.recv() => {}
            // Meant for capprof alone: passed on, and capprof cleans up once the command ends.
            _ = terminate.recv() => forward_signal(&child, libc::SIGTERM),
            _ = hangup.recv() => forward_signal(&child, libc::SIGHUP),
        }
    };
    // What the command wrote last; a background process it left holding the pipes must not
    // keep capprof waiting.
    let drained = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(drained);
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some((stream, bytes)) => display.output(stream, &bytes),
                None => break,
            },
            _ = &mut drained => break,
        }
    }
    display.clear();
    Ok(status)
}

fn forward_signal(child: &tokio::process::Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which stays ours until it is reaped.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

/// The command could not be started (exit 127, as a shell says).
#[derive(Debug, thiserror::Error)]
#[error("cannot start `{command}`: {source}")]
pub struct CommandNotStarted {
    command: String,
    #[source]
    source: std::io::Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

async fn forward(
    mut from: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    to: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut buffer = vec![0u8; 8192];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if to.send((stream, buffer[..read].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A line redrawn in place below the command's output.
    Terminal,
    /// A line now and then.
    Plain,
    Off,
}

/// How often a plain progress line may repeat when only the check count changed.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// The progress display on stderr.
struct Display {
    mode: Mode,
    line: String,
    drawn: bool,
    /// The command's last output did not end a line: drawing now would split it.
    mid_line: bool,
    last_plain: Option<(usize, u64, Instant)>,
}

impl Display {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            line: String::new(),
            drawn: false,
            mid_line: false,
            last_plain: None,
        }
    }

    fn progress(&mut self, snapshot: &RunSnapshot, elapsed_secs: u64) {
        let line = snapshot.progress_line(elapsed_secs);
        match self.mode {
            Mode::Off => {}
            Mode::Terminal => {
                self.line = line;
                self.draw();
            }
            Mode::Plain => {
                let now = (snapshot.containers.len(), snapshot.checks());
                let due = match self.last_plain {
                    None => now.0 > 0,
                    Some((containers, checks, at)) => {
                        containers != now.0 || (checks != now.1 && at.elapsed() >= PLAIN_EVERY)
                    }
                };
                if due {
                    eprintln!("{line}");
                    self.last_plain = Some((now.0, now.1, Instant::now()));
                }
            }
        }
    }

    fn draw(&mut self) {
        if self.mid_line || self.line.is_empty() {
            return;
        }
        let width = terminal_width().saturating_sub(1).max(20);
        let shown: String = self.line.chars().take(width).collect();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{shown}");
        let _ = stderr.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) {
        self.clear();
        let _ = match stream {
            Stream::Out => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Stream::Err => {
                let mut err = std::io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
        };
        self.mid_line = !bytes.ends_with(b"\n");
        self.draw();
    }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize on a terminal and fails harmlessly otherwise.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    match ok && size.ws_col > 0 {
        true => usize::from(size.ws_col),
        false => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_shell_convention() {
        assert_eq!(command_exit(ExitStatus::from_raw(0)), Exit::Success);
        assert_eq!(command_exit(ExitStatus::from_raw(3 << 8)), Exit::Command(3));
        // Killed by SIGKILL (9): 128 + 9.
        assert_eq!(command_exit(ExitStatus::from_raw(9)), Exit::Command(137));
    }
}
