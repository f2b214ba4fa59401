//! What capprof knows about one container.

use std::{collections::BTreeMap, path::PathBuf};

use bollard::models::ContainerInspectResponse;
use serde::Serialize;

/// The label Compose puts the project name in.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// The label Compose puts the service name in.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// A container as the engine described it, plus its cgroup once resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// The full 64-hex id.
    pub id: String,
    /// The name without Docker's leading `/`; the short id when the name is not known.
    pub name: String,
    /// The image as the container was created from it (`busybox:latest`), else its id.
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The host pid of the container's init process while it runs.
    pub pid: Option<u32>,
    /// The id of the container's v2 cgroup (its directory's inode). A restart gives the
    /// container a new cgroup and a new id; this is the latest one known.
    pub cgroup_id: Option<u64>,
    /// The container's v2 cgroup directory.
    pub cgroup_path: Option<PathBuf>,
    /// `HostConfig.CgroupParent` when set: the container's cgroup is not under Docker's default.
    pub cgroup_parent: Option<String>,
    pub running: bool,
    /// RFC 3339, as the engine reports it.
    pub started_at: Option<String>,
}

/// The engine's answer lacked something every container has.
#[derive(Debug, thiserror::Error)]
#[error("the engine described a container without {missing}; is this a Docker-compatible engine?")]
pub struct MalformedContainer {
    pub missing: &'static str,
}

impl ContainerInfo {
    /// What the engine's `inspect` says; the cgroup is resolved separately.
    pub fn from_inspect(response: ContainerInspectResponse) -> Result<Self, MalformedContainer> {
        let id = response
            .id
            .filter(|id| !id.is_empty())
            .ok_or(MalformedContainer { missing: "an id" })?;
        let config = response.config.unwrap_or_default();
        let state = response.state.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        let running = state.running.unwrap_or(false);
        let pid = state
            .pid
            .filter(|pid| running && *pid > 0)
            .and_then(|pid| u32::try_from(pid).ok());
        let name = response
            .name
            .map(|name| name.trim_start_matches('/').to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| short_id(&id).to_owned());
        let image = config
            .image
            .filter(|image| !image.is_empty())
            .or(response.image)
            .unwrap_or_default();
        let cgroup_parent = response
            .host_config
            .and_then(|host| host.cgroup_parent)
            .filter(|parent| !parent.is_empty());
        // The engine reports the zero time for a container that never started.
        let started_at = state
            .started_at
            .filter(|at| !at.is_empty() && !at.starts_with("0001-01-01"));
        Ok(Self {
            compose_project: labels.get(COMPOSE_PROJECT_LABEL).cloned(),
            compose_service: labels.get(COMPOSE_SERVICE_LABEL).cloned(),
            id,
            name,
            image,
            labels,
            pid,
            cgroup_id: None,
            cgroup_path: None,
            cgroup_parent,
            running,
            started_at,
        })
    }

    /// What an event says about a container that could not be inspected (it was removed before
    /// capprof asked). Events carry the name, the image and the labels as attributes.
    pub fn from_event_attributes(id: &str, attributes: &BTreeMap<String, String>) -> Self {
        let mut labels = attributes.clone();
        let name = labels
            .remove("name")
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| short_id(id).to_owned());
        let image = labels.remove("image").unwrap_or_default();
        // Attributes that are not labels (`exitCode`, `signal`, `execID`...) use names no label
        // may take by convention, but the two Docker adds to die events are dropped explicitly.
        labels.remove("exitCode");
        labels.remove("signal");
        Self {
            compose_project: labels.get(COMPOSE_PROJECT_LABEL).cloned(),
            compose_service: labels.get(COMPOSE_SERVICE_LABEL).cloned(),
            id: id.to_owned(),
            name,
            image,
            labels,
            pid: None,
            cgroup_id: None,
            cgroup_path: None,
            cgroup_parent: None,
            running: false,
            started_at: None,
        }
    }

    /// The 12-character id the docker CLI shows.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Whether `value` is a full container id: 64 lowercase hex digits.
pub fn is_container_id(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerConfig, ContainerState, HostConfig};

    use super::*;

    const ID: &str = "f5b0e9fcb1c3d63eec6943d721d7a23c0c109a56fe917a2dbcc162e8c273a298";

    fn inspected(running: bool, pid: i64) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.into()),
            name: Some("/web-1".into()),
            image: Some("sha256:a00b0d19".into()),
            state: Some(ContainerState {
                running: Some(running),
                pid: Some(pid),
                started_at: Some("2026-12-03T16:49:23.717392942Z".into()),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some("capprof-test/busybox:latest".into()),
                labels: Some(HashMap::from([
                    (COMPOSE_PROJECT_LABEL.into(), "shop".into()),
                    (COMPOSE_SERVICE_LABEL.into(), "web".into()),
                    ("tier".into(), "front".into()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                cgroup_parent: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_a_running_container() {
        let info = ContainerInfo::from_inspect(inspected(true, 20342)).unwrap();
        assert_eq!(info.id, ID);
        assert_eq!(info.name, "web-1");
        assert_eq!(info.image, "capprof-test/busybox:latest");
        assert_eq!(info.compose_project.as_deref(), Some("shop"));
        assert_eq!(info.compose_service.as_deref(), Some("web"));
        assert_eq!(info.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(info.pid, Some(20342));
        assert!(info.running);
        assert_eq!(info.cgroup_parent, None);
        assert_eq!(info.cgroup_id, None);
        assert_eq!(info.short_id(), "f5b0e9fcb1c3");
    }

    #[test]
    fn an_exited_container_has_no_pid() {
        let info = ContainerInfo::from_inspect(inspected(false, 0)).unwrap();
        assert!(!info.running);
        assert_eq!(info.pid, None);
    }

    #[test]
    fn a_container_without_id_is_an_error() {
        let mut response = inspected(true, 1);
        response.id = None;
        let error = ContainerInfo::from_inspect(response).unwrap_err();
        assert_eq!(error.missing, "an id");
    }

    #[test]
    fn reads_what_events_say() {
        let attributes = BTreeMap::from([
            ("name".to_owned(), "quick".to_owned()),
            ("image".to_owned(), "busybox".to_owned()),
            ("exitCode".to_owned(), "0".to_owned()),
            (COMPOSE_SERVICE_LABEL.to_owned(), "job".to_owned()),
        ]);
        let info = ContainerInfo::from_event_attributes(ID, &attributes);
        assert_eq!(info.name, "quick");
        assert_eq!(info.image, "busybox");
        assert_eq!(info.compose_service.as_deref(), Some("job"));
        assert_eq!(
            info.labels.keys().collect::<Vec<_>>(),
            vec![COMPOSE_SERVICE_LABEL]
        );
        assert!(!info.running);
        let unnamed = ContainerInfo::from_event_attributes(ID, &BTreeMap::new());
        assert_eq!(unnamed.name, "f5b0e9fcb1c3");
    }

    #[test]
    fn recognises_full_container_ids() {
        assert!(is_container_id(ID));
        assert!(!is_container_id(&ID[..63]));
        assert!(!is_container_id(&ID.to_uppercase()));
        assert!(!is_container_id("docker"));
    }
}
