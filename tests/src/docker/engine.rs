//! A Docker engine for the tests: the one already running, or a dockerd the harness starts and
//! stops.
//!
//! [`DockerEngine::ensure`] picks, in order:
//! 1. `DOCKER_HOST`, when set: that engine must answer; the harness never starts or stops it.
//! 2. The engine at `/var/run/docker.sock`, when it answers; never started or stopped either.
//! 3. A dockerd of the harness's own, on its own socket ([`HARNESS_SOCKET`]), without bridge
//!    network, iptables rules or IP forwarding, so that it changes nothing on the host's
//!    network. Its images live in `/var/lib/capprof-test-docker/data` and survive runs; its
//!    runtime state lives in `/run/capprof-test-docker`.
//!
//! Lifetime of the harness's dockerd. Rust's test harness has no global teardown and several
//! test binaries (and engineers) may use the engine at once, so the engine is leased:
//! - Every process that uses it holds a lease, a file named after its pid and start time in
//!   `/run/capprof-test-docker/leases`. All changes happen under an exclusive `flock` on
//!   `/var/lib/capprof-test-docker/lock`.
//! - The first process finds no live engine and starts one; the others reuse it.
//! - At exit (an `atexit` handler: it runs when the test binary returns or calls `exit`, also
//!   after failed tests) a process drops its lease; the last one stops dockerd by pid (SIGTERM,
//!   then SIGKILL after a minute), unmounts anything left below the engine's roots, removes
//!   what the engine left on the host (see the baseline module) and the runtime directory.
//! - A process that dies without running its handler (SIGKILL) leaves a stale lease, which the
//!   next user prunes (its pid is gone or belongs to another process now); the engine then runs
//!   until that next user's last lease ends. A harness dockerd found running is recognised by
//!   pid and start time, so the harness never signals a process it did not start.
//!
//! Within one test binary, tests run in parallel threads: each holds an [`EngineUse`] (a shared
//! lock) while it uses the engine, and [`EngineUse::restart_engine`] takes the lock exclusively,
//! so a restart never pulls the engine from under another test.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::TcpStream,
    ops::Deref,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Once, OnceLock, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use capprof::docker::EngineAddress;

use super::{
    baseline::HostBaseline,
    process::{self, ProcessId},
};

/// The engine the docker CLI uses when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Where the harness's own dockerd listens.
pub const HARNESS_SOCKET: &str = "/run/capprof-test-docker/docker.sock";

const STATE_DIR: &str = "/var/lib/capprof-test-docker";
const RUN_DIR: &str = "/run/capprof-test-docker";

/// How long dockerd may take to answer after it starts. It answers in about a second here;
/// a loaded CI machine gets far more.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dockerd may take to stop its containers and exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Why the harness has no engine to offer, or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "DOCKER_HOST={host} is set, but no Docker engine answers there; start it, or unset DOCKER_HOST to let the harness use {DEFAULT_SOCKET} or start its own dockerd"
    )]
    NotAnswering { host: String },
    #[error(
        "no Docker engine answers at {DEFAULT_SOCKET}, and the harness cannot start one: {reason}"
    )]
    CannotStart { reason: String },
    #[error(
        "dockerd did not answer on {socket} within {timeout:?}; its log ({log}) ends with:\n{log_tail}"
    )]
    StartFailed {
        socket: PathBuf,
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Cli {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "the Docker engine at {host} is not the harness's own dockerd; the harness only restarts what it started"
    )]
    NotOwned { host: String },
    #[error(
        "other processes use the harness's dockerd too (pids {pids:?}); restarting it would break their tests"
    )]
    Shared { pids: Vec<u32> },
    #[error("{0}")]
    Unavailable(String),
}

/// A Docker engine the tests may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerEngine {
    docker_host: String,
    owned: bool,
}

static ENGINE: OnceLock<Result<DockerEngine, String>> = OnceLock::new();
/// Tests hold it shared while they use the engine; a restart holds it exclusively.
static USERS: RwLock<()> = RwLock::new(());

/// The engine for the duration of a test. Derefs to [`DockerEngine`].
#[derive(Debug)]
pub struct EngineUse {
    engine: &'static DockerEngine,
    _shared: RwLockReadGuard<'static, ()>,
}

impl Deref for EngineUse {
    type Target = DockerEngine;

    fn deref(&self) -> &DockerEngine {
        self.engine
    }
}

