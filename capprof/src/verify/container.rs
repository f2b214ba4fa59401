//! Verification runs of a container: the same image (pinned by id), command, user, environment,
//! working directory, sysctls, mounts, network mode and labels, re-created under a new name with
//! `cap_drop: [ALL]` plus the capabilities under test.
//!
//! Named volumes and bind mounts are shared with the original (the workload sees its data);
//! anonymous volumes are fresh and removed with the verification container. Compose's labels are
//! left out, so the run does not join the service's profile, and the image is named by id, so
//! its checks do not join the image's profile either: they land only in the verification
//! container's own profile.

use std::{collections::HashMap, process::Stdio, time::Duration};

use bollard::{
    models::{ContainerConfig, ContainerCreateBody, ContainerInspectResponse, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
        RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    },
};

use super::{
    CONTAINER_ENV, DEFAULT_RUN_TIMEOUT, RunOutcome, RunRequest, TIMED_OUT_EXIT,
    VERIFICATION_OF_LABEL, VERIFICATION_RUN_LABEL, VerifyError, WorkloadRunner, status_within,
};
use crate::docker::{COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, Engine};

/// How often a run's state is polled while waiting for it to end.
const POLL: Duration = Duration::from_millis(200);
/// How long a verification container gets to stop after its test command ended.
const STOP_GRACE_SECS: i32 = 10;

/// Re-runs one container.
#[derive(Debug)]
pub struct ContainerRunner {
    engine: Engine,
    original: ContainerInspectResponse,
    original_id: String,
    original_name: String,
    test_command: Vec<String>,
    expected_exit: i64,
    runs: u32,
    timeout: Duration,
}

impl ContainerRunner {
    /// Finds the container `target` names (a name, an id, or project/service for the most recent
    /// container of a Compose service) and prepares to re-run it. Without a test command the
    /// original must have exited: its exit status is what a run must match.
    pub async fn prepare(
        engine: Engine,
        target: &str,
        test_command: Vec<String>,
    ) -> Result<Self, VerifyError> {
        let original = find_container(&engine, target).await?;
        let original_id = original
            .id
            .clone()
            .ok_or_else(|| VerifyError::Inspect("the container has no id".into()))?;
        let original_name = original
            .name
            .as_deref()
            .map(|name| name.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| original_id[..12.min(original_id.len())].to_owned());
        let state = original.state.clone().unwrap_or_default();
        let expected_exit = if test_command.is_empty() {
            if state.running.unwrap_or(false) {
                return Err(VerifyError::StillRunning {
                    name: original_name,
                });
            }
            state.exit_code.unwrap_or(0)
        } else {
            0
        };
        Ok(Self {
            engine,
            original,
            original_id,
            original_name,
            test_command,
            expected_exit,
            runs: 0,
            timeout: DEFAULT_RUN_TIMEOUT,
        })
    }

    /// How long one run may take before it is stopped and counted as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The original container's name.
    pub fn original_name(&self) -> &str {
        &self.original_name
    }

    fn next_name(&mut self) -> String {
        self.runs += 1;
        format!(
            "{}-capprof-verify-{}-{}",
            self.original_name,
            std::process::id(),
            self.runs
        )
    }

