//! Docker: which container a cgroup id belongs to.
//!
//! The eBPF program counts checks per cgroup v2 id. This module connects to the Docker engine
//! the way the docker CLI does ([`EngineAddress::from_env`], [`connect`]), resolves containers
//! to their cgroup ids (inspect → `State.Pid` → `/proc/<pid>/cgroup` → directory → inode, or the
//! engine's cgroup layout when the process is gone), and keeps the mapping current by following
//! the engine's events ([`ContainerTracker`]). Checks whose cgroup is not known yet are never
//! dropped: [`Attribution::Unknown`] tells the caller to hold them, and the tracker announces
//! the answer ([`TrackerEvent::Attributed`]) once it has one. [`runtime_process`] tells the
//! runtime's own setup apart from the application.

mod address;
mod cgroups;
mod container;
mod engine;
mod runtime;
mod tracker;

pub use address::{AddressError, DEFAULT_SOCKET, EngineAddress};
pub use cgroups::{
    CgroupDriver, CgroupLayout, CgroupLocation, CgroupLocator, CgroupOwner, CgroupVersion,
    HostCgroups, cgroup_owner,
};
pub use container::{
    COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, ContainerInfo, MalformedContainer,
    is_container_id,
};
pub use engine::{
    ConnectError, ContainerAction, ContainerEngine, ContainerEvent, Engine, EngineError,
    EngineInfo, MINIMUM_API_VERSION, connect,
};
pub use runtime::{RuntimeProcess, runtime_process};
pub use tracker::{
    Attribution, ConnectionState, ContainerTracker, DockerTracker, Lifecycle, PendingCgroup,
    PendingReason, TrackedContainer, TrackerEvent, TrackerOptions,
};
