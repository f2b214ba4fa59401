//! Verification runs of a Compose service: the user's file plus a temporary override that sets
//! `cap_drop: [ALL]` and the `cap_add` under test for that one service, run under a project name
//! of its own (`<project>-capprof-verify`) so that its containers, networks and profiles never
//! mix with the original project's.
//!
//! Without a test command: `docker-compose -f FILE -f OVERRIDE -p P up --abort-on-container-exit
//! --exit-code-from SERVICE SERVICE`, whose status is the service's. With one: `up -d`, then the
//! command with `COMPOSE_FILE` (the file and the override), `COMPOSE_PROJECT_NAME` and
//! `CAPPROF_VERIFY_OVERRIDE` set, so that its own `docker-compose exec`/`run` reach the
//! verification project; its status is the run's. `down --volumes` afterwards either way.
//!
//! The override leaves out `version:` unless the file has one (then it repeats it), so that it
//! merges under Compose v1 (1.27+) and the Compose Specification (v2) alike.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{
    DEFAULT_RUN_TIMEOUT, OVERRIDE_ENV, RunOutcome, RunRequest, TIMED_OUT_EXIT, VerifyError,
    WorkloadRunner,
    container::{exit_code, to_stderr},
    status_within,
};

/// The program that runs Compose files (`docker-compose`, or set `CAPPROF_COMPOSE`, e.g. to a
/// wrapper for `docker compose`).
const COMPOSE_PROGRAM_ENV: &str = "CAPPROF_COMPOSE";

/// Which service of which file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeTarget {
    pub file: PathBuf,
    /// The original project's name (the verification project is named after it).
    pub project: String,
    pub service: String,
}

impl ComposeTarget {
    /// From `project/service` (or a bare service, with the project named after the file's
    /// directory as Compose does).
    pub fn parse(target: &str, file: &Path) -> Result<Self, VerifyError> {
        let target = target.strip_prefix("service:").unwrap_or(target);
        let (project, service) = match target.split_once('/') {
            Some((project, service)) => (project.to_owned(), service.to_owned()),
            None => (default_project_name(file), target.to_owned()),
        };
        if service.is_empty() || project.is_empty() {
            return Err(VerifyError::Compose(format!(
                "`{target}` names no service: give project/service or the service's name"
            )));
        }
        Ok(Self {
            file: file.to_owned(),
            project,
            service,
        })
    }

    /// The verification project's name.
    pub fn verification_project(&self) -> String {
        format!("{}-capprof-verify", self.project)
    }
}

