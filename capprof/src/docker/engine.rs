//! Talking to the Docker engine: connecting, inspecting, listing, following events.
//!
//! [`ContainerEngine`] is what the container tracker needs from an engine; [`Engine`] is the
//! real one over bollard, and tests use fakes.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    io,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bollard::{
    API_DEFAULT_VERSION, ClientVersion, Docker,
    models::{
        EventMessage, EventMessageTypeEnum, SystemInfoCgroupDriverEnum, SystemInfoCgroupVersionEnum,
    },
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::{StreamExt, stream::BoxStream};
use serde::Serialize;

use super::{
    address::EngineAddress,
    cgroups::{CgroupDriver, CgroupLayout, CgroupVersion},
    container::{ContainerInfo, MalformedContainer},
};

/// The oldest Engine API capprof is written against (Docker 20.10, what Debian 12 ships).
pub const MINIMUM_API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long one request may wait for the engine's answer to begin. Event streams stay open past
/// it: the limit only covers the response headers.
const REQUEST_TIMEOUT_SECS: u64 = 60;

/// Why capprof could not start talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no Docker engine socket at {path}: start the engine (`sudo systemctl start docker`, or `sudo dockerd &`), or set DOCKER_HOST to where it listens (unix:///path/to/docker.sock or tcp://host:port)"
    )]
    SocketMissing { path: PathBuf },
    #[error(
        "permission denied on the Docker engine socket {path}: run capprof as root, or as a member of the socket's group (usually `docker`: `sudo usermod -aG docker $USER`, then log in again), or set DOCKER_HOST to a socket you may use"
    )]
    PermissionDenied { path: PathBuf },
    #[error(
        "{path} exists but no engine is listening on it (left behind by a dockerd that stopped): start the engine (`sudo systemctl start docker`, or `sudo dockerd &`), or set DOCKER_HOST to where it listens"
    )]
    NotListening { path: PathBuf },
    #[error(
        "cannot reach the Docker engine at {address}: {source}; start the engine there, or set DOCKER_HOST to where it listens"
    )]
    Unreachable {
        address: EngineAddress,
        #[source]
        source: io::Error,
    },
    #[error("the Docker engine at {address} did not answer as an engine should: {source}")]
    Api {
        address: EngineAddress,
        #[source]
        source: EngineError,
    },
}

/// A request to a connected engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Docker engine request `{operation}` failed: {source}")]
    Api {
        operation: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(transparent)]
    Malformed(#[from] MalformedContainer),
}

impl EngineError {
    fn api(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| Self::Api { operation, source }
    }
}

/// What the engine says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// The engine's version (`20.10.24+dfsg1`).
    pub server_version: String,
    /// The API version both sides speak after negotiation (`1.41`).
    pub api_version: String,
    pub cgroup_layout: CgroupLayout,
}

/// What a container did, from the engine's event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerAction {
    Start,
    Die,
    Destroy,
}

impl ContainerAction {
    fn parse(action: &str) -> Option<Self> {
        match action {
            "start" => Some(Self::Start),
            "die" => Some(Self::Die),
            "destroy" => Some(Self::Destroy),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Die => "die",
            Self::Destroy => "destroy",
        }
    }
}

/// One container event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub action: ContainerAction,
    pub container_id: String,
    /// The event's attributes: `name`, `image`, the container's labels, and per action extras
    /// (`exitCode` on die).
    pub attributes: BTreeMap<String, String>,
}

impl ContainerEvent {
    /// The container event in an engine event message, if it is one capprof follows.
    pub fn from_message(message: EventMessage) -> Option<Self> {
        if message.typ != Some(EventMessageTypeEnum::CONTAINER) {
            return None;
        }
        let action = ContainerAction::parse(message.action.as_deref()?)?;
        let actor = message.actor?;
        let container_id = actor.id.filter(|id| !id.is_empty())?;
        Some(Self {
            action,
            container_id,
            attributes: actor.attributes.unwrap_or_default().into_iter().collect(),
        })
    }
}

/// What the container tracker needs from a Docker engine.
pub trait ContainerEngine: Send + Sync + 'static {
    /// The engine's version and cgroup layout. Asked again after every reconnect: the engine may
    /// have been replaced.
    fn engine_info(&self) -> impl Future<Output = Result<EngineInfo, EngineError>> + Send;

    /// The ids of the running containers.
    fn running_container_ids(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;

    /// A container by id or name; `None` when the engine has no such container.
    fn inspect(
        &self,
        id_or_name: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, EngineError>> + Send;

    /// Start, die and destroy events from `since` on (the engine replays the recent ones), until
    /// the connection ends.
    fn container_events(
        &self,
        since: SystemTime,
    ) -> BoxStream<'static, Result<ContainerEvent, EngineError>>;
}

/// A connected Docker engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    address: EngineAddress,
    info: EngineInfo,
}