impl DockerEngine {
    /// The engine for this test process (see the module documentation); the first call decides,
    /// later calls get the same engine or the same error.
    pub fn ensure() -> Result<EngineUse, HarnessError> {
        let engine = ENGINE
            .get_or_init(|| acquire(&EnginePaths::standard()).map_err(|error| error.to_string()));
        match engine {
            Ok(engine) => Ok(EngineUse {
                engine,
                _shared: USERS
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            }),
            Err(reason) => Err(HarnessError::Unavailable(reason.clone())),
        }
    }

    /// The `DOCKER_HOST` value that reaches this engine.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    /// The address for [`capprof::docker::connect`].
    pub fn address(&self) -> EngineAddress {
        EngineAddress::parse(&self.docker_host)
            .expect("the harness only uses addresses it can parse")
    }

    /// Whether the harness started this engine (and may restart it).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// A docker CLI command for this engine (`CAPPROF_TEST_DOCKER_CLI`, else `docker` on PATH).
    pub fn command(&self) -> Command {
        let program =
            std::env::var_os("CAPPROF_TEST_DOCKER_CLI").unwrap_or_else(|| "docker".into());
        let mut command = Command::new(program);
        command.env("DOCKER_HOST", &self.docker_host);
        command
    }

    /// Runs the docker CLI and returns its standard output, trimmed.
    pub fn cli<I, S>(&self, args: I) -> Result<String, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.command();
        command.args(args);
        run(&mut command)
    }
}

/// Runs a command and returns its standard output, trimmed, or its standard error as the error.
pub(crate) fn run(command: &mut Command) -> Result<String, HarnessError> {
    let description = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Io {
            action: "cannot run",
            path: PathBuf::from(command.get_program()),
            source,
        })?;
    if !output.status.success() {
        return Err(HarnessError::Cli {
            command: description,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl EngineUse {
    /// Stops the harness's dockerd and starts it again, as an engine restart or upgrade does;
    /// waits until it answers. Only for an engine the harness owns and no other process uses.
    /// Other tests of this binary wait meanwhile.
    pub fn restart_engine(self) -> Result<EngineUse, HarnessError> {
        let engine = self.engine;
        drop(self);
        if !engine.owned {
            return Err(HarnessError::NotOwned {
                host: engine.docker_host.clone(),
            });
        }
        let exclusive = USERS
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outcome = restart(&EnginePaths::standard());
        drop(exclusive);
        outcome?;
        Ok(EngineUse {
            engine,
            _shared: USERS
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        })
    }
}

/// Where the harness keeps its engine's files.
#[derive(Clone, Debug)]
struct EnginePaths {
    /// Persistent: lock, images, log.
    state_dir: PathBuf,
    /// Volatile: socket, exec root, pid record, leases, baseline.
    run_dir: PathBuf,
}

impl EnginePaths {
    fn standard() -> Self {
        Self {
            state_dir: STATE_DIR.into(),
            run_dir: RUN_DIR.into(),
        }
    }

    fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    fn data_root(&self) -> PathBuf {
        self.state_dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.state_dir.join("dockerd.log")
    }

    fn trust_key(&self) -> PathBuf {
        self.state_dir.join("key.json")
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("docker.sock")
    }

    fn pidfile(&self) -> PathBuf {
        self.run_dir.join("dockerd.pid")
    }

    fn exec_root(&self) -> PathBuf {
        self.run_dir.join("exec")
    }

    fn config_file(&self) -> PathBuf {
        self.run_dir.join("daemon.json")
    }

    fn record(&self) -> PathBuf {
        self.run_dir.join("engine")
    }

    fn baseline(&self) -> PathBuf {
        self.run_dir.join("baseline")
    }

    fn leases(&self) -> PathBuf {
        self.run_dir.join("leases")
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.to_path_buf();
    move |source| HarnessError::Io {
        action,
        path,
        source,
    }
}

/// The exclusive lock on the harness's state, released when the file closes on drop.
struct StateLock {
    _file: File,
}

impl StateLock {
    fn acquire(paths: &EnginePaths) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(&paths.state_dir)
            .map_err(io_error("cannot create", &paths.state_dir))?;
        let path = paths.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("cannot open", &path))?;
        file.lock().map_err(io_error("cannot lock", &path))?;
        Ok(Self { _file: file })
    }
}

/// Whether the engine at `host` (`unix://` or `tcp://`) answers `GET /_ping`.
fn answers(host: &str) -> bool {
    match EngineAddress::parse(host) {
        Ok(EngineAddress::Unix(path)) => UnixStream::connect(path).is_ok_and(ping),
        Ok(EngineAddress::Tcp { host, port }) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .ok()
                .and_then(|mut addresses| addresses.next())
                .and_then(|address| {
                    TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()
                })
                .is_some_and(ping)
        }
        Err(_) => false,
    }
}

fn ping<S: Read + Write + SetTimeouts>(mut stream: S) -> bool {
    stream.set_timeouts(Duration::from_secs(10));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    // HTTP/1.0: the engine closes the connection after answering.
    let _ = stream.read_to_string(&mut response);
    let status_line = response.lines().next().unwrap_or_default();
    status_line.starts_with("HTTP/1.") && status_line.contains(" 200 ")
}

trait SetTimeouts {
    fn set_timeouts(&self, timeout: Duration);
}

impl SetTimeouts for UnixStream {
    fn set_timeouts(&self, timeout: Duration) {
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
}

impl SetTimeouts for TcpStream {
    fn set_timeouts(&self, timeout: Duration) {
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
}

fn acquire(paths: &EnginePaths) -> Result<DockerEngine, HarnessError> {
    if let Some(host) = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|host| !host.trim().is_empty())
    {
        return if answers(&host) {
            Ok(DockerEngine {
                docker_host: host,
                owned: false,
            })
        } else {
            Err(HarnessError::NotAnswering { host })
        };
    }
    let default = format!("unix://{DEFAULT_SOCKET}");
    if answers(&default) {
        return Ok(DockerEngine {
            docker_host: default,
            owned: false,
        });
    }
    let dockerd = dockerd_binary()?;
    let lock = StateLock::acquire(paths)?;
    let me = ProcessId::current();
    let harness_host = format!("unix://{}", paths.socket().display());
    match running_engine(paths) {
        Some(engine) if wait_until_answering(&harness_host, engine, Duration::from_secs(30)) => {
            tracing::debug!(%engine, "using the harness's dockerd a sibling started");
            if live_leases(paths).is_empty() {
                // Its users are gone without stopping it (killed): what runs there is theirs.
                remove_leftover_containers(&harness_host);
            }
        }
        Some(engine) => {
            tracing::warn!(%engine, "the harness's dockerd does not answer; starting a new one");
            process::terminate(engine, STOP_GRACE);
            start(paths, &dockerd, true)?;
        }
        None => {
            start(paths, &dockerd, true)?;
        }
    }
    add_lease(paths, me)?;
    register_release_at_exit();
    drop(lock);
    Ok(DockerEngine {
        docker_host: harness_host,
        owned: true,
    })
}

fn dockerd_binary() -> Result<PathBuf, HarnessError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(HarnessError::CannotStart {
            reason: "starting dockerd needs root; run the tests as root, or start an engine and set DOCKER_HOST".into(),
        });
    }
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    for directory in candidates {
        let binary = directory.join("dockerd");
        if binary.is_file() {
            return Ok(binary);
        }
    }
    Err(HarnessError::CannotStart {
        reason: "no dockerd binary on PATH or in /usr/sbin; install it (Debian: apt-get install docker.io)".into(),
    })
}

