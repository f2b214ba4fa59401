//! Whose cgroup is this? The daemon's answer, from three sources: the Docker tracker (live
//! containers, and removed ones it remembers), the store (attributions made before a restart), and
//! the cgroup's name as the kernel reported it with a check (Docker names a container's cgroup
//! after its id, and the name is captured even when the container is gone by the time user space
//! looks).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use crate::{
    api::{RunningContainer, RunningContainers},
    docker::{
        Attribution, ConnectionState, ContainerInfo, DockerTracker, Lifecycle, is_container_id,
    },
    fold::{Attributor, Clock, Owner},
    store::ContainerRecord,
};

/// How long a cgroup whose name is a container id the tracker does not know stays pending while
/// the engine is reachable, before it counts as the host's (another engine's container).
const UNKNOWN_CONTAINER_GRACE: Duration = Duration::from_secs(30);

/// The container id in a cgroup directory's name: `<id>` (cgroupfs driver) or
/// `docker-<id>.scope` (systemd driver).
pub fn container_id_in_cgroup_name(name: &str) -> Option<&str> {
    let id = name
        .strip_prefix("docker-")
        .and_then(|rest| rest.strip_suffix(".scope"))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

/// The tracker, once the daemon has reached the Docker engine (it keeps trying when the engine
/// is not up at start).
pub type SharedTracker = Arc<OnceLock<Arc<DockerTracker>>>;

/// Attributes cgroups for the daemon's collector thread.
#[derive(Debug)]
pub struct DockerAttributor {
    tracker: SharedTracker,
    runtime: tokio::runtime::Handle,
    /// Attributions stored by an earlier daemon: cgroup id → container (or host).
    remembered: HashMap<u64, Owner>,
    /// Names stored by an earlier daemon.
    stored_names: HashMap<u64, String>,
    resolving: HashSet<u64>,
    unknown_since: HashMap<u64, Instant>,
}

impl DockerAttributor {
    /// `remembered` and `stored_names` come from the store, so that cgroups attributed before a
    /// restart keep their owner even when the container is long gone.
    pub fn new(
        tracker: SharedTracker,
        runtime: tokio::runtime::Handle,
        remembered: HashMap<u64, Owner>,
        stored_names: HashMap<u64, String>,
    ) -> Self {
        Self {
            tracker,
            runtime,
            remembered,
            stored_names,
            resolving: HashSet::new(),
            unknown_since: HashMap::new(),
        }
    }

    fn by_name(
        &mut self,
        tracker: &DockerTracker,
        cgroup_id: u64,
        name: Option<&str>,
    ) -> Option<Owner> {
        let id = name.and_then(container_id_in_cgroup_name)?;
        if let Some(tracked) = tracker.container(id) {
            return Some(Owner::Container(record(&tracked.info, tracked.lifecycle)));
        }
        // The engine may not have told the tracker yet (or is restarting): wait, within reason.
        let connected = matches!(tracker.connection(), ConnectionState::Connected { .. });
        let since = *self
            .unknown_since
            .entry(cgroup_id)
            .or_insert_with(Instant::now);
        if connected && since.elapsed() > UNKNOWN_CONTAINER_GRACE {
            return Some(Owner::Host);
        }
        Some(Owner::Pending)
    }
}

impl Attributor for DockerAttributor {
    fn owner_of(&mut self, cgroup_id: u64, cgroup_name: Option<&str>) -> Owner {
        let name = cgroup_name
            .map(str::to_owned)
            .or_else(|| self.stored_names.get(&cgroup_id).cloned());
        if let Some(owner) = self.remembered.get(&cgroup_id) {
            return owner.clone();
        }
        let Some(tracker) = self.tracker.get().cloned() else {
            // No engine yet: a container's cgroup waits for it, anything else is the host's.
            return match name.as_deref().and_then(container_id_in_cgroup_name) {
                Some(_) => Owner::Pending,
                None => Owner::Host,
            };
        };
        match tracker.attribute(cgroup_id) {
            Attribution::Container(info) => {
                let lifecycle = tracker
                    .container(&info.id)
                    .map_or(Lifecycle::Running, |tracked| tracked.lifecycle);
                Owner::Container(record(&info, lifecycle))
            }
            Attribution::Host => match self.by_name(&tracker, cgroup_id, name.as_deref()) {
                Some(Owner::Pending) | None => Owner::Host,
                Some(owner) => owner,
            },
            Attribution::Unknown(_) => {
                if let Some(owner) = self.by_name(&tracker, cgroup_id, name.as_deref()) {
                    return owner;
                }
                if self.resolving.insert(cgroup_id) {
                    self.runtime.spawn(async move {
                        tracker.resolve(cgroup_id).await;
                    });
                }
                Owner::Pending
            }
        }
    }
}

/// The owners an earlier daemon gave to cgroups, from the store.
pub fn remembered_owners(
    store: &crate::store::Store,
) -> Result<HashMap<u64, Owner>, crate::store::StoreError> {
    let containers: HashMap<String, ContainerRecord> = store
        .containers()?
        .into_iter()
        .map(|container| (container.id.clone(), container))
        .collect();
    Ok(store
        .cgroup_attributions()?
        .into_iter()
        .filter_map(|(cgroup_id, container_id)| match container_id {
            None => Some((cgroup_id, Owner::Host)),
            Some(id) => containers
                .get(&id)
                .map(|record| (cgroup_id, Owner::Container(record.clone()))),
        })
        .collect())
}

/// Connects to the Docker engine at `address` and starts following it, retrying with backoff
/// while the engine is not up; the tracker appears in `shared` once connected.
pub async fn follow_engine(address: crate::docker::EngineAddress, shared: SharedTracker) {
    let mut delay = Duration::from_millis(500);
    let mut warned = false;
    loop {
        match crate::docker::connect(&address).await {
            Ok(engine) => {
                let cgroups = match crate::docker::HostCgroups::locate() {
                    Ok(cgroups) => cgroups,
                    Err(error) => {
                        tracing::error!(%error, "cannot attribute checks to containers without the cgroup v2 hierarchy");
                        return;
                    }
                };
                tracing::info!(%address, "following the Docker engine");
                let tracker =
                    DockerTracker::spawn(engine, cgroups, crate::docker::TrackerOptions::default());
                let _ = shared.set(Arc::new(tracker));
                return;
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "the Docker engine is not reachable; checks from containers wait until it is");
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What the store keeps of a container.
fn record(info: &ContainerInfo, lifecycle: Lifecycle) -> ContainerRecord {
    let now = Clock::now().wall_now_ms;
    ContainerRecord {
        id: info.id.clone(),
        name: info.name.clone(),
        image: info.image.clone(),
        compose_project: info.compose_project.clone(),
        compose_service: info.compose_service.clone(),
        first_seen_ms: now,
        last_seen_ms: now,
        exited_at_ms: (lifecycle != Lifecycle::Running).then_some(now),
    }
}

/// The tracker's running containers, for the API's `ListContainers`.
#[derive(Debug, Clone)]
pub struct TrackedRunningContainers(pub SharedTracker);

impl RunningContainers for TrackedRunningContainers {
    fn running(&self) -> Vec<RunningContainer> {
        let Some(tracker) = self.0.get() else {
            return Vec::new();
        };
        tracker
            .containers()
            .into_iter()
            .filter(|tracked| tracked.lifecycle == Lifecycle::Running)
            .map(|tracked| RunningContainer {
                id: tracked.info.id.clone(),
                name: tracked.info.name.clone(),
                image: tracked.info.image.clone(),
                compose_project: tracked.info.compose_project.clone(),
                compose_service: tracked.info.compose_service.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_read_from_both_drivers_names() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(container_id_in_cgroup_name(id), Some(id));
        assert_eq!(
            container_id_in_cgroup_name(&format!("docker-{id}.scope")),
            Some(id)
        );
        assert_eq!(container_id_in_cgroup_name("user.slice"), None);
        assert_eq!(container_id_in_cgroup_name("docker"), None);
        assert_eq!(container_id_in_cgroup_name(&id[..12]), None);
    }
}