/// Connects to the engine at `address`, negotiates the API version and reads the engine's cgroup
/// layout. Engines older than API 1.41 are used with a warning.
pub async fn connect(address: &EngineAddress) -> Result<Engine, ConnectError> {
    probe(address).await?;
    let uri = address.to_string();
    let client = match address {
        EngineAddress::Unix(_) => {
            Docker::connect_with_unix(&uri, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
        EngineAddress::Tcp { .. } => {
            Docker::connect_with_http(&uri, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
    };
    let api = |source| ConnectError::Api {
        address: address.clone(),
        source,
    };
    let docker = client
        .map_err(EngineError::api("create client"))
        .map_err(api)?
        .negotiate_version()
        .await
        .map_err(EngineError::api("negotiate version"))
        .map_err(api)?;
    let negotiated = docker.client_version();
    if negotiated < MINIMUM_API_VERSION {
        tracing::warn!(
            %address,
            api_version = %negotiated,
            "the Docker engine is older than API {MINIMUM_API_VERSION} (Docker 20.10); capprof may misread it"
        );
    }
    let info = fetch_info(&docker).await.map_err(api)?;
    tracing::debug!(%address, ?info, "connected to the Docker engine");
    Ok(Engine {
        docker,
        address: address.clone(),
        info,
    })
}

/// Tells the common reasons a socket cannot be used apart before the HTTP client blurs them.
async fn probe(address: &EngineAddress) -> Result<(), ConnectError> {
    let result = match address {
        EngineAddress::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
        EngineAddress::Tcp { host, port } => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            tokio::net::TcpStream::connect((host, *port))
                .await
                .map(drop)
        }
    };
    let Err(source) = result else {
        return Ok(());
    };
    Err(match (address, source.kind()) {
        (EngineAddress::Unix(path), io::ErrorKind::NotFound) => {
            ConnectError::SocketMissing { path: path.clone() }
        }
        (EngineAddress::Unix(path), io::ErrorKind::PermissionDenied) => {
            ConnectError::PermissionDenied { path: path.clone() }
        }
        (EngineAddress::Unix(path), io::ErrorKind::ConnectionRefused) => {
            ConnectError::NotListening { path: path.clone() }
        }
        _ => ConnectError::Unreachable {
            address: address.clone(),
            source,
        },
    })
}

async fn fetch_info(docker: &Docker) -> Result<EngineInfo, EngineError> {
    let version = docker
        .version()
        .await
        .map_err(EngineError::api("version"))?;
    let system = docker.info().await.map_err(EngineError::api("info"))?;
    let driver = match system.cgroup_driver {
        Some(SystemInfoCgroupDriverEnum::CGROUPFS) => Some(CgroupDriver::Cgroupfs),
        Some(SystemInfoCgroupDriverEnum::SYSTEMD) => Some(CgroupDriver::Systemd),
        _ => None,
    };
    let cgroup_version = match system.cgroup_version {
        Some(SystemInfoCgroupVersionEnum::_1) => Some(CgroupVersion::V1),
        Some(SystemInfoCgroupVersionEnum::_2) => Some(CgroupVersion::V2),
        _ => None,
    };
    Ok(EngineInfo {
        server_version: version.version.unwrap_or_default(),
        api_version: docker.client_version().to_string(),
        cgroup_layout: CgroupLayout {
            driver,
            version: cgroup_version,
        },
    })
}

impl Engine {
    pub fn address(&self) -> &EngineAddress {
        &self.address
    }

    /// What the engine said about itself when capprof connected.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The underlying client, for requests this module does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl ContainerEngine for Engine {
    async fn engine_info(&self) -> Result<EngineInfo, EngineError> {
        fetch_info(&self.docker).await
    }

    async fn running_container_ids(&self) -> Result<Vec<String>, EngineError> {
        let options = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(EngineError::api("list containers"))?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| summary.id)
            .collect())
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        match self.docker.inspect_container(id_or_name, None).await {
            Ok(response) => Ok(Some(ContainerInfo::from_inspect(response)?)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(EngineError::Api {
                operation: "inspect container",
                source,
            }),
        }
    }

    fn container_events(
        &self,
        since: SystemTime,
    ) -> BoxStream<'static, Result<ContainerEvent, EngineError>> {
        let since = since.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let actions = [
            ContainerAction::Start,
            ContainerAction::Die,
            ContainerAction::Destroy,
        ];
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                actions
                    .iter()
                    .map(|action| action.as_str().to_owned())
                    .collect(),
            ),
        ]);
        let options = EventsOptions {
            // Seconds with a fraction, which the engine accepts since API 1.22.
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        };
        self.docker
            .events(Some(options))
            .filter_map(|message| async move {
                match message {
                    Ok(message) => ContainerEvent::from_message(message).map(Ok),
                    Err(source) => Some(Err(EngineError::Api {
                        operation: "follow events",
                        source,
                    })),
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::EventActor;

    use super::*;

    fn message(typ: EventMessageTypeEnum, action: &str) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([("name".into(), "web".into())])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_container_events_it_follows() {
        let event =
            ContainerEvent::from_message(message(EventMessageTypeEnum::CONTAINER, "die")).unwrap();
        assert_eq!(event.action, ContainerAction::Die);
        assert_eq!(event.container_id, "abc");
        assert_eq!(
            event.attributes.get("name").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            ContainerEvent::from_message(message(
                EventMessageTypeEnum::CONTAINER,
                "exec_start: sh"
            )),
            None
        );
        assert_eq!(
            ContainerEvent::from_message(message(EventMessageTypeEnum::IMAGE, "start")),
            None
        );
    }

    #[tokio::test]
    async fn a_missing_socket_says_how_to_fix_it() {
        let path =
            std::env::temp_dir().join(format!("capprof-no-engine-{}.sock", std::process::id()));
        let error = connect(&EngineAddress::Unix(path.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ConnectError::SocketMissing { path: missing } if *missing == path),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("DOCKER_HOST"), "{message}");
        assert!(message.contains("dockerd"), "{message}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_told_apart_from_a_missing_one() {
        let directory =
            std::env::temp_dir().join(format!("capprof-stale-engine-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("docker.sock");
        // A socket file whose listener is gone: connecting is refused.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let error = connect(&EngineAddress::Unix(path.clone()))
            .await
            .unwrap_err();
        std::fs::remove_dir_all(&directory).unwrap();
        assert!(
            matches!(error, ConnectError::NotListening { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("no engine is listening"),
            "{error}"
        );
    }
}