/// The harness's dockerd, if its record names a process that still runs.
fn running_engine(paths: &EnginePaths) -> Option<ProcessId> {
    let text = std::fs::read_to_string(paths.record()).ok()?;
    ProcessId::parse(&text).filter(ProcessId::is_alive)
}

fn wait_until_answering(host: &str, engine: ProcessId, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if answers(host) {
            return true;
        }
        if !engine.is_alive() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts dockerd; `fresh` clears what a previous engine left and removes leftover containers.
/// Called with the state lock held.
fn start(paths: &EnginePaths, dockerd: &Path, fresh: bool) -> Result<ProcessId, HarnessError> {
    if fresh {
        clear_leftovers(paths);
    }
    for directory in [&paths.run_dir, &paths.leases(), &paths.state_dir] {
        std::fs::create_dir_all(directory).map_err(io_error("cannot create", directory))?;
    }
    let baseline_file = paths.baseline();
    if !baseline_file.exists() {
        let baseline = HostBaseline::capture();
        std::fs::write(&baseline_file, baseline.serialize())
            .map_err(io_error("cannot write", &baseline_file))?;
    }
    let config = paths.config_file();
    // The trust key dockerd 20.10 creates goes to the harness's directory, not /etc/docker.
    let settings = format!(
        "{{\"deprecated-key-path\": \"{}\"}}\n",
        paths.trust_key().display()
    );
    std::fs::write(&config, settings).map_err(io_error("cannot write", &config))?;
    let log_path = paths.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_error("cannot open", &log_path))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(io_error("cannot open", &log_path))?;
    let host = format!("unix://{}", paths.socket().display());
    let child = Command::new(dockerd)
        .arg("--config-file")
        .arg(&config)
        .arg("--data-root")
        .arg(paths.data_root())
        .arg("--exec-root")
        .arg(paths.exec_root())
        .arg("--pidfile")
        .arg(paths.pidfile())
        .arg("--host")
        .arg(&host)
        // Nothing on the host's network: no docker0, no iptables rules, no forwarding.
        .args([
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .spawn()
        .map_err(io_error("cannot start", dockerd))?;
    let engine = process::adopt(child);
    let record = paths.record();
    std::fs::write(&record, engine.to_string()).map_err(io_error("cannot write", &record))?;
    tracing::info!(%engine, %host, "started the harness's dockerd");
    if !wait_until_answering(&host, engine, START_TIMEOUT) {
        process::terminate(engine, STOP_GRACE);
        let _ = std::fs::remove_file(&record);
        return Err(HarnessError::StartFailed {
            socket: paths.socket(),
            timeout: START_TIMEOUT,
            log_tail: log_tail(&log_path),
            log: log_path,
        });
    }
    if fresh {
        remove_leftover_containers(&host);
    }
    Ok(engine)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The harness's data root holds only its own tests' containers: any container there is left
/// over from a run that was killed before its cleanup (some restart on engine start).
fn remove_leftover_containers(host: &str) {
    let engine = DockerEngine {
        docker_host: host.to_owned(),
        owned: true,
    };
    let Ok(ids) = engine.cli(["ps", "--all", "--quiet", "--no-trunc"]) else {
        return;
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        tracing::info!(
            count = ids.len(),
            "removing containers left over from an earlier run"
        );
        let _ = engine.cli(["rm", "--force"].into_iter().chain(ids));
    }
}

/// What a previous engine that died without cleaning up may have left: mounts, socket, exec root.
fn clear_leftovers(paths: &EnginePaths) {
    for root in [paths.exec_root(), paths.data_root()] {
        unmount_below(&root);
    }
    for file in [paths.socket(), paths.pidfile(), paths.record()] {
        let _ = std::fs::remove_file(file);
    }
    if mounts_below(&paths.exec_root()).is_empty() {
        let _ = std::fs::remove_dir_all(paths.exec_root());
    }
}

fn add_lease(paths: &EnginePaths, process: ProcessId) -> Result<(), HarnessError> {
    let directory = paths.leases();
    std::fs::create_dir_all(&directory).map_err(io_error("cannot create", &directory))?;
    let lease = directory.join(process.to_string());
    std::fs::write(&lease, b"").map_err(io_error("cannot write", &lease))
}

/// The processes holding a lease; leases of processes that are gone are removed.
fn live_leases(paths: &EnginePaths) -> Vec<ProcessId> {
    let Ok(entries) = std::fs::read_dir(paths.leases()) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        match ProcessId::parse(&name.to_string_lossy()) {
            Some(holder) if holder.is_alive() => live.push(holder),
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    live
}

static LEASED: AtomicBool = AtomicBool::new(false);
static REGISTER: Once = Once::new();

fn register_release_at_exit() {
    LEASED.store(true, Ordering::SeqCst);
    REGISTER.call_once(|| {
        // SAFETY: registers a function with no preconditions that never unwinds into libc.
        let status = unsafe { libc::atexit(release_at_exit) };
        if status != 0 {
            tracing::warn!(
                "cannot register the engine's release at exit; the next test run will stop it"
            );
        }
    });
}

extern "C" fn release_at_exit() {
    if !LEASED.swap(false, Ordering::SeqCst) {
        return;
    }
    // A panic must not unwind into libc.
    let _ = std::panic::catch_unwind(|| release(&EnginePaths::standard(), ProcessId::current()));
}

/// Drops `holder`'s lease; the last one out stops the engine and cleans up.
fn release(paths: &EnginePaths, holder: ProcessId) {
    let Ok(_lock) = StateLock::acquire(paths) else {
        return;
    };
    let _ = std::fs::remove_file(paths.leases().join(holder.to_string()));
    if live_leases(paths).is_empty() {
        shut_down(paths);
    }
}

/// Stops the harness's dockerd and puts the host back as it was. Called with the lock held.
fn shut_down(paths: &EnginePaths) {
    if let Some(engine) = running_engine(paths)
        && !process::terminate(engine, STOP_GRACE)
    {
        report(format_args!(
            "the harness's dockerd ({engine}) did not exit; stop it by hand"
        ));
        return;
    }
    // The shims outlive dockerd by a moment while they clean up after their containers.
    for shim in engine_shims(paths) {
        if !process::wait_for_exit(shim, STOP_GRACE) && !process::terminate(shim, STOP_GRACE) {
            report(format_args!(
                "a containerd shim of the harness's dockerd ({shim}) did not exit"
            ));
        }
    }
    for root in [paths.data_root(), paths.exec_root()] {
        unmount_below(&root);
    }
    if let Ok(text) = std::fs::read_to_string(paths.baseline()) {
        let left = HostBaseline::parse(&text).restore();
        if !left.is_empty() {
            report(format_args!(
                "dockerd left these behind and they are not empty: {left:?}"
            ));
        }
    }
    let still_mounted = mounts_below(&paths.run_dir);
    if still_mounted.is_empty() {
        let _ = std::fs::remove_dir_all(&paths.run_dir);
    } else {
        report(format_args!(
            "still mounted below {}: {still_mounted:?}",
            paths.run_dir.display()
        ));
    }
}

/// The containerd shims of the harness's engine: their command line names its containerd socket.
fn engine_shims(paths: &EnginePaths) -> Vec<ProcessId> {
    let socket = paths.exec_root().join("containerd").join("containerd.sock");
    let socket = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|byte| *byte == 0).any(|arg| arg == socket))
        })
        .filter_map(ProcessId::of)
        .collect()
}