    async fn wait_for_exit(&self, id: &str) -> Result<i64, VerifyError> {
        loop {
            let inspect = self.inspect(id).await?;
            let state = inspect.state.unwrap_or_default();
            if !state.running.unwrap_or(false)
                && !state.restarting.unwrap_or(false)
                && state
                    .started_at
                    .as_deref()
                    .is_some_and(|at| !at.starts_with("0001-"))
            {
                return Ok(state.exit_code.unwrap_or(0));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, VerifyError> {
        self.engine
            .client()
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(docker_error("inspect container"))
    }

    /// The test command's exit status, `None` when it was stopped for taking too long.
    async fn run_test_command(&self, container_name: &str) -> Result<Option<i64>, VerifyError> {
        let program = &self.test_command[0];
        let mut command = tokio::process::Command::new(program);
        command
            .args(&self.test_command[1..])
            .env(CONTAINER_ENV, container_name)
            .stdin(Stdio::null())
            .stdout(to_stderr());
        let status = status_within(&mut command, self.timeout)
            .await
            .map_err(|source| VerifyError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(status.map(exit_code))
    }
}

impl WorkloadRunner for ContainerRunner {
    fn expected_exit(&self) -> i64 {
        self.expected_exit
    }

    async fn run(&mut self, request: &RunRequest) -> Result<RunOutcome, VerifyError> {
        let name = self.next_name();
        let body = verification_body(&self.original, &self.original_id, request);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .engine
            .client()
            .create_container(Some(options), body)
            .await
            .map_err(docker_error("create container"))?;
        let id = created.id;
        let outcome = async {
            self.engine
                .client()
                .start_container(&id, None)
                .await
                .map_err(docker_error("start container"))?;
            let ended = if self.test_command.is_empty() {
                match tokio::time::timeout(self.timeout, self.wait_for_exit(&id)).await {
                    Ok(exit) => Some(exit?),
                    Err(_) => None,
                }
            } else {
                self.run_test_command(&name).await?
            };
            // The workload of a test command runs on until stopped, as does one that hangs.
            let grace = if ended.is_some() { STOP_GRACE_SECS } else { 0 };
            let stop = StopContainerOptionsBuilder::default().t(grace).build();
            let _ = self.engine.client().stop_container(&id, Some(stop)).await;
            Ok::<_, VerifyError>(ended)
        }
        .await;
        match outcome {
            Ok(ended) => Ok(RunOutcome {
                container_id: id,
                container_name: name,
                exit_code: ended.unwrap_or(TIMED_OUT_EXIT),
                timed_out: ended.is_none(),
            }),
            Err(error) => {
                let _ = remove(&self.engine, &id).await;
                Err(error)
            }
        }
    }

    async fn clean_up(&mut self, outcome: &RunOutcome) -> Result<(), VerifyError> {
        remove(&self.engine, &outcome.container_id).await
    }
}

async fn remove(engine: &Engine, id: &str) -> Result<(), VerifyError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    engine
        .client()
        .remove_container(id, Some(options))
        .await
        .map_err(docker_error("remove container"))
}

fn docker_error(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> VerifyError {
    move |source| VerifyError::Docker { operation, source }
}

/// The container `target` names: a container name or id, else the most recently created
/// container of the Compose service `project/service`.
async fn find_container(
    engine: &Engine,
    target: &str,
) -> Result<ContainerInspectResponse, VerifyError> {
    let target = target.strip_prefix("container:").unwrap_or(target);
    match engine
        .client()
        .inspect_container(target, None::<InspectContainerOptions>)
        .await
    {
        Ok(found) => return Ok(found),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(source) => {
            return Err(VerifyError::Docker {
                operation: "inspect container",
                source,
            });
        }
    }
    let not_found = || VerifyError::NoContainer {
        target: target.to_owned(),
    };
    let (project, service) = target
        .strip_prefix("service:")
        .unwrap_or(target)
        .split_once('/')
        .ok_or_else(not_found)?;
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{COMPOSE_PROJECT_LABEL}={project}"),
            format!("{COMPOSE_SERVICE_LABEL}={service}"),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut containers = engine
        .client()
        .list_containers(Some(options))
        .await
        .map_err(docker_error("list containers"))?;
    containers.sort_by_key(|container| std::cmp::Reverse(container.created.unwrap_or(0)));
    let newest = containers
        .into_iter()
        .find_map(|container| container.id)
        .ok_or_else(not_found)?;
    engine
        .client()
        .inspect_container(&newest, None::<InspectContainerOptions>)
        .await
        .map_err(docker_error("inspect container"))
}

/// The create request for a verification run of `original`.
pub fn verification_body(
    original: &ContainerInspectResponse,
    original_id: &str,
    request: &RunRequest,
) -> ContainerCreateBody {
    let mut config: ContainerConfig = original.config.clone().unwrap_or_default();
    // The exact image the original ran, even if its tag has moved since.
    if let Some(image_id) = original.image.clone().filter(|id| !id.is_empty()) {
        config.image = Some(image_id);
    }
    // Docker names a container's host after its short id unless told otherwise.
    if config
        .hostname
        .as_deref()
        .is_some_and(|hostname| original_id.starts_with(hostname))
    {
        config.hostname = None;
    }
    let mut labels = config.labels.take().unwrap_or_default();
    labels.retain(|key, _| !key.starts_with("com.docker.compose."));
    labels.insert(VERIFICATION_OF_LABEL.to_owned(), original_id.to_owned());
    labels.insert(VERIFICATION_RUN_LABEL.to_owned(), request.purpose.clone());
    config.labels = Some(labels);

    let mut host: HostConfig = original.host_config.clone().unwrap_or_default();
    host.cap_drop = Some(vec!["ALL".to_owned()]);
    host.cap_add = Some(
        request
            .cap_add
            .iter()
            .map(|capability| capability.short_name().to_owned())
            .collect(),
    );
    // `privileged` would grant everything whatever cap_add says.
    host.privileged = Some(false);
    host.auto_remove = Some(false);
    host.restart_policy = None;

    // Same field names on the wire: the inspected configuration is a create request's body.
    let mut body = serde_json::to_value(&config).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &mut body {
        fields.insert(
            "HostConfig".to_owned(),
            serde_json::to_value(&host).unwrap_or_default(),
        );
    }
    serde_json::from_value(body).unwrap_or_default()
}

/// Where the workload's and test command's own output goes: stderr, so that capprof's report
/// (JSON, say) stays alone on stdout.
pub(crate) fn to_stderr() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A process's exit status the way a shell reports it (128 + signal when killed).
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerState, RestartPolicy, RestartPolicyNameEnum};

    use super::*;
    use crate::capability::Capability;

    const ID: &str = "f5b0e9fcb1c3d63eec6943d721d7a23c0c109a56fe917a2dbcc162e8c273a298";

    fn original() -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.into()),
            name: Some("/shop-web-1".into()),
            image: Some("sha256:02fdb9bce147".into()),
            state: Some(ContainerState {
                running: Some(false),
                exit_code: Some(3),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                hostname: Some(ID[..12].into()),
                image: Some("shop/web:latest".into()),
                user: Some("1000:1000".into()),
                env: Some(vec!["MODE=test".into()]),
                cmd: Some(vec!["sh".into(), "-c".into(), "exit 3".into()]),
                working_dir: Some("/srv".into()),
                labels: Some(HashMap::from([
                    (COMPOSE_PROJECT_LABEL.into(), "shop".into()),
                    (COMPOSE_SERVICE_LABEL.into(), "web".into()),
                    ("com.docker.compose.container-number".into(), "1".into()),
                    ("tier".into(), "front".into()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                privileged: Some(true),
                sysctls: Some(HashMap::from([(
                    "net.ipv4.ip_unprivileged_port_start".into(),
                    "1024".into(),
                )])),
                binds: Some(vec!["data:/var/lib/data".into()]),
                network_mode: Some("none".into()),
                auto_remove: Some(true),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_verification_run_keeps_the_workload_and_changes_only_its_capabilities() {
        let body = verification_body(
            &original(),
            ID,
            &RunRequest {
                cap_add: vec![Capability::NetBindService, Capability::Chown],
                purpose: "recommended".into(),
            },
        );
        assert_eq!(body.image.as_deref(), Some("sha256:02fdb9bce147"));
        assert_eq!(
            body.hostname, None,
            "Docker picks a hostname for the new id"
        );
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.env, Some(vec!["MODE=test".to_owned()]));
        assert_eq!(body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(
            body.cmd,
            Some(vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()])
        );
        let labels = body.labels.unwrap();
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert!(
            labels
                .keys()
                .all(|key| !key.starts_with("com.docker.compose.")),
            "{labels:?}"
        );
        assert_eq!(
            labels.get(VERIFICATION_OF_LABEL).map(String::as_str),
            Some(ID)
        );
        assert_eq!(
            labels.get(VERIFICATION_RUN_LABEL).map(String::as_str),
            Some("recommended")
        );
        let host = body.host_config.unwrap();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.cap_add,
            Some(vec!["NET_BIND_SERVICE".to_owned(), "CHOWN".to_owned()])
        );
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.restart_policy, None);
        assert_eq!(
            host.sysctls
                .unwrap()
                .get("net.ipv4.ip_unprivileged_port_start"),
            Some(&"1024".to_owned())
        );
        assert_eq!(host.binds, Some(vec!["data:/var/lib/data".to_owned()]));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
    }

    #[test]
    fn a_chosen_hostname_is_kept() {
        let mut named = original();
        named.config.as_mut().unwrap().hostname = Some("web".into());
        let body = verification_body(
            &named,
            ID,
            &RunRequest {
                cap_add: vec![],
                purpose: "without-CHOWN".into(),
            },
        );
        assert_eq!(body.hostname.as_deref(), Some("web"));
        assert_eq!(body.host_config.unwrap().cap_add, Some(vec![]));
    }
}
