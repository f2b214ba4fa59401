//! Containers for tests: unique names, the docker CLI, removed when dropped.

use std::{
    process::Output,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{
    engine::{DockerEngine, HarnessError, run},
    image::BUSYBOX_IMAGE,
};

/// Every test container's name starts with this.
pub const NAME_PREFIX: &str = "capprof-test-";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `capprof-test-<test>-<pid>-<n>`: unique across parallel tests and concurrent test binaries.
pub fn unique_name(test: &str) -> String {
    let test: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{test}-{}-{n}", std::process::id())
}

/// What to run; [`ContainerBuilder::start`] runs it detached.
#[derive(Clone, Debug)]
pub struct ContainerBuilder<'e> {
    engine: &'e DockerEngine,
    name: String,
    image: String,
    options: Vec<String>,
    command: Vec<String>,
}

impl<'e> ContainerBuilder<'e> {
    /// A container of the busybox test image named after `test`.
    pub fn new(engine: &'e DockerEngine, test: &str) -> Self {
        Self {
            engine,
            name: unique_name(test),
            image: BUSYBOX_IMAGE.to_owned(),
            options: Vec::new(),
            command: Vec::new(),
        }
    }

    pub fn image(mut self, image: &str) -> Self {
        image.clone_into(&mut self.image);
        self
    }

    pub fn cap_add(self, capability: &str) -> Self {
        self.option(format!("--cap-add={capability}"))
    }

    pub fn cap_drop(self, capability: &str) -> Self {
        self.option(format!("--cap-drop={capability}"))
    }

    pub fn label(self, key: &str, value: &str) -> Self {
        self.option(format!("--label={key}={value}"))
    }

    /// `--restart=<policy>` (`always`, `on-failure`...).
    pub fn restart_policy(self, policy: &str) -> Self {
        self.option(format!("--restart={policy}"))
    }

    /// Any other `docker run` option, as one argument (`--user=1000`).
    pub fn option(mut self, option: impl Into<String>) -> Self {
        self.options.push(option.into());
        self
    }

    /// The command, replacing the image's.
    pub fn command<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker run --detach`; the container is removed when the returned value drops.
    pub fn start(self) -> Result<TestContainer, HarnessError> {
        let mut command = self.engine.command();
        command
            .args(["run", "--detach", "--name", &self.name])
            .args(&self.options)
            .arg(&self.image)
            .args(&self.command);
        let id = run(&mut command)?;
        Ok(TestContainer {
            engine: self.engine.clone(),
            id,
            name: self.name,
            removed: false,
        })
    }
}

/// A container this test started; `docker rm --force` on drop.
#[derive(Debug)]
pub struct TestContainer {
    engine: DockerEngine,
    id: String,
    name: String,
    removed: bool,
}

impl TestContainer {
    /// The full id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker inspect --format <template>`.
    pub fn inspect(&self, template: &str) -> Result<String, HarnessError> {
        self.engine.cli(["inspect", "--format", template, &self.id])
    }

    /// The host pid of the container's init while it runs.
    pub fn pid(&self) -> Result<Option<u32>, HarnessError> {
        let pid = self.inspect("{{.State.Pid}}")?;
        Ok(pid.parse().ok().filter(|pid| *pid != 0))
    }

    /// Waits for the container to exit and returns its exit code.
    pub fn wait(&self) -> Result<i64, HarnessError> {
        let code = self.engine.cli(["wait", &self.id])?;
        code.parse().map_err(|_| HarnessError::Cli {
            command: format!("docker wait {}", self.id),
            status: "unexpected output".into(),
            stderr: code,
        })
    }

    /// `docker exec`; the output whatever the exit status.
    pub fn exec<I, S>(&self, args: I) -> Result<Output, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.engine.command();
        command.args(["exec", &self.id]).args(args);
        command.output().map_err(|source| HarnessError::Io {
            action: "cannot run",
            path: command.get_program().into(),
            source,
        })
    }

    /// `docker exec --detach`: returns once the process started; it runs on in the container.
    pub fn exec_detached<I, S>(&self, args: I) -> Result<(), HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.engine.command();
        command.args(["exec", "--detach", &self.id]).args(args);
        run(&mut command).map(drop)
    }

    pub fn logs(&self) -> Result<String, HarnessError> {
        let mut command = self.engine.command();
        command.args(["logs", &self.id]);
        let output = command.output().map_err(|source| HarnessError::Io {
            action: "cannot run",
            path: command.get_program().into(),
            source,
        })?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// `docker stop --time 0`: SIGKILL right away.
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.engine.cli(["stop", "--time", "0", &self.id]).map(drop)
    }

    /// `docker restart --time 0`.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.engine
            .cli(["restart", "--time", "0", &self.id])
            .map(drop)
    }

    /// Removes the container now and reports failure (dropping removes it too, quietly).
    pub fn remove(mut self) -> Result<(), HarnessError> {
        self.engine.cli(["rm", "--force", "--volumes", &self.id])?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(error) = self.engine.cli(["rm", "--force", "--volumes", &self.id]) {
            // Gone already is fine; anything else is worth a line.
            if !error.to_string().contains("No such container") {
                eprintln!("could not remove test container {}: {error}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let first = unique_name("engine restart::relists");
        let second = unique_name("engine restart::relists");
        assert_ne!(first, second);
        for name in [&first, &second] {
            assert!(
                name.starts_with("capprof-test-engine-restart--relists-"),
                "{name}"
            );
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{name}"
            );
        }
    }
}
