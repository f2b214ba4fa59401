//! A real `capprof daemon` process for end-to-end tests: its own state directory, bpffs pin
//! directory and API socket, talking to the harness's Docker engine. Dropping it stops the
//! daemon, unloads its pinned tracer and removes its files.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{api::capprof_binary, docker::DockerEngine};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A `capprof daemon` child process.
#[derive(Debug)]
pub struct DaemonProcess {
    binary: PathBuf,
    docker_host: String,
    work_dir: PathBuf,
    pin_dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl DaemonProcess {
    /// Starts a daemon and waits until its API answers. Panics with the daemon's log otherwise.
    pub fn start(engine: &DockerEngine) -> Self {
        Self::start_with(engine, &[])
    }

    /// [`DaemonProcess::start`] with extra `capprof daemon` arguments.
    pub fn start_with(engine: &DockerEngine, extra_args: &[&str]) -> Self {
        let binary = capprof_binary()
            .expect("the capprof binary is built (cargo build -p capprof) or CAPPROF_BIN is set");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let work_dir = std::env::temp_dir().join(format!("capprof-daemon-test-{tag}"));
        std::fs::create_dir_all(&work_dir).expect("daemon work dir");
        let mut daemon = Self {
            binary,
            docker_host: engine.docker_host().to_owned(),
            work_dir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/capprof-test-{tag}")),
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        daemon.spawn();
        daemon
    }

    /// The API socket, for commands that take `--socket` before other arguments.
    pub fn socket(&self) -> PathBuf {
        self.work_dir.join("capprof.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.work_dir.join("daemon.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `capprof daemon` on this daemon's state, pins and socket, with `extra_args`.
    fn daemon_command(&self, extra_args: &[String]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["daemon", "--poll-interval-ms", "200", "--state-dir"])
            .arg(self.work_dir.join("state"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(self.socket())
            .args(extra_args)
            .env("DOCKER_HOST", &self.docker_host)
            .env("CAPPROF_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    /// While this daemon is down, starts one with other arguments that must refuse to start:
    /// its output. Panics (after stopping it) if it is still running after 30 s.
    pub fn start_expecting_refusal(&self, extra_args: &[&str]) -> Output {
        let extra: Vec<String> = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
        let mut child = self
            .daemon_command(&extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start capprof daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("daemon output");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("daemon output");
        panic!("capprof daemon {extra_args:?} did not refuse to start: {output:?}");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log");
        let child = self
            .daemon_command(&self.extra_args)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start capprof daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("capprof daemon exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("capprof daemon did not answer within 60 s:\n{}", self.log());
    }

    /// `args` with `--socket <this daemon's>` added, before a `--` that starts a command (after
    /// it, the option would go to the command and the CLI would not find the daemon).
    fn with_socket(&self, args: &[&str]) -> Vec<std::ffi::OsString> {
        let split = args
            .iter()
            .position(|arg| *arg == "--")
            .unwrap_or(args.len());
        let mut full: Vec<std::ffi::OsString> = args[..split].iter().map(Into::into).collect();
        full.push("--socket".into());
        full.push(self.socket().into_os_string());
        full.extend(args[split..].iter().map(Into::into));
        full
    }

    /// Runs the `capprof` CLI against this daemon (and its Docker engine).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(self.with_socket(args))
            .env("DOCKER_HOST", &self.docker_host)
            // Should a command embed a tracer after all, it stays inside this daemon's dirs.
            .env(capprof::daemon::STATE_DIR_ENV, self.work_dir.join("state"))
            .env(capprof::daemon::PIN_DIR_ENV, &self.pin_dir)
            .output()
            .expect("run the capprof CLI")
    }

    /// Runs a CLI command that prints one JSON document (`--format json`): its exit code and the
    /// document. Panics with its exit status, stdout and stderr when it printed no JSON.
    pub fn cli_json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let output = self.cli(args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let document = serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!(
                "`capprof {}` printed no JSON ({error}), exit {:?}:\n{stdout}\n{}",
                args.join(" "),
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), document)
    }

    /// Starts the `capprof` CLI against this daemon with stdout piped, e.g. for `watch`.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(&self.binary)
            .args(self.with_socket(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the capprof CLI")
    }

    /// `capprof report TARGET --format json`, or `None` while the daemon knows no such target.
    pub fn report(&self, target: &str) -> Option<serde_json::Value> {
        let output = self.cli(&["report", target, "--format", "json"]);
        if !output.status.success() {
            return None;
        }
        Some(
            serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
                panic!(
                    "report {target} is not JSON ({error}): {}",
                    String::from_utf8_lossy(&output.stdout)
                )
            }),
        )
    }

    /// Polls the report until `done` accepts it; panics with the last report and the log after
    /// `timeout` (a guard against hangs, not a measurement).
    pub fn wait_for_report(
        &self,
        target: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(report) = self.report(target) {
                if done(&report) {
                    return report;
                }
                last = Some(report);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "report {target} never got there; last: {last:#?}\nlog:\n{}",
            self.log()
        );
    }

    /// Kills the daemon with SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same state, pins and socket.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a valid pid and signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.binary)
            .arg("unload")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// The `cap_add` names of a JSON report.
pub fn cap_add(report: &serde_json::Value) -> Vec<String> {
    report["cap_add"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