/// Stops and starts the engine; called with the exclusive use lock held.
fn restart(paths: &EnginePaths) -> Result<(), HarnessError> {
    let _lock = StateLock::acquire(paths)?;
    let me = ProcessId::current();
    let others: Vec<u32> = live_leases(paths)
        .into_iter()
        .filter(|holder| *holder != me)
        .map(|holder| holder.pid)
        .collect();
    if !others.is_empty() {
        return Err(HarnessError::Shared { pids: others });
    }
    if let Some(engine) = running_engine(paths) {
        process::terminate(engine, STOP_GRACE);
    }
    start(paths, &dockerd_binary()?, false)?;
    Ok(())
}

/// At exit the test harness's output capture is gone; say it on stderr directly.
fn report(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "capprof test harness: {message}");
}

/// Mount points at or below `root`, deepest first.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(root))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts.dedup();
    mounts
}

fn unmount_below(root: &Path) {
    for point in mounts_below(root) {
        let Ok(path) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_paths(name: &str) -> EnginePaths {
        let root =
            std::env::temp_dir().join(format!("capprof-engine-{name}-{}", std::process::id()));
        EnginePaths {
            state_dir: root.join("state"),
            run_dir: root.join("run"),
        }
    }

    #[test]
    fn leases_of_gone_processes_are_pruned() {
        let paths = scratch_paths("leases");
        let me = ProcessId::current();
        add_lease(&paths, me).unwrap();
        let gone = ProcessId {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        add_lease(&paths, gone).unwrap();
        std::fs::write(paths.leases().join("not-a-lease"), b"").unwrap();

        assert_eq!(live_leases(&paths), vec![me]);
        let left: Vec<_> = std::fs::read_dir(paths.leases())
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(paths.state_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_record_names_a_running_engine_only_while_it_runs() {
        let paths = scratch_paths("record");
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let engine = process::adopt(child);
        std::fs::write(paths.record(), engine.to_string()).unwrap();
        assert_eq!(running_engine(&paths), Some(engine));

        assert!(process::terminate(engine, Duration::from_secs(30)));
        assert_eq!(running_engine(&paths), None);
        std::fs::remove_dir_all(paths.run_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_stale_socket_does_not_answer() {
        let paths = scratch_paths("stale");
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        let socket = paths.socket();
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(!answers(&format!("unix://{}", socket.display())));
        assert!(!answers("unix:///nonexistent/docker.sock"));
        std::fs::remove_dir_all(paths.run_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_listener_answering_ping_counts_as_an_engine() {
        let paths = scratch_paths("ping");
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        let socket = paths.socket();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let read = stream.read(&mut request).unwrap();
            assert!(request[..read].starts_with(b"GET /_ping "));
            stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .unwrap();
        });
        assert!(answers(&format!("unix://{}", socket.display())));
        server.join().unwrap();
        std::fs::remove_dir_all(paths.run_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn mounts_below_lists_deepest_first() {
        let mounts = mounts_below(Path::new("/"));
        assert!(mounts.iter().any(|point| point == Path::new("/")));
        let depths: Vec<usize> = mounts
            .iter()
            .map(|point| point.components().count())
            .collect();
        assert!(
            depths.windows(2).all(|pair| pair[0] >= pair[1]),
            "{mounts:?}"
        );
    }
}
