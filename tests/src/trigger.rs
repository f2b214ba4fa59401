//! Runs the `capprof-trigger` program (see `src/bin/capprof-trigger.rs`).

use std::{path::PathBuf, process::Command};

use crate::cgroups::TestCgroup;

/// The trigger binary: `$CAPPROF_TRIGGER`, else next to the running test executable (cargo puts
/// test binaries in `deps/`, bins one level up).
pub fn trigger_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPPROF_TRIGGER") {
        return path.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        for directory in exe.ancestors().skip(1).take(2) {
            let candidate = directory.join("capprof-trigger");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "capprof-trigger not found next to the test binary; build it (cargo build -p capprof-tests) or set CAPPROF_TRIGGER"
    )
}

/// One run of the trigger.
#[derive(Debug, Clone)]
pub struct Trigger<'a> {
    pub operations: &'a [&'a str],
    pub times: u32,
    pub drop_caps: bool,
    /// A task name for the trigger to take before its operations.
    pub comm: Option<&'a str>,
}

impl Trigger<'_> {
    /// Runs the trigger inside `cgroup` and panics unless every operation had the expected
    /// outcome (granted, or denied with `drop_caps`).
    /// Returns the trigger's pid.
    pub fn run_in(&self, cgroup: &TestCgroup) -> u32 {
        let workdir = std::env::temp_dir().join(format!(
            "capprof-trigger-work-{}-{}",
            std::process::id(),
            cgroup.id()
        ));
        std::fs::create_dir_all(&workdir).expect("trigger workdir");
        let mut command = Command::new(trigger_path());
        command
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--workdir")
            .arg(&workdir)
            .arg("--times")
            .arg(self.times.to_string());
        if self.drop_caps {
            command.arg("--drop-caps");
        }
        if let Some(comm) = self.comm {
            command.arg("--comm").arg(comm);
        }
        command.args(self.operations);
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("run {}: {error}", trigger_path().display()));
        let pid = child.id();
        let output = child.wait_with_output().expect("wait for the trigger");
        let _ = std::fs::remove_dir_all(&workdir);
        assert!(
            output.status.success(),
            "trigger {:?} (drop_caps={}) failed with {}: {}",
            self.operations,
            self.drop_caps,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        pid
    }
}