/// Compose's default project name: the file's directory name, lower case, alphanumerics only.
fn default_project_name(file: &Path) -> String {
    let directory = std::fs::canonicalize(file)
        .ok()
        .and_then(|path| path.parent().map(Path::to_owned))
        .and_then(|dir| {
            dir.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    directory
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The override that gives `service` exactly `cap_add`.
pub fn override_text(version: Option<&str>, service: &str, request: &RunRequest) -> String {
    let mut text = String::from(
        "# Written by `capprof verify` for one verification run; removed afterwards.\n",
    );
    if let Some(version) = version {
        text.push_str(&format!("version: {}\n", yaml_string(version)));
    }
    text.push_str("services:\n");
    text.push_str(&format!("  {}:\n", yaml_string(service)));
    text.push_str("    privileged: false\n");
    text.push_str("    cap_drop: [ALL]\n");
    let caps: Vec<&str> = request
        .cap_add
        .iter()
        .map(|capability| capability.short_name())
        .collect();
    text.push_str(&format!("    cap_add: [{}]\n", caps.join(", ")));
    text.push_str("    labels:\n");
    text.push_str(&format!(
        "      {}: {}\n",
        super::VERIFICATION_RUN_LABEL,
        yaml_string(&request.purpose)
    ));
    text
}

fn yaml_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Runs a Compose service with overrides.
#[derive(Debug)]
pub struct ComposeRunner {
    target: ComposeTarget,
    version: Option<String>,
    test_command: Vec<String>,
    override_dir: tempfile_dir::TempDir,
    program: String,
    timeout: Duration,
}

impl ComposeRunner {
    /// Reads the file (for its `version:` and to check the service is there).
    pub fn prepare(target: ComposeTarget, test_command: Vec<String>) -> Result<Self, VerifyError> {
        let text = std::fs::read_to_string(&target.file).map_err(|source| VerifyError::Io {
            action: "cannot read the Compose file",
            path: target.file.clone(),
            source,
        })?;
        let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|error| {
            VerifyError::Compose(format!("{} is not YAML: {error}", target.file.display()))
        })?;
        let has_service = document
            .get("services")
            .and_then(|services| services.get(target.service.as_str()))
            .is_some();
        if !has_service {
            return Err(VerifyError::Compose(format!(
                "{} has no service `{}`",
                target.file.display(),
                target.service
            )));
        }
        let version = document.get("version").and_then(|version| match version {
            serde_yaml_ng::Value::String(text) => Some(text.clone()),
            serde_yaml_ng::Value::Number(number) => Some(number.to_string()),
            _ => None,
        });
        Ok(Self {
            target,
            version,
            test_command,
            override_dir: tempfile_dir::TempDir::new("capprof-verify")?,
            program: std::env::var(COMPOSE_PROGRAM_ENV)
                .unwrap_or_else(|_| "docker-compose".to_owned()),
            timeout: DEFAULT_RUN_TIMEOUT,
        })
    }

    /// How long one run may take before it is stopped and counted as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn override_path(&self) -> PathBuf {
        self.override_dir.path().join("capprof-verify.override.yml")
    }

    fn compose(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("--file")
            .arg(&self.target.file)
            .arg("--file")
            .arg(self.override_path())
            .arg("--project-name")
            .arg(self.target.verification_project())
            .stdin(Stdio::null());
        command
    }

    async fn checked(&self, mut command: tokio::process::Command) -> Result<String, VerifyError> {
        let description = describe(&command);
        let output = command
            .output()
            .await
            .map_err(|source| VerifyError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(VerifyError::Command {
                command: description,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The command's status, `None` when it was stopped for taking too long.
    async fn status(
        &self,
        program: &str,
        mut command: tokio::process::Command,
    ) -> Result<Option<i64>, VerifyError> {
        command.stdout(to_stderr());
        let status = status_within(&mut command, self.timeout)
            .await
            .map_err(|source| VerifyError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        Ok(status.map(exit_code))
    }

    async fn service_container(&self) -> Result<(String, String), VerifyError> {
        let mut ps = self.compose();
        ps.args(["ps", "--quiet", &self.target.service]);
        let ids = self.checked(ps).await?;
        let id = ids
            .lines()
            .next()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                VerifyError::Compose(format!(
                    "service `{}` has no container after the run",
                    self.target.service
                ))
            })?
            .to_owned();
        let mut inspect = tokio::process::Command::new("docker");
        inspect
            .args(["inspect", "--format", "{{.Id}} {{.Name}}", &id])
            .stdin(Stdio::null());
        let answer = self.checked(inspect).await?;
        let (full_id, name) = answer.split_once(' ').unwrap_or((&answer, &id));
        Ok((full_id.to_owned(), name.trim_start_matches('/').to_owned()))
    }

    async fn down(&self) -> Result<(), VerifyError> {
        let mut down = self.compose();
        down.args(["down", "--volumes", "--remove-orphans", "--timeout", "10"]);
        self.checked(down).await.map(drop)
    }
}

impl WorkloadRunner for ComposeRunner {
    fn expected_exit(&self) -> i64 {
        0
    }

    async fn run(&mut self, request: &RunRequest) -> Result<RunOutcome, VerifyError> {
        let path = self.override_path();
        let text = override_text(self.version.as_deref(), &self.target.service, request);
        std::fs::write(&path, text).map_err(|source| VerifyError::Io {
            action: "cannot write the override file",
            path: path.clone(),
            source,
        })?;
        let outcome = async {
            let ended = if self.test_command.is_empty() {
                let mut up = self.compose();
                up.args([
                    "up",
                    "--abort-on-container-exit",
                    "--exit-code-from",
                    &self.target.service,
                    &self.target.service,
                ]);
                self.status(&self.program, up).await?
            } else {
                let mut up = self.compose();
                up.args(["up", "--detach", &self.target.service]);
                self.checked(up).await?;
                let separator = std::env::var("COMPOSE_PATH_SEPARATOR").unwrap_or(":".into());
                let mut test = tokio::process::Command::new(&self.test_command[0]);
                test.args(&self.test_command[1..])
                    .env(
                        "COMPOSE_FILE",
                        format!(
                            "{}{separator}{}",
                            self.target.file.display(),
                            path.display()
                        ),
                    )
                    .env("COMPOSE_PROJECT_NAME", self.target.verification_project())
                    .env(OVERRIDE_ENV, &path);
                self.status(&self.test_command[0], test).await?
            };
            let (container_id, container_name) = self.service_container().await?;
            Ok(RunOutcome {
                container_id,
                container_name,
                exit_code: ended.unwrap_or(TIMED_OUT_EXIT),
                timed_out: ended.is_none(),
            })
        }
        .await;
        if outcome.is_err() {
            let _ = self.down().await;
        }
        outcome
    }

    async fn clean_up(&mut self, _outcome: &RunOutcome) -> Result<(), VerifyError> {
        self.down().await
    }
}

fn describe(command: &tokio::process::Command) -> String {
    let command = command.as_std();
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A private temporary directory removed on drop (the library has no tempfile dependency).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    use super::VerifyError;

    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> Result<Self, VerifyError> {
            let path = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_nanos())
                    .unwrap_or_default()
            ));
            std::fs::create_dir_all(&path).map_err(|source| VerifyError::Io {
                action: "cannot create",
                path: path.clone(),
                source,
            })?;
            Ok(Self(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capability;

    #[test]
    fn the_override_drops_everything_and_adds_the_set_under_test() {
        let text = override_text(
            Some("3.8"),
            "web",
            &RunRequest {
                cap_add: vec![Capability::Chown, Capability::NetBindService],
                purpose: "recommended".into(),
            },
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(parsed["version"], serde_yaml_ng::Value::from("3.8"));
        let web = &parsed["services"]["web"];
        assert_eq!(web["cap_drop"], serde_yaml_ng::Value::from(vec!["ALL"]));
        assert_eq!(
            web["cap_add"],
            serde_yaml_ng::Value::from(vec!["CHOWN", "NET_BIND_SERVICE"])
        );
        assert_eq!(web["privileged"], serde_yaml_ng::Value::from(false));
        assert_eq!(
            web["labels"][super::super::VERIFICATION_RUN_LABEL],
            serde_yaml_ng::Value::from("recommended")
        );
        let unversioned = override_text(
            None,
            "web",
            &RunRequest {
                cap_add: vec![],
                purpose: "without-CHOWN".into(),
            },
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&unversioned).unwrap();
        assert!(parsed.get("version").is_none());
        assert_eq!(
            parsed["services"]["web"]["cap_add"],
            serde_yaml_ng::Value::Sequence(vec![])
        );
    }

    #[test]
    fn targets_name_a_project_and_a_service() {
        let file = Path::new("/srv/shop/docker-compose.yml");
        let target = ComposeTarget::parse("shop/web", file).unwrap();
        assert_eq!(
            (target.project.as_str(), target.service.as_str()),
            ("shop", "web")
        );
        assert_eq!(target.verification_project(), "shop-capprof-verify");
        assert!(ComposeTarget::parse("shop/", file).is_err());
    }
}
